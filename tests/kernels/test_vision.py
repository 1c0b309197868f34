"""The "vision" kernel family (kernels/vision.py): get_valid_counts, TVM's non_max_suppression
and the simple nms agree exactly with independent direct-loop references written for the tests
(tests/references.py), and the shape functions (shape_funcs/vision.py) with the references' shapes.

Exact comparison: kernels and references compute IoU in float32 with the same formulas.
Boxes are drawn on a coarse grid with sizes including 0 (zero-area boxes, identical boxes, exact
IoU ties) and scores from a small pool (ties in score); adversarial cases add zero boxes, an
empty batch, all boxes suppressed and none suppressed. All kernels compile once, in one module.
"""
import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import load_kernels
from dynvm.kernels.abi import ERR_SHAPE
from dynvm.shape_funcs import lookup
from tests import references
from tests.kernels.support import raw_call, with_layout
from dynvm.vm.errors import KernelError, ShapeError
from tests.strategies import examples

TVM_NMS = {"max_output_size": -1, "iou_threshold": 0.5, "force_suppress": False, "top_k": -1,
           "coord_start": 2, "score_index": 1, "id_index": 0, "return_indices": True,
           "invalid_to_bottom": False}
GVC = {"score_threshold": 0.0, "id_index": 0, "score_index": 1}
# key -> (op, attrs); box length 6 unless the attrs say otherwise (*_k5 uses 5)
CASES = {
    "gvc": ("get_valid_counts", dict(GVC, score_threshold=0.3)),
    "gvc_k5": ("get_valid_counts", {"score_threshold": -0.1, "id_index": -1, "score_index": 0}),
    "nms_indices": ("non_max_suppression", TVM_NMS),
    "nms_boxes": ("non_max_suppression", dict(TVM_NMS, return_indices=False, max_output_size=3,
                                              top_k=7, iou_threshold=0.3)),
    "nms_bottom_force": ("non_max_suppression", dict(TVM_NMS, return_indices=False,
                                                     invalid_to_bottom=True,
                                                     force_suppress=True)),
    "nms_iou0": ("non_max_suppression", dict(TVM_NMS, return_indices=False, iou_threshold=0.0)),
    "nms_k5": ("non_max_suppression", dict(TVM_NMS, coord_start=1, score_index=0, id_index=-1,
                                           max_output_size=0 + 4, iou_threshold=0.6)),
    "simple": ("nms", {"max_output": 5, "iou_threshold": 0.4, "score_threshold": 0.2}),
    "simple_all": ("nms", {"max_output": 100, "iou_threshold": 0.0, "score_threshold": None}),
}
COUNTED = ("simple", "simple_all")  # also built in the two-output (upper-bound) form


def width(key):
    return 5 if key.endswith("k5") else 6


def signature(op, attrs, k=6):
    if op == "get_valid_counts":
        return [("float32", 3)], [("int32", 1), ("float32", 3), ("int32", 2)]
    if op == "non_max_suppression":
        outs = [("int32", 2), ("int32", 2)] if attrs["return_indices"] else [("float32", 3)]
        return [("float32", 3), ("int32", 1), ("int32", 2)], outs
    return [("float32", 2), ("float32", 1)], [("int64", 1)]


@functools.cache
def table():
    kb = KernelBuilder()
    index = {}
    for key, (op, attrs) in CASES.items():
        ins, outs = signature(op, attrs)
        index[key] = kb.add_compiled(op, "vision", {"op": op, **attrs}, ins, outs)
        if key in COUNTED:
            index[key + "+count"] = kb.add_compiled(op, "vision", {"op": op, **attrs}, ins,
                                                    outs + [("int64", 1)])
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}



def outputs_for(key, inputs, shape_func=None, layout="c"):
    op, attrs = CASES[key]
    shapes = lookup(shape_func or op)(inputs, attrs)
    _, sig = signature(op, attrs)
    if shape_func == "nms.upper_bound":      # [bound, its storage]: the kernel gets the bound
        shapes, sig = [shapes[0], (1,)], sig + [("int64", 1)]     # and the true-shape output
    return [with_layout(np.full(s, 77, dt), layout) for s, (dt, _) in zip(shapes, sig)]


def expected(key, inputs):
    """The independent reference's outputs for CASES[key]."""
    op, attrs = CASES[key]
    if op == "get_valid_counts":
        return list(references.get_valid_counts(inputs[0], attrs["score_threshold"],
                                                attrs["id_index"], attrs["score_index"]))
    if op == "non_max_suppression":
        return references.tvm_non_max_suppression(*inputs, attrs)
    return [references.greedy_nms(*inputs, attrs["max_output"], attrs["iou_threshold"],
                                  attrs["score_threshold"])]


def check(key, inputs, layout="c"):
    """Kernel (dispatcher and variant) == reference, outputs shaped by the shape function."""
    want = expected(key, inputs)
    assert [o.shape for o in outputs_for(key, inputs)] == [w.shape for w in want]
    laid = [with_layout(np.ascontiguousarray(a), layout) for a in inputs]
    for variant in (None, "generic"):
        got = outputs_for(key, inputs, layout=layout)
        assert raw_call(table()[key], laid + got, variant) == 0
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    return want


def boxes_of(draw, shape, k=6):
    """(..., k) rows [class, score, x1, y1, x2, y2] (k=5: [score, x1, y1, x2, y2]) on a coarse
    grid: sizes 0..3 (0 gives zero-area boxes), corners sometimes swapped, scores tied."""
    size = int(np.prod(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    xy = rng.integers(0, 6, (size, 2)).astype(np.float32)
    wh = rng.integers(0, 4, (size, 2)).astype(np.float32)
    corners = np.concatenate([xy, xy + wh], axis=1)
    swap = rng.random(size) < 0.2
    corners[swap] = corners[swap][:, [2, 3, 0, 1]]
    scores = rng.choice(np.array([-0.5, 0.0, 0.1, 0.3, 0.3, 0.7, 0.9], np.float32), size)
    cols = [scores[:, None], corners]
    if k == 6:
        cols.insert(0, rng.integers(-1, 3, (size, 1)).astype(np.float32))
    return np.concatenate(cols, axis=1).reshape(tuple(shape) + (k,))


BATCH = st.sampled_from([0, 1, 1, 2, 3])
ANCHORS = st.sampled_from([0, 1, 2, 5, 16, 33])
LAYOUT = st.sampled_from(["c", "c", "step", "reversed"])


@settings(max_examples=examples(40))
@given(st.sampled_from(["gvc", "gvc_k5"]), BATCH, ANCHORS, LAYOUT, st.data())
def test_get_valid_counts_matches_reference(key, b, n, layout, data):
    check(key, [boxes_of(data.draw, (b, n), width(key))], layout)


@settings(max_examples=examples(60))
@given(st.sampled_from(["nms_indices", "nms_boxes", "nms_bottom_force", "nms_iou0", "nms_k5"]),
       BATCH, ANCHORS, LAYOUT, st.data())
def test_tvm_nms_after_get_valid_counts_matches_reference(key, b, n, layout, data):
    gvc = "gvc_k5" if key.endswith("k5") else "gvc"
    valid, boxes, indices = check(gvc, [boxes_of(data.draw, (b, n), width(key))])
    check(key, [boxes, valid, indices], layout)


@settings(max_examples=examples(30))
@given(st.sampled_from(["nms_indices", "nms_boxes"]), st.integers(1, 3), st.integers(0, 12),
       st.data())
def test_tvm_nms_on_raw_boxes_with_any_valid_count(key, b, n, data):
    """valid_count straight from the user (negative, > N) is clamped to [0, N]."""
    boxes = boxes_of(data.draw, (b, n))
    valid = np.array(data.draw(st.lists(st.integers(-3, n + 3), min_size=b, max_size=b)),
                     np.int32)
    indices = np.tile(np.arange(n, dtype=np.int32)[::-1], (b, 1)).copy()
    check(key, [boxes, valid, indices])


@settings(max_examples=examples(60))
@given(st.sampled_from(COUNTED), st.sampled_from([0, 1, 2, 7, 30, 64]), LAYOUT, st.data())
def test_simple_nms_exact_and_upper_bound_forms_match_reference(key, n, layout, data):
    rows = boxes_of(data.draw, (n,), 5)
    inputs = [np.ascontiguousarray(rows[:, 1:]), np.ascontiguousarray(rows[:, 0])]
    want = check(key, inputs, layout)[0]
    bounded = outputs_for(key, inputs, "nms.upper_bound")
    assert raw_call(table()[key + "+count"], inputs + bounded) == 0
    selected, shape = bounded
    assert shape.tolist() == [len(want)]
    np.testing.assert_array_equal(selected[:len(want)], want)
    assert (selected[len(want):] == -1).all()


def simple(boxes, scores, key="simple"):
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    (out,) = outputs_for(key, [boxes, scores])
    assert raw_call(table()[key], [boxes, scores, out]) == 0
    np.testing.assert_array_equal(out, expected(key, [boxes, scores])[0])
    return out.tolist()


def test_simple_nms_adversarial_cases():
    same = [[0, 0, 2, 2]] * 4
    assert simple(same, [0.5, 0.9, 0.9, 0.3]) == [1]                  # all but one suppressed
    assert simple([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], [0.3, 0.9, 0.5]) == [1, 2, 0]
    assert simple(np.zeros((0, 4)), np.zeros(0)) == []                 # zero boxes
    assert simple([[1, 1, 1, 1], [1, 1, 1, 1]], [0.9, 0.8]) == [0, 1]  # zero-area never suppress
    assert simple(same, [0.1, 0.2, 0.0, -1.0]) == []                   # nothing above threshold
    assert simple([[0, 0, 1, 1]] * 8, [0.5] * 8, "simple_all") == [0]  # score ties: lower index
    assert simple([[2, 2, 0, 0], [0, 0, 2, 2]], [0.4, 0.9]) == [1]     # swapped corners
    apart = [[0, 0, 1, 1], [5, 5, 6, 6]]
    assert simple(apart, [0.0, -0.0], "simple_all") == [0, 1]         # -0.0 ties with 0.0
    assert simple(apart, [-0.0, 0.0], "simple_all") == [0, 1]


def test_simple_nms_stops_at_max_output_and_skips_nan_scores():
    boxes = [[i * 2, 0, i * 2 + 1, 1] for i in range(9)]
    scores = [0.3, np.nan, 0.9, 0.5, 0.8, 0.6, 0.7, 0.4, 0.35]
    assert simple(boxes, scores) == [2, 4, 6, 5, 3]
    assert simple(boxes, scores, "simple_all") == [2, 4, 6, 5, 3, 7, 8, 0]


def test_tvm_nms_all_suppressed_and_none_suppressed():
    same = np.array([[[0, 0.9, 0, 0, 4, 4], [0, 0.8, 0, 0, 4, 4], [0, 0.7, 0, 0, 4, 4]]],
                    np.float32)
    apart = same.copy()
    apart[0, :, 2:] += np.arange(3, dtype=np.float32)[:, None] * 10
    for data, kept in ((same, [0]), (apart, [0, 1, 2])):
        valid = np.array([3], np.int32)
        indices = np.arange(3, dtype=np.int32)[None]
        out, count = check("nms_indices", [data, valid, indices])
        assert out[0, :len(kept)].tolist() == kept and int(count[0, 0]) == len(kept)


def test_nms_kernels_reject_outputs_that_do_not_fit():
    boxes, scores = np.zeros((3, 4), np.float32), np.ones(3, np.float32)
    too_long = np.full(2, 9, np.int64)   # exactly one box is selected
    assert raw_call(table()["simple"], [boxes, scores, too_long]) & 0xFF == ERR_SHAPE
    short = np.zeros(2, np.int64)        # bound is min(3, 5) = 3
    assert raw_call(table()["simple+count"], [boxes, scores, short, np.zeros(1, np.int64)]) \
        == ERR_SHAPE | 2 << 8
    bound = np.zeros(3, np.int64)        # the true-shape output holds exactly one extent
    assert raw_call(table()["simple+count"], [boxes, scores, bound, np.zeros(2, np.int64)]) \
        == ERR_SHAPE | 3 << 8
    five = np.zeros((3, 5), np.float32)
    assert raw_call(table()["simple"], [five, scores, np.zeros(1, np.int64)]) \
        == ERR_SHAPE | 1 << 16
    data = np.zeros((1, 4, 5), np.float32)   # no room for coord_start=2 + 4 columns
    outs = [np.zeros((1, 4), np.int32), np.zeros((1, 1), np.int32)]
    rc = raw_call(table()["nms_indices"], [data, np.zeros(1, np.int32),
                                           np.zeros((1, 4), np.int32)] + outs)
    assert rc == ERR_SHAPE | 2 << 16
    with pytest.raises(KernelError, match="extents do not fit"):
        table()["gvc"]([np.zeros((2, 3, 6), np.float32)],
                       [np.zeros(2, np.int32), np.zeros((2, 3, 6), np.float32),
                        np.zeros((2, 4), np.int32)])


def test_shape_functions_reject_bad_attributes_and_shapes():
    boxes, scores = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    with pytest.raises(ShapeError, match="max_output must be an int >= 0"):
        lookup("nms")([boxes, scores], {"max_output": -1, "iou_threshold": 0.5})
    with pytest.raises(ShapeError, match=r"iou_threshold must be in \[0, 1\]"):
        lookup("nms.upper_bound")([boxes, scores], {"max_output": 3, "iou_threshold": 1.5})
    with pytest.raises(ShapeError, match="boxes must be"):
        lookup("nms")([np.zeros((3, 5)), scores], {"max_output": 3})
    with pytest.raises(ShapeError, match="lack the columns"):
        lookup("non_max_suppression")([np.zeros((1, 2, 5)), np.zeros(1), np.zeros((1, 2))],
                                      TVM_NMS)
    assert lookup("nms.upper_bound")([boxes, scores], {"max_output": 2}) == [(2,), (2 + 8,)]
    assert lookup("nms.upper_bound").mode == "upper_bound"


def test_build_rejects_bad_attributes():
    kb = KernelBuilder()
    ins, outs = signature("nms", {})
    with pytest.raises(KernelError, match="max_output must be an int >= 0"):
        kb.add_compiled("nms", "vision", {"op": "nms", "max_output": -1, "iou_threshold": 0.5},
                        ins, outs)
    with pytest.raises(KernelError, match=r"iou_threshold must be in \[0, 1\]"):
        kb.add_compiled("nms", "vision", {"op": "nms", "max_output": 1, "iou_threshold": -0.1},
                        ins, outs)
    with pytest.raises(KernelError, match="signature must be"):
        kb.add_compiled("nms", "vision", {"op": "nms", "max_output": 1}, ins,
                        [("int32", 1)])


def test_data_independent_shape_functions_read_only_shapes():
    from tests.shape_funcs.helpers import ShapeOnly
    gvc = lookup("get_valid_counts").fn([ShapeOnly((2, 5, 6))], GVC)
    assert gvc == [(2,), (2, 5, 6), (2, 5)]
    shapes = [ShapeOnly((2, 5, 6)), ShapeOnly((2,)), ShapeOnly((2, 5))]
    assert lookup("non_max_suppression").fn(shapes, TVM_NMS) == [(2, 5), (2, 1)]
    assert lookup("non_max_suppression").fn(shapes, dict(TVM_NMS, return_indices=False)) == \
        [(2, 5, 6)]
