"""vm.StaticRuntime: the graph executor for static functions. It matches the VM on every
static-shaped model, returns results no later run overwrites, and rejects what it cannot run
(Any dims, control flow, calls, run-time shapes) with a StaticRuntimeError naming the cause."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.models import bert_varlen as bert
from dynvm.models import lstm
from tests.vm.vm_helpers import SCALAR_I64, exe, fn, tensor
from dynvm.vm import (ExecutableFormatError, InvokeArgumentError, KernelError, ShapeError, StaticRuntime, StaticRuntimeError,
                VirtualMachine, VMError)
from dynvm.kernels.builder import KernelBuilder

F32 = "float32"
_KEEP_ALIVE = []  # each Executable owns a native library; keep them for the whole session


def static_module(body, *shapes, dtype=F32):
    """main(x0, x1, ...) = body(x0, x1, ...) over static tensor types."""
    params = [ir.var(f"x{i}", ir.TensorType(shape, dtype)) for i, shape in enumerate(shapes)]
    return ir.IRModule.from_expr(ir.Function(params, body(*params)))


def both(mod):
    executable = build(mod)
    _KEEP_ALIVE.append(executable)
    return VirtualMachine(executable), StaticRuntime(executable)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- models: same results as the VM

@pytest.fixture(scope="module")
def bert_weights():
    return bert.weights()


@pytest.mark.parametrize("seq", [1, 16, 128])
def test_bert_static_runtime_matches_the_vm_and_numpy(bert_weights, seq):
    vm, sr = both(bert.build_module(bert_weights, seq=seq))
    x = bert.make_input(seq)
    got = sr.run(x)
    np.testing.assert_allclose(got, vm.invoke("main", x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, bert.reference(x, bert_weights), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 7, 32])
def test_unrolled_lstm_matches_the_vm_the_while_loop_and_numpy(steps):
    w = lstm.weights()
    vm, sr = both(lstm.build_module(w, steps=steps))
    loop_vm = VirtualMachine(build(lstm.build_module(w)))
    x = lstm.make_input(steps)
    got = sr.run(x)
    assert got.shape == (1, lstm.HIDDEN)
    np.testing.assert_allclose(got, vm.invoke("main", x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, loop_vm.invoke("main", x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, lstm.reference(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [4, 128])
def test_unrolled_lstm_is_straight_line_code_with_a_fixed_kernel_list(steps):
    executable = build(lstm.build_module(lstm.weights(), steps=steps))
    _KEEP_ALIVE.append(executable)
    names = {ins.name for ins in executable.functions[0].instructions}
    assert not names & {"If", "Goto", "Invoke", "CallShapeFunc", "AllocStorageReg"}
    # the input projection, zeros, then take, dense and two fused kernels per step (the
    # gates' split is views of the dense result)
    assert StaticRuntime(executable).kernel_calls == 2 + 4 * steps


def test_tuple_result_matches_the_vm_and_numpy():
    vm, sr = both(static_module(
        lambda x, y: ir.Tuple([op.add(x, y), op.exp(x), ir.Tuple([op.multiply(x, y)])]),
        (3, 5), (3, 5)))
    x, y = rand(3, 5), rand(3, 5, seed=1)
    expected = (x + y, np.exp(x), x * y)
    for got in (sr.run(x, y), vm.invoke("main", x, y)):
        assert isinstance(got, tuple) and len(got) == 3
        assert isinstance(got[2], tuple) and len(got[2]) == 1
        for g, w in zip((got[0], got[1], got[2][0]), expected):
            np.testing.assert_allclose(g, w, rtol=1e-6)


def test_flat_tuple_result_matches_numpy():
    _, sr = both(static_module(lambda x: ir.Tuple([op.negative(x), op.sqrt(x)]), (8,)))
    x = np.arange(8, dtype=np.float32)
    neg, root = sr.run(x)
    np.testing.assert_array_equal(neg, -x)
    np.testing.assert_allclose(root, np.sqrt(x), rtol=1e-6)


def test_reshape_and_transpose_program_matches_the_vm():
    def body(x):
        y = op.transpose(op.reshape(x, newshape=[4, 3, 2]), axes=[2, 0, 1])   # (2, 4, 3)
        return op.reshape(op.add(y, ir.const(1.0, F32)), newshape=[-1, 6])     # (4, 6)
    vm, sr = both(static_module(body, (6, 4)))
    x = rand(6, 4)
    want = (x.reshape(4, 3, 2).transpose(2, 0, 1) + 1).reshape(-1, 6)
    np.testing.assert_allclose(sr.run(x), want, rtol=1e-6)
    np.testing.assert_allclose(vm.invoke("main", x), want, rtol=1e-6)


def test_a_reshaped_input_returned_as_the_result_is_a_copy():
    _, sr = both(static_module(lambda x: op.reshape(x, newshape=[2, 3]), (6,)))
    first = sr.run(np.arange(6, dtype=np.float32))
    second = sr.run(np.zeros(6, np.float32))
    np.testing.assert_array_equal(first, np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(second, np.zeros((2, 3), np.float32))


def test_a_constant_result_is_a_writable_copy():
    _, sr = both(static_module(lambda x: ir.const(np.arange(3, dtype=np.float32)), (3,)))
    out = sr.run(np.zeros(3, np.float32))
    out[0] = 100.0
    np.testing.assert_array_equal(sr.run(np.zeros(3, np.float32)), [0, 1, 2])


# ---------------------------------------------------------------- repeated runs

def test_repeated_runs_with_new_inputs_do_not_overwrite_earlier_results(bert_weights):
    vm, sr = both(bert.build_module(bert_weights, seq=16))
    inputs = [bert.make_input(16, seed=s) for s in range(3)]
    results = [sr.run(x) for x in inputs]
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, vm.invoke("main", x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, bert.reference(x, bert_weights), rtol=1e-4, atol=1e-4)
    assert not np.allclose(results[0], results[1])


def test_results_of_a_tuple_program_are_fresh_each_run():
    _, sr = both(static_module(lambda x: ir.Tuple([op.add(x, x), op.multiply(x, x)]), (4,)))
    a = sr.run(np.full(4, 2, np.float32))
    b = sr.run(np.full(4, 3, np.float32))
    np.testing.assert_array_equal(a[0], 4)
    np.testing.assert_array_equal(a[1], 4)
    np.testing.assert_array_equal(b[0], 6)
    np.testing.assert_array_equal(b[1], 9)


def test_fortran_ordered_and_non_contiguous_arrays_are_accepted():
    _, sr = both(static_module(lambda x: op.add(x, ir.const(1.0, F32)), (2, 3)))
    x = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(sr.run(x), x + 1)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::2]
    np.testing.assert_array_equal(sr.run(x), x + 1)
    np.testing.assert_array_equal(sr(x), x + 1)  # __call__ is run


# ---------------------------------------------------------------- what it rejects, and why

def test_an_any_dim_is_an_error_naming_the_parameter_and_dim():
    executable = build(ir.IRModule.from_expr(ir.Function(
        [x := ir.var("x", ir.TensorType((4, ir.Any()), F32))], op.exp(x))))
    with pytest.raises(StaticRuntimeError, match="parameter x dim 1 is Any"):
        StaticRuntime(executable)


def test_the_dynamic_bert_is_rejected_at_its_sequence_dim(bert_weights):
    with pytest.raises(StaticRuntimeError, match="main: parameter x dim 0 is Any"):
        StaticRuntime(build(bert.build_module(bert_weights)))


def test_if_is_an_error_naming_the_instruction():
    cond = ir.var("c", ir.TensorType((), "bool"))
    x = ir.var("x", ir.TensorType((3,), F32))
    executable = build(ir.IRModule.from_expr(ir.Function(
        [cond, x], ir.If(cond, op.exp(x), op.negative(x)))))
    pc = next(i for i, ins in enumerate(executable.functions[0].instructions) if ins.name == "If")
    with pytest.raises(StaticRuntimeError, match=rf"instruction {pc} \(If\) is control flow"):
        StaticRuntime(executable)


def test_a_data_dependent_shape_is_an_error_naming_the_shape_function():
    n = ir.var("n", ir.TensorType((), "int64"))
    executable = build(ir.IRModule.from_expr(ir.Function(
        [n], op.arange(ir.const(0, "int64"), n, ir.const(1, "int64"), dtype="int64"))))
    with pytest.raises(StaticRuntimeError, match=r"instruction \d+ \(CallShapeFunc\) computes a "
                                                 r"shape at run time"):
        StaticRuntime(executable)


@pytest.mark.parametrize("code, phrase", [
    ([("Goto", 1), ("Ret", 0)], r"instruction 0 \(Goto\) is control flow"),
    ([("LoadConsti", 1, 1), ("If", 1, 1, 1, 2), ("Ret", 0), ("Ret", 0)],
     r"instruction 1 \(If\) is control flow"),
    ([("Invoke", 1, [0], 1), ("Ret", 1)], r"instruction 0 \(Invoke\) is a function call"),
    ([("AllocClosure", 1, [], 1), ("InvokeClosure", 1, [0], 2), ("Ret", 2)],
     r"instruction 0 \(AllocClosure\) builds a closure"),
    ([("ShapeOf", 0, 1), ("AllocStorageReg", 1, 64, F32, 2), ("Ret", 0)],
     r"instruction 1 \(AllocStorageReg\) sizes storage at run time"),
    ([("ShapeOf", 0, 1), ("AllocStorage", 16, 64, F32, 2), ("AllocTensorReg", 2, 0, 1, F32, 3),
      ("Ret", 3)], r"instruction 2 \(AllocTensorReg\) shapes a tensor at run time"),
    ([("Fatal", "no")], r"instruction 0 \(Fatal\) always raises"),
])
def test_every_dynamic_instruction_is_an_error_naming_it(code, phrase):
    executable = exe(fn("main", ["x"], code, param_types=[tensor(4)], ret_type=tensor(4)),
                     fn("other", ["x"], [("Ret", 0)], param_types=[tensor(4)]))
    with pytest.raises(StaticRuntimeError, match=phrase):
        StaticRuntime(executable)


def test_a_reshape_to_a_run_time_shape_is_an_error():
    executable = exe(fn("main", ["x", "s"], [("ReshapeTensor", 0, 1, 2), ("Ret", 2)],
                        param_types=[tensor(4), tensor(2, dtype="int64")]))
    with pytest.raises(StaticRuntimeError, match=r"instruction 0 \(ReshapeTensor\) takes its shape "
                                                 r"from r1, which is computed at run time"):
        StaticRuntime(executable)


def test_shapes_and_constants_are_resolved_when_built():
    executable = exe(fn("main", ["x"], [
        ("ShapeOf", 0, 1), ("LoadConst", 0, 2), ("ReshapeTensor", 0, 2, 3),
        ("AllocADT", 0, [3, 1], 4), ("GetField", 4, 0, 5), ("KillRegister", 4), ("Ret", 5)],
        param_types=[tensor(2, 3)]), constants=[np.array([3, 2], np.int64)])
    sr = StaticRuntime(executable)
    assert sr.kernel_calls == 0
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(sr.run(x), x.reshape(3, 2))


def test_non_tensor_parameters_and_unknown_functions_are_errors():
    executable = exe(fn("main", ["p"], [("Ret", 0)],
                        param_types=[{"kind": "tuple", "fields": [tensor(2)]}]))
    with pytest.raises(StaticRuntimeError, match="parameter p is a tuple value, not a tensor"):
        StaticRuntime(executable)
    with pytest.raises(StaticRuntimeError, match="no function named 'nope'"):
        StaticRuntime(executable, "nope")


def test_a_scalar_parameter_is_static():
    executable = exe(fn("main", ["n"], [("Ret", 0)], param_types=[SCALAR_I64], ret_type=SCALAR_I64))
    assert StaticRuntime(executable).run(np.int64(7)) == 7


# ---------------------------------------------------------------- argument errors, as the VM's

@pytest.fixture(scope="module")
def add_pair():
    executable = build(static_module(lambda x, y: op.add(x, y), (2, 3), (2, 3)))
    _KEEP_ALIVE.append(executable)
    return executable


@pytest.mark.parametrize("args, phrase", [
    ((np.ones((2, 3), np.float32),), r"main takes 2 arguments \(x0, x1\), got 1"),
    ((np.ones((2, 3)), np.ones((2, 3), np.float32)), r"parameter 'x0': expected dtype float32"),
    ((np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)), r"parameter 'x1': expected dim 0 = 2"),
    ((np.ones((2, 3), np.float32), np.ones(6, np.float32)), r"parameter 'x1': expected rank 2"),
    ((object(), np.ones((2, 3), np.float32)), r"parameter 'x0': expected dtype float32 .*got object"),
])
def test_bad_arguments_raise_the_vms_invoke_argument_errors(add_pair, args, phrase):
    with pytest.raises(InvokeArgumentError, match=phrase) as static_error:
        StaticRuntime(add_pair).run(*args)
    with pytest.raises(InvokeArgumentError) as vm_error:
        VirtualMachine(add_pair).invoke("main", *args)
    assert str(static_error.value) == str(vm_error.value)


def test_a_failed_argument_check_leaves_the_runtime_usable(add_pair):
    sr = StaticRuntime(add_pair)
    with pytest.raises(InvokeArgumentError):
        sr.run(np.ones((2, 3), np.float32), np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(sr.run(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)), 2)


# ---------------------------------------------------------------- kernel errors and call lists

@pytest.fixture(scope="module")
def kernel_exe():
    """Hand-made functions over two kernels: add (k0) and negative (k1)."""
    kb = KernelBuilder()
    kb.add_elementwise("add", ["add", ["in", 0], ["in", 1]], [(F32, 1)] * 2, (F32, 1))
    kb.add_elementwise("neg", ["negative", ["in", 0]], [(F32, 1)], (F32, 1))
    alloc = [("AllocStorage", 64, 64, F32, 1)]
    functions = [
        fn("mismatch", ["x"], alloc + [("AllocTensor", 1, 0, [3], F32, 2),
                                       ("CallKernel", 0, [0, 0], [2]), ("Ret", 2)],
           param_types=[tensor(5)]),
        fn("chain", ["x"], alloc + [("AllocTensor", 1, 0, [4], F32, 2),
                                     ("CallKernel", 0, [0, 0], [2]),
                                     ("AllocStorage", 16, 64, F32, 3), ("AllocTensor", 3, 0, [4], F32, 4),
                                     ("CallKernel", 1, [2], [4]), ("Ret", 4)],
           param_types=[tensor(4)]),
    ]
    executable = exe(*functions, kernels=kb.finish())
    _KEEP_ALIVE.append(executable)
    return executable


def test_a_native_error_code_raises_the_typed_error_with_its_location(kernel_exe):
    sr = StaticRuntime(kernel_exe, "mismatch")
    with pytest.raises(ShapeError, match=r"input 0 of shape \(5,\) does not broadcast.*"
                                         r"\[in mismatch at pc 2 \(CallKernel\)\]"):
        sr.run(np.ones(5, np.float32))


def test_a_dtype_that_does_not_fit_the_kernel_is_an_error_when_built(kernel_exe):
    wrong = fn("wrong", ["x"], [("AllocStorage", 64, 64, F32, 1), ("AllocTensor", 1, 0, [2], F32, 2),
                                ("CallKernel", 0, [0, 0], [2]), ("Ret", 2)],
               param_types=[tensor(2, dtype="float64")])
    with pytest.raises(ExecutableFormatError, match=r"'wrong', pc 2 \(CallKernel\): r0 \(input 0\) "
                                                    r"must be tensor float32\[\?\], found tensor float64\[2\]"):
        StaticRuntime(exe(wrong, kernels=kernel_exe.kernels), "wrong")


def test_two_kernels_run_in_order_from_the_call_list(kernel_exe):
    sr = StaticRuntime(kernel_exe, "chain")
    for i in range(3):
        x = np.arange(4, dtype=np.float32) + i
        np.testing.assert_array_equal(sr.run(x), -(x + x))


def test_profile_counts_every_kernel_call_per_run(kernel_exe):
    sr = StaticRuntime(kernel_exe, "chain", profile=True)
    for _ in range(3):
        sr.run(np.ones(4, np.float32))
    stats = sr.profile().kernel_stats()
    assert stats["add"]["calls"] == 3 and stats["neg"]["calls"] == 3
    assert sr.profile()["opcodes"] == {"CallKernel": 6}
    with pytest.raises(VMError, match="profiling is off"):
        StaticRuntime(kernel_exe, "chain").profile()
