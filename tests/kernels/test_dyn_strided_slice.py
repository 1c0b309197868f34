"""dyn.strided_slice: begin / end / strides as run-time 1-D int tensors.

The compiled kernel (strided_slice family, spec op "dyn.strided_slice") agrees exactly with the
numpy reference of tests/numpy_reference.py through the dispatcher and every variant, on hypothesis-drawn
slices (negative strides, out-of-range begin/end, size-0 results); the shape function agrees with
the real output shape; stride 0 is a ShapeError (shape function) and ERR_VALUE (kernel); and a
whole program with run-time begin/end runs through build + VirtualMachine.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm import shape_funcs
from dynvm.compiler import build, ir, op
from dynvm.kernels.abi import ERR_SHAPE, ERR_VALUE
from tests.kernels.support import with_layout
from tests.kernels.test_transform import (LAYOUTS, cached, check_all_variants, kind,
                                          native_table, random_array, reference)
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import ShapeError
from tests.strategies import examples

BOUND = st.one_of(st.integers(-12, 12), st.sampled_from([-(1 << 63), (1 << 63) - 1, -(1 << 40),
                                                          1 << 40]))
STEP = st.one_of(st.integers(-4, 4).filter(bool), st.sampled_from([-(1 << 63), (1 << 63) - 1]))


@cached
def kernels():
    specs = {}
    for dt in ("float32", "int64", "bool"):
        specs[(dt, None)] = ("strided_slice", {"op": "dyn.strided_slice", "axes": None},
                             [[dt, 2], ["int64", 1], ["int64", 1], ["int64", 1]], [[dt, 2]])
    specs[("int32", "axes")] = ("strided_slice", {"op": "dyn.strided_slice", "axes": [-1]},
                                [["float64", 3], ["int32", 1], ["int32", 1], ["int64", 1]],
                                [["float64", 3]])
    return native_table(specs)


def vec(values, dtype="int64"):
    return np.array(values, dtype=dtype).reshape(len(values))


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
@settings(max_examples=examples(25))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_matches_numpy(dtype, data, seed):
    shape = (data.draw(st.integers(0, 7)), data.draw(st.integers(0, 9)))
    x = with_layout(random_array(np.random.default_rng(seed), shape, dtype),
                    data.draw(st.sampled_from(LAYOUTS)))
    ins = [x] + [vec([data.draw(s) for _ in range(2)]) for s in (BOUND, BOUND, STEP)]
    want = reference("dyn.strided_slice", {"axes": None}, ins)[0]
    index = tuple(slice(int(b), int(e), int(s)) for b, e, s in zip(*ins[1:]))
    np.testing.assert_array_equal(want, x[index])
    assert shape_funcs.lookup("dyn.strided_slice").fn(ins, {"axes": None}) == [x[index].shape]
    check_all_variants(kernels()[(dtype, None)], "dyn.strided_slice", {"axes": None}, ins,
                       data.draw(st.sampled_from(LAYOUTS)), compact=False)


@settings(max_examples=examples(25))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_with_axes_and_int32_bounds(data, seed):
    shape = tuple(data.draw(st.integers(0, 5)) for _ in range(3))
    x = random_array(np.random.default_rng(seed), shape, "float64")
    b, e = data.draw(st.integers(-8, 8)), data.draw(st.integers(-8, 8))
    s = data.draw(st.integers(-3, 3).filter(bool))
    ins = [x, vec([b], "int32"), vec([e], "int32"), vec([s])]
    want = reference("dyn.strided_slice", {"axes": [-1]}, ins)[0]
    np.testing.assert_array_equal(want, x[..., b:e:s])
    check_all_variants(kernels()[("int32", "axes")], "dyn.strided_slice", {"axes": [-1]}, ins,
                       compact=False)


def test_rows_variant_is_chosen_for_unit_last_step_and_empty_results_work():
    k = kernels()[("float32", None)]
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    ins = [x, vec([4, 1]), vec([0, 5]), vec([-2, 1])]
    assert check_all_variants(k, "dyn.strided_slice", {"axes": None}, ins, compact=False) == "rows"
    ins = [x, vec([4, 5]), vec([0, 0]), vec([-2, -1])]
    assert check_all_variants(k, "dyn.strided_slice", {"axes": None}, ins, compact=False) \
        == "strided"
    ins = [x, vec([3, 0]), vec([1, 6]), vec([1, 1])]           # empty: begin past end
    assert reference("dyn.strided_slice", {"axes": None}, ins)[0].shape == (0, 6)
    check_all_variants(k, "dyn.strided_slice", {"axes": None}, ins, compact=False)


def test_zero_stride_is_an_error_in_shape_function_and_kernel():
    x = np.zeros((4, 4), np.float32)
    ins = [x, vec([0, 0]), vec([2, 2]), vec([1, 0])]
    with pytest.raises(ShapeError, match="stride must not be zero"):
        shape_funcs.lookup("dyn.strided_slice").fn(ins, {"axes": None})
    k = kernels()[("float32", None)]
    for v in [None] + k.variants:
        rc = k([*ins, np.zeros((2, 2), np.float32)], v)
        assert kind(rc) == ERR_VALUE and rc >> 8 & 0xFF == 3 and rc >> 16 == 1


def test_wrong_output_shape_or_bound_length_is_err_shape():
    k = kernels()[("float32", None)]
    x = np.zeros((5, 5), np.float32)
    ins = [x, vec([1, 0]), vec([4, 3]), vec([1, 1])]
    for v in [None] + k.variants:
        assert kind(k([*ins, np.zeros((3, 2), np.float32)], v)) == ERR_SHAPE
        assert kind(k([x, vec([1]), vec([4, 3]), vec([1, 1]), np.zeros((3, 3), np.float32)],
                      v)) == ERR_SHAPE
    assert k([*ins, np.zeros((3, 3), np.float32)]) == 0
    with pytest.raises(ShapeError, match="begin has length 1"):
        shape_funcs.lookup("dyn.strided_slice").fn([x, vec([1]), vec([4, 3]), vec([1, 1])], {})


def test_shape_function_is_data_dependent():
    assert shape_funcs.lookup("dyn.strided_slice").mode == "data_dependent"


# ---------------------------------------------------------------------------------------------
# compiler: constructor dispatch, types, end to end


def test_op_strided_slice_builds_the_dyn_op_for_tensor_bounds():
    x = ir.var("x", ir.TensorType((ir.Any(), 6), "float32"))
    b = ir.var("b", ir.TensorType((2,), "int64"))
    assert op.strided_slice(x, [0], [2]).callee.name == "strided_slice"
    call = op.strided_slice(x, b, [4, 5])
    assert call.callee.name == "dyn.strided_slice" and len(call.args) == 4
    assert np.array_equal(call.args[3].data, [1, 1])        # strides default to ones
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x, b], call))))
    data = np.arange(42, dtype=np.float32).reshape(7, 6)
    for begin, want in (([1, 2], data[1:4, 2:5]), ([-3, 0], data[-3:4, 0:5]), ([5, 5], data[5:4, 5:5])):
        np.testing.assert_array_equal(vm.invoke("main", data, vec(begin)), want)


def test_type_relation_keeps_unsliced_dims_and_checks_lengths():
    x = ir.var("x", ir.TensorType((3, 6, 2), "int32"))
    b = ir.var("b", ir.TensorType((1,), "int32"))
    e = ir.var("e", ir.TensorType((1,), "int32"))
    ok = ir.IRModule.from_expr(ir.Function([x, b, e], op.strided_slice(x, b, e, axes=[1])))
    vm = VirtualMachine(build(ok))
    data = np.arange(36, dtype=np.int32).reshape(3, 6, 2)
    out = vm.invoke("main", data, vec([-1], "int32"), vec([0], "int32"))
    np.testing.assert_array_equal(out, data[:, -1:0:1])
    bad = ir.IRModule.from_expr(ir.Function([x, b, e], op.strided_slice(x, b, e)))
    with pytest.raises(Exception, match="length 1, expected 3"):
        build(bad)


def test_end_to_end_with_run_time_begin_and_end():
    x = ir.var("x", ir.TensorType((ir.Any(), ir.Any()), "float32"))
    b = ir.var("b", ir.TensorType((2,), "int64"))
    e = ir.var("e", ir.TensorType((2,), "int64"))
    s = ir.var("s", ir.TensorType((2,), "int64"))
    y = op.exp(op.strided_slice(x, b, e, s))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x, b, e, s], y))))
    rng = np.random.default_rng(0)
    cases = [((5, 7), [1, 0], [4, 7], [1, 2]), ((5, 7), [-1, 6], [-100, -8], [-2, -1]),
             ((5, 7), [3, 0], [1, 7], [1, 1]), ((0, 3), [0, 0], [9, 9], [1, 1]),
             ((4, 4), [-(1 << 63), 1 << 40], [(1 << 63) - 1, 0], [3, -1])]
    for shape, bb, ee, ss in cases:
        data = rng.standard_normal(shape).astype(np.float32)
        out = vm.invoke("main", data, vec(bb), vec(ee), vec(ss))
        want = np.exp(data[tuple(slice(*t) for t in zip(bb, ee, ss))])
        assert out.shape == want.shape
        np.testing.assert_allclose(out, want, rtol=1e-6)
    with pytest.raises(Exception, match="stride must not be zero"):
        vm.invoke("main", np.zeros((2, 2), np.float32), vec([0, 0]), vec([1, 1]), vec([0, 1]))
