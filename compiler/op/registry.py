"""The operator registry: one `register(OpDef(...))` per primitive op.

An entry carries everything the compiler needs about an op (TVM's op registry idea):
its arguments and attributes, its type relation, how it is lowered (a kernel call, or a VM
instruction such as ShapeOf/ReshapeTensor), whether it runs a compiled kernel,
its fusion pattern and the mode of its run-time shape function (`shape_funcs/` has the function
under the same name). The `op.xxx` constructors and `dynvm ops` are generated from this table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dynvm.vm.errors import DynVMError

REQUIRED = object()  # marks an attribute without a default

SHAPE_MODES = ("static", "data_independent", "data_dependent", "upper_bound")
PATTERNS = ("elemwise", "broadcast", "injective", "reduce", "out_elemwise_fusable", "opaque")
LOWERINGS = ("kernel", "shape_of", "reshape")


@dataclass
class OpDef:
    name: str
    args: tuple                      # names of the tensor arguments
    type_rel: Callable               # (arg_types: list[Type], attrs: dict) -> Type
    attrs: dict = field(default_factory=dict)   # attr name -> default (or REQUIRED)
    kernel: str = "compiled"         # "compiled" (native, kernels/) | "vm" (a VM instruction)
    lowering: str = "kernel"
    pattern: str = "opaque"
    shape_mode: str = "data_independent"
    expr: Callable | None = None     # compiled elementwise ops: (arg_exprs, attrs) -> kernel expr
    family: str | None = None        # compiled non-elementwise ops: kernel family (default: op name)
    doc: str = ""
    make: Callable | None = None     # custom Python constructor (e.g. reshape by tensor)

    def __post_init__(self):
        assert self.shape_mode in SHAPE_MODES, self.shape_mode
        assert self.pattern in PATTERNS, self.pattern
        assert self.lowering in LOWERINGS, self.lowering
        assert self.kernel in ("compiled", "vm"), self.kernel

    def normalize_attrs(self, attrs: dict) -> dict:
        """Fill defaults and reject unknown or missing attributes."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise DynVMError(f"op {self.name} has no attribute(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.attrs)}")
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = attrs[key]
            elif default is REQUIRED:
                raise DynVMError(f"op {self.name} needs attribute {key!r}")
            else:
                out[key] = default
        return out


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Add an op to the registry (its name must be new); `op.<name>` then builds calls of it."""
    if opdef.name in OPS:
        raise DynVMError(f"op {opdef.name} registered twice")
    OPS[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    """The registered OpDef of op `name` (arguments, attributes with defaults, type relation,
    documentation); a DynVMError naming the known ops otherwise."""
    try:
        return OPS[name]
    except KeyError:
        raise DynVMError(f"unknown op {name!r}") from None


def make_call(name: str, *args, **attrs):
    """Build `Call(Op(name), args, attrs)` after checking arity and attributes."""
    from dynvm.compiler.ir.expr import Call, Op
    opdef = get_op(name)
    if len(args) != len(opdef.args):
        raise DynVMError(f"op {name} takes {len(opdef.args)} argument(s) "
                         f"({', '.join(opdef.args)}), got {len(args)}")
    from dynvm.compiler.ir.sugar import wrap_operands
    return Call(Op(name), wrap_operands(opdef, args), opdef.normalize_attrs(attrs))


def constructor(name: str) -> Callable:
    """The Python constructor `op.<name>` for a registered op."""
    opdef = get_op(name)
    if opdef.make is not None:
        return opdef.make

    def build(*args, **attrs):
        return make_call(name, *args, **attrs)
    build.__name__ = name
    build.__doc__ = opdef.doc
    return build
