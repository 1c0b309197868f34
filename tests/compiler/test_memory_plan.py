"""Static memory planning: one arena per function, reuse only between tensors that are never
live together, identical results with and without planning."""
import numpy as np
import pytest
from hypothesis import given, settings

from compiler import build, ir, op
from compiler.codegen.memory_plan import _assign_offsets, Block
from compiler.codegen.relink import relink
from vm import Instruction, VirtualMachine

from tests.e2e.test_roundtrip import random_program


def chain_module(n_ops=12, rows=64):
    """A chain of static-shape ops where each intermediate feeds the next (and x feeds all)."""
    x = ir.var("x", ir.TensorType((rows, 32), "float32"))
    y = x
    for i in range(n_ops):
        y = op.sum(op.expand_dims(op.add(y, x), 0), axis=[0]) if i % 3 == 2 else op.tanh(op.add(y, x))
    return ir.IRModule.from_expr(ir.Function([x], y))


def static_storage_bytes(exe):
    return sum(ins.args[0] for f in exe.functions for ins in f.instructions
               if ins.name == "AllocStorage")


def test_planning_reduces_static_storage_of_a_chain_by_more_than_30_percent():
    mod = chain_module()
    planned, unplanned = build(mod, fuse=False), build(mod, fuse=False, memory_plan=False)
    assert static_storage_bytes(planned) <= 0.7 * static_storage_bytes(unplanned)
    data = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    np.testing.assert_array_equal(VirtualMachine(planned).invoke("main", data),
                                  VirtualMachine(unplanned).invoke("main", data))


def test_live_tensors_never_share_bytes():
    blocks = [Block(0, 1, 256, 0, 10), Block(2, 3, 128, 2, 5), Block(4, 5, 128, 6, 9),
              Block(6, 7, 64, 4, 8)]
    size = _assign_offsets(blocks)
    for a in blocks:
        for b in blocks:
            if a is b or a.end < b.start or b.end < a.start:
                continue
            assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
            assert a.offset % 64 == 0
    assert size < sum(b.size for b in blocks)  # something was reused


def test_values_kept_alive_by_the_result_are_not_overwritten():
    """Intermediates that end up in the returned tuple escape: they must keep their bytes."""
    x = ir.var("x", ir.TensorType((8,), "float32"))
    a = op.exp(x)
    b = op.tanh(op.negative(a))
    c = op.sigmoid(op.sum(op.expand_dims(b, 0), axis=[0]))
    mod = ir.IRModule.from_expr(ir.Function([x], ir.Tuple([a, op.relu(c), b])))
    data = np.linspace(-2, 2, 8, dtype=np.float32)
    got = VirtualMachine(build(mod, fuse=False)).invoke("main", data)
    ea = np.exp(data)
    eb = np.tanh(-ea)
    np.testing.assert_allclose(got[0], ea, rtol=1e-6)
    np.testing.assert_allclose(got[1], np.maximum(1 / (1 + np.exp(-eb)), 0), rtol=1e-6)
    np.testing.assert_allclose(got[2], eb, rtol=1e-6)


def test_relink_keeps_jumps_pointing_at_the_same_instructions():
    code = [(0, Instruction("LoadConsti", 1, 0)),
            (1, Instruction("If", 0, 0, 1, 3)),      # else -> old pc 4
            (None, Instruction("LoadConsti", 7, 1)),  # inserted
            (2, Instruction("Goto", 3)),              # -> old pc 5
            (4, Instruction("Move", 1, 0)),           # old pc 3 was dropped
            (5, Instruction("Ret", 1))]
    out = relink(code)
    assert out[1].args[3] == 3   # If at new pc 1 -> new pc 4 (old 4)
    assert out[3].args[0] == 2   # Goto at new pc 3 -> new pc 5 (old 5)


@pytest.mark.parametrize("flag", [True, False])
def test_planned_program_inside_a_branch(flag):
    x = ir.var("x", ir.TensorType((16,), "float32"))
    c = ir.var("c", ir.TensorType((), "bool"))
    then = op.tanh(op.sum(op.expand_dims(op.exp(op.negative(x)), 0), axis=[0]))
    other = op.relu(op.sum(op.expand_dims(op.sigmoid(x), 0), axis=[0]))
    mod = ir.IRModule.from_expr(ir.Function([c, x], op.add(ir.If(c, then, other), x)))
    data = np.linspace(-1, 1, 16, dtype=np.float32)
    expected = (np.tanh(np.exp(-data)) if flag else np.maximum(1 / (1 + np.exp(-data)), 0)) + data
    got = VirtualMachine(build(mod, fuse=False)).invoke("main", np.bool_(flag), data)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(program=random_program())
def test_planned_equals_unplanned_on_random_static_programs(program):
    func, _ = program
    x, y = func.params
    x.type_annotation = ir.TensorType((6, 3), "float32")   # static: everything is plannable
    mod = ir.IRModule.from_expr(func)
    rng = np.random.default_rng(1)
    args = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    planned = VirtualMachine(build(mod, fuse=False)).invoke("main", *args)[0]
    unplanned = VirtualMachine(build(mod, fuse=False, memory_plan=False)).invoke("main", *args)[0]
    np.testing.assert_array_equal(planned, unplanned)
