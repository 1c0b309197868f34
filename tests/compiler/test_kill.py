"""KillRegister insertion: pooled blocks die right after their last use (lower peak memory,
same results), never inside a loop, never for returned values or the planned arena."""
import numpy as np
import pytest

import dynvm.compiler.codegen.module_compiler as module_compiler
from dynvm.compiler import build, ir, op
from dynvm.compiler.codegen.kill import insert_kills
from dynvm.vm import Instruction, VirtualMachine


def sort_then_concat_module():
    """sort(x) is big and dead after sum(); concat(x, x, x) and the add allocate after it."""
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    s = op.sum(op.sort(x))
    return ir.IRModule.from_expr(ir.Function([x], op.add(op.concatenate([x, x, x], axis=0), s)))


def peak_and_result(exe, x):
    vm = VirtualMachine(exe)
    vm.invoke("main", x)
    vm.reset_memory_stats()
    out = vm.invoke("main", x)
    return vm.memory_stats()["peak_bytes_live"], out


def test_killing_a_dead_intermediate_lowers_the_peak_and_keeps_the_result(monkeypatch):
    x = np.random.default_rng(0).integers(-100, 100, 100_000).astype(np.float32)  # exact sums
    with_kills = build(sort_then_concat_module())
    monkeypatch.setattr(module_compiler, "insert_kills", lambda code, num_params: code)
    without = build(sort_then_concat_module())
    assert any(i.name == "KillRegister" for i in with_kills.functions[0].instructions)
    assert not any(i.name == "KillRegister" for i in without.functions[0].instructions)
    peak_kill, out_kill = peak_and_result(with_kills, x)
    peak_keep, out_keep = peak_and_result(without, x)
    assert peak_kill <= peak_keep - x.nbytes          # the sorted copy is gone before the add
    np.testing.assert_array_equal(out_kill, out_keep)
    np.testing.assert_array_equal(out_kill, np.concatenate([x, x, x]) + x.sum())


def code(*rows):
    return [Instruction(name, *args) for name, *args in rows]


def test_the_whole_group_of_a_block_dies_together_after_its_last_use():
    before = code(("CallShapeFunc", 0, [0], [1]),
                  ("AllocStorageReg", 1, 64, "float32", 2),
                  ("AllocTensorReg", 2, 0, 1, "float32", 3),
                  ("CallKernel", 0, [0], [3]),
                  ("ReshapeTensor", 3, 1, 4),
                  ("CallKernel", 1, [4], [5]),          # last use of the block (via the view)
                  ("AllocStorageReg", 1, 64, "float32", 6),
                  ("AllocTensorReg", 6, 0, 1, "float32", 7),
                  ("CallKernel", 2, [5], [7]),
                  ("Ret", 7))
    after = insert_kills(before, 1)
    kills = [(pc, i.args[0]) for pc, i in enumerate(after) if i.name == "KillRegister"]
    assert [r for _, r in kills] == [2, 3, 4]
    assert all(after[pc - k - 1].name == "CallKernel" for k, (pc, _) in enumerate(kills))
    assert after[-1].name == "Ret" and after[-1].args == (7,)   # the result is never killed


def test_no_kill_when_nothing_is_allocated_afterwards_or_for_the_arena():
    tail = code(("AllocStorage", 128, 64, "float32", 1),     # the arena: two tensors in it
                ("AllocTensor", 1, 0, [4], "float32", 2),
                ("AllocTensor", 1, 64, [4], "float32", 3),
                ("CallKernel", 0, [0], [2]),
                ("CallKernel", 0, [2], [3]),
                ("AllocStorage", 16, 64, "float32", 4),
                ("AllocTensor", 4, 0, [4], "float32", 5),
                ("CallKernel", 0, [3], [5]),
                ("Ret", 5))
    assert insert_kills(tail, 1) == tail


def test_no_kill_inside_a_loop_and_jumps_stay_right():
    loop = code(("CallShapeFunc", 0, [0], [1]),                # pc 0: loop head
                ("AllocStorageReg", 1, 64, "float32", 2),
                ("AllocTensorReg", 2, 0, 1, "float32", 3),
                ("CallKernel", 0, [0], [3]),
                ("LoadConsti", 0, 4),
                ("If", 3, 4, 1, 3),                            # done? -> pc 8
                ("Move", 0, 3),
                ("Goto", -7),                                  # -> pc 0
                ("AllocStorage", 16, 64, "float32", 5),
                ("AllocTensor", 5, 0, [4], "float32", 6),
                ("Ret", 6))
    after = insert_kills(loop, 1)
    assert [i.name for i in after].count("KillRegister") == 0
    assert after == loop


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_results_with_and_without_kills_both_match_numpy(monkeypatch, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    with_kills = build(sort_then_concat_module())
    monkeypatch.setattr(module_compiler, "insert_kills", lambda code, num_params: code)
    without = build(sort_then_concat_module())
    want = np.concatenate([x, x, x]) + x.sum()
    for exe in (with_kills, without):
        np.testing.assert_allclose(VirtualMachine(exe).invoke("main", x), want, rtol=1e-5, atol=1e-4)
