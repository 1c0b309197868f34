"""Shape functions of the sort and detection ops, and the greedy NMS selection they share with
the numpy reference kernels (tests/numpy_reference.py) — the data-dependent shape of `nms` is the
number of boxes that selection keeps, so both must run the very same algorithm.

nms has two shape functions (see compiler/op/vision.py):
  - "nms" (data-dependent): the exact shape [(K,)], K = the number of selected boxes. It runs the
    whole greedy selection in numpy; it is what the VM calls today.
  - "nms.upper_bound" (upper-bound, what the compiler uses): [(B,), (B + 8,)] with
    B = min(N, max_output): the bound of the result, and the int64 storage that holds it after
    a 64-byte header (see shape_funcs/registry.py). Its static bound (max_output,) lets the
    compiler skip the call when max_output is small. The kernel's two-output form fills the bound
    (selected indices, padded with -1) and writes the true shape (K,) into the header; the VM
    views the first K entries zero-copy.
"""
from __future__ import annotations

import numpy as np

from dynvm.shape_funcs.common import (TracedInput, count_distinct, fails, normalize_axis,
                                      same_dims, smin)
from dynvm.shape_funcs.registry import UPPER_BOUND_HEADER, shape_func
from dynvm.vm.errors import ShapeError

F0 = np.float32(0)


def _fmin(a, b):
    """a < b ? a : b elementwise, exactly what the kernels compute (not np.minimum's NaN rule)."""
    return np.where(a < b, a, b)


def _fmax(a, b):
    return np.where(a > b, a, b)


# ---------------------------------------------------------------------------------------------
# ordering shared by every sort-like reference


def stable_order(x, axis=-1, descending=False):
    """Indices ordering `x` along `axis` by value (NaN largest), equal values by lower index.

    Descending reverses the value order but not the tie order: argsort the flipped array
    stably, flip back and map the positions back to original indices.
    """
    x = np.asarray(x)
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")
    n = x.shape[axis]
    flipped = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
    return np.flip(n - 1 - flipped, axis)


# ---------------------------------------------------------------------------------------------
# simple NMS (ONNX Runtime semantics)


def check_nms_attrs(op, attrs):
    """max_output an int >= 0, iou_threshold in [0, 1] (ShapeError otherwise)."""
    max_output = attrs.get("max_output")
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0:
        raise ShapeError(f"{op}: max_output must be an int >= 0, got {max_output!r}")
    iou = attrs.get("iou_threshold", 0.5)
    if not 0 <= iou <= 1:
        raise ShapeError(f"{op}: iou_threshold must be in [0, 1], got {iou}")
    return max_output, np.float32(iou)


def _check_boxes(op, boxes, scores):
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ShapeError(f"{op}: boxes must be (N, 4) and scores (N,), got {boxes.shape} and "
                         f"{scores.shape}")
    return boxes, scores


def onnx_suppressed(boxes, c, selected, threshold):
    """For each selected box s: does s suppress candidate c? (IoU(c, s) > threshold, float32,
    only boxes with a positive-area overlap and positive areas count; ONNX Runtime's rule)."""
    bc, bs = boxes[c], boxes[selected]
    c0, c2 = _fmin(bc[0], bc[2]), _fmax(bc[0], bc[2])
    c1, c3 = _fmin(bc[1], bc[3]), _fmax(bc[1], bc[3])
    s0, s2 = _fmin(bs[:, 0], bs[:, 2]), _fmax(bs[:, 0], bs[:, 2])
    s1, s3 = _fmin(bs[:, 1], bs[:, 3]), _fmax(bs[:, 1], bs[:, 3])
    with np.errstate(all="ignore"):
        iw = _fmin(c2, s2) - _fmax(c0, s0)
        ih = _fmin(c3, s3) - _fmax(c1, s1)
        inter = iw * ih
        area_c = (c2 - c0) * (c3 - c1)
        area_s = (s2 - s0) * (s3 - s1)
        union = (area_c + area_s) - inter
        ok = (iw > F0) & (ih > F0) & (area_c > F0) & (area_s > F0) & (union > F0)
        iou = inter / np.where(ok, union, np.float32(1))
    return ok & (iou > threshold)


def nms_select(boxes, scores, attrs) -> np.ndarray:
    """Greedy NMS: candidates are boxes with score > score_threshold (every non-NaN score when
    it is None), visited by score descending, equal scores by lower index; a candidate is kept
    unless a kept box suppresses it; stop after max_output. Returns int64 indices."""
    boxes, scores = _check_boxes("nms", boxes, scores)
    max_output, iou = check_nms_attrs("nms", attrs)
    threshold = attrs.get("score_threshold")
    boxes = boxes.astype(np.float32, copy=False)
    scores = scores.astype(np.float32, copy=False)
    candidate = ~np.isnan(scores) if threshold is None else scores > np.float32(threshold)
    idx = np.nonzero(candidate)[0]
    order = idx[stable_order(scores[idx], 0, descending=True)]
    selected = []
    for c in order:
        if len(selected) >= max_output:
            break
        if not selected or not onnx_suppressed(boxes, c, np.array(selected), iou).any():
            selected.append(int(c))
    return np.array(selected, dtype=np.int64)


@shape_func("nms", mode="data_dependent")
def nms(inputs, attrs):
    """The exact count: the whole selection (natively: nms's own kernel into scratch)."""
    (bound,), _ = nms_upper_bound(inputs, attrs)     # checks the shapes and attrs
    boxes, scores = inputs
    if isinstance(boxes, TracedInput):
        spec = {"op": "nms", "max_output": attrs["max_output"],
                "iou_threshold": attrs.get("iou_threshold", 0.5),
                "score_threshold": attrs.get("score_threshold")}
        return [(boxes.upper_bound_count("vision", spec, [scores], bound, "int64"),)]
    return [(len(nms_select(boxes, scores, attrs)),)]


def _nms_shape_message(boxes, scores) -> str:
    if len(boxes) == 2 and len(scores) == 1 and boxes[1] == 4:
        return f"nms: scores has {scores[0]} rows but boxes has {boxes[0]}"
    return f"nms: boxes must be (N, 4) and scores (N,), got {tuple(boxes)} and {tuple(scores)}"


@shape_func("nms.upper_bound", mode="upper_bound")
def nms_upper_bound(inputs, attrs):
    """Reads only the input shapes (no numpy conversion: this runs on every call)."""
    boxes, scores = tuple(inputs[0].shape), tuple(inputs[1].shape)
    if len(boxes) != 2 or fails((boxes[1] == 4) & same_dims(scores, boxes[:1])):
        raise ShapeError(_nms_shape_message(boxes, scores))
    max_output, _ = check_nms_attrs("nms", attrs)
    bound = smin(boxes[0], max_output)
    return [(bound,), (bound + UPPER_BOUND_HEADER // 8,)]


def _nms_upper_bound_prepared(attrs):
    """nms.upper_bound with its attrs checked once (the VM calls this at load; ShapeError for
    bad attrs, and then the VM keeps the general function, which reports them per call)."""
    max_output, _ = check_nms_attrs("nms", attrs)
    header = UPPER_BOUND_HEADER // 8

    def bound(inputs):
        boxes, scores = inputs[0].meta[1], inputs[1].meta[1]
        if len(boxes) != 2 or boxes[1] != 4 or scores != boxes[:1]:
            raise ShapeError(_nms_shape_message(boxes, scores))
        n = boxes[0] if boxes[0] < max_output else max_output
        return [(n,), (n + header,)]
    return bound


nms_upper_bound.check_attrs = _nms_upper_bound_prepared

STATIC_BOUND_BYTES = 1 << 20    # a static bound bigger than this is not worth holding per call


def _nms_static_bound(attrs):
    """max_output entries bound the result whatever N is: the compiler allocates them
    statically and calls no shape function (None: bad attrs, reported per call, or too big)."""
    try:
        max_output, _ = check_nms_attrs("nms", attrs)
    except ShapeError:
        return None
    return (max_output,) if max_output * 8 <= STATIC_BOUND_BYTES else None


nms_upper_bound.static_bound = _nms_static_bound


# ---------------------------------------------------------------------------------------------
# TVM detection ops


def _box_layout(op, shape, attrs, keys):
    if len(shape) != 3:
        raise ShapeError(f"{op}: data must be (batch, anchors, box length), got {tuple(shape)}")
    need = max([attrs.get(k, 0) + (4 if k == "coord_start" else 1) for k in keys])
    if fails(shape[2] >= need):
        raise ShapeError(f"{op}: boxes of length {shape[2]} lack the columns named by "
                         f"{', '.join(f'{k}={attrs.get(k)}' for k in keys)}")
    return tuple(shape)


@shape_func("get_valid_counts")
def get_valid_counts(inputs, attrs):
    b, n, k = _box_layout("get_valid_counts", tuple(inputs[0].shape), attrs,
                          ("score_index", "id_index"))
    return [(b,), (b, n, k), (b, n)]


@shape_func("non_max_suppression")
def non_max_suppression(inputs, attrs):
    b, n, k = _box_layout("non_max_suppression", tuple(inputs[0].shape), attrs,
                          ("coord_start", "score_index", "id_index"))
    valid, indices = tuple(inputs[1].shape), tuple(inputs[2].shape)
    if fails(same_dims(valid, (b,)) & same_dims(indices, (b, n))):
        raise ShapeError(f"non_max_suppression: valid_count must be ({b},) and indices "
                         f"({b}, {n}), got {valid} and {indices}")
    return [(b, n), (b, 1)] if attrs.get("return_indices", True) else [(b, n, k)]


# ---------------------------------------------------------------------------------------------
# sorting


@shape_func("sort", "argsort")
def same_shape(inputs, attrs):
    shape = tuple(inputs[0].shape)
    normalize_axis("sort", attrs.get("axis", -1), len(shape))
    return [tuple(shape)]


def topk_extent(shape, attrs) -> tuple:
    """(axis, k): k < 1 selects the whole axis; k larger than the axis is a ShapeError."""
    axis = normalize_axis("topk", attrs.get("axis", -1), len(shape))
    k = attrs.get("k", 1)
    n = shape[axis]
    if k < 1:
        return axis, n
    if fails(k <= n):
        raise ShapeError(f"topk: k={k} is larger than axis {axis} of shape {tuple(shape)}")
    return axis, k


@shape_func("topk")
def topk(inputs, attrs):
    shape = tuple(inputs[0].shape)
    axis, k = topk_extent(shape, attrs)
    out = shape[:axis] + (k,) + shape[axis + 1:]
    ret = attrs.get("ret_type", "both")
    return [out, out] if ret == "both" else [out]


@shape_func("unique", mode="data_dependent")
def unique(inputs, attrs):
    x = inputs[0]
    if x.ndim != 1:
        raise ShapeError(f"unique: data must be 1-D, got shape {x.shape}")
    k = count_distinct(x)
    return [(k,), (k,)] if attrs.get("return_counts", False) else [(k,)]
