"""Data-dependent and upper-bound ops end to end: NMS sliced without copy, empty results."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from tests import references
from tests.references import greedy_nms
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import DynVMError, TypeInferenceError

ATTRS = {"max_output": 100, "iou_threshold": 0.5, "score_threshold": 0.05}


def nms_module(attrs):
    b = ir.var("b", ir.TensorType((ir.Any(), 4), "float32"))
    s = ir.var("s", ir.TensorType((ir.Any(),), "float32"))
    return ir.IRModule.from_expr(ir.Function([b, s], op.non_max_suppression(b, s, **attrs)))


@pytest.fixture(scope="module", params=[100, 10 ** 6], ids=["static-bound", "bound-per-call"])
def nms_vm(request):
    """max_output 100: the bound (100 entries) is allocated statically; 10**6 entries would be
    8 MB, so the bound min(N, max_output) comes from nms.upper_bound per call."""
    attrs = dict(ATTRS, max_output=request.param)
    exe = build(nms_module(attrs))
    return exe, VirtualMachine(exe), attrs


def nms_reference(boxes, scores, attrs):
    return greedy_nms(boxes, scores, attrs["max_output"], attrs["iou_threshold"],
                      attrs["score_threshold"])


def random_boxes(n, seed, size=20.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(0, size, (n, 2)).astype(np.float32)], 1)
    return boxes, rng.random(n).astype(np.float32)


def test_nms_allocates_the_bound_and_views_the_true_rows(nms_vm):
    exe, _, attrs = nms_vm
    names = [exe.shape_funcs[ins.args[0]]["name"] for ins in exe.functions[0].instructions
             if ins.name == "CallShapeFunc"]
    # no exact greedy pass in Python: one shape function at most, none for a static bound
    assert names == ([] if attrs["max_output"] == 100 else ["nms.upper_bound"])
    assert [ins.name for ins in exe.functions[0].instructions][-2:] == ["AllocTensorReg", "Ret"]


@pytest.mark.parametrize("n,seed", [(0, 0), (1, 1), (7, 2), (300, 3), (1000, 4)])
def test_nms_matches_the_reference(nms_vm, n, seed):
    _, vm, attrs = nms_vm
    boxes, scores = random_boxes(n, seed)
    got = vm.invoke("main", boxes, scores)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, nms_reference(boxes, scores, attrs))


def test_nms_adversarial_boxes(nms_vm):
    _, vm, attrs = nms_vm
    same = np.tile(np.array([[0, 0, 10, 10]], np.float32), (50, 1))
    ties = np.full(50, 0.5, np.float32)
    np.testing.assert_array_equal(vm.invoke("main", same, ties), [0])            # all suppressed
    far = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(30)], np.float32)
    np.testing.assert_array_equal(vm.invoke("main", far, ties[:30]), np.arange(30))  # none suppressed
    flat = np.zeros((5, 4), np.float32)                                          # zero-area boxes
    np.testing.assert_array_equal(vm.invoke("main", flat, ties[:5]), nms_reference(flat, ties[:5], attrs))
    low = np.full(5, 0.01, np.float32)                                           # below threshold
    assert vm.invoke("main", far[:5], low).shape == (0,)


def test_results_of_earlier_calls_stay_valid(nms_vm):
    _, vm, attrs = nms_vm
    first = vm.invoke("main", *random_boxes(200, 5))
    kept = first.copy()
    vm.invoke("main", *random_boxes(200, 6))
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("bad, phrase", [
    ({"max_output": -1}, r"nms: max_output must be >= 0, got -1\n  in: nms\(%b, %s, max_output=-1"),
    ({"iou_threshold": 1.5}, r"nms: iou_threshold must be in \[0, 1\], got 1.5\n  in: nms\("),
])
def test_bad_nms_attributes_are_clear_errors(bad, phrase):
    with pytest.raises(TypeInferenceError, match=phrase):
        build(nms_module(dict(ATTRS, **bad)))


def test_arange_with_step_zero_is_a_clear_error():
    n = ir.var("n", ir.TensorType((), "int64"))
    vm = VirtualMachine(build(ir.IRModule.from_expr(
        ir.Function([n], op.arange(ir.const(0, "int64"), n, ir.const(0, "int64"), dtype="int64")))))
    with pytest.raises(DynVMError, match="step"):
        vm.invoke("main", np.int64(5))


def test_argwhere_of_all_false_is_empty():
    m = ir.var("m", ir.TensorType((ir.Any(), 3), "bool"))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([m], op.argwhere(m)))))
    assert vm.invoke("main", np.zeros((4, 3), bool)).shape == (0, 2)
    np.testing.assert_array_equal(vm.invoke("main", np.eye(3, dtype=bool)), np.argwhere(np.eye(3)))


def test_nms_uses_the_prepared_shape_functions_and_rejects_mismatched_inputs(nms_vm):
    exe, vm, attrs = nms_vm
    static = attrs["max_output"] == 100
    assert vm.prepared_code("main").count("CallShapeFunc_memo") == (0 if static else 1)
    profiled = VirtualMachine(exe, profile=True)     # the bound runs again only for new shapes
    for n in (10, 10, 12):
        profiled.invoke("main", *random_boxes(n, n))
    assert dict(profiled.profile().shape_func_calls) == ({} if static else {"nms.upper_bound": 2})
    boxes, scores = random_boxes(10, 7)
    where = "CallKernel" if static else "CallShapeFunc"       # the kernel's check, or the bound's
    with pytest.raises(DynVMError, match=f"nms: scores has 9 rows but boxes has 10 .in main at pc \\d+ .{where}"):
        vm.invoke("main", boxes, scores[:9])
    first = vm.invoke("main", boxes, scores)         # the VM still works after the error
    np.testing.assert_array_equal(first, nms_reference(boxes, scores, attrs))


def test_nms_results_are_owned_arrays_after_many_invokes(nms_vm):
    _, vm, attrs = nms_vm
    results = [(vm.invoke("main", *random_boxes(50, s)), s) for s in range(5)]
    for got, s in results:
        np.testing.assert_array_equal(got, nms_reference(*random_boxes(50, s), attrs))
        assert got.flags.writeable


def test_fused_allocations_match_the_unfused_vm():
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    body = ir.Tuple([op.add(x, ir.const(1.0, "float32")), op.sum(x)])   # dynamic and static outputs
    exe = build(ir.IRModule.from_expr(ir.Function([x], body)))
    vm = VirtualMachine(exe)
    handlers = vm.prepared_code("main")
    assert "AllocStorageTensorReg" in handlers and "AllocStorageTensor" in handlers
    plain = VirtualMachine(exe, profile=True)       # profiling prepares without fusion
    assert not {"AllocStorageTensorReg", "AllocStorageTensor"} & set(plain.prepared_code("main"))
    for n in (0, 5, 300):
        arg = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        want = (arg + 1, arg.sum(dtype=np.float32))
        for vm_ in (vm, plain):
            got = vm_.invoke("main", arg)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)


def test_shape_function_results_are_reused_only_while_input_shapes_stay_the_same():
    """Shape functions that read only shapes run again only when an input's (dtype, shape)
    object changed; results stay right when shapes alternate (counted by the profiler)."""
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    y = op.reshape(op.transpose(op.dense(x, ir.const(w))), (-1,))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], op.add(y, y))), fuse=False),
                        profile=True)
    calls = vm.profile().shape_func_calls
    counts = []
    for n in (3, 3, 5, 5, 3, 0, 0):
        a = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        before = sum(calls.values())
        got = vm.invoke("main", a)
        np.testing.assert_allclose(got, 2 * (a @ w.T).T.reshape(-1), rtol=1e-6, atol=1e-6)
        counts.append(sum(calls.values()) - before)
    assert counts[0] > 0 and counts[1] == counts[3] == counts[6] == 0
    assert counts[2] == counts[4] == counts[5] == counts[0]


def nms_postprocess_reference(m, data):
    """examples/nms_postprocess's pipeline through the independent TVM references."""
    valid, boxes, indices = references.get_valid_counts(data, **m.GVC)
    (kept,) = references.tvm_non_max_suppression(boxes, valid, indices, m.NMS)
    return kept[:, :m.TOP]


@pytest.mark.parametrize("anchors", [0, 1, 7, 300])
def test_nms_postprocess_example_and_its_reference_match_an_independent_reference(anchors):
    """The example model has its own numpy reference; both the program and that reference must
    agree with the references written for the tests."""
    from dynvm.models import nms_postprocess as m
    data = m.make_input(anchors, seed=anchors)
    want = nms_postprocess_reference(m, data)
    assert want.shape == (1, min(anchors, m.TOP), 6)
    np.testing.assert_array_equal(VirtualMachine(build(m.build_module())).invoke("main", data), want)
    np.testing.assert_array_equal(m.reference(data), want)
