"""Python constructors for ops whose call syntax is richer than `op.name(*tensors, **attrs)`.

`positional(name)` lets attributes follow the tensor arguments positionally, in the order the
registration lists them, so `op.expand_dims(x, 0)` and `op.concatenate([a, b], 1)` read like
numpy. `shape_dispatch` picks the static op (shape given as a Python sequence, an attribute) or
its `dyn.` form (shape given as an IR expression, a run-time argument).
"""
from __future__ import annotations

from compiler.ir.expr import Expr, Tuple, const
from compiler.op.registry import get_op, make_call
from vm.errors import DynVMError


def _split_args(name: str, args, attrs: dict):
    """Tensor args first, then the rest bound to attribute names in registration order."""
    opdef = get_op(name)
    n = len(opdef.args)
    tensors, extra = list(args[:n]), args[n:]
    names = list(opdef.attrs)
    if len(extra) > len(names):
        raise DynVMError(f"op {name} takes at most {n + len(names)} positional argument(s)")
    for key, value in zip(names, extra):
        if key in attrs:
            raise DynVMError(f"op {name} got attribute {key!r} twice")
        attrs[key] = value
    return tensors, attrs


def positional(name: str, convert=None):
    """A constructor for op `name`; `convert(tensors, attrs)` may rewrite the tensor args."""
    def build(*args, **attrs):
        tensors, attrs = _split_args(name, args, dict(attrs))
        attrs = {k: _msgpack_value(v) for k, v in attrs.items()}
        if convert is not None:
            tensors = convert(tensors, attrs)
        return make_call(name, *tensors, **attrs)
    build.__name__ = name.replace(".", "_")
    build.__doc__ = get_op(name).doc
    return build


def _msgpack_value(value):
    """Attributes are msgpack values: tuples become lists (so equal attrs compare equal)."""
    if isinstance(value, tuple):
        return [_msgpack_value(v) for v in value]
    return value


def tuple_first(tensors, attrs):
    """`concatenate([a, b])`: a Python list or tuple becomes one `ir.Tuple` argument."""
    if tensors and isinstance(tensors[0], (list, tuple)):
        tensors[0] = Tuple(tensors[0])
    return tensors


def shape_dispatch(name: str, shape_index: int, shape_key: str):
    """Constructor for `name` whose argument number `shape_index` (or keyword `shape_key`) is a shape.

    A Python sequence is the static form: the shape attribute of `name`. An IR expression is the
    dynamic form: a call to `dyn.<name>` taking the shape tensor as argument `shape_index`.
    """
    static = positional(name)

    def build(*args, **attrs):
        args = list(args)
        if len(args) > shape_index:
            shape = args.pop(shape_index)
        elif shape_key in attrs:
            shape = attrs.pop(shape_key)
        else:
            return static(*args, **attrs)
        if not isinstance(shape, Expr):
            # the shape attribute is the first attribute, so it binds positionally
            return static(*args[:shape_index], shape, *args[shape_index:], **attrs)
        dyn = f"dyn.{name}"
        tensors, attrs = _split_args(dyn, args[:shape_index] + [shape] + args[shape_index:],
                                     dict(attrs))
        return make_call(dyn, *tensors, **attrs)
    build.__name__ = name
    build.__doc__ = get_op(name).doc
    return build


def scalars_as_consts(tensors, attrs):
    """`arange(0, 10, 1)`: Python numbers become scalar constants of the output dtype."""
    dtype = attrs.get("dtype", "float32")
    return [t if isinstance(t, Expr) else const(t, dtype) for t in tensors]
