"""Shape and layout ops: shape_of, reshape, expand_dims, squeeze, transpose, concatenate, split,
strided_slice, take, broadcast_to, and the static forms of zeros / ones / full.

shape_of and the reshapes are not kernels: they lower to the VM's ShapeOf / ReshapeTensor
instructions (a reshape is a zero-copy view). The rest are compiled kernels
(kernels/transform.py; zeros / ones / full use the "fill" family of kernels/dynamic.py).
"""
from __future__ import annotations

import math

from dynvm.compiler.ir.types import Any, TensorType, TupleType, is_any
from dynvm.compiler.op.builders import positional, shape_dispatch, slice_dispatch, tuple_first
from dynvm.compiler.op.registry import OpDef, REQUIRED, get_op, register
from dynvm.shape_funcs.transform import TAKE_MODES
from dynvm.compiler.op.type_rels import (INT_DTYPES, check_arity, check_dtype_in, fail, int_list,
                                   normalize_axis, same_dtype, scalar_arg, tensor_arg,
                                   tuple_of_tensors, unify_dim)
from dynvm.vm.dtypes import DTYPES


def _prod(dims):
    """Product of dims, or Any if one of them is Any."""
    if any(is_any(d) for d in dims):
        return Any()
    return math.prod(dims)


def shape_of_rel(arg_types, attrs):
    check_arity("shape_of", arg_types, 1)
    x = tensor_arg("shape_of", arg_types[0])
    return TensorType((x.rank,), "int64")


def reshape_dims(op: str, in_shape, newshape) -> tuple:
    """Relay reshape: 0 copies the input dim at that position, -1 is inferred (at most one).

    Copied dims cancel out of the element count, so `(?, 3, 4)` with `[0, -1]` gives `(?, 12)`.
    """
    newshape = int_list(op, newshape, "newshape")
    out, infer_at, copied = [], None, set()
    for i, d in enumerate(newshape):
        if d == 0:
            if i >= len(in_shape):
                fail(f"{op}: newshape {newshape} copies dim {i} (0) but the input has rank {len(in_shape)}")
            out.append(in_shape[i])
            copied.add(i)
        elif d == -1:
            if infer_at is not None:
                fail(f"{op}: newshape {newshape} has more than one -1")
            infer_at = i
            out.append(None)
        elif d < -1:
            fail(f"{op}: newshape {newshape} has unsupported value {d} (use >= 0 or -1)")
        else:
            out.append(d)
    total = _prod([d for i, d in enumerate(in_shape) if i not in copied])
    known = _prod([d for i, d in enumerate(out) if i not in copied and i != infer_at])
    if is_any(total) or is_any(known):
        if infer_at is not None:
            out[infer_at] = Any()
    elif infer_at is not None:
        if known == 0 or total % known:
            fail(f"{op}: cannot reshape {_prod(in_shape)} elements into {newshape}")
        out[infer_at] = total // known
    elif total != known:
        fail(f"{op}: cannot reshape {_prod(in_shape)} elements into {newshape}")
    return tuple(out)


def reshape_rel(arg_types, attrs):
    check_arity("reshape", arg_types, 1)
    x = tensor_arg("reshape", arg_types[0])
    return TensorType(reshape_dims("reshape", x.shape, attrs["newshape"]), x.dtype)


def expand_dims_rel(arg_types, attrs):
    check_arity("expand_dims", arg_types, 1)
    x = tensor_arg("expand_dims", arg_types[0])
    n = attrs["num_newaxis"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        fail(f"expand_dims: num_newaxis must be an int >= 0, got {n!r}")
    axis = normalize_axis("expand_dims", attrs["axis"], x.rank + 1)
    return TensorType(x.shape[:axis] + (1,) * n + x.shape[axis:], x.dtype)


def squeeze_rel(arg_types, attrs):
    check_arity("squeeze", arg_types, 1)
    x = tensor_arg("squeeze", arg_types[0])
    axis = attrs["axis"]
    if axis is None:
        if not x.is_static:
            fail(f"squeeze: axis=None needs static dims to know which to drop, got {x}; pass axis")
        return TensorType(tuple(d for d in x.shape if d != 1), x.dtype)
    if isinstance(axis, int):
        axis = [axis]
    axes = {normalize_axis("squeeze", a, x.rank) for a in int_list("squeeze", axis, "axis")}
    for a in axes:
        if not is_any(x.shape[a]) and x.shape[a] != 1:
            fail(f"squeeze: dim {a} has size {x.shape[a]}, not 1")
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)


def transpose_rel(arg_types, attrs):
    check_arity("transpose", arg_types, 1)
    x = tensor_arg("transpose", arg_types[0])
    axes = attrs["axes"]
    if axes is None:
        return TensorType(x.shape[::-1], x.dtype)
    axes = [normalize_axis("transpose", a, x.rank) for a in int_list("transpose", axes, "axes")]
    if sorted(axes) != list(range(x.rank)):
        fail(f"transpose: axes {attrs['axes']} are not a permutation of {x.rank} axes")
    return TensorType(tuple(x.shape[a] for a in axes), x.dtype)


def concatenate_rel(arg_types, attrs):
    check_arity("concatenate", arg_types, 1)
    fields = tuple_of_tensors("concatenate", arg_types[0])
    if not fields:
        fail("concatenate: needs at least one tensor")
    dtype = same_dtype("concatenate", fields)
    rank = fields[0].rank
    if any(f.rank != rank for f in fields):
        fail(f"concatenate: all tensors need the same rank, got {[f.rank for f in fields]}")
    if rank == 0:
        fail("concatenate: cannot concatenate scalars (rank 0)")
    axis = normalize_axis("concatenate", attrs["axis"], rank)
    out = list(fields[0].shape)
    for f in fields[1:]:
        for i, d in enumerate(f.shape):
            if i != axis:
                out[i] = unify_dim("concatenate", out[i], d, f"dims on axis {i}")
    size = [f.shape[axis] for f in fields]
    out[axis] = Any() if any(is_any(d) for d in size) else sum(size)
    return TensorType(tuple(out), dtype)


def split_rel(arg_types, attrs):
    check_arity("split", arg_types, 1)
    x = tensor_arg("split", arg_types[0])
    if x.rank == 0:
        fail("split: cannot split a scalar")
    axis = normalize_axis("split", attrs["axis"], x.rank)
    spec, dim = attrs["indices_or_sections"], x.shape[axis]
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec <= 0:
            fail(f"split: number of sections must be > 0, got {spec}")
        if not is_any(dim) and dim % spec:
            fail(f"split: dim {dim} on axis {axis} does not divide into {spec} equal sections")
        sizes = [Any() if is_any(dim) else dim // spec] * spec
    else:
        indices = int_list("split", spec, "indices_or_sections")
        if is_any(dim):
            sizes = [Any()] * (len(indices) + 1)
        else:
            bounds = [0, *indices, dim]
            sizes = [len(range(dim)[a:b]) for a, b in zip(bounds, bounds[1:])]
    return TupleType([TensorType(x.shape[:axis] + (s,) + x.shape[axis + 1:], x.dtype)
                      for s in sizes])


def _slice_params(op, attrs, rank):
    """(axis, begin, end, stride) per sliced axis; missing begin/end mean the whole axis."""
    begin = list(attrs["begin"])
    end = list(attrs["end"])
    strides = list(attrs["strides"] or [])
    axes = attrs["axes"]
    if axes is None:
        axes = list(range(max(len(begin), len(end))))
    else:
        if len(begin) != len(axes) or len(end) != len(axes):
            fail(f"{op}: begin, end and axes need the same length")
    if len(axes) > rank:
        fail(f"{op}: {len(axes)} sliced axes for a rank {rank} tensor")
    out = []
    for i, a in enumerate(axes):
        a = normalize_axis(op, a, rank)
        b = begin[i] if i < len(begin) else None
        e = end[i] if i < len(end) else None
        s = strides[i] if i < len(strides) else 1
        if s == 0:
            fail(f"{op}: stride must not be zero")
        for v in (b, e, s):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                fail(f"{op}: begin, end and strides must be ints, got {v!r}")
        out.append((a, b, e, s))
    if len({a for a, *_ in out}) != len(out):
        fail(f"{op}: repeated axis in {axes}")
    return out


def strided_slice_rel(arg_types, attrs):
    check_arity("strided_slice", arg_types, 1)
    x = tensor_arg("strided_slice", arg_types[0])
    out = list(x.shape)
    for a, b, e, s in _slice_params("strided_slice", attrs, x.rank):
        out[a] = Any() if is_any(out[a]) else len(range(out[a])[b:e:s])
    return TensorType(tuple(out), x.dtype)


def take_rel(arg_types, attrs):
    check_arity("take", arg_types, 2)
    data = tensor_arg("take", arg_types[0], "data")
    idx = tensor_arg("take", arg_types[1], "indices")
    check_dtype_in("take", idx, INT_DTYPES, "indices")
    if attrs["mode"] not in TAKE_MODES:
        fail(f"take: mode must be one of {TAKE_MODES}, got {attrs['mode']!r}")
    if attrs["axis"] is None:
        return TensorType(idx.shape, data.dtype)
    if data.rank == 0:
        fail("take: data is a scalar; use axis=None")
    axis = normalize_axis("take", attrs["axis"], data.rank)
    return TensorType(data.shape[:axis] + idx.shape + data.shape[axis + 1:], data.dtype)


def static_shape(op, shape) -> tuple:
    shape = int_list(op, shape, "shape")
    if any(d < 0 for d in shape):
        fail(f"{op}: shape dims must be >= 0, got {shape}")
    return tuple(shape)


def broadcast_to_rel(arg_types, attrs):
    check_arity("broadcast_to", arg_types, 1)
    x = tensor_arg("broadcast_to", arg_types[0])
    shape = static_shape("broadcast_to", attrs["shape"])
    if x.rank > len(shape):
        fail(f"broadcast_to: cannot broadcast rank {x.rank} to rank {len(shape)} shape {list(shape)}")
    for d, t in zip(x.shape[::-1], shape[::-1]):
        if not is_any(d) and d != 1 and d != t:
            fail(f"broadcast_to: cannot broadcast {x} to {list(shape)}")
    return TensorType(shape, x.dtype)


def _check_dtype_attr(op, dtype):
    if dtype not in DTYPES:
        fail(f"{op}: unsupported dtype {dtype!r}")
    return dtype


def fill_rel(name):
    def rel(arg_types, attrs):
        check_arity(name, arg_types, 0)
        return TensorType(static_shape(name, attrs["shape"]), _check_dtype_attr(name, attrs["dtype"]))
    return rel


def full_rel(arg_types, attrs):
    check_arity("full", arg_types, 1)
    fill = scalar_arg("full", arg_types[0], "fill_value", tuple(DTYPES))
    dtype = _check_dtype_attr("full", attrs["dtype"] or fill.dtype)
    return TensorType(static_shape("full", attrs["shape"]), dtype)


def _register_all():
    register(OpDef("shape_of", ("x",), shape_of_rel, kernel="vm", lowering="shape_of",
                   pattern="opaque", shape_mode="static",
                   doc="shape_of(x): the shape of x as a 1-D int64 tensor of length rank(x)."))
    register(OpDef("reshape", ("x",), reshape_rel, attrs={"newshape": REQUIRED}, kernel="vm",
                   lowering="reshape", pattern="injective",
                   doc="reshape(x, newshape): same elements, new shape; 0 copies the input dim, "
                       "-1 is inferred. A shape tensor instead of a list builds dyn.reshape."))
    register(OpDef("expand_dims", ("x",), expand_dims_rel,
                   attrs={"axis": REQUIRED, "num_newaxis": 1}, kernel="vm", lowering="reshape",
                   pattern="injective",
                   doc="expand_dims(x, axis, num_newaxis=1): insert size-1 dims at axis."))
    register(OpDef("squeeze", ("x",), squeeze_rel, attrs={"axis": None}, kernel="vm",
                   lowering="reshape", pattern="injective",
                   doc="squeeze(x, axis=None): drop size-1 dims (all of them, or those in axis)."))
    register(OpDef("transpose", ("x",), transpose_rel, attrs={"axes": None}, pattern="injective",
                   doc="transpose(x, axes=None): permute dims (reverse them when axes is None)."))
    register(OpDef("concatenate", ("data",), concatenate_rel, attrs={"axis": 0},
                   pattern="injective",
                   doc="concatenate(data, axis=0): join a tuple of tensors along axis."))
    register(OpDef("split", ("x",), split_rel, attrs={"indices_or_sections": REQUIRED, "axis": 0},
                   pattern="injective",
                   doc="split(x, indices_or_sections, axis=0): a tuple of parts; an int gives "
                       "equal sections, a list gives split points (numpy.split)."))
    register(OpDef("strided_slice", ("x",), strided_slice_rel,
                   attrs={"begin": REQUIRED, "end": REQUIRED, "strides": None, "axes": None},
                   pattern="injective",
                   doc="strided_slice(x, begin, end, strides=None, axes=None): x[b:e:s] per axis "
                       "(negative indices count from the end; out-of-range bounds clamp). IR tensors "
                       "for begin/end/strides build dyn.strided_slice."))
    register(OpDef("take", ("data", "indices"), take_rel, attrs={"axis": None, "mode": "clip"},
                   pattern="injective",
                   doc="take(data, indices, axis=None, mode='clip'): gather along axis (flattened "
                       "when None); out-of-range indices clip or wrap; with mode 'raise' negative "
                       "ones count from the end and the rest are an error at run time."))
    register(OpDef("broadcast_to", ("x",), broadcast_to_rel, attrs={"shape": REQUIRED},
                   pattern="injective", shape_mode="static",
                   doc="broadcast_to(x, shape): numpy broadcasting of x to a static shape."))
    for name, value in (("zeros", 0), ("ones", 1)):
        register(OpDef(name, (), fill_rel(name), attrs={"shape": REQUIRED, "dtype": "float32"},
                       pattern="opaque", shape_mode="static", family="fill",
                       doc=f"{name}(shape, dtype='float32'): a tensor of {value}s; a shape tensor "
                           f"instead of a tuple builds dyn.{name}."))
    register(OpDef("full", ("fill_value",), full_rel, attrs={"shape": REQUIRED, "dtype": None},
                   pattern="opaque", shape_mode="static", family="fill",
                   doc="full(fill_value, shape, dtype=None): a tensor filled with the scalar "
                       "fill_value (dtype defaults to its dtype); a shape tensor builds dyn.full."))
    for name in ("expand_dims", "squeeze", "transpose", "split", "take",
                 "broadcast_to"):
        get_op(name).make = positional(name)
    get_op("concatenate").make = positional("concatenate", tuple_first)
    get_op("strided_slice").make = slice_dispatch()
    get_op("reshape").make = shape_dispatch("reshape", 1, "newshape")
    get_op("zeros").make = shape_dispatch("zeros", 0, "shape")
    get_op("ones").make = shape_dispatch("ones", 0, "shape")
    get_op("full").make = shape_dispatch("full", 1, "shape")


_register_all()
