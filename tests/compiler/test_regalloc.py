"""Register allocation reuses registers of dead values and keeps programs correct."""
import numpy as np

from dynvm.compiler import build, ir, op
from dynvm.compiler.codegen.regalloc import allocate_registers, live_intervals
from dynvm.vm import Instruction, VirtualMachine


def test_chain_of_ops_needs_few_registers():
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    y = x
    for _ in range(20):
        y = op.tanh(op.add(y, x))
    exe = build(ir.IRModule.from_expr(ir.Function([x], y)))
    assert exe.functions[0].register_count <= 8
    data = np.linspace(-1, 1, 11, dtype=np.float32)
    expected = data.astype(np.float64)
    for _ in range(20):
        expected = np.tanh(expected + data)
    np.testing.assert_allclose(VirtualMachine(exe).invoke("main", data), expected, rtol=1e-5)


def test_values_live_across_a_loop_keep_their_register():
    code = [Instruction("LoadConsti", 5, 1),        # r1 live around the loop
            Instruction("LoadConsti", 0, 2),        # loop head: r2 temp
            Instruction("Move", 3, 2),
            Instruction("If", 3, 1, 1, -2),         # backward jump to pc 1
            Instruction("Ret", 1)]
    start, end = live_intervals(code, 1)
    assert start[1] <= 1 and end[1] >= 4
    new_code, count = allocate_registers(code, 1)
    regs = {ins.args[-1] for ins in new_code[:2]}
    assert len(regs) == 2  # r1 and r2 never share a register


def test_parameters_keep_their_registers():
    code = [Instruction("Move", 2, 1), Instruction("Ret", 2)]
    new_code, count = allocate_registers(code, 2)
    assert new_code[0].args[1] == 1 and count == 2
