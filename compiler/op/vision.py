"""Sorting and detection ops: sort, argsort, topk, unique, get_valid_counts, non_max_suppression
(TVM's, boxes (batch, anchors, 6) [class, score, x1, y1, x2, y2]) and nms (the simple ONNX-style
form: boxes (N, 4), scores (N,) -> selected indices).

Native kernels: family "sort" (kernels/sort.py) and "vision" (kernels/vision.py); numpy
references with the full semantics in tests/numpy_reference.py; shapes in shape_funcs/vision.py.

Shape modes: sort/argsort/topk/get_valid_counts/non_max_suppression are data-independent,
unique is data-dependent, nms is upper-bound (its bound min(N, max_output) is what the VM should
allocate; the kernel's two-output form reports the true count). Until the compiler lowers
upper-bound ops, the "nms" shape function computes the exact count (a data-dependent pass), see
shape_funcs/vision.py.
"""
from __future__ import annotations

from dynvm.compiler.ir.expr import Expr
from dynvm.compiler.ir.types import Any, TensorType, TupleType, is_any
from dynvm.compiler.op.builders import positional
from dynvm.compiler.op.registry import REQUIRED, OpDef, get_op, register
from dynvm.compiler.op.type_rels import (INT_DTYPES, NUMERIC_DTYPES, check_arity, check_dtype_in, fail,
                                   normalize_axis, tensor_arg, unify_dim)

KERNEL = "compiled"


def _int_attr(op, attrs, key, low=None):
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"{op}: {key} must be an int, got {value!r}")
    if low is not None and value < low:
        fail(f"{op}: {key} must be >= {low}, got {value}")
    return value


def _number_attr(op, attrs, key, low=None, high=None):
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        fail(f"{op}: {key} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        fail(f"{op}: {key} must be in [{low}, {high}], got {value}")
    return value


def _bool_attr(op, attrs, key):
    if not isinstance(attrs[key], bool):
        fail(f"{op}: {key} must be a bool, got {attrs[key]!r}")
    return attrs[key]


# ---------------------------------------------------------------------------------------------
# sorting


def _sortable(op, arg_types):
    check_arity(op, arg_types, 1)
    x = tensor_arg(op, arg_types[0], "data")
    check_dtype_in(op, x, NUMERIC_DTYPES, "data")
    return x


def _index_dtype(op, attrs):
    if attrs["dtype"] not in INT_DTYPES:
        fail(f"{op}: dtype must be int32 or int64, got {attrs['dtype']!r}")
    return attrs["dtype"]


def sort_rel(arg_types, attrs):
    x = _sortable("sort", arg_types)
    if x.rank == 0:
        fail("sort: data must have rank >= 1")
    normalize_axis("sort", attrs["axis"], x.rank)
    _bool_attr("sort", attrs, "is_ascend")
    return x


def argsort_rel(arg_types, attrs):
    x = sort_rel(arg_types, attrs)
    return TensorType(x.shape, _index_dtype("argsort", attrs))


def topk_rel(arg_types, attrs):
    x = _sortable("topk", arg_types)
    if x.rank == 0:
        fail("topk: data must have rank >= 1")
    axis = normalize_axis("topk", attrs["axis"], x.rank)
    k = _int_attr("topk", attrs, "k")
    _bool_attr("topk", attrs, "is_ascend")
    dim = x.shape[axis]
    if k >= 1 and not is_any(dim) and k > dim:
        fail(f"topk: k={k} is larger than axis {axis} of {x}")
    out = TensorType(x.shape[:axis] + ((k if k >= 1 else dim),) + x.shape[axis + 1:], x.dtype)
    indices = TensorType(out.shape, _index_dtype("topk", attrs))
    ret = attrs["ret_type"]
    if ret == "both":
        return TupleType([out, indices])
    if ret == "values":
        return out
    if ret == "indices":
        return indices
    fail(f"topk: ret_type must be 'both', 'values' or 'indices', got {ret!r}")


def unique_rel(arg_types, attrs):
    x = _sortable("unique", arg_types)
    if x.rank != 1:
        fail(f"unique: data must be 1-D, got {x}")
    values = TensorType((Any(),), x.dtype)
    if _bool_attr("unique", attrs, "return_counts"):
        return TupleType([values, TensorType((Any(),), "int64")])
    return values


# ---------------------------------------------------------------------------------------------
# detection


def _boxes(op, ty, columns: dict):
    data = tensor_arg(op, ty, "data")
    if data.rank != 3:
        fail(f"{op}: data must be (batch, anchors, box length), got {data}")
    check_dtype_in(op, data, ("float32",), "data")
    width = data.shape[2]
    for key, need in columns.items():
        if not is_any(width) and width < need:
            fail(f"{op}: boxes of length {width} have no column {need - 1} ({key})")
    return data


def get_valid_counts_rel(arg_types, attrs):
    op = "get_valid_counts"
    check_arity(op, arg_types, 1)
    _number_attr(op, attrs, "score_threshold")
    score = _int_attr(op, attrs, "score_index", 0)
    cls = _int_attr(op, attrs, "id_index", -1)
    data = _boxes(op, arg_types[0], {"score_index": score + 1, "id_index": cls + 1})
    b, n, _ = data.shape
    return TupleType([TensorType((b,), "int32"), data, TensorType((b, n), "int32")])


def non_max_suppression_rel(arg_types, attrs):
    op = "non_max_suppression"
    check_arity(op, arg_types, 3)
    _int_attr(op, attrs, "max_output_size", -1)
    _number_attr(op, attrs, "iou_threshold", 0, 1)
    _int_attr(op, attrs, "top_k")
    for key in ("force_suppress", "return_indices", "invalid_to_bottom"):
        _bool_attr(op, attrs, key)
    coord = _int_attr(op, attrs, "coord_start", 0)
    score = _int_attr(op, attrs, "score_index", 0)
    cls = _int_attr(op, attrs, "id_index", -1)
    data = _boxes(op, arg_types[0], {"coord_start": coord + 4, "score_index": score + 1,
                                     "id_index": cls + 1})
    valid = tensor_arg(op, arg_types[1], "valid_count")
    indices = tensor_arg(op, arg_types[2], "indices")
    if valid.rank != 1 or valid.dtype != "int32":
        fail(f"{op}: valid_count must be a 1-D int32 tensor, got {valid}")
    if indices.rank != 2 or indices.dtype != "int32":
        fail(f"{op}: indices must be a 2-D int32 tensor, got {indices}")
    b = unify_dim(op, data.shape[0], valid.shape[0], "batch dims (data, valid_count)")
    b = unify_dim(op, b, indices.shape[0], "batch dims (data, indices)")
    n = unify_dim(op, data.shape[1], indices.shape[1], "anchor dims (data, indices)")
    if attrs["return_indices"]:
        return TupleType([TensorType((b, n), "int32"), TensorType((b, 1), "int32")])
    return TensorType((b, n, data.shape[2]), "float32")


def nms_rel(arg_types, attrs):
    check_arity("nms", arg_types, 2)
    _int_attr("nms", attrs, "max_output", 0)
    _number_attr("nms", attrs, "iou_threshold", 0, 1)
    if attrs["score_threshold"] is not None:
        _number_attr("nms", attrs, "score_threshold")
    boxes = tensor_arg("nms", arg_types[0], "boxes")
    scores = tensor_arg("nms", arg_types[1], "scores")
    for t, what in ((boxes, "boxes"), (scores, "scores")):
        check_dtype_in("nms", t, ("float32",), what)
    if boxes.rank != 2 or scores.rank != 1:
        fail(f"nms: boxes must be (N, 4) and scores (N,), got {boxes} and {scores}")
    unify_dim("nms", boxes.shape[1], 4, "box length")
    unify_dim("nms", boxes.shape[0], scores.shape[0], "box counts (boxes, scores)")
    return TensorType((Any(),), "int64")


def _nms_or_tvm(*args, **attrs):
    """`op.non_max_suppression(boxes, scores, ...)` with two tensors is the simple form (nms);
    with three (data, valid_count, indices) it is TVM's."""
    tensors = [a for a in args if isinstance(a, Expr)]
    if len(tensors) == 2:
        return positional("nms")(*args, **attrs)
    return positional("non_max_suppression")(*args, **attrs)


def _register_all():
    sort_kw = dict(kernel=KERNEL, family="sort", pattern="opaque")
    register(OpDef("sort", ("data",), sort_rel, attrs={"axis": -1, "is_ascend": True}, **sort_kw,
                   doc="sort(data, axis=-1, is_ascend=True): values sorted along axis (NaN "
                       "largest)."))
    register(OpDef("argsort", ("data",), argsort_rel,
                   attrs={"axis": -1, "is_ascend": True, "dtype": "int64"}, **sort_kw,
                   doc="argsort(data, axis=-1, is_ascend=True, dtype='int64'): indices that "
                       "sort data along axis; stable (equal values keep index order), NaN "
                       "largest."))
    register(OpDef("topk", ("data",), topk_rel,
                   attrs={"k": 1, "axis": -1, "ret_type": "both", "is_ascend": False,
                          "dtype": "int64"}, **sort_kw,
                   doc="topk(data, k=1, axis=-1, ret_type='both', is_ascend=False, "
                       "dtype='int64'): the k largest (smallest if is_ascend) along axis, "
                       "in order, ties by lower index; k < 1 takes the whole axis. ret_type "
                       "'both' -> (values, indices), 'values' or 'indices'."))
    register(OpDef("unique", ("data",), unique_rel, attrs={"return_counts": False},
                   shape_mode="data_dependent", **sort_kw,
                   doc="unique(data, return_counts=False): sorted distinct values of a 1-D "
                       "tensor (numpy's np.unique: all NaNs count as one, last), and their "
                       "int64 counts when return_counts."))
    vision_kw = dict(kernel=KERNEL, family="vision", pattern="opaque")
    register(OpDef("get_valid_counts", ("data",), get_valid_counts_rel,
                   attrs={"score_threshold": 0.0, "id_index": 0, "score_index": 1},
                   **vision_kw,
                   doc="get_valid_counts(data, score_threshold=0.0, id_index=0, score_index=1) "
                       "-> (valid_count (B,) int32, out (B, N, K), out_indices (B, N) int32): "
                       "TVM's; boxes with score > threshold (and class >= 0 unless "
                       "id_index < 0) move to the top, the rest are -1. data is (B, N, K) rows "
                       "[class, score, x1, y1, x2, y2, ...] (the columns id_index and "
                       "score_index name). The first step of TVM's detection post-processing: "
                       "feed its outputs to non_max_suppression."))
    register(OpDef("non_max_suppression", ("data", "valid_count", "indices"),
                   non_max_suppression_rel,
                   attrs={"max_output_size": -1, "iou_threshold": 0.5, "force_suppress": False,
                          "top_k": -1, "coord_start": 2, "score_index": 1, "id_index": 0,
                          "return_indices": True, "invalid_to_bottom": False}, **vision_kw,
                   doc="non_max_suppression(data, valid_count, indices, max_output_size=-1, "
                       "iou_threshold=0.5, force_suppress=False, top_k=-1, coord_start=2, "
                       "score_index=1, id_index=0, return_indices=True, invalid_to_bottom=False)"
                       ": TVM's greedy NMS. return_indices -> (selected indices (B, N) int32 "
                       "padded with -1, count (B, 1) int32), else boxes (B, N, K) with "
                       "suppressed entries -1. Boxes are the 4 columns from coord_start of "
                       "get_valid_counts' (B, N, K) rows, corners (x1, y1, x2, y2) in any order; "
                       "classes are compared unless force_suppress. Use it after "
                       "get_valid_counts for TVM/SSD-style pipelines (batches, classes, rows "
                       "kept in place); use nms for plain (N, 4) boxes and (N,) scores. With "
                       "two tensor arguments (boxes, scores) op.non_max_suppression builds "
                       "the simple form `nms`."))
    register(OpDef("nms", ("boxes", "scores"), nms_rel,
                   attrs={"max_output": REQUIRED, "iou_threshold": 0.5,
                          "score_threshold": None},
                   shape_mode="upper_bound", **vision_kw,
                   doc="nms(boxes (N, 4), scores (N,), max_output, iou_threshold=0.5, "
                       "score_threshold=None) -> selected indices (K,) int64, K <= "
                       "min(N, max_output): ONNX-style greedy NMS by score (ties by lower "
                       "index), IoU > iou_threshold suppresses, only scores > score_threshold "
                       "are candidates. boxes rows are corners (y1, x1, y2, x2) or (x1, y1, "
                       "x2, y2), in any order per axis (IoU is symmetric in the axes); one "
                       "class, one batch: the op to use for plain detections (ONNX's "
                       "NonMaxSuppression per batch and class). For TVM/SSD-style (B, N, 6) "
                       "rows with classes use get_valid_counts + non_max_suppression."))
    for name in ("sort", "argsort", "topk", "unique", "get_valid_counts", "nms"):
        get_op(name).make = positional(name)
    get_op("non_max_suppression").make = _nms_or_tvm


_register_all()
