"""The native tier against the Python tier: same results bit for bit, same errors, same step
counts; what runs natively and why the rest does not; who owns returned memory."""
import gc
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.compiler import build, ir, op
from dynvm.vm import Executable, VirtualMachine
from dynvm.vm.errors import DynVMError, PerformanceWarning, ShapeError, VMRecursionError, VMStepLimitError
from tests.e2e.test_control_flow import countdown_module
from tests.strategies import examples, layouts, program_inputs, random_program

STATIC_ROWS = 5


class NativeVM(VirtualMachine):
    """A native-tier VM that fails a test when an invocation had to re-run in the Python tier."""

    def invoke(self, name, *args):
        try:
            return super().invoke(name, *args)
        finally:
            assert self._native.fallbacks == 0, "the native tier deferred to the Python tier"


def both_tiers(exe, **options):
    native = NativeVM(exe, **options)
    assert native._native is not None, exe.explain()
    return native, VirtualMachine(exe, tier="python", **options)


def assert_same(a, b):
    """Bit for bit (the native VM must also have run natively: no Python-tier re-runs)."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()       # bit for bit, NaNs included


@settings(max_examples=examples(25), deadline=None)
@given(program=random_program(rows=STATIC_ROWS), layout=layouts(), seed=st.integers(0, 3))
def test_random_static_programs_agree_bit_for_bit(program, layout, seed):
    func, _ = program
    native, python = both_tiers(build(ir.IRModule.from_expr(func)))
    x, y = program_inputs(STATIC_ROWS, layout, seed)
    assert_same(native.invoke("main", x, y), python.invoke("main", x, y))
    assert native.steps == python.steps


@settings(max_examples=examples(20), deadline=None)
@given(program=random_program(), rows=st.integers(0, 9), layout=layouts(), seed=st.integers(0, 3))
def test_random_dynamic_programs_agree_bit_for_bit(program, rows, layout, seed):
    """Any dims: the native shape functions size every tensor as the Python ones do."""
    func, _ = program
    native, python = both_tiers(build(ir.IRModule.from_expr(func)))
    x, y = program_inputs(rows, layout, seed)
    assert_same(native.invoke("main", x, y), python.invoke("main", x, y))
    assert native.steps == python.steps


def test_dynamic_shape_errors_are_the_python_tiers():
    """A broadcast failure in a native shape function: the same ShapeError as the Python tier."""
    a = ir.var("a", ir.TensorType((ir.Any(),), "float32"))
    b = ir.var("b", ir.TensorType((ir.Any(),), "float32"))
    native, python = both_tiers(build(ir.IRModule.from_expr(ir.Function([a, b], op.add(a, b)))))
    args = np.ones(3, np.float32), np.ones(4, np.float32)
    with pytest.raises(ShapeError) as from_native:
        native.invoke("main", *args)
    with pytest.raises(ShapeError) as from_python:
        python.invoke("main", *args)
    assert str(from_native.value) == str(from_python.value)


def test_models_with_loops_and_dynamic_shapes_run_natively():
    """The LSTM (a loop kernel inside a while loop over Any steps) and the arange model."""
    from dynvm.models import arange_model, lstm
    for model, sizes in ((lstm, (1, 5)), (arange_model, (0, 1, 17))):
        exe = build(model.build_module())
        assert all(line.endswith(": native") for line in exe.explain().splitlines()), exe.explain()
        native, python = both_tiers(exe)
        for n in sizes:
            x = model.make_input(n)
            assert_same(native.invoke("main", x), python.invoke("main", x))
            assert native.steps == python.steps


@pytest.mark.parametrize("tail", [True, False])
def test_loops_and_recursion_agree_with_equal_step_counts(tail):
    native, python = both_tiers(build(countdown_module(tail), native_loops=False))
    for n in (0, 1, 7, 300):
        args = np.int64(n), np.int64(0)
        assert_same(native.invoke("loop", *args), python.invoke("loop", *args))
        assert native.steps == python.steps > 0


def error_of(vm, *args):
    with pytest.raises(Exception) as info:
        vm.invoke("loop", *args)
    return type(info.value), str(info.value)


def test_step_limit_is_the_same_error_at_the_same_budget():
    native, python = both_tiers(build(countdown_module(), native_loops=False), max_steps=1000)
    args = np.int64(10 ** 9), np.int64(0)
    assert error_of(native, *args) == error_of(python, *args)
    assert error_of(native, *args)[0] is VMStepLimitError
    assert int(native.invoke("loop", np.int64(10), np.int64(0))) == 55     # usable again


def test_depth_limit_is_the_same_error():
    native, python = both_tiers(build(countdown_module(tail=False), native_loops=False),
                                max_depth=50)
    args = np.int64(100), np.int64(0)
    assert error_of(native, *args) == error_of(python, *args)
    assert error_of(native, *args)[0] is VMRecursionError


def test_recursion_deeper_than_the_native_stack_runs_in_the_python_tier():
    """A thread with a small stack: the native frames run out long before max_depth; the
    invocation is re-run in the Python tier (heap frames) and still answers."""
    exe = build(countdown_module(tail=False), native_loops=False)
    results = []

    def run():
        vm = VirtualMachine(exe, max_depth=10 ** 5)
        results.append(int(vm.invoke("loop", np.int64(20000), np.int64(0))))
        results.append(vm._native.fallbacks)

    old = threading.stack_size(1 << 20)
    try:
        with pytest.warns(PerformanceWarning, match="native stack"):
            t = threading.Thread(target=run)
            t.start()
            t.join()
    finally:
        threading.stack_size(old)
    assert results == [20000 * 20001 // 2, 1]


def test_storage_aligned_beyond_the_native_blocks_stays_in_the_python_tier():
    """Native blocks are 64-byte aligned: an AllocStorageReg asking for more is not native."""
    exe = aligned_storage_program()
    assert "alignment 128 is above 64" in exe.explain()
    a = np.ones(5, np.float32)
    assert_same(VirtualMachine(exe).invoke("main", a),
                VirtualMachine(exe, tier="python").invoke("main", a))


def list_program():
    """The shape of a list's head: a match's field has no static kind (its rank is known only
    at run time, from its type word)."""
    from dynvm.compiler import prelude
    return build(prelude.parse("""def @main(%xs: List[Tensor[(?), float32]]) -> Tensor[(1), int64] {
      match? (%xs) { Cons(%h, _) => shape_of(%h) } }"""))


def aligned_storage_program():
    """exp of a vector whose AllocStorageReg asks for 128-byte alignment (native blocks have 64)."""
    from dynvm.vm.bytecode import Instruction
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    exe = build(ir.IRModule.from_expr(ir.Function([x], op.exp(x))))
    code = exe.functions[0].instructions
    pc = next(i for i, ins in enumerate(code) if ins.name == "AllocStorageReg")
    shape, _, dtype, dst = code[pc].args
    code[pc] = Instruction(code[pc].op, shape, 128, dtype, dst)
    return Executable.from_bytes(exe.to_bytes())     # a fresh executable of the edited code


def test_explain_names_the_native_functions_and_why_others_are_not():
    assert build(countdown_module(), native_loops=False).explain() == "loop: native"
    text = list_program().explain()
    assert "main: native" in text and "map: native" in text
    assert "main: Python tier (pc 1 (AllocStorageReg): alignment 128 is above 64)" in aligned_storage_program().explain()


def test_the_shape_of_a_match_field_is_native():
    """ShapeOf reads the rank from the field's type word; a field that is not a tensor (the
    list's type variable is not checked at invoke) fails as in the Python tier."""
    from dynvm.vm.convert import to_list
    native, python = both_tiers(list_program())
    for items in ([np.zeros(2, np.float32)] * 3, [np.zeros(7, np.float32)], [np.zeros((), np.float32)]):
        assert_same(native.invoke("main", to_list(items)), python.invoke("main", to_list(items)))
    bad = to_list([(np.zeros(2, np.float32),)])
    with pytest.raises(DynVMError) as from_python:
        python.invoke("main", bad)
    with pytest.raises(type(from_python.value), match=re.escape(str(from_python.value))):
        VirtualMachine(list_program()).invoke("main", bad)


def test_results_belong_to_the_caller():
    """Small results are copies, large ones wrap their native block; neither aliases an
    argument or another result, and both outlive the VM and the executable."""
    n = 4096
    x = ir.var("x", ir.TensorType((n,), "float32"))
    exe = build(ir.IRModule.from_expr(ir.Function([x], ir.Tuple([op.exp(x), x]))))
    vm = VirtualMachine(exe)
    a = np.linspace(0, 1, n, dtype=np.float32)
    first, echoed = vm.invoke("main", a)
    second, _ = vm.invoke("main", a)
    assert not np.shares_memory(first, second) and not np.shares_memory(echoed, a)
    assert first.flags.writeable and echoed.flags.writeable
    expected = VirtualMachine(exe, tier="python").invoke("main", a)[0]
    first[:] = 0
    assert_same(second, expected)
    del vm, exe
    gc.collect()
    assert_same(second, expected)


def test_a_saved_file_runs_natively_after_load(tmp_path):
    path = str(tmp_path / "loop.dvm")
    build(countdown_module(), native_loops=False).save(path)
    vm = VirtualMachine(Executable.load(path))
    assert vm._native is not None
    assert int(vm.invoke("loop", np.int64(100), np.int64(0))) == 5050


def test_profiling_runs_in_the_python_tier():
    vm = VirtualMachine(build(countdown_module(), native_loops=False), profile=True)
    assert vm._native is None
    assert int(vm.invoke("loop", np.int64(10), np.int64(0))) == 55


def test_unknown_tier_is_a_clear_error():
    with pytest.raises(ValueError, match="tier"):
        VirtualMachine(build(countdown_module()), tier="fast")


def test_a_cached_program_loads_without_translating(monkeypatch, tmp_path):
    """The object cache is asked before translating, under a key made of everything the IR
    depends on: an equal program reuses the object code, a different one is translated."""
    from dynvm.vm import native
    monkeypatch.setenv("DYNVM_CACHE_DIR", str(tmp_path))

    def program(ops):
        x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
        return build(ir.IRModule.from_expr(ir.Function([x], ops(x, x))))

    def translating(self, index):
        raise AssertionError(f"translated function {index}")

    a = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(VirtualMachine(program(op.add)).invoke("main", a), a + a)
    monkeypatch.setattr(native.ModuleTranslator, "translate", translating)
    np.testing.assert_array_equal(VirtualMachine(program(op.add)).invoke("main", a), a + a)
    with pytest.raises(AssertionError, match="translated function 0"):
        VirtualMachine(program(op.multiply))


CROSS_TIER = """
def @double(%x: Tensor[(2), float32]) -> Tensor[(2), float32] { add(%x, %x) }
def @quadruple(%x: Tensor[(2), float32]) -> Tensor[(2), float32] { @double(@double(%x)) }
def @sum_doubled(%acc: Tensor[(2), float32], %l: List[Tensor[(2), float32]]) -> Tensor[(2), float32] {
  match (%l) {
    Cons(%h, %t) => if (equal(take(shape_of(%h), 0i64), 2i64)) {
      @sum_doubled(add(%acc, @quadruple(%h)), %t)
    } else { %acc },
    Nil => %acc,
  }
}
def @main(%acc: Tensor[(2), float32], %xs: List[Tensor[(2), float32]]) -> Tensor[(2), float32] {
  @sum_doubled(%acc, %xs)
}
"""


def cross_tier_program():
    """A list walk (Python tier: its storage asks for 128-byte alignment, above the native
    blocks') calling a tensor function (native, itself calling another) once per element."""
    from dynvm.compiler import prelude
    from dynvm.vm.bytecode import Instruction
    exe = build(prelude.parse(CROSS_TIER))
    code = next(f for f in exe.functions if f.name == "sum_doubled").instructions
    pc = next(i for i, ins in enumerate(code) if ins.name.startswith("AllocStorage"))
    size, _, dtype, dst = code[pc].args
    code[pc] = Instruction(code[pc].op, size, 128, dtype, dst)
    exe = Executable.from_bytes(exe.to_bytes())     # a fresh executable of the edited code
    assert "quadruple: native" in exe.explain() and "sum_doubled: Python tier" in exe.explain()
    return exe


def test_python_tier_functions_call_native_ones_natively():
    from dynvm.vm.convert import to_list
    native, python = both_tiers(cross_tier_program())
    calls = []
    run = native._native.run
    native._native.run = lambda *a: calls.append(a[0]) or run(*a)
    args = np.ones(2, np.float32), to_list([np.full(2, i, np.float32) for i in range(5)])
    assert_same(native.invoke("main", *args), python.invoke("main", *args))
    assert native.steps == python.steps
    assert len(calls) == 5


def test_limits_across_tiers_are_the_python_tiers_errors():
    """Every step budget below the program's count fails at the same instruction with the same
    message in both tiers, wherever the budget runs out (in the native callee or around it);
    and a depth limit counts the Python frames below a native call."""
    from dynvm.vm.convert import to_list
    exe = cross_tier_program()
    args = np.ones(2, np.float32), to_list([np.full(2, i, np.float32) for i in range(3)])
    full = VirtualMachine(exe, tier="python")
    full.invoke("main", *args)
    for budget in range(0, full.steps + 1):
        outcomes = []
        for vm in both_tiers(exe, max_steps=budget):
            try:
                outcomes.append(("ok", vm.invoke("main", *args).tobytes(), vm.steps))
            except VMStepLimitError as e:
                outcomes.append(("error", str(e)))
        assert outcomes[0] == outcomes[1], budget
    outcomes = {depth: [error_or_value(vm, args) for vm in both_tiers(exe, max_depth=depth)]
                for depth in (2, 3, 4, 5)}
    assert all(native == python for native, python in outcomes.values()), outcomes
    assert "calling 'double' [in quadruple" in outcomes[3][0]     # inside the native callee
    assert isinstance(outcomes[4][0], bytes)


def error_or_value(vm, args):
    try:
        return vm.invoke("main", *args).tobytes()
    except VMRecursionError as e:
        return str(e)
