"""Edge cases of native loops (compiler/codegen/native_loop.py, kernels/loop.py, the VM's
CallLoop), from a review: error attribution, shapes the loop kernel cannot take, huge step
limits, bad loop metadata, malformed specs, zero-size state, rotations through views."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.kernels.loop import check_spec
from dynvm.vm import Executable, VirtualMachine
from dynvm.vm.errors import DynVMError, ExecutableFormatError, KernelError, VMStepLimitError

I64 = ir.TensorType((), "int64")


def f32(*shape):
    return ir.TensorType(shape, "float32")


def opcodes(exe, name):
    return [ins.name for ins in exe.functions[exe.function_index(name)].instructions]


def take_loop_module():
    """loop(t, n, x: (?, 3), a: (3,)) = t < n ? loop(t + 1, n, x, a + x[t]) : a, called by
    main(X: (?, 3), A: (?,), N) = loop(0, N, X, A): a state shape that is only known at run time."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    t, n = ir.var("t", I64), ir.var("n", I64)
    x, a = ir.var("x", f32(ir.Any(), 3)), ir.var("a", f32(3))
    step = op.add(a, op.take(x, t, axis=0))
    mod["loop"] = ir.Function(
        [t, n, x, a], ir.If(op.less(t, n), ir.Call(loop, [op.add(t, ir.const(1, "int64")), n, x, step]), a),
        ret_type=f32(3))
    X, A, N = ir.var("X", f32(ir.Any(), 3)), ir.var("A", f32(ir.Any())), ir.var("N", I64)
    mod["main"] = ir.Function([X, A, N], ir.Call(loop, [ir.const(0, "int64"), N, X, A]))
    return mod


def test_a_rejected_loop_argument_is_not_blamed_on_an_inner_kernel():
    """When the loop kernel itself rejects an argument (a state of 5 elements for a (3,) state),
    the error names the loop kernel's input, not a stale inner call from an earlier failure:
    the VM resets the counters before every call."""
    exe = build(take_loop_module())
    assert "CallLoop" in opcodes(exe, "loop")
    vm = VirtualMachine(exe)
    wrong_state = (np.zeros((2, 3), np.float32), np.zeros(5, np.float32), np.int64(1))
    with pytest.raises(DynVMError) as first:
        vm.invoke("main", *wrong_state)
    # an inner take fails (empty x) and leaves its index in the counters ...
    with pytest.raises(DynVMError, match="kernel take"):
        vm.invoke("main", np.zeros((0, 3), np.float32), np.zeros(3, np.float32), np.int64(1))
    with pytest.raises(DynVMError) as again:
        vm.invoke("main", *wrong_state)
    for err in (first, again):
        message = str(err.value)
        assert "kernel loop_loop" in message and "input 3" in message, message


def test_an_invariant_with_any_dims_passed_as_a_static_state_does_not_break_build():
    """loop(n, x: (?,), acc: (3,)) = n < 1 ? acc : loop(n - 1, x, x): the next value of the (3,)
    state is an invariant of shape (?,), so the loop stays bytecode (and runs)."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    n, x, acc = ir.var("n", I64), ir.var("x", f32(ir.Any())), ir.var("acc", f32(3))
    one = ir.const(1, "int64")
    mod["loop"] = ir.Function([n, x, acc], ir.If(op.less(n, one), acc,
                                                 ir.Call(loop, [op.subtract(n, one), x, x])),
                              ret_type=f32(3))
    xs = np.arange(3, dtype=np.float32) + 1
    exe = build(mod)
    assert "CallLoop" not in opcodes(exe, "loop")
    vm = VirtualMachine(exe)
    np.testing.assert_array_equal(vm.invoke("loop", np.int64(0), xs, np.zeros(3, np.float32)), 0)
    np.testing.assert_array_equal(vm.invoke("loop", np.int64(1), xs, np.zeros(3, np.float32)), xs)


def test_a_huge_step_limit_works_with_native_loops_as_with_bytecode_loops():
    """max_steps=10**20 ("practically unlimited") gives the native loop a budget capped to int64
    instead of an OverflowError."""
    exe = build(take_loop_module())
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    args = (x, np.full(3, 0.5, np.float32), np.int64(3))
    want = 0.5 + x[0] + x[1] + x[2]
    for built in (exe, build(take_loop_module(), native_loops=False)):
        np.testing.assert_array_equal(VirtualMachine(built, max_steps=10 ** 20).invoke("main", *args), want)


def test_loop_metadata_naming_an_unknown_inner_kernel_is_a_format_error():
    """Rebuilt from its spec at load (the default), the loop is rejected by the builder; trusted
    as it is, the VM rejects it when it prepares the loop's calls. Never a bare KeyError."""
    exe = build(take_loop_module())
    k = next(i for i, e in enumerate(exe.kernels["kernels"]) if e["op"] == "loop")
    exe.kernels["kernels"][k]["attrs"]["body"][0][0] = "no_such_symbol"
    with pytest.raises(ExecutableFormatError, match="calls 'no_such_symbol'"):
        Executable.from_bytes(exe.to_bytes())
    trusted = Executable.from_bytes(exe.to_bytes(), trust_native_code=True)
    with pytest.raises(ExecutableFormatError, match="no_such_symbol"):
        VirtualMachine(trusted)


def _state_sig():
    return [["int64", 0], ["int64", 0], ["int32", 0]], [["int64", 0], ["int64", 1], ["int64", 1]]


def test_check_spec_rejects_a_scratch_slot_before_the_workspace():
    """A negative scratch offset would address memory before the workspace."""
    spec = {"slots": [["int64", [], "scratch", -64], ["bool", [], "scratch", 0],
                      ["int64", [], "scratch", 64]],
            "header": [], "body": [], "cond": 1, "exit_when": True,
            "carried": [[0, 0, 2, -1]], "results": [0], "workspace": 128, "steps": [1, 1]}
    with pytest.raises(KernelError):
        check_spec(spec, *_state_sig())


def test_check_spec_rejects_two_shapes_for_one_input():
    """Two slots of one input with different static shapes: the kernel checks an input's
    extents once, so a second, bigger slot could be copied past the input's end."""
    spec = {"slots": [["float32", [1], "input", 0], ["float32", [1000], "input", 0],
                      ["float32", [1000], "scratch", 0], ["bool", [], "scratch", 4032]],
            "header": [], "body": [], "cond": 3, "exit_when": True,
            "carried": [[1, 2, 1, -1]], "results": [2], "workspace": 4096, "steps": [1, 1]}
    with pytest.raises(KernelError):
        check_spec(spec, [["float32", 1], ["float32", 1], ["int64", 0], ["int32", 0]],
                   [["float32", 1], ["int64", 1], ["int64", 1]])


def test_zero_size_state_with_an_invariant_condition_has_an_empty_workspace_and_a_budget():
    """loop(f, a: (0,)) = f ? loop(f, tanh(a)) : a: every slot is zero-size (workspace of 0
    bytes); with f true the loop only ends by the step budget."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    f, a = ir.var("f", ir.TensorType((), "bool")), ir.var("a", f32(0))
    mod["loop"] = ir.Function([f, a], ir.If(f, ir.Call(loop, [f, op.tanh(a)]), a), ret_type=f32(0))
    exe = build(mod)
    assert "CallLoop" in opcodes(exe, "loop")
    vm = VirtualMachine(exe, max_steps=50)
    assert vm.invoke("loop", np.bool_(False), np.zeros(0, np.float32)).shape == (0,)
    with pytest.raises(VMStepLimitError, match="native loop"):
        vm.invoke("loop", np.bool_(True), np.zeros(0, np.float32))
    assert vm.invoke("loop", np.bool_(False), np.zeros(0, np.float32)).shape == (0,)


def test_a_rotation_through_views_with_a_header_value_as_next_matches_bytecode():
    """(a, b, c) := (reshape(b), reshape(c), h) with h = tanh(reshape(a)) computed in the
    header (before the condition); the exit returns a twice."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    n, a, b, c = ir.var("n", I64), ir.var("a", f32(2, 3)), ir.var("b", f32(3, 2)), ir.var("c", f32(6))
    h = ir.var("h", f32(6))
    one = ir.const(1, "int64")
    again = ir.Call(loop, [op.subtract(n, one), op.reshape(b, (2, 3)), op.reshape(c, (3, 2)), h])
    body = ir.Let(h, op.tanh(op.reshape(a, (6,))), ir.If(op.less(n, one), ir.Tuple([a, b, c, a]), again))
    mod["loop"] = ir.Function([n, a, b, c], body,
                              ret_type=ir.TupleType([f32(2, 3), f32(3, 2), f32(6), f32(2, 3)]))
    native, bytecode = build(mod), build(mod, native_loops=False)
    assert "CallLoop" in opcodes(native, "loop")
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype(np.float32) for s in ((2, 3), (3, 2), (6,))]
    for k in range(6):
        a, b, c = args
        for _ in range(k):
            a, b, c = b.reshape(2, 3), c.reshape(3, 2), np.tanh(a.reshape(6))
        want = (a, b, c, a)
        for built in (native, bytecode):
            got = VirtualMachine(built).invoke("loop", np.int64(k), *args)
            assert len(got) == 4
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("field, value", [("cond", -1), ("results", [-1]), ("carried", [[0, 0, -2, -1]]),
                                          ("carried", [[-1, 0, 2, -1]])])
def test_check_spec_rejects_negative_indices(field, value):
    """Python would read slots[-1] (the last slot) or inputs[-1] (the budget): out of range."""
    spec = {"slots": [["int64", [], "scratch", 0], ["bool", [], "scratch", 64],
                      ["int64", [], "scratch", 128]],
            "header": [], "body": [], "cond": 1, "exit_when": True,
            "carried": [[0, 0, 2, -1]], "results": [0], "workspace": 192, "steps": [1, 1]}
    check_spec(spec, *_state_sig())           # the well-formed spec passes
    with pytest.raises(KernelError):
        check_spec(dict(spec, **{field: value}), *_state_sig())
