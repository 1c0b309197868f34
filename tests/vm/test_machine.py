"""The virtual machine: every opcode on small hand-made executables, invoke's argument checks,
recursion and step limits. Numeric results are compared with numpy exactly (tolerance 0: the
kernels used here do one IEEE operation per element, as numpy does)."""
import numpy as np
import pytest

from dynvm.vm import (ADT, Closure, InvokeArgumentError, ShapeError, Storage, VirtualMachine, VMError,
                VMRecursionError, VMStepLimitError)

from dynvm.vm.machine import DEFAULT_MAX_DEPTH

from tests.vm.vm_helpers import ANY, FUNC, NAT, NAT_CTORS, SCALAR_I64, exe, fn, nat, nat_value, tensor

LIST_CTORS = [{"name": "tuple", "tag": 0, "arity": None, "adt": "tuple"},
              {"name": "Nil", "tag": 0, "arity": 0, "adt": "List"},
              {"name": "Cons", "tag": 1, "arity": 2, "adt": "List"}]


def run(executable, *args, name="main", **vm_options):
    return VirtualMachine(executable, **vm_options).invoke(name, *args)


def is_copy_of(result, argument) -> bool:
    """An argument returned as it is comes back equal, in memory of its own (no aliasing)."""
    return np.array_equal(result, argument) and not np.shares_memory(result, argument)


def kernel_functions():
    """Functions that call kernels: k0 = add (float32 rank 2, broadcasting), k1 = dec (x - 1)."""
    dynamic_add = fn("dynamic_add", ["x", "y"], [      # out = x + y, shape from the `add` shape function
        ("CallShapeFunc", 0, [0, 1], [2]),
        ("AllocStorageReg", 2, 64, "float32", 3),
        ("AllocTensorReg", 3, 0, 2, "float32", 4),
        ("CallKernel", 0, [0, 1], [4]),
        ("Ret", 4)], param_types=[tensor(None, None), tensor(None, None)])
    countdown = fn("countdown", ["n"], [               # while n != 0: acc = Cons(n, acc); n = dec(n)
        ("LoadConsti", 0, 1),
        ("AllocADT", 1, [], 2),
        ("If", 0, 1, 7, 1),                            # n == 0 -> pc 9
        ("AllocADT", 2, [0, 2], 2),
        ("AllocStorage", 8, 8, "int64", 3),
        ("AllocTensor", 3, 0, [], "int64", 5),
        ("CallKernel", 1, [0], [5]),
        ("Move", 0, 5),
        ("Goto", -6),                                  # -> pc 2
        ("Ret", 2),
    ], param_types=[SCALAR_I64], ret_type={"kind": "adt", "name": "List"})
    bad_add = fn("bad_add", ["x"], [                   # output shape (1, 3) whatever x is
        ("AllocStorage", 64, 64, "float32", 1),
        ("AllocTensor", 1, 0, [1, 3], "float32", 2),
        ("CallKernel", 0, [0, 0], [2]), ("Ret", 2)], param_types=[tensor(None, None)])
    return [dynamic_add, countdown, bad_add]


@pytest.fixture(scope="module")
def kernel_exe():
    """ONE executable for every kernel test of this module: each Executable loads its own native
    code library, so sharing one keeps the tests fast (and, see the report, avoids a crash in
    kernels/codelib.py when a second library is disposed)."""
    kernels = pytest.importorskip("dynvm.kernels.builder")
    kb = kernels.KernelBuilder()
    kb.add_elementwise("add", ["add", ["in", 0], ["in", 1]],
                       inputs=[("float32", 2), ("float32", 2)], output=("float32", 2))
    kb.add_elementwise("dec", ["subtract", ["in", 0], ["const", 1, "int64"]],
                       inputs=[("int64", 0)], output=("int64", 0))
    executable = exe(*kernel_functions(), constructors=LIST_CTORS, kernels=kb.finish(),
                     shape_funcs=[{"name": "add", "attrs": {}}])
    _KEEP_NATIVE_LIBRARIES_ALIVE.append(executable)
    return executable


_KEEP_NATIVE_LIBRARIES_ALIVE = []  # see the same list in test_executable.py


# ---------------------------------------------------------------- moving values

def test_move_and_ret_return_the_argument_unchanged():
    x = np.arange(4, dtype=np.float32)
    assert is_copy_of(run(exe(fn("main", ["x"], [("Move", 1, 0), ("Ret", 1)])), x), x)


def test_invoke_calls_another_function_and_receives_its_result():
    main = fn("main", ["x"], [("Invoke", 1, [0, 0], 1), ("Ret", 1)],
              ret_type={"kind": "tuple", "fields": [tensor(None), tensor(None)]})
    pair = fn("pair", ["a", "b"], [("AllocADT", 0, [0, 1], 2), ("Ret", 2)])
    x = np.ones(2, np.float32)
    result = run(exe(main, pair), x)
    assert isinstance(result, tuple) and len(result) == 2 and is_copy_of(result[0], x)


def test_closure_gets_captured_values_before_arguments():
    make = fn("make", ["c"], [("AllocClosure", 2, [0], 1), ("Ret", 1)], ret_type=FUNC)
    apply = fn("apply", ["f", "x"], [("InvokeClosure", 0, [1], 2), ("Ret", 2)],
               param_types=[FUNC, tensor(None)])
    body = fn("body", ["captured", "arg"], [("AllocADT", 0, [0, 1], 2), ("Ret", 2)])
    machine = VirtualMachine(exe(make, apply, body))
    c, x = np.array([1.0], np.float32), np.array([2.0], np.float32)
    closure = machine.invoke("make", c)
    assert isinstance(closure, Closure)
    captured, arg = machine.invoke("apply", closure, x)
    assert captured[0] == 1.0 and arg[0] == 2.0


def test_closure_called_with_wrong_argument_count_is_a_vm_error():
    # the closure comes from a call declared to return any value: only the VM can check it
    main = fn("main", ["c"], [("Invoke", 1, [0], 1), ("InvokeClosure", 1, [0, 0], 2), ("Ret", 2)])
    make = fn("make", ["c"], [("AllocClosure", 2, [0], 1), ("Ret", 1)])
    body = fn("body", ["captured", "arg"], [("Ret", 1)])
    with pytest.raises(VMError, match="closure of 'body' takes 1 arguments, got 2"):
        run(exe(main, make, body), np.ones(1, np.float32))


def test_invoking_a_non_closure_is_a_vm_error():
    main = fn("main", ["x"], [("InvokeClosure", 0, [], 1), ("Ret", 1)], param_types=[ANY])
    with pytest.raises(VMError, match="not a closure"):
        run(exe(main), np.ones(1, np.float32))


# ---------------------------------------------------------------- ADTs and tuples

def test_tuples_and_adts_are_built_read_and_tagged():
    main = fn("main", ["x"], [
        ("AllocADT", 1, [], 1),            # Nil
        ("AllocADT", 2, [0, 1], 2),        # Cons(x, Nil)
        ("GetTag", 2, 3),                  # 1
        ("GetField", 2, 0, 4),             # x
        ("AllocADT", 0, [4, 3], 5),        # (x, 1)
        ("GetTag", 5, 6),                  # tuples have tag 0
        ("AllocADT", 0, [2, 5, 6], 7),
        ("Ret", 7),
    ], ret_type={"kind": "tuple", "fields": [ANY] * 3})
    x = np.array([1.5], np.float32)
    lst, pair, tuple_tag = run(exe(main, constructors=LIST_CTORS), x)
    assert lst == ADT("Cons", 1, (x, ADT("Nil", 0)))
    assert is_copy_of(pair[0], x) and pair[1].dtype == np.int64 and pair[1].shape == () and pair[1] == 1
    assert tuple_tag == 0 and tuple_tag.dtype == np.int64


def test_get_field_of_a_tensor_is_a_vm_error_naming_the_location():
    main = fn("main", ["x"], [("GetField", 0, 0, 1), ("Ret", 1)], param_types=[ANY])
    with pytest.raises(VMError, match=r"not a tuple or ADT value \[in main at pc 0 \(GetField\)\]"):
        run(exe(main), np.ones(1, np.float32))


def test_get_field_index_out_of_range_is_a_vm_error():
    main = fn("main", ["p"], [("GetField", 0, 3, 1), ("Ret", 1)], param_types=[ANY])
    with pytest.raises(VMError, match="IndexError"):
        run(exe(main), (np.ones(1, np.float32),))


# ---------------------------------------------------------------- control flow

def is_even_exe():
    """Counts a Peano number down to Z with If/Goto, flipping a parity register each step."""
    return exe(fn("main", ["n"], [
        ("LoadConsti", 0, 1), ("LoadConsti", 1, 2), ("LoadConsti", 0, 3),
        ("GetTag", 0, 4),
        ("If", 4, 1, 6, 1),                # Z? -> pc 10
        ("GetField", 0, 0, 0),             # n := pred n
        ("Move", 5, 2), ("Move", 2, 3), ("Move", 3, 5),
        ("Goto", -6),                      # -> pc 3
        ("Ret", 2),
    ], param_types=[NAT], ret_type=SCALAR_I64), constructors=NAT_CTORS)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 501])
def test_if_goto_loop_counts_a_peano_number_down(n):
    assert int(run(is_even_exe(), nat(n))) == (n % 2 == 0)


@pytest.mark.parametrize("n", [0, 1, 5, 100])
def test_if_goto_loop_counts_down_with_a_kernel(kernel_exe, n):
    result, values = run(kernel_exe, np.array(n, np.int64), name="countdown"), []
    while result.constructor == "Cons":
        values.append(int(result.fields[0]))
        result = result.fields[1]
    assert values == list(range(1, n + 1))


def test_if_accepts_numpy_scalars_and_bool_tensors():
    main = fn("main", ["b"], [("LoadConsti", 1, 1), ("If", 0, 1, 1, 2), ("Ret", 1), ("Fatal", "false")],
              param_types=[tensor(dtype="bool")])
    assert int(run(exe(main), np.bool_(True))) == 1
    with pytest.raises(VMError, match="false"):
        run(exe(main), np.array(False))


def test_fatal_raises_vm_error_with_message_and_location():
    with pytest.raises(VMError, match=r"pattern match failed \[in main at pc 0 \(Fatal\)\]"):
        run(exe(fn("main", [], [("Fatal", "pattern match failed")])))


def test_step_limit_stops_an_infinite_loop():
    with pytest.raises(VMStepLimitError, match="step limit of 1000 instructions exceeded"):
        run(exe(fn("main", [], [("Goto", 0)])), max_steps=1000)


def test_step_limit_allows_programs_that_fit():
    assert int(run(is_even_exe(), nat(10), max_steps=200)) == 1
    with pytest.raises(VMStepLimitError):
        run(is_even_exe(), nat(10), max_steps=20)


def double_exe():
    """double(n) = Z if n is Z else S(S(double(pred n)))  -- non-tail recursion."""
    return exe(fn("main", ["n"], [
        ("LoadConsti", 0, 1), ("GetTag", 0, 2), ("If", 2, 1, 1, 2), ("Ret", 0),
        ("GetField", 0, 0, 3), ("Invoke", 0, [3], 4),
        ("AllocADT", 2, [4], 4), ("AllocADT", 2, [4], 4), ("Ret", 4),
    ], param_types=[NAT], ret_type=NAT), constructors=NAT_CTORS)


def test_deep_bytecode_recursion_does_not_use_python_recursion():
    assert nat_value(run(double_exe(), nat(3000), max_depth=5000)) == 6000


def test_recursion_deeper_than_max_depth_is_a_recursion_error():
    with pytest.raises(VMRecursionError, match="max_depth=100"):
        run(double_exe(), nat(100), max_depth=100)
    assert nat_value(run(double_exe(), nat(99), max_depth=100)) == 198


def test_unbounded_recursion_is_a_recursion_error():
    forever = fn("main", ["x"], [("Invoke", 0, [0], 1), ("Ret", 1)])
    with pytest.raises(VMRecursionError, match=f"call depth exceeded max_depth={DEFAULT_MAX_DEPTH} calling 'main'"):
        run(exe(forever), np.ones(1, np.float32))


# ---------------------------------------------------------------- tensors and memory

def test_load_const_and_load_consti():
    main = fn("main", [], [("LoadConst", 0, 0), ("LoadConsti", -7, 1), ("AllocADT", 0, [0, 1], 2), ("Ret", 2)])
    c, i = run(exe(main, constants=[np.arange(6, dtype=np.float64).reshape(2, 3)]))
    np.testing.assert_array_equal(c, np.arange(6).reshape(2, 3))
    assert c.dtype == np.float64 and i.dtype == np.int64 and i.shape == () and i == -7


def test_returned_constants_are_owned_by_the_caller():
    machine = VirtualMachine(exe(fn("main", [], [("LoadConst", 0, 0), ("Ret", 0)]), constants=[np.zeros(3)]))
    first = machine.invoke("main")
    first[:] = 5
    np.testing.assert_array_equal(machine.invoke("main"), np.zeros(3))


def test_shape_of_gives_1d_int64():
    main = fn("main", ["x"], [("ShapeOf", 0, 1), ("Ret", 1)], param_types=[tensor(None, None, dtype="int32")])
    for shape in [(2, 3), (0, 5), (1, 1)]:
        s = run(exe(main), np.zeros(shape, np.int32))
        assert s.dtype == np.int64 and s.ndim == 1 and tuple(s) == shape


def test_reshape_tensor_of_a_parameter_returns_a_copy_of_the_view():
    """ReshapeTensor views the argument's memory; the result is a view of the caller's array,
    so invoke returns a copy (the caller never gets its own memory back)."""
    main = fn("main", ["x"], [("LoadConst", 0, 1), ("ReshapeTensor", 0, 1, 2), ("Ret", 2)],
              param_types=[tensor(None, None)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = run(exe(main, constants=[np.array([3, 1, 2], np.int64)]), x)
    assert y.shape == (3, 1, 2) and not np.shares_memory(x, y)
    np.testing.assert_array_equal(y.ravel(), x.ravel())


def test_reshape_tensor_with_wrong_element_count_is_a_shape_error():
    main = fn("main", ["x"], [("LoadConst", 0, 1), ("ReshapeTensor", 0, 1, 2), ("Ret", 2)],
              param_types=[tensor(None, None)])
    with pytest.raises(ShapeError, match=r"cannot reshape a tensor of shape \(2, 3\)"):
        run(exe(main, constants=[np.array([4, 2], np.int64)]), np.zeros((2, 3), np.float32))


def test_alloc_storage_and_tensor_views_share_one_block():
    main = fn("main", [], [
        ("AllocStorage", 64, 64, "float32", 0),
        ("AllocTensor", 0, 0, [2, 2], "float32", 1),
        ("AllocTensor", 0, 16, [4], "int32", 2),
        ("AllocADT", 0, [0, 1, 2], 3), ("Ret", 3)])
    storage, a, b = run(exe(main))
    assert isinstance(storage, Storage) and storage.size == 64
    assert a.shape == (2, 2) and a.dtype == np.float32 and b.dtype == np.int32
    assert a.__array_interface__["data"][0] % 64 == 0 and np.shares_memory(a, storage.data)
    assert not np.shares_memory(a, b)


def test_alloc_storage_reg_and_tensor_reg_take_shapes_from_registers():
    main = fn("main", ["x"], [
        ("ShapeOf", 0, 1),
        ("AllocStorageReg", 1, 64, "float64", 2),
        ("AllocTensorReg", 2, 0, 1, "float64", 3),
        ("AllocADT", 0, [2, 3], 4), ("Ret", 4)], param_types=[tensor(None, None, dtype="int32")])
    for shape in [(3, 5), (0, 2), (1, 1)]:
        storage, t = run(exe(main), np.zeros(shape, np.int32))
        assert storage.size == np.prod(shape) * 8 and t.shape == shape and t.dtype == np.float64


@pytest.mark.parametrize("shape, error", [([2, 3], None), ([0, 3], None), ([3, 3], "does not fit"),
                                          ([-1, 3], "negative")])
def test_a_shape_written_into_an_int64_tensor_is_read_and_checked(shape, error):
    """How an upper-bound op's result is viewed: its kernel writes the true shape into an int64
    tensor; AllocTensorReg reads it and checks it against the block (never a view past it)."""
    main = fn("main", ["dims"], [("AllocStorage", 24, 64, "float32", 1),
                                 ("AllocTensorReg", 1, 0, 0, "float32", 2), ("Ret", 2)],
              param_types=[tensor(2, dtype="int64")])
    if error is None:
        assert run(exe(main), np.array(shape, np.int64)).shape == tuple(shape)
    else:
        with pytest.raises((VMError, ShapeError), match=error):
            run(exe(main), np.array(shape, np.int64))


def test_tensor_outside_its_storage_is_a_vm_error():
    main = fn("main", [], [("AllocStorage", 16, 16, "float32", 0),
                           ("AllocTensor", 0, 8, [3], "float32", 1), ("Ret", 1)])
    with pytest.raises(VMError, match=r"does not fit in storage of 16 bytes.*\[in main at pc 1"):
        run(exe(main))


def test_kill_register_frees_the_value():
    # r1 is killed on the first pass through the loop only: the verifier cannot know, the VM does
    main = fn("main", ["x"], [("LoadConsti", 0, 3), ("Move", 1, 0),
                              ("If", 3, 3, 1, 1),                                     # pc 2
                              ("GetField", 1, 0, 2), ("KillRegister", 1), ("Goto", -3)],
              param_types=[ANY])
    with pytest.raises(VMError, match="r1 holds a NoneType"):
        run(exe(main), (np.ones(1, np.float32),))


# ---------------------------------------------------------------- kernels and shape functions

@pytest.mark.parametrize("xs, ys", [((3, 1), (1, 4)), ((0, 5), (1, 5)), ((1, 1), (1, 1)),
                                    ((7, 9), (7, 9)), ((5, 17), (1, 17))])
def test_call_shape_func_and_call_kernel_compute_a_broadcast_add(kernel_exe, xs, ys):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ys).astype(np.float32)
    np.testing.assert_array_equal(run(kernel_exe, x, y, name="dynamic_add"), x + y)


def test_non_contiguous_arguments_are_made_contiguous(kernel_exe):
    x = np.arange(40, dtype=np.float32).reshape(5, 8)[:, ::2]
    y = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(run(kernel_exe, x, y, name="dynamic_add"), x + y)


def test_results_of_successive_invokes_do_not_alias(kernel_exe):
    machine = VirtualMachine(kernel_exe)
    a = machine.invoke("dynamic_add", np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    b = machine.invoke("dynamic_add", np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32))
    assert not np.shares_memory(a, b) and np.all(a == 2) and np.all(b == 0)


def test_kernel_errors_propagate_with_their_type_and_location(kernel_exe):
    with pytest.raises(ShapeError, match=r"in bad_add at pc 2 \(CallKernel\)"):
        run(kernel_exe, np.ones((1, 4), np.float32), name="bad_add")


def test_shape_function_errors_propagate_as_shape_errors(kernel_exe):
    with pytest.raises(ShapeError, match=r"in dynamic_add at pc 0 \(CallShapeFunc\)"):
        run(kernel_exe, np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), name="dynamic_add")


def test_loaded_kernels_are_shared_by_vms_of_one_executable(kernel_exe):
    assert VirtualMachine(kernel_exe).kernels is VirtualMachine(kernel_exe).kernels


def test_profile_counts_opcodes_and_times_kernels(kernel_exe):
    machine = VirtualMachine(kernel_exe, profile=True)
    machine.invoke("dynamic_add", np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    machine.invoke("dynamic_add", np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    stats = machine.profile()
    assert stats["opcodes"]["CallKernel"] == 2 and stats["opcodes"]["Ret"] == 2
    assert stats["kernels"]["add"]["calls"] == 2 and stats["kernels"]["add"]["seconds"] > 0


def test_profile_without_profiling_is_a_vm_error():
    with pytest.raises(VMError, match="profile=True"):
        VirtualMachine(is_even_exe()).profile()


# ---------------------------------------------------------------- invoke's argument checks

def typed_exe():
    main = fn("main", ["x"], [("Ret", 0)], param_types=[tensor(None, 3)])
    pair = fn("pair", ["p"], [("Ret", 0)],
              param_types=[{"kind": "tuple", "fields": [tensor(dtype="int64"), NAT]}])
    call = fn("call", ["f"], [("Ret", 0)], param_types=[FUNC])
    return exe(main, pair, call, constructors=NAT_CTORS + [{"name": "Leaf", "tag": 0, "arity": 0, "adt": "Tree"}])


def test_unknown_function_name_lists_the_functions():
    with pytest.raises(VMError, match="no function named 'nope'; functions: main, pair, call"):
        run(typed_exe(), name="nope")


@pytest.mark.parametrize("args, phrase", [
    ((), "main takes 1 arguments \\(x\\), got 0"),
    ((np.zeros((2, 3), np.float32),) * 2, "takes 1 arguments"),
    ((np.zeros((2, 3), np.float64),), "parameter 'x': expected dtype float32"),
    (([["a", "b", "c"]],), "expected float32\\[\\?, 3\\], got a Python list of shape \\(1, 3\\) of strings"),
    (([[1.0, 2.0]],), "expected dim 1 = 3 \\(float32\\[\\?, 3\\]\\), got a Python list of shape \\(1, 2\\)"),
    ((np.zeros((2, 3, 1), np.float32),), "expected rank 2"),
    ((np.zeros((2, 4), np.float32),), "expected dim 1 = 3 \\(float32\\[\\?, 3\\]\\), got float32\\[2, 4\\]"),
    ((object(),), "expected dtype float32"),
])
def test_bad_tensor_arguments_are_rejected(args, phrase):
    with pytest.raises(InvokeArgumentError, match=phrase):
        run(typed_exe(), *args)


def test_good_tensor_arguments_are_accepted_in_any_array_form():
    assert run(typed_exe(), np.zeros((0, 3), np.float32)).shape == (0, 3)
    x = np.zeros((4, 6), np.float32)[:, ::2]
    out = run(typed_exe(), x)
    assert out.flags.c_contiguous and out.shape == (4, 3)


@pytest.mark.parametrize("arg, phrase", [
    ([np.array(1), nat(1)], "expected a tuple of 2 values"),
    ((np.array(1),), "expected a tuple of 2 values"),
    ((np.array(1, np.int32), nat(1)), "parameter 'p'\\[0\\]: expected dtype int64"),
    ((np.array(1), np.array(1)), "expected a vm.ADT of type Nat"),
    ((np.array(1), ADT("Leaf", 0)), "expected a Nat value, got constructor 'Leaf'"),
    ((np.array(1), ADT("Unknown", 0)), "expected a Nat value"),
])
def test_bad_tuple_and_adt_arguments_are_rejected(arg, phrase):
    with pytest.raises(InvokeArgumentError, match=phrase):
        run(typed_exe(), arg, name="pair")


def test_tuple_and_adt_arguments_round_trip():
    value = (np.array(3), nat(2))
    out = run(typed_exe(), value, name="pair")
    assert out[0] == 3 and out[1] == nat(2)


def test_func_parameters_take_closures_only():
    assert run(typed_exe(), Closure(0), name="call") == Closure(0)
    with pytest.raises(InvokeArgumentError, match="expected a vm.Closure"):
        run(typed_exe(), len, name="call")
    with pytest.raises(InvokeArgumentError, match="expected a vm.Closure"):
        run(typed_exe(), Closure(99), name="call")


def test_unverified_bytecode_is_rejected_before_running():
    from dynvm.vm import ExecutableFormatError
    with pytest.raises(ExecutableFormatError, match="register r9 out of range"):
        VirtualMachine(exe(fn("main", [], [("Move", 9, 0), ("Ret", 0)], registers=2)))


def test_returned_immediates_are_owned_by_the_caller():
    main = fn("main", [], [("LoadConsti", 1, 0), ("Ret", 0)])
    machine = VirtualMachine(exe(main))
    first = machine.invoke("main")
    first[...] = 42
    assert machine.invoke("main") == 1 and first.flags.writeable


def test_shape_of_a_non_tensor_is_a_vm_error():
    main = fn("main", ["p"], [("ShapeOf", 0, 1), ("Ret", 1)], param_types=[ANY])
    with pytest.raises(VMError, match="r0 holds a tuple, expected a tensor"):
        run(exe(main), ())


def test_constants_are_cache_aligned_copies_when_numpy_did_not_align_them():
    from dynvm.vm.values import cache_aligned
    raw = np.zeros(4096 + 64, np.uint8)
    for shift in range(0, 64, 4):
        a = raw[shift:shift + 4096].view(np.float32).reshape(32, 32)
        a[...] = np.arange(1024, dtype=np.float32).reshape(32, 32)
        got = cache_aligned(a)
        assert got.__array_interface__["data"][0] % 64 == 0
        np.testing.assert_array_equal(got, a)
        assert (got is a) == (a.__array_interface__["data"][0] % 64 == 0)


PYTHON_VALUES = """
def @main(%x: Tensor[(?, 2), float32], %n: Tensor[(), int64], %flag: Tensor[(), bool]) -> Tensor[(?, 2), float32] {
  if (%flag) { add(%x, cast(%n, dtype="float32")) } else { %x }
}
"""


def test_python_numbers_and_lists_convert_by_the_declared_dtype():
    from dynvm.compiler import build
    from dynvm.compiler.ir.parser import parse
    vm = VirtualMachine(build(parse(PYTHON_VALUES)))
    out = vm.invoke("main", [[1, 2], [3.5, 4]], 2, True)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[3, 4], [5.5, 6]])
    np.testing.assert_array_equal(vm.invoke("main", ((1.0, 2.0),), True, False), [[1, 2]])


@pytest.mark.parametrize("args, phrase", [
    (([[1, 2]], 2.5, True), "parameter 'n': expected int64\\[\\], got a Python float of floats"),
    (([[1, 2]], 2 ** 70, True), "parameter 'n': expected int64\\[\\], got a Python int of values that are not"),
    (([[1, 2]], 1, 1), "parameter 'flag': expected bool\\[\\], got a Python int of integers"),
    (([[1], [2, 3]], 1, True), "parameter 'x': cannot make a tensor of a Python list"),
    (([1, 2], 1, True), "parameter 'x': expected rank 2 \\(float32\\[\\?, 2\\]\\), got a Python list of shape \\(2,\\)"),
])
def test_python_values_the_dtype_cannot_hold_are_named_as_python_values(args, phrase):
    from dynvm.compiler import build
    from dynvm.compiler.ir.parser import parse
    vm = VirtualMachine(build(parse(PYTHON_VALUES)))
    with pytest.raises(InvokeArgumentError, match=phrase):
        vm.invoke("main", *args)


def test_a_vm_loads_a_path_and_rejects_other_things(tmp_path):
    path = tmp_path / "model.dvm"
    typed_exe().save(path)
    x = np.ones((2, 3), np.float32)
    for where in (path, str(path)):
        np.testing.assert_array_equal(VirtualMachine(where).invoke("main", x), run(typed_exe(), x))
    with pytest.raises(TypeError, match="an Executable or the path of a .dvm file, got a bytes"):
        VirtualMachine(path.read_bytes())
