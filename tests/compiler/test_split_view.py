"""Split as views: a split whose parts are runs of the input's memory (every dim before the
axis is 1) of a tensor computed in the function compiles to AllocTensor views of the input's
storage, no kernel; the parts equal numpy's in both tiers, outlive the input, and no later
kernel (nor the memory planner's arena) writes into them."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.models import tree_lstm
from dynvm.vm import StaticRuntime, VirtualMachine
from dynvm.vm.convert import tree


def split_exe(shape, sections, axis, after=None):
    """main(x) = split(exp(x), sections, axis), each part passed through `after` (a function of
    the part and its index) when given."""
    x = ir.var("x", ir.TensorType(shape, "float32"))
    parts = op.split(op.exp(x), sections, axis=axis)
    n = sections if isinstance(sections, int) else len(sections) + 1
    fields = [ir.TupleGetItem(parts, k) for k in range(n)]
    if after is not None:
        fields = [after(f, k) for k, f in enumerate(fields)]
    return build(ir.IRModule.from_expr(ir.Function([x], ir.Tuple(fields))))


def kernels_named(exe, name):
    return [k for k in exe.loaded_kernels() if k.name.startswith(name)]


def run_both(exe, x):
    return [VirtualMachine(exe, tier=tier).invoke("main", x) for tier in ("native", "python")]


CONTIGUOUS = [((1, 512), 4, 1), ((1, 12), [3, 5], 1), ((1, 1, 10), 5, -1), ((6, 3), 3, 0),
              ((6, 3), [1, 1, 4], 0), ((1, 8), [0, 8], 1), ((4096, 2), 2, 0),
              ((1, 8), [5, 3], 1), ((1, 8), [-2], 1), ((1, 8), [2, 20], 1), ((9,), [-20, 4], 0)]


@pytest.mark.parametrize("shape,sections,axis", CONTIGUOUS)
def test_contiguous_parts_are_views_equal_to_numpy(shape, sections, axis):
    exe = split_exe(shape, sections, axis)
    assert not kernels_named(exe, "split"), exe
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = np.split(np.exp(x), sections, axis=axis)
    for got in run_both(exe, x):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize("shape,sections,axis", [((2, 8), 4, 1), ((3, 1, 4), 2, 2)])
def test_strided_parts_take_the_kernel(shape, sections, axis):
    exe = split_exe(shape, sections, axis)
    assert kernels_named(exe, "split")
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    for got in run_both(exe, x):
        for g, w in zip(got, np.split(np.exp(x), sections, axis=axis)):
            np.testing.assert_allclose(g, w, rtol=1e-6)


def test_a_split_of_a_parameter_takes_the_kernel():
    """An argument's memory is the caller's: no view of it is made."""
    x = ir.var("x", ir.TensorType((1, 8), "float32"))
    parts = op.split(x, 2, axis=1)
    exe = build(ir.IRModule.from_expr(ir.Function([x], ir.TupleGetItem(parts, 1))))
    assert kernels_named(exe, "split")
    a = np.arange(8, dtype=np.float32)[None]
    for got in run_both(exe, a):
        np.testing.assert_array_equal(got, a[:, 4:])
        assert not np.shares_memory(got, a)


def test_parts_outlive_the_input_and_later_kernels_write_elsewhere():
    """Each part goes through more kernels after the input is dead (new tensors the memory
    planner places): every part keeps its values, in both tiers and the static runtime, and
    the parts returned as they are do not change in a second invocation."""
    def after(part, k):
        y = part
        for _ in range(k + 1):
            y = op.add(op.multiply(y, ir.const(np.float32(2))), ir.const(np.float32(k)))
        return ir.Tuple([part, y])
    exe = split_exe((1, 64), 4, 1, after)
    assert not kernels_named(exe, "split")
    x = np.linspace(-1, 1, 64, dtype=np.float32)[None]
    parts = np.split(np.exp(x), 4, axis=1)
    want = []
    for k, p in enumerate(parts):
        y = p
        for _ in range(k + 1):
            y = y * 2 + k
        want.append((p, y))
    static = StaticRuntime(exe, "main")
    runs = [VirtualMachine(exe).invoke, VirtualMachine(exe, tier="python").invoke,
            lambda _, a: static.run(a)]
    for run in runs:
        first = run("main", x)
        second = run("main", -x)
        for (p, y), (wp, wy) in zip(first, want):
            np.testing.assert_allclose(p, wp, rtol=1e-6)
            np.testing.assert_allclose(y, wy, rtol=1e-5)
        assert not np.allclose(second[0][0], first[0][0])


def test_the_tree_lstm_gates_are_views_in_both_tiers():
    w = tree_lstm.weights()
    exe = build(tree_lstm.build_module(w))
    assert not kernels_named(exe, "split")
    t = tree_lstm.random_tree(12, seed=3)
    adt = tree_lstm.to_adt(t)
    native, python = run_both(exe, adt)
    assert native.tobytes() == python.tobytes()
    np.testing.assert_allclose(native, tree_lstm.reference(t, w)[0], rtol=1e-4, atol=1e-5)
    leaf = tree(np.ones((1, tree_lstm.INPUT), np.float32))
    assert run_both(exe, leaf)[0].shape == (1, tree_lstm.HIDDEN)
