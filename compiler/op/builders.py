"""Python constructors for ops whose call syntax is richer than `op.name(*tensors, **attrs)`.

`positional(name)` lets attributes follow the tensor arguments positionally, in the order the
registration lists them, so `op.expand_dims(x, 0)` and `op.concatenate([a, b], 1)` read like
numpy. `shape_dispatch` picks the static op (shape given as a Python sequence, an attribute) or
its `dyn.` form (shape given as an IR expression, a run-time argument).
"""
from __future__ import annotations

from dynvm.compiler.ir.expr import Expr, Tuple, const
from dynvm.compiler.op.registry import get_op, make_call
from dynvm.vm.errors import DynVMError


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


def slice_dispatch():
    """Constructor for strided_slice: static when begin, end and strides are Python sequences
    (attributes); `dyn.strided_slice` when any of them is an IR expression (run-time tensors).

    In the dynamic form a Python list becomes an int64 constant (it may not contain None), and
    missing strides become ones; their length comes from axes, a static list, or the type of
    begin/end (a typed var or a constant), else strides must be given.
    """
    import numpy as np

    static = positional("strided_slice")
    names = ("begin", "end", "strides", "axes")

    def build(x, *args, **attrs):
        if len(args) > len(names):
            raise DynVMError("op strided_slice takes at most 5 positional argument(s)")
        for key, value in zip(names, args):
            if key in attrs:
                raise DynVMError(f"op strided_slice got attribute {key!r} twice")
            attrs[key] = value
        vals = [attrs.get(k) for k in names[:3]]
        if not any(isinstance(v, Expr) for v in vals):
            return static(x, **attrs)
        unknown = set(attrs) - set(names)
        if unknown:
            raise DynVMError(f"op strided_slice has no attribute(s) {sorted(unknown)}")
        axes = attrs.get("axes")
        n = len(axes) if axes is not None else None
        for v in vals:
            if n is None and isinstance(v, (list, tuple)):
                n = len(v)
            if n is None and isinstance(v, Expr):
                ty = v.checked_type or getattr(v, "type_annotation", None)
                if ty is None and hasattr(v, "data"):
                    n = len(np.asarray(v.data))
                elif ty is not None and getattr(ty, "rank", None) == 1 \
                        and isinstance(ty.shape[0], int):
                    n = ty.shape[0]
        tensors = []
        for key, v in zip(names[:3], vals):
            if isinstance(v, Expr):
                tensors.append(v)
                continue
            if v is None:
                if key != "strides" or n is None:
                    raise DynVMError(f"strided_slice: {key} is required with tensor begin/end "
                                     "(its length cannot be inferred here)")
                v = [1] * n
            v = list(v)
            if any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) for e in v):
                raise DynVMError(f"strided_slice: with tensor begin/end, {key} must be ints, "
                                 f"got {v!r}")
            tensors.append(const(np.array(v, dtype=np.int64).reshape(len(v)), "int64"))
        return make_call("dyn.strided_slice", x, *tensors,
                         axes=_msgpack_value(axes) if axes is not None else None)
    build.__name__ = "strided_slice"
    build.__doc__ = get_op("strided_slice").doc
    return build
