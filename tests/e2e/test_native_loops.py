"""Native loops (compiler/codegen/native_loop.py, kernels/loop.py): a while_loop of straight-line
kernel calls runs as one CallLoop; it and the bytecode loop both match a numpy loop, and each
other exactly."""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynvm.compiler import build, ir, op
from dynvm.vm import Executable, Instruction, VirtualMachine
from dynvm.vm.dtypes import np_dtype
from dynvm.vm.errors import DynVMError, ExecutableFormatError, VMStepLimitError

from tests.e2e.test_control_flow import countdown_module
from tests.strategies import examples, laid_out, layouts

I64 = ir.TensorType((), "int64")
SHAPES = [(0,), (1,), (3,), (17,), (2, 5), (1, 1), (4, 0)]


def opcodes(exe, name):
    return [ins.name for ins in exe.functions[exe.function_index(name)].instructions]


def loop_module(shape, swap=False, reshape=False, constant=True):
    """main(x: (?, *shape), n) runs `n` steps of
        a, b := tanh(a * 0.5 + x[t]) (+ c), a - b      (or, with swap, b and a swapped)
    over a state (t, a, b) and returns (t, a, b)."""
    x = ir.var("x", ir.TensorType((ir.Any(),) + shape, "float32"))
    n = ir.var("n", I64)
    c = ir.const(np.linspace(-1, 1, int(np.prod(shape))).reshape(shape).astype(np.float32))

    def step(t, a, b):
        row = op.take(x, t, axis=0)
        if reshape:
            row = op.reshape(op.reshape(row, (-1,)), shape)
        new_a = op.tanh(op.add(op.multiply(a, ir.const(0.5, "float32")), row))
        if constant:
            new_a = op.add(new_a, c)
        new_b = op.subtract(a, b)
        if swap:       # a swap, through views of the state with `reshape`
            new_a, new_b = b, op.reshape(op.reshape(a, (-1,)), shape) if reshape else a
        return [op.add(t, ir.const(1, "int64")), new_a, new_b]

    zeros = op.zeros(shape, dtype="float32")
    ones = op.ones(shape, dtype="float32")
    loop = ir.while_loop(lambda t, a, b: op.less(t, n), step, [ir.const(0, "int64"), zeros, ones])
    return ir.IRModule.from_expr(ir.Function([x, n], loop))


def loop_reference(x, n, shape, swap=False, constant=True):
    """loop_module's loop in numpy (float32): (t, a, b) after n steps."""
    c = np.linspace(-1, 1, int(np.prod(shape))).reshape(shape).astype(np.float32)
    a, b = np.zeros(shape, np.float32), np.ones(shape, np.float32)
    for t in range(n):
        new_a = np.tanh(a * np.float32(0.5) + x[t]) + (c if constant else np.float32(0))
        a, b = (b, a) if swap else (new_a, a - b)
    return n, a, b


def assert_matches_reference(got, want):
    assert int(got[0]) == want[0]
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def both(mod):
    return build(mod), build(mod, native_loops=False)


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@example(shape=(17,), swap=False, reshape=False, constant=True, rows=3, seed=0, layout="step")
@example(shape=(2, 5), swap=False, reshape=True, constant=True, rows=3, seed=0, layout="reversed")
@example(shape=(3,), swap=True, reshape=False, constant=False, rows=4, seed=0, layout="broadcast")
@example(shape=(0,), swap=False, reshape=False, constant=True, rows=2, seed=0, layout="c")
@example(shape=(1,), swap=False, reshape=True, constant=True, rows=1, seed=0, layout="c")
@settings(max_examples=examples(4))
@given(shape=st.sampled_from(SHAPES), swap=st.booleans(), reshape=st.booleans(),
       constant=st.booleans(), rows=st.integers(0, 6), seed=st.integers(0, 2 ** 16),
       layout=layouts())
def test_native_and_bytecode_loops_match_numpy(shape, swap, reshape, constant, rows, seed, layout):
    reshape = reshape and 0 not in shape     # a 0 in a newshape means "copy that input dim"
    native, bytecode = both(loop_module(shape, swap, reshape, constant=constant))
    assert "CallLoop" in opcodes(native, "main_while_loop0")
    assert "CallLoop" not in opcodes(bytecode, "main_while_loop0")
    rng = np.random.default_rng(seed)
    x = laid_out(rng.standard_normal((max(rows, 1),) + shape).astype(np.float32), layout)
    for n in (0, 1, rows):
        got = VirtualMachine(native).invoke("main", x, np.int64(n))
        want = VirtualMachine(bytecode).invoke("main", x, np.int64(n))
        assert_matches_reference(got, loop_reference(x, n, shape, swap, constant))
        assert_same(got, want)


def test_non_contiguous_arguments_are_copied_in_and_results_are_fresh_arrays():
    native, bytecode = both(loop_module((3,)))
    x = np.arange(24, dtype=np.float32).reshape(8, 3)[::2]     # strided rows
    vm = VirtualMachine(native)
    first = vm.invoke("main", x, np.int64(4))
    second = vm.invoke("main", x, np.int64(2))
    assert_matches_reference(first, loop_reference(x, 4, (3,)))
    assert_matches_reference(second, loop_reference(x, 2, (3,)))
    assert_same(first, VirtualMachine(bytecode).invoke("main", x, np.int64(4)))
    assert not np.shares_memory(first[1], second[1])


def test_a_loop_that_exits_from_the_then_branch_is_native_too():
    """loop(n, acc) = n < 1 ? acc : loop(n - 1, acc + n): the self call is in the else branch."""
    exe = build(countdown_module())
    assert opcodes(exe, "loop").count("CallLoop") == 1
    vm = VirtualMachine(exe)
    for count in (0, 1, 10, 1000):
        assert int(vm.invoke("loop", np.int64(count), np.int64(0))) == count * (count + 1) // 2


def test_the_lstm_example_runs_as_one_native_loop_and_matches_numpy():
    from dynvm.models import lstm

    w = lstm.weights()
    exe = build(lstm.build_module(w))
    assert opcodes(exe, "main_while_loop0").count("CallLoop") == 1
    vm = VirtualMachine(exe, profile=True)
    for steps in (0, 1, 7):
        x = lstm.make_input(steps)
        np.testing.assert_allclose(vm.invoke("main", x), lstm.reference(x, w), rtol=1e-5, atol=1e-5)
    profile = vm.profile()
    assert profile.loop_iterations["loop_main_while_loop0"] == 0 + 1 + 7
    assert profile.opcodes["CallLoop"] == 3


def test_loops_with_control_flow_or_data_dependent_shapes_stay_in_bytecode():
    """A loop whose body has an if, or an op whose output shape depends on values, is not native
    and still runs."""
    x = ir.var("x", ir.TensorType((3,), "float32"))

    def body(t, a):
        stop = op.cast(op.add(t, ir.const(1, "int64")), "float32")
        grown = op.add(a, op.sum(op.arange(ir.const(0.0, "float32"), stop, ir.const(1.0, "float32"))))
        return [op.add(t, ir.const(1, "int64")),
                ir.If(op.less(t, ir.const(2, "int64")), grown, op.negative(a))]
    loop = ir.while_loop(lambda t, a: op.less(t, ir.const(4, "int64")), body, [ir.const(0, "int64"), x])
    exe = build(ir.IRModule.from_expr(ir.Function([x], ir.TupleGetItem(loop, 1))))
    assert "CallLoop" not in opcodes(exe, "main_while_loop0")
    # a = 1 -> t=0: a + 0 -> t=1: a + (0 + 1) -> t=2: -a -> t=3: -a
    np.testing.assert_allclose(VirtualMachine(exe).invoke("main", np.ones(3, np.float32)), 2 * np.ones(3))


def test_a_failing_inner_kernel_names_the_loop_and_the_kernel():
    native, _ = both(loop_module((3,)))
    empty = np.zeros((0, 3), np.float32)        # take from an axis of length 0
    vm = VirtualMachine(native)
    with pytest.raises(DynVMError, match="native loop loop_main_while_loop0, iteration 0: kernel take"):
        vm.invoke("main", empty, np.int64(1))
    assert int(vm.invoke("main", empty, np.int64(0))[0]) == 0      # no iteration: no take


def test_the_step_budget_counts_instructions_and_leaves_the_vm_usable():
    native, bytecode = both(loop_module((2,)))
    x = np.ones((4, 2), np.float32)
    counter = VirtualMachine(bytecode)
    counter.invoke("main", x, np.int64(50))
    vm = VirtualMachine(native, max_steps=counter.steps)
    assert int(vm.invoke("main", x, np.int64(50))[0]) == 50
    assert vm.steps == counter.steps
    with pytest.raises(VMStepLimitError, match="native loop"):
        vm.invoke("main", x, np.int64(10 ** 9))
    assert int(vm.invoke("main", x, np.int64(3))[0]) == 3


def test_native_loops_survive_save_and_load(tmp_path):
    native, _ = both(loop_module((2, 5), swap=True))
    path = tmp_path / "loop.dynvm"
    native.save(path)
    x = np.random.default_rng(0).standard_normal((3, 2, 5)).astype(np.float32)
    got = VirtualMachine(Executable.load(path)).invoke("main", x, np.int64(3))
    assert_matches_reference(got, loop_reference(x, 3, (2, 5), swap=True))
    assert_same(got, VirtualMachine(native).invoke("main", x, np.int64(3)))


def test_the_verifier_keeps_loop_kernels_and_callloop_together():
    native, _ = both(loop_module((2,)))
    fn = native.functions[native.function_index("main_while_loop0")]
    pc = [ins.name for ins in fn.instructions].index("CallLoop")
    ins = fn.instructions[pc]
    for bad in (("CallKernel",) + ins.args, ("CallLoop", ins.args[0], ins.args[1][:-1], ins.args[2])):
        fn.instructions[pc] = Instruction(*bad)
        native._verified = False
        with pytest.raises(ExecutableFormatError, match="loop kernel|inputs"):
            native.verify()
    fn.instructions[pc] = ins


def test_the_loop_kernel_checks_its_arguments_when_called_directly():
    """Called outside the VM with a wrong state shape, the kernel returns an error code (no
    crash): every static extent is checked before the first copy."""
    native, _ = both(loop_module((3,)))
    kernel = next(k for k in native.loaded_kernels() if k.op == "loop")
    spec = kernel.attrs
    shapes = {ref: [2 if d is None else d for d in shape]
              for _, shape, kind, ref in spec["slots"] if kind == "input"}
    shapes.update({k: spec["slots"][state][1] for k, state, _, _ in spec["carried"]})
    inputs = [np.zeros(shapes[k], np_dtype(dt)) for k, (dt, _) in enumerate(kernel.inputs[:-2])]
    inputs += [np.array(-1, np.int64), np.array(0, np.int32)]
    outputs = [np.zeros(spec["slots"][s][1], np_dtype(dt))
               for s, (dt, _) in zip(spec["results"], kernel.outputs)]
    outputs += [np.zeros(spec["workspace"] // 8, np.int64), np.zeros(2, np.int64)]
    kernel(inputs, outputs)          # well formed: n = 0, no iteration
    assert outputs[-1][0] == 0
    state = spec["carried"][1][0]
    inputs[state] = np.zeros(4, np.float32)
    with pytest.raises(DynVMError, match="extents"):
        kernel(inputs, outputs)


def test_the_static_runtime_rejects_a_native_loop_function_by_name():
    from dynvm.vm import StaticRuntime
    from dynvm.vm.errors import StaticRuntimeError

    with pytest.raises(StaticRuntimeError, match="CallLoop"):
        StaticRuntime(build(countdown_module()), name="loop")


def test_exits_may_return_invariants_and_the_same_state_twice():
    """loop(n, x, acc) = n < 1 ? (x, acc, acc) : loop(n - 1, x, acc * 2 + sum(x))."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    n, acc = ir.var("n", I64), ir.var("acc", ir.TensorType((2,), "float32"))
    one = ir.const(1, "int64")
    grown = op.add(op.multiply(acc, ir.const(2.0, "float32")), op.sum(x))
    ret = ir.TupleType([x.type_annotation, acc.type_annotation, acc.type_annotation])
    mod["loop"] = ir.Function(
        [n, x, acc], ir.If(op.less(n, one), ir.Tuple([x, acc, acc]),
                           ir.Call(loop, [op.subtract(n, one), x, grown])), ret_type=ret)
    native, bytecode = both(mod)
    assert "CallLoop" in opcodes(native, "loop")
    xs = np.arange(5, dtype=np.float32)
    got = VirtualMachine(native).invoke("loop", np.int64(4), xs, np.ones(2, np.float32))
    acc = np.ones(2, np.float32)
    for _ in range(4):
        acc = acc * 2 + xs.sum()                                     # 12, 34, 78, 166
    assert_same(got, (xs, acc, acc))
    assert_same(got, VirtualMachine(bytecode).invoke("loop", np.int64(4), xs, np.ones(2, np.float32)))
    np.testing.assert_array_equal(got[0], xs)
    want = np.ones(2)
    for _ in range(4):
        want = want * 2 + xs.sum()
    np.testing.assert_array_equal(got[1], want)
    np.testing.assert_array_equal(got[2], want)


def test_an_input_copied_into_the_state_must_be_compact_when_the_kernel_is_called_directly():
    """loop(n, x, a) = n < 1 ? a : loop(n - 1, x, x): x becomes the state by a copy, so a
    broadcast (stride 0) x given to the kernel directly is rejected, not read past its end."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    t = ir.TensorType((64,), "float32")
    n, x, a = ir.var("n", I64), ir.var("x", t), ir.var("a", t)
    one = ir.const(1, "int64")
    mod["loop"] = ir.Function([n, x, a], ir.If(op.less(n, one), a,
                                               ir.Call(loop, [op.subtract(n, one), x, x])),
                              ret_type=t)
    exe = build(mod)
    assert "CallLoop" in opcodes(exe, "loop")
    xs = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(VirtualMachine(exe).invoke("loop", np.int64(2), xs, np.zeros(64, np.float32)), xs)
    kernel = next(k for k in exe.loaded_kernels() if k.op == "loop")
    spec = kernel.attrs
    broadcast = np.broadcast_to(np.float32(1), (64,))
    inputs = [np.array(2, np.int64), broadcast, np.zeros(64, np.float32), np.array(-1, np.int64),
              np.array(0, np.int32)]
    outputs = [np.zeros(64, np.float32), np.zeros(spec["workspace"] // 8, np.int64), np.zeros(2, np.int64)]
    with pytest.raises(DynVMError, match="layout"):
        kernel(inputs, outputs)


def test_a_trip_count_written_in_the_condition_is_a_native_loop_too():
    """`i < take(shape_of(x), 0)` in the condition: the shape of the invariant is taken once
    before the loop kernel (a ShapeOf), with the bytecode loop's results and step counts."""
    from dynvm.models import lstm
    w = lstm.weights()
    fast = build(lstm.build_module(w, count_in_condition=True))
    assert [ins.name for ins in fast.functions[1].instructions].count("CallLoop") == 1
    slow = build(lstm.build_module(w, count_in_condition=True), native_loops=False)
    for n in (0, 1, 5):
        x = lstm.make_input(n) if n else np.zeros((0, lstm.INPUT), np.float32)
        a, b = VirtualMachine(fast), VirtualMachine(slow, tier="python")
        np.testing.assert_array_equal(a.invoke("main", x), b.invoke("main", x))
        assert a.steps == b.steps
        if n:
            np.testing.assert_allclose(a.invoke("main", x), lstm.reference(x, w), rtol=1e-4, atol=1e-5)
