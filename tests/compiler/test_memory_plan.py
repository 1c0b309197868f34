"""Static memory planning: one arena per function, reuse only between tensors that are never
live together, identical results with and without planning."""
import numpy as np
import pytest
from hypothesis import given, settings

from dynvm.compiler import build, ir, op
from dynvm.compiler.codegen import memory_plan
from dynvm.compiler.codegen.memory_plan import _assign_offsets, Block
from dynvm.compiler.codegen.relink import relink
from dynvm.vm import Instruction, VirtualMachine

from tests.strategies import evaluate, examples, layouts, pin_programs, program_inputs, random_program


def chain_module(n_ops=12, rows=64):
    """A chain of static-shape ops where each intermediate feeds the next (and x feeds all)."""
    x = ir.var("x", ir.TensorType((rows, 32), "float32"))
    y = x
    for i in range(n_ops):
        y = op.sum(op.expand_dims(op.add(y, x), 0), axis=[0]) if i % 3 == 2 else op.tanh(op.add(y, x))
    return ir.IRModule.from_expr(ir.Function([x], y))


def chain_reference(x, n_ops=12):
    """chain_module in numpy (float64, compared with a float32 tolerance)."""
    x = x.astype(np.float64)
    y = x
    for i in range(n_ops):
        y = y + x if i % 3 == 2 else np.tanh(y + x)
    return y


def assert_chain(got, x, n_ops=12):
    np.testing.assert_allclose(got, chain_reference(x, n_ops), rtol=1e-5, atol=1e-5)


def static_storage_bytes(exe):
    return sum(ins.args[0] for f in exe.functions for ins in f.instructions
               if ins.name == "AllocStorage")


def test_planning_reduces_static_storage_of_a_chain_by_more_than_30_percent():
    mod = chain_module()
    planned, unplanned = build(mod, fuse=False), build(mod, fuse=False, memory_plan=False)
    assert static_storage_bytes(planned) <= 0.7 * static_storage_bytes(unplanned)
    data = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    assert_chain(VirtualMachine(planned).invoke("main", data), data)
    assert_chain(VirtualMachine(unplanned).invoke("main", data), data)


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


@pin_programs(static_rows=6)
@settings(max_examples=examples(8))
@given(program=random_program(rows=6), layout=layouts())
def test_planned_and_unplanned_both_match_numpy_on_random_static_programs(program, layout):
    """x: (6, 3) is static, so everything is plannable."""
    func, reference = program
    mod = ir.IRModule.from_expr(func)
    x, y = program_inputs(6, layout, seed=1)
    for exe in (build(mod, fuse=False), build(mod, fuse=False, memory_plan=False)):
        got = VirtualMachine(exe).invoke("main", x, y)
        np.testing.assert_allclose(got[0], evaluate(reference, x, y), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got[1], x)


def _peak_bytes(exe, data):
    vm = VirtualMachine(exe)
    vm.invoke("main", data)
    vm.reset_memory_stats()
    result = vm.invoke("main", data)
    return vm.memory_stats()["peak_bytes_live"], result


def test_the_result_takes_a_dead_slot_of_the_arena_when_it_is_the_last_block():
    """A chain needs two tensors live at a time: with the result in the arena that is the whole
    peak (before, the arena of two slots plus the result's own block made it 3 tensors)."""
    mod = chain_module()
    planned = build(mod, fuse=False)
    assert [i.name for i in planned.functions[0].instructions].count("AllocStorage") == 1
    data = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    peak, got = _peak_bytes(planned, data)
    assert peak <= 2 * 64 * 32 * 4
    unplanned_peak, unplanned_got = _peak_bytes(build(mod, fuse=False, memory_plan=False), data)
    assert peak <= unplanned_peak
    assert_chain(got, data)
    assert_chain(unplanned_got, data)


def test_a_returned_arena_tensor_is_not_overwritten_by_the_next_invocation():
    mod = chain_module()
    vm = VirtualMachine(build(mod, fuse=False))
    rng = np.random.default_rng(3)
    d1, d2 = (rng.standard_normal((64, 32)).astype(np.float32) for _ in range(2))
    r1 = vm.invoke("main", d1)
    kept = r1.copy()
    r2 = vm.invoke("main", d2)
    np.testing.assert_array_equal(r1, kept)
    assert_chain(r1, d1)
    assert_chain(r2, d2)


def _record_plans(monkeypatch):
    plans = []
    original = memory_plan._assign_offsets

    def recording(blocks):
        size = original(blocks)
        plans.append((list(blocks), size))
        return size

    monkeypatch.setattr(memory_plan, "_assign_offsets", recording)
    return plans


def _assert_no_live_overlap(plans):
    for blocks, size in plans:
        for a in blocks:
            assert 0 <= a.offset and a.offset + a.size <= size and a.offset % 64 == 0
            for b in blocks:
                if a is b or a.end < b.start or b.end < a.start:
                    continue
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)


def test_overlap_check_catches_two_live_tensors_sharing_bytes():
    with pytest.raises(AssertionError):
        _assert_no_live_overlap([([Block(0, 1, 128, 0, 5, offset=0),
                                   Block(2, 3, 128, 3, 8, offset=64)], 192)])


def test_compiled_plans_never_share_bytes_between_live_tensors(monkeypatch):
    plans = _record_plans(monkeypatch)
    for n in (3, 12, 24):
        build(chain_module(n), fuse=False)
    assert any(any(b.returned for b in blocks) for blocks, _ in plans)
    _assert_no_live_overlap(plans)


@pytest.mark.parametrize("n_ops", [1, 2, 10, 24])
def test_planning_is_never_worse_than_the_pooled_baseline(n_ops):
    mod = chain_module(n_ops)
    data = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    on, got = _peak_bytes(build(mod, fuse=False), data)
    off, unplanned_got = _peak_bytes(build(mod, fuse=False, memory_plan=False), data)
    assert on <= off
    assert_chain(got, data, n_ops)
    assert_chain(unplanned_got, data, n_ops)


@pin_programs(static_rows=6)
@settings(max_examples=examples(8))
@given(program=random_program(rows=6), layout=layouts())
def test_random_plans_returning_one_tensor_match_numpy_and_never_alias(program, layout):
    """Random static programs returning a single tensor (so the result may join the arena)."""
    func, reference = program
    x, y = func.params
    body = func.body.fields[0]
    mod = ir.IRModule.from_expr(ir.Function([x, y], op.tanh(body)))
    args = program_inputs(6, layout, seed=1)
    expected = np.tanh(evaluate(reference, *args))
    with pytest.MonkeyPatch.context() as patch:
        plans = _record_plans(patch)
        planned = VirtualMachine(build(mod, fuse=False)).invoke("main", *args)
    unplanned = VirtualMachine(build(mod, fuse=False, memory_plan=False)).invoke("main", *args)
    np.testing.assert_allclose(planned, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(unplanned, expected, rtol=1e-4, atol=1e-5)
    _assert_no_live_overlap(plans)
