"""End-to-end: IR program -> build -> (save/load) -> VirtualMachine.invoke, against numpy."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from dynvm.compiler import build, ir, op
from dynvm.vm import Executable, VirtualMachine

from tests.strategies import PINNED_LAYOUTS, arrays, examples, laid_out, layouts


def run(mod, *args, name="main"):
    return VirtualMachine(build(mod)).invoke(name, *args)


def f32(*shape):
    return ir.TensorType(shape, "float32")


def scalar(dtype):
    return ir.TensorType((), dtype)


def test_design_example_runs_for_several_row_counts(tmp_path):
    x = ir.var("x", f32(ir.Any(), 4))
    y = op.exp(op.add(x, ir.const(1.0, "float32")))
    exe = build(ir.IRModule.from_expr(ir.Function([x], y)))
    path = tmp_path / "model.dvm"
    exe.save(str(path))
    vm = VirtualMachine(Executable.load(str(path)))
    for rows in (3, 0, 1, 17):
        data = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
        out = vm.invoke("main", data)
        np.testing.assert_allclose(out, np.exp(data + 1), rtol=1e-6)
        assert out.shape == (rows, 4) and out.dtype == np.float32


def test_two_any_dims_with_broadcasting():
    a = ir.var("a", f32(ir.Any(), ir.Any()))
    b = ir.var("b", f32(1, ir.Any()))
    mod = ir.IRModule.from_expr(ir.Function([a, b], op.tanh(op.multiply(op.subtract(a, b), a))))
    vm = VirtualMachine(build(mod))
    for shape in [(3, 5), (1, 1), (0, 4), (7, 1)]:
        x = arrays(shape, "float32", 1)
        y = arrays((1, shape[1]), "float32", 2)
        np.testing.assert_allclose(vm.invoke("main", x, y), np.tanh((x - y) * x), rtol=1e-5, atol=1e-6)


def test_broadcast_mismatch_at_run_time_is_a_shape_error():
    from dynvm.vm.errors import DynVMError
    a = ir.var("a", f32(ir.Any()))
    b = ir.var("b", f32(ir.Any()))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([a, b], op.add(a, b)))))
    with pytest.raises(DynVMError, match="broadcast|shape"):
        vm.invoke("main", np.ones(3, np.float32), np.ones(4, np.float32))


@pytest.mark.parametrize("start,stop,step", [(0, 10, 1), (2, 11, 3), (2, 12, 3), (0, 7, 2), (5, 0, -1),
                                             (10, 0, -3), (3, 3, 1), (4, 0, 1)])
def test_arange_with_run_time_start_stop_step(start, stop, step):
    s, e, d = (ir.var(n, scalar("int64")) for n in ("start", "stop", "step"))
    mod = ir.IRModule.from_expr(ir.Function([s, e, d], op.arange(s, e, d, dtype="int64")))
    out = run(mod, np.int64(start), np.int64(stop), np.int64(step))
    np.testing.assert_array_equal(out, np.arange(start, stop, step))


def test_arange_float_positions():
    n = ir.var("n", scalar("float32"))
    mod = ir.IRModule.from_expr(ir.Function([n], op.arange(ir.const(0.0), n, ir.const(0.5))))
    np.testing.assert_allclose(run(mod, np.float32(3.0)), np.arange(0, 3, 0.5, dtype=np.float32))


@settings(max_examples=examples(25))
@example(shape=[17], seed=1, density=0.3, layout="broadcast")
@example(shape=[2, 17], seed=1, density=0.3, layout="reversed")
@example(shape=[0, 3], seed=1, density=1.0, layout="c")
@given(shape=st.lists(st.integers(0, 6), min_size=1, max_size=3), seed=st.integers(0, 1000),
       density=st.sampled_from([0.0, 0.3, 1.0]), layout=layouts())
def test_argwhere_on_random_masks(shape, seed, density, layout):
    mask = laid_out(np.random.default_rng(seed).random(shape) < density, layout)
    out = VirtualMachine(_argwhere_exe(len(shape))).invoke("main", mask)
    np.testing.assert_array_equal(out, np.argwhere(mask))


_ARGWHERE = {}


def _argwhere_exe(rank):
    if rank not in _ARGWHERE:
        m = ir.var("m", ir.TensorType([ir.Any()] * rank, "bool"))
        _ARGWHERE[rank] = build(ir.IRModule.from_expr(ir.Function([m], op.argwhere(m))))
    return _ARGWHERE[rank]


def test_concat_of_two_any_length_inputs():
    a = ir.var("a", f32(ir.Any(), 3))
    b = ir.var("b", f32(ir.Any(), 3))
    mod = ir.IRModule.from_expr(ir.Function([a, b], op.concatenate(ir.Tuple([a, b]), axis=0)))
    vm = VirtualMachine(build(mod))
    for n, m in [(2, 5), (0, 1), (0, 0), (4, 0)]:
        x, y = arrays((n, 3), "float32", n), arrays((m, 3), "float32", m + 7)
        np.testing.assert_array_equal(vm.invoke("main", x, y), np.concatenate([x, y]))


def sum_to_module():
    """sum_to(n) = if n <= 0 then 0 else n + sum_to(n - 1), by recursion on a scalar tensor."""
    mod = ir.IRModule()
    sum_to = mod.get_global_var("sum_to")
    n = ir.var("n", scalar("int64"))
    zero, one = ir.const(0, "int64"), ir.const(1, "int64")
    body = ir.If(op.less(n, one), zero, op.add(n, ir.Call(sum_to, [op.subtract(n, one)])))
    mod["sum_to"] = ir.Function([n], body, ret_type=scalar("int64"))
    m = ir.var("m", scalar("int64"))
    mod["main"] = ir.Function([m], ir.Call(sum_to, [m]))
    return mod


@pytest.mark.parametrize("n", [0, 1, 5, 100])
def test_recursive_sum_to_n(n):
    assert int(run(sum_to_module(), np.int64(n))) == n * (n + 1) // 2


def test_if_chooses_a_branch_with_any_shapes():
    x = ir.var("x", f32(ir.Any()))
    flag = ir.var("flag", scalar("bool"))
    body = ir.If(flag, op.exp(x), op.concatenate(ir.Tuple([x, x]), axis=0))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([flag, x], body))))
    data = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(vm.invoke("main", np.bool_(True), data), np.exp(data), rtol=1e-6)
    np.testing.assert_array_equal(vm.invoke("main", np.bool_(False), data), np.concatenate([data, data]))


def test_nested_tuple_result():
    x = ir.var("x", f32(ir.Any(), 2))
    s = op.sum(x, axis=[1])
    body = ir.Tuple([x, ir.Tuple([s, op.shape_of(x)]), ir.Tuple([])])
    out = run(ir.IRModule.from_expr(ir.Function([x], body)), np.ones((3, 2), np.float32))
    assert isinstance(out, tuple) and isinstance(out[1], tuple) and out[2] == ()
    np.testing.assert_array_equal(out[0], np.ones((3, 2)))
    np.testing.assert_array_equal(out[1][0], np.full(3, 2.0))
    np.testing.assert_array_equal(out[1][1], [3, 2])


def test_reshape_with_minus_one_and_shape_tensor():
    x = ir.var("x", f32(ir.Any(), 6))
    flat = op.reshape(x, newshape=[-1])
    back = op.reshape(flat, op.shape_of(x))
    twos = op.reshape(x, newshape=[-1, 2, 3])
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], ir.Tuple([flat, back, twos])))))
    data = arrays((4, 6), "float32", 3)
    flat_out, back_out, twos_out = vm.invoke("main", data)
    np.testing.assert_array_equal(flat_out, data.ravel())
    np.testing.assert_array_equal(back_out, data)
    np.testing.assert_array_equal(twos_out, data.reshape(-1, 2, 3))


def test_dynamic_zeros_full_and_dense():
    x = ir.var("x", f32(ir.Any(), 3))
    w = ir.const(np.arange(6, dtype=np.float32).reshape(2, 3))
    dense = op.dense(x, w)
    zeros = op.zeros(op.shape_of(dense), dtype="float32")
    body = ir.Tuple([op.add(dense, zeros), op.mean(x, axis=[0]), op.max(x)])
    data = arrays((5, 3), "float32", 4)
    d, mean, mx = run(ir.IRModule.from_expr(ir.Function([x], body)), data)
    np.testing.assert_allclose(d, data @ np.arange(6, dtype=np.float32).reshape(2, 3).T, rtol=1e-5)
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(mx, data.max(), rtol=1e-6)


def test_same_vm_invoked_repeatedly_with_different_shapes():
    x = ir.var("x", f32(ir.Any(), ir.Any()))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], op.relu(op.negative(x))))))
    results = []
    for shape in [(2, 3), (5, 1), (0, 7), (2, 3)]:
        data = arrays(shape, "float32", sum(shape))
        results.append((data, vm.invoke("main", data)))
    for data, out in results:  # earlier results must not be overwritten by later calls
        np.testing.assert_array_equal(out, np.maximum(-data, 0))


# ---------------------------------------------------------------- the invoke boundary

def _softmax(x, axis):
    e = np.exp(x - (x.max(axis=axis, keepdims=True) if x.size else 0))
    return e / e.sum(axis=axis, keepdims=True)


# name -> (IR body over x: (?, ?) float32, numpy reference in float64)
BOUNDARY_PROGRAMS = {
    "softmax_rows": (lambda x: op.softmax(x, axis=-1), lambda x: _softmax(x, -1)),
    "softmax_cols": (lambda x: op.softmax(x, axis=0), lambda x: _softmax(x, 0)),
    "sum_rows": (lambda x: op.sum(x, axis=[1]), lambda x: x.sum(axis=1)),
    "mean_cols": (lambda x: op.mean(x, axis=[0], keepdims=True),
                  lambda x: x.mean(axis=0, keepdims=True)),
    "max_rows_of_tanh": (lambda x: op.max(op.tanh(op.add(x, x)), axis=[1]),
                         lambda x: np.tanh(2 * x).max(axis=1)),
}
_BOUNDARY = {}


def _boundary_vm(name):
    if name not in _BOUNDARY:
        x = ir.var("x", f32(ir.Any(), ir.Any()))
        body, _ = BOUNDARY_PROGRAMS[name]
        _BOUNDARY[name] = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], body(x)))))
    return _BOUNDARY[name]


def _pin_boundary(test):
    """Size-0, size-1 and vector-tail shapes (C order), then strided, reversed, transposed and
    stride-0 inputs of a vector-tail shape."""
    cases = [((0, 17), "c"), ((3, 0), "c"), ((1, 1), "c"), ((2, 17), "c")]
    cases += [((5, 17), layout) for layout in PINNED_LAYOUTS + ("transpose",)]
    for name in ("softmax_rows", "sum_rows"):
        for shape, layout in cases:
            test = example(name=name, shape=shape, layout=layout)(test)
    return test


@_pin_boundary
@settings(max_examples=examples(30))
@given(name=st.sampled_from(sorted(BOUNDARY_PROGRAMS)),
       shape=st.tuples(st.sampled_from([1, 2, 3, 5]), st.sampled_from([1, 3, 4, 8, 9, 16, 17, 33])),
       layout=layouts())
def test_reductions_and_softmax_take_any_input_layout(name, shape, layout):
    """Inputs of every layout reach the kernels with the values numpy sees in the view."""
    x = arrays(shape, "float32", sum(shape), layout)
    before = x.copy()
    got = _boundary_vm(name).invoke("main", x)
    _, reference = BOUNDARY_PROGRAMS[name]
    np.testing.assert_allclose(got, reference(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, before)
