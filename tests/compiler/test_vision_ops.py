"""Sort and detection ops (compiler/op/vision.py): registrations, type relations with Any dims,
attribute errors at build time, and whole programs through build + VirtualMachine compared
exactly with the numpy references (one build per module, reused by every test)."""
import functools

import numpy as np
import pytest

from tests.compiler.test_ops_types import fails, infer

from dynvm.compiler import build, ir, op
from dynvm.compiler.ir.expr import TupleGetItem
from dynvm.compiler.ir.types import Any, TensorType as T, TupleType
from dynvm.compiler.op import get_op
from tests import references
from dynvm.shape_funcs import lookup
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import TypeInferenceError

A = Any()
F = "float32"
VISION_OPS = ("sort", "argsort", "topk", "unique", "get_valid_counts", "non_max_suppression",
              "nms")


def test_registrations_name_family_mode_and_shape_function():
    for name in VISION_OPS:
        opdef = get_op(name)
        assert opdef.kernel == "compiled" and opdef.pattern == "opaque" and opdef.doc
        assert opdef.family == ("vision" if name in ("get_valid_counts", "non_max_suppression",
                                                     "nms") else "sort")
        assert lookup(name).name == name
    assert get_op("unique").shape_mode == "data_dependent"
    assert get_op("nms").shape_mode == "upper_bound"
    assert lookup("nms.upper_bound").mode == "upper_bound"
    assert get_op("topk").shape_mode == "data_independent"


def test_sort_family_types_keep_any_dims():
    x = T((A, 5), F)
    assert infer("sort", x) == x
    assert infer("argsort", x, axis=0, dtype="int32") == T((A, 5), "int32")
    assert infer("topk", x, k=2) == TupleType([T((A, 2), F), T((A, 2), "int64")])
    assert infer("topk", x, k=0, axis=0, ret_type="values") == T((A, 5), F)
    assert infer("topk", x, k=3, axis=0, ret_type="indices") == T((3, 5), "int64")
    assert infer("unique", T((A,), "int32")) == T((A,), "int32")
    assert infer("unique", T((4,), F), return_counts=True) == TupleType([T((A,), F),
                                                                         T((A,), "int64")])


def test_detection_types():
    data = T((A, A, 6), F)
    assert infer("get_valid_counts", data) == TupleType(
        [T((A,), "int32"), data, T((A, A), "int32")])
    vc, idx = T((2,), "int32"), T((A, 7), "int32")
    assert infer("non_max_suppression", data, vc, idx) == TupleType(
        [T((2, 7), "int32"), T((2, 1), "int32")])
    assert infer("non_max_suppression", data, vc, idx, return_indices=False) == T((2, 7, 6), F)
    assert infer("nms", T((A, 4), F), T((10,), F), max_output=3) == T((A,), "int64")


@pytest.mark.parametrize("phrase, name, args, attrs", [
    ("k=4 is larger than axis 1", "topk", (T((2, 3), F),), {"k": 4}),
    ("ret_type must be", "topk", (T((2, 3), F),), {"ret_type": "all"}),
    ("dtype must be int32 or int64", "argsort", (T((3,), F),), {"dtype": "float32"}),
    ("rank >= 1", "sort", (T((), F),), {}),
    ("needs data of dtype", "sort", (T((3,), "bool"),), {}),
    ("unique: data must be 1-D", "unique", (T((2, 2), F),), {}),
    ("max_output must be >= 0", "nms", (T((3, 4), F), T((3,), F)), {"max_output": -1}),
    (r"iou_threshold must be in \[0, 1\]", "nms", (T((3, 4), F), T((3,), F)),
     {"max_output": 2, "iou_threshold": 1.5}),
    ("box length", "nms", (T((3, 5), F), T((3,), F)), {"max_output": 2}),
    ("box counts", "nms", (T((3, 4), F), T((2,), F)), {"max_output": 2}),
    (r"iou_threshold must be in \[0, 1\]", "non_max_suppression",
     (T((1, 3, 6), F), T((1,), "int32"), T((1, 3), "int32")), {"iou_threshold": -0.5}),
    ("max_output_size must be >= -1", "non_max_suppression",
     (T((1, 3, 6), F), T((1,), "int32"), T((1, 3), "int32")), {"max_output_size": -2}),
    ("no column 5", "non_max_suppression",
     (T((1, 3, 5), F), T((1,), "int32"), T((1, 3), "int32")), {}),
    ("batch dims", "non_max_suppression",
     (T((2, 3, 6), F), T((1,), "int32"), T((2, 3), "int32")), {}),
    ("needs data of dtype float32", "get_valid_counts", (T((1, 3, 6), "float64"),), {}),
])
def test_bad_types_and_attributes_are_type_errors(phrase, name, args, attrs):
    fails(phrase, name, *args, **attrs)


def test_missing_max_output_is_reported():
    with pytest.raises(Exception, match="needs attribute 'max_output'"):
        op.nms(ir.var("b", T((A, 4), F)), ir.var("s", T((A,), F)))


def test_two_tensor_non_max_suppression_is_the_simple_form():
    b, s = ir.var("b", T((A, 4), F)), ir.var("s", T((A,), F))
    call = op.non_max_suppression(b, s, max_output=3)
    assert call.callee.name == "nms" and call.attrs["max_output"] == 3


def test_build_reports_bad_attribute_as_type_error():
    b, s = ir.var("b", T((A, 4), F)), ir.var("s", T((A,), F))
    mod = ir.IRModule.from_expr(ir.Function([b, s], op.nms(b, s, max_output=-2)))
    with pytest.raises(TypeInferenceError, match="max_output must be >= 0"):
        build(mod)


# ---------------------------------------------------------------------------------------------
# end to end

NMS_ATTRS = {"max_output": 20, "iou_threshold": 0.5, "score_threshold": 0.05}
TVM_ATTRS = {"iou_threshold": 0.5, "max_output_size": 10, "force_suppress": False, "top_k": -1,
             "coord_start": 2, "score_index": 1, "id_index": 0, "return_indices": True,
             "invalid_to_bottom": False}


@functools.cache
def machine():
    """One program using every op: SSD-style post-processing, simple NMS, the sort family."""
    data = ir.var("data", T((1, A, 6), F))
    boxes = ir.var("boxes", T((A, 4), F))
    scores = ir.var("scores", T((A,), F))
    x = ir.var("x", T((A, 7), F))
    counts = op.get_valid_counts(data, score_threshold=0.1)
    valid, rows, indices = (TupleGetItem(counts, i) for i in range(3))
    body = ir.Tuple([
        op.non_max_suppression(rows, valid, indices, **TVM_ATTRS),
        op.non_max_suppression(boxes, scores, **NMS_ATTRS),
        op.topk(x, 3),
        op.argsort(x, axis=0),
        op.sort(x, is_ascend=False),
        op.unique(scores, return_counts=True),
    ])
    exe = build(ir.IRModule.from_expr(ir.Function([data, boxes, scores, x], body)))
    return VirtualMachine(exe)


def random_inputs(n, seed):
    rng = np.random.default_rng(seed)
    data = np.zeros((1, n, 6), np.float32)
    data[0, :, 0] = rng.integers(0, 2, n)
    data[0, :, 1] = rng.choice(np.array([0.05, 0.2, 0.5, 0.5, 0.9], np.float32), n)
    xy = rng.integers(0, 10, (n, 2))
    data[0, :, 2:4] = xy
    data[0, :, 4:6] = xy + rng.integers(0, 4, (n, 2))
    x = rng.integers(-3, 3, (max(n // 3, 1), 7)).astype(np.float32)
    return data, data[0, :, 2:6].copy(), data[0, :, 1].copy(), x


@pytest.mark.parametrize("n, seed", [(0, 0), (1, 1), (7, 2), (60, 3)])
def test_programs_match_references_end_to_end(n, seed):
    data, boxes, scores, x = random_inputs(n, seed)
    tvm, simple, (top_v, top_i), order, ordered, (uniq, counts) = machine().invoke(
        "main", data, boxes, scores, x)

    valid, rows, indices = references.get_valid_counts(data, 0.1, id_index=0, score_index=1)
    want = references.tvm_non_max_suppression(rows, valid, indices, TVM_ATTRS)
    assert len(tvm) == len(want) == 2
    for got, w in zip(tvm, want):
        np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(simple, references.greedy_nms(boxes, scores, **NMS_ATTRS))
    assert simple.dtype == np.int64
    k = min(3, 7)
    np.testing.assert_array_equal(top_v, -np.sort(-x, axis=-1, kind="stable")[:, :k])
    np.testing.assert_array_equal(top_i, references.sort_order(x, 1, descending=True)[:, :k])
    np.testing.assert_array_equal(order, np.argsort(x, axis=0, kind="stable"))
    np.testing.assert_array_equal(ordered, -np.sort(-x, axis=-1))
    want_u, want_c = np.unique(scores, return_counts=True)
    np.testing.assert_array_equal(uniq, want_u)
    np.testing.assert_array_equal(counts, want_c)


def test_nms_with_no_valid_box_returns_empty_selection():
    data, boxes, _, x = random_inputs(5, 9)
    scores = np.zeros(5, np.float32)   # nothing above score_threshold 0.05
    simple = machine().invoke("main", data, boxes, scores, x)[1]
    assert simple.shape == (0,) and simple.dtype == np.int64


@pytest.mark.parametrize("tier", ["native", "python"])
def test_an_nms_shape_mismatch_is_reported_in_the_ops_terms(tier):
    """The kernel rejects the operands; the op's shape function says what is wrong with them."""
    from dynvm.vm import VirtualMachine
    from dynvm.vm.errors import ShapeError
    boxes = ir.var("boxes", ir.TensorType((ir.Any(), 4), "float32"))
    scores = ir.var("scores", ir.TensorType((ir.Any(),), "float32"))
    exe = build(ir.IRModule.from_expr(ir.Function([boxes, scores], op.nms(boxes, scores, max_output=10))))
    with pytest.raises(ShapeError, match=r"^nms: scores has 3 rows but boxes has 5 \[in main"):
        VirtualMachine(exe, tier=tier).invoke("main", np.zeros((5, 4), np.float32), np.zeros(3, np.float32))
