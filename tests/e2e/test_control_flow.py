"""Loops as self tail calls (no frames), recursion limits, step limits."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import VMRecursionError, VMStepLimitError

I64 = ir.TensorType((), "int64")


def countdown_module(tail=True):
    """loop(n, acc) = n < 1 ? acc : loop(n - 1, acc + n)   (non-tail: n + loop(n - 1, acc))"""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    n, acc = ir.var("n", I64), ir.var("acc", I64)
    one = ir.const(1, "int64")
    if tail:
        step = ir.Call(loop, [op.subtract(n, one), op.add(acc, n)])
    else:
        step = op.add(n, ir.Call(loop, [op.subtract(n, one), acc]))
    mod["loop"] = ir.Function([n, acc], ir.If(op.less(n, one), acc, step), ret_type=I64)
    return mod


def test_self_tail_call_is_a_jump_and_runs_in_constant_frame_depth():
    exe = build(countdown_module(), native_loops=False)
    code = exe.functions[0].instructions
    assert not any(ins.name == "Invoke" for ins in code)
    assert any(ins.name == "Goto" and ins.args[0] < 0 for ins in code)
    vm = VirtualMachine(exe, max_depth=3)
    assert int(vm.invoke("loop", np.int64(20000), np.int64(0))) == 20000 * 20001 // 2


def test_non_tail_recursion_hits_the_depth_limit_with_a_typed_error():
    vm = VirtualMachine(build(countdown_module(tail=False)), max_depth=100)
    assert int(vm.invoke("loop", np.int64(50), np.int64(0))) == 50 * 51 // 2
    with pytest.raises(VMRecursionError, match="depth"):
        vm.invoke("loop", np.int64(10 ** 6), np.int64(0))


@pytest.mark.parametrize("native", [True, False])
def test_runaway_loop_hits_the_step_limit(native):
    vm = VirtualMachine(build(countdown_module(), native_loops=native), max_steps=10_000)
    with pytest.raises(VMStepLimitError, match="step"):
        vm.invoke("loop", np.int64(10 ** 9), np.int64(0))
    assert int(vm.invoke("loop", np.int64(10), np.int64(0))) == 55  # the VM is usable again


@pytest.mark.parametrize("native", [True, False])
def test_a_million_iterations_run_in_constant_frames_and_memory(native):
    """Issue 5: a loop of 10**6 iterations needs one frame and a constant amount of storage
    (as bytecode: the pool recycles the same blocks; native: one workspace for the whole loop)."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    n = ir.var("n", I64)
    one = ir.const(1, "int64")
    mod["loop"] = ir.Function([n], ir.If(op.less(n, one), n, ir.Call(loop, [op.subtract(n, one)])),
                              ret_type=I64)
    exe = build(mod, native_loops=native)
    assert any(ins.name == "CallLoop" for ins in exe.functions[0].instructions) == native
    vm = VirtualMachine(exe, max_depth=1)
    assert int(vm.invoke("loop", np.int64(10 ** 6))) == 0
    stats = vm.memory_stats()
    assert stats["peak_bytes_live"] <= 1024 and stats["allocations"] <= 8
    assert stats["pool_hits"] >= (0 if native else 10 ** 6)


def test_nested_loops_see_the_outer_functions_variables():
    """An inner while_loop whose condition and body use the enclosing function's parameters
    and the outer loop's variable (lifting passes them through the outer loop's function)."""
    n, step = ir.var("n", I64), ir.var("step", I64)
    one = ir.const(1, "int64")

    def outer_body(i, total):
        inner = ir.while_loop(lambda j, t: op.less(j, op.add(i, n)),
                              lambda j, t: [op.add(j, one), op.add(t, step)], [ir.const(0, "int64"), total])
        return [op.add(i, one), ir.TupleGetItem(inner, 1)]
    outer = ir.while_loop(lambda i, total: op.less(i, n), outer_body, [ir.const(0, "int64"), ir.const(0, "int64")])
    exe = build(ir.IRModule.from_expr(ir.Function([n, step], ir.TupleGetItem(outer, 1))))
    for tier in ("native", "python"):
        vm = VirtualMachine(exe, tier=tier)
        for count in (0, 1, 3):
            want = sum(i + count for i in range(count)) * 5
            assert int(vm.invoke("main", np.int64(count), np.int64(5))) == want
