"""invoke's native fast path (the edge function): which arguments it takes itself, which it
hands to the general path, and that both give the same results, errors and step counts."""
import threading

import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import InvokeArgumentError, ShapeError, VMRecursionError, VMStepLimitError
from dynvm.vm.native import numpy_layout_ok
from tests.e2e.test_control_flow import countdown_module

pytestmark = pytest.mark.skipif(not numpy_layout_ok(), reason="numpy's array layout is not the one edges read")


def add_exe(dims, dtype="float32"):
    t = ir.TensorType(dims, dtype)
    x, y = ir.var("x", t), ir.var("y", t)
    return build(ir.IRModule.from_expr(ir.Function([x, y], op.add(x, y))))


class Counting(VirtualMachine):
    """A native VM that counts the invocations its edge did not finish (the general path)."""

    def __init__(self, exe, **options):
        super().__init__(exe, **options)
        self.general = 0

    def _invoke(self, name, args):
        self.general += 1
        return super()._invoke(name, args)


def test_the_common_call_never_takes_the_general_path():
    vm = Counting(add_exe((3,)))
    a, b = np.arange(3, dtype=np.float32), np.ones(3, np.float32)
    vm.invoke("main", a, b)          # the first call on a thread takes its stack bounds
    general = vm.general
    for _ in range(5):
        np.testing.assert_array_equal(vm.invoke("main", a, b), a + b)
    assert vm.general == general


ODD_ARGUMENTS = {
    "strided": lambda a: np.repeat(a, 2)[::2],
    "big-endian": lambda a: a.astype(">f4"),
    "float64": lambda a: a.astype(np.float64),
    "list": lambda a: a.tolist(),
    "subclass": lambda a: a.view(np.ma.MaskedArray).data.view(type("Sub", (np.ndarray,), {})),
    "misaligned": lambda a: np.frombuffer(b"\0" + a.tobytes(), np.float32, len(a), 1),
    "read-only": lambda a: np.frombuffer(a.tobytes(), np.float32),
}


@pytest.mark.parametrize("kind", sorted(ODD_ARGUMENTS))
def test_arguments_the_edge_declines_give_the_python_tiers_answer(kind):
    exe = add_exe((ir.Any(),))
    native, python = Counting(exe), VirtualMachine(exe, tier="python")
    a = np.arange(4, dtype=np.float32)
    odd = ODD_ARGUMENTS[kind](a)
    for args in ((odd, a), (a, odd)):
        try:
            want = python.invoke("main", *args)
        except InvokeArgumentError as e:
            with pytest.raises(InvokeArgumentError, match=str(e)[:40].replace("[", ".").replace("(", ".")):
                native.invoke("main", *args)
            continue
        got = native.invoke("main", *args)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        assert native.steps == python.steps


@pytest.mark.parametrize("args", [(), (np.ones(2, np.float32),),
                                  (np.ones(2, np.float32),) * 3,
                                  (np.ones((2, 1), np.float32),) * 2,
                                  (np.ones(3, np.float32), np.ones(2, np.float32))])
def test_wrong_arguments_are_the_general_paths_errors(args):
    exe = add_exe((2,))
    with pytest.raises(InvokeArgumentError) as native:
        VirtualMachine(exe).invoke("main", *args)
    with pytest.raises(InvokeArgumentError) as python:
        VirtualMachine(exe, tier="python").invoke("main", *args)
    assert str(native.value) == str(python.value)


def test_zero_extents_take_the_general_path():
    exe = add_exe((ir.Any(),))
    empty = np.ones(0, np.float32)
    assert VirtualMachine(exe).invoke("main", empty, empty).shape == (0,)


def test_results_of_changing_shapes_are_each_exact():
    """The array made in advance has the last result's shape: a new shape is exported instead."""
    vm = Counting(add_exe((ir.Any(),)))
    for n in (3, 3, 5, 1, 5, 5000, 7, 7):
        a = np.arange(n, dtype=np.float32)
        out = vm.invoke("main", a, a)
        assert out.shape == (n,) and out.tobytes() == (a + a).tobytes()
    assert vm.general == 1


def test_tuple_results_are_copied_into_arrays_made_in_advance():
    """A tuple of tensors fills arrays invoke made with the last result's shapes; a new shape,
    or a tensor above the copy limit, is exported instead. Every field is a new array, also
    when a field is an argument; no later invocation writes into them."""
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    s = op.add(x, x)
    exe = build(ir.IRModule.from_expr(ir.Function([x], ir.Tuple([s, x, s, op.sum(x)]))))
    vm, python = VirtualMachine(exe), VirtualMachine(exe, tier="python")
    exports = []
    take = vm._native._take_result
    vm._native._take_result = lambda index: exports.append(index) or take(index)
    earlier, exported = [], []
    for n in (3, 3, 3, 0, 0, 6000, 6000, 2, 2):
        a = np.arange(n, dtype=np.float32)
        exported.append(len(exports))
        got, want = vm.invoke("main", a), python.invoke("main", a)
        assert [g.tobytes() for g in got] == [w.tobytes() for w in want]
        assert [g.shape for g in got] == [w.shape for w in want]
        assert not any(np.shares_memory(f, g) for f in (a, *earlier) for g in got)
        earlier += got
    exported = np.diff(exported + [len(exports)]).tolist()
    # exported: the first call (the general path takes the thread's stack bounds), each new
    # shape, zero extents (the general path) and the large results; copied: the repeated shapes
    assert exported == [1, 1, 0, 1, 1, 1, 1, 1, 0]


def test_results_are_new_arrays_the_caller_owns():
    vm = VirtualMachine(add_exe((4,)))
    a = np.ones(4, np.float32)
    first = vm.invoke("main", a, a)
    second = vm.invoke("main", a, a)
    assert first is not second and not np.shares_memory(first, second)
    first[:] = 0
    np.testing.assert_array_equal(second, 2)


def test_identity_returns_a_copy():
    x = ir.var("x", ir.TensorType((3,), "float32"))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], x))))
    a = np.arange(3, dtype=np.float32)
    out = vm.invoke("main", a)
    assert out is not a and not np.shares_memory(out, a)
    np.testing.assert_array_equal(out, a)


def test_limits_set_after_creation_apply_to_the_edge():
    vm = Counting(build(countdown_module(tail=False), native_loops=False))
    args = np.array(50, np.int64), np.array(0, np.int64)
    assert int(vm.invoke("loop", *args)) == 50 * 51 // 2
    full = vm.steps
    vm.max_steps = full - 1
    with pytest.raises(VMStepLimitError):
        vm.invoke("loop", *args)
    vm.max_steps = None
    vm.invoke("loop", *args)
    assert vm.steps == full
    vm.max_depth = 3
    with pytest.raises(VMRecursionError):
        vm.invoke("loop", *args)
    general = vm.general
    vm.max_depth = 100
    vm.invoke("loop", *args)
    assert vm.general == general and vm.steps == full


def test_a_failure_in_native_code_is_the_typed_error():
    exe = add_exe((ir.Any(),))
    with pytest.raises(ShapeError):
        VirtualMachine(exe).invoke("main", np.ones(3, np.float32), np.ones(4, np.float32))


def test_another_thread_gets_its_own_stack_bounds():
    """The edge runs only on the thread the context's stack limit was taken on: a call from
    another thread goes through the general path, which takes that thread's bounds."""
    vm = Counting(add_exe((2,)))
    a = np.ones(2, np.float32)
    vm.invoke("main", a, a)
    general = vm.general
    results = []
    worker = threading.Thread(target=lambda: results.append(vm.invoke("main", a, a)))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(results[0], 2)
    assert vm.general == general + 1
    vm.invoke("main", a, a)
    assert vm.general == general + 2
