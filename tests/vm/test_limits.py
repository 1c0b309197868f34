"""The VM's limits: max_steps counts bytecode instructions on every path (native loops charge
what the bytecode loop executes), Ctrl-C stops a native loop, max_memory_bytes, cyclic
arguments, deep lists, and the boundary's small promises (byte order, no aliasing)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynvm.compiler import build, ir, op, prelude
from dynvm.vm import ADT, VirtualMachine
from dynvm.vm.convert import from_list, to_list
from dynvm.vm.errors import InvokeArgumentError, VMMemoryError, VMStepLimitError

from tests.e2e.test_control_flow import countdown_module
from tests.e2e.test_native_loops import loop_module

LOOP_X = np.linspace(-1, 1, 40, dtype=np.float32).reshape(20, 2)


def step_programs():
    """(name, module, function, argument lists): loops run natively and as bytecode."""
    return [("countdown", countdown_module(), "loop",
             [(np.int64(n), np.int64(0)) for n in (0, 1, 7, 300)]),
            ("rnn", loop_module((2,)), "main", [(LOOP_X, np.int64(n)) for n in (0, 1, 5, 19)])]


@pytest.fixture(scope="module", params=step_programs(), ids=lambda p: p[0])
def program(request):
    _, mod, name, arglists = request.param
    return build(mod), build(mod, native_loops=False), name, arglists


def test_steps_are_bytecode_instructions_on_every_path(program):
    native, bytecode, name, arglists = program
    assert any(ins.name == "CallLoop" for fn in native.functions for ins in fn.instructions)
    vms = [VirtualMachine(native), VirtualMachine(bytecode), VirtualMachine(bytecode, profile=True)]
    for args in arglists:
        counts = []
        for vm in vms:      # the profiling VM runs every instruction unfused: an independent count
            vm.invoke(name, *args)
            counts.append(vm.steps)
        assert counts[0] == counts[1] == counts[2] > 0, args


def test_native_and_bytecode_loops_pass_and_fail_alike_around_the_limit(program):
    native, bytecode, name, arglists = program
    for args in arglists:
        counter = VirtualMachine(bytecode)
        counter.invoke(name, *args)
        needed = counter.steps
        for exe in (native, bytecode):
            vm = VirtualMachine(exe, max_steps=needed)
            vm.invoke(name, *args)
            assert vm.steps == needed
            vm = VirtualMachine(exe, max_steps=needed - 1)
            with pytest.raises(VMStepLimitError, match=f"step limit of {needed - 1} "):
                vm.invoke(name, *args)
            assert vm.steps == needed - 1


def test_steps_before_any_invocation_and_after_rejected_arguments(program):
    native, _, name, arglists = program
    vm = VirtualMachine(native)
    assert vm.steps == 0
    vm.invoke(name, *arglists[-1])
    assert vm.steps > 0
    with pytest.raises(TypeError):
        vm.invoke(name, "not an array", *arglists[-1][1:])
    assert vm.steps == 0


# ---------------------------------------------------------------- Ctrl-C

SIGINT_SCRIPT = r"""
import os, signal, sys, threading, time
import numpy as np
from dynvm.compiler import build
from dynvm.vm import VirtualMachine
from tests.e2e.test_control_flow import countdown_module

# Python's own handler and SIGINT unblocked, whatever this process inherited: a child of a
# process that ignores (or blocks) SIGINT starts so, and then Ctrl-C rightly does nothing (in
# the full suite an earlier test in the same pytest worker left it so)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

vm = VirtualMachine(build(countdown_module(), native_loops=sys.argv[1] == "kernel"))
number = np.int64 if sys.argv[2] == "scalar" else (lambda v: np.array(v, np.int64))

def interrupted_after_300ms():
    '''Run a 10**9-iteration native loop, SIGINT at 0.3 s: (exception, ms from signal to it).'''
    sent = []
    def interrupt():
        time.sleep(0.3)
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt).start()
    try:
        vm.invoke("loop", number(10 ** 9), number(0))
    except KeyboardInterrupt as e:
        return e, (time.perf_counter() - sent[0]) * 1e3
    raise AssertionError("the loop ran to its end")

def mine(signum, frame):
    raise KeyboardInterrupt("mine")

for handler in (None, mine, lambda signum, frame: None):
    if handler is not None:
        signal.signal(signal.SIGINT, handler)     # replaces the VM's handler: reinstalled
    error, ms = interrupted_after_300ms()
    print(f"{str(error) or 'default'} {ms:.1f}")
    assert int(vm.invoke("loop", number(10), number(0))) == 55    # usable afterwards
time.sleep(0.05)        # no second KeyboardInterrupt is pending
print("done")
"""


@pytest.mark.parametrize("loop, arguments", [("kernel", "scalar"), ("bytecode", "scalar"),
                                             ("bytecode", "array")])
def test_ctrl_c_stops_a_native_loop_within_50ms_and_the_vm_stays_usable(loop, arguments):
    """Python's own handler raises KeyboardInterrupt; a handler installed later is chained as
    well; one that does not raise still ends the invocation with KeyboardInterrupt. Both native
    loops: a loop kernel (CallLoop), and a bytecode loop the native tier runs, entered from
    invoke's general path (numpy scalars) and from its native fast path (arrays)."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SIGINT_SCRIPT, loop, arguments], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[-2] == "done"
    kinds = [line.split()[0] for line in lines[:3]]
    assert kinds == ["default", "mine", "native"]   # "native loop/tier ... interrupted ..."
    for line in lines[:3]:
        assert float(line.split()[-1]) < 50, line


# ---------------------------------------------------------------- memory

def elementwise_exe():
    """tanh(x) for a float32 vector, and x + y broadcast to (len(x), len(y))."""
    mod = ir.IRModule()
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    mod["main"] = ir.Function([x], op.tanh(x))
    a = ir.var("a", ir.TensorType((ir.Any(),), "float32"))
    b = ir.var("b", ir.TensorType((ir.Any(), 1), "float32"))
    mod["outer"] = ir.Function([a, b], op.add(a, b))
    m = ir.var("m", ir.TensorType((ir.Any(), ir.Any()), "float32"))
    mod["matrix"] = ir.Function([m], op.tanh(m))
    return build(mod)


def test_max_memory_bytes_refuses_an_allocation_before_making_it():
    vm = VirtualMachine(elementwise_exe(), max_memory_bytes=1 << 20)
    x = np.ones(100_000, np.float32)                     # 400 kB per result
    kept = [vm.invoke("main", x), vm.invoke("main", x)]  # results hold their blocks
    allocations = vm.memory_stats()["allocations"]
    with pytest.raises(VMMemoryError, match="would exceed max_memory_bytes=1048576"):
        vm.invoke("main", x)
    assert vm.memory_stats()["allocations"] == allocations
    with pytest.raises(VMMemoryError, match="max_memory_bytes"):
        vm.invoke("main", np.ones(300_000, np.float32))  # too big even alone
    del kept
    np.testing.assert_array_equal(vm.invoke("main", x), np.tanh(x))
    assert vm.memory_stats()["peak_bytes_live"] <= 1 << 20


def test_a_block_from_the_free_list_counts_toward_the_limit_too():
    vm = VirtualMachine(elementwise_exe(), max_memory_bytes=1 << 20)
    x = np.ones(100_000, np.float32)
    for _ in range(3):
        vm.invoke("main", x)                             # dropped at once: one block, reused
    kept = [vm.invoke("main", x), vm.invoke("main", x)]
    with pytest.raises(VMMemoryError):
        vm.invoke("main", x)
    assert len(kept) == 2 and vm.memory_stats()["bytes_live"] <= 1 << 20


def test_out_of_system_memory_is_typed_everywhere():
    """No untyped MemoryError: a broadcast view argument whose compact copy cannot exist, and
    a run-time shape whose storage cannot exist (4 TB each)."""
    vm = VirtualMachine(elementwise_exe())
    huge_view = np.broadcast_to(np.zeros(1, np.float32), (10 ** 6, 10 ** 6))
    with pytest.raises(InvokeArgumentError, match="matrix: parameter 'm'.*cannot be allocated"):
        vm.invoke("matrix", huge_view)
    a, b = np.ones(10 ** 6, np.float32), np.ones((10 ** 6, 1), np.float32)
    with pytest.raises(VMMemoryError, match="out of memory"):
        vm.invoke("outer", a, b)
    np.testing.assert_array_equal(vm.invoke("outer", a[:3], b[:2]), a[:3] + b[:2])


# ---------------------------------------------------------------- ADT arguments and deep lists

LIST_PROGRAM = """
def @double_all(%l: List[Tensor[(), float32]]) -> List[Tensor[(), float32]] {
  @map(fn (%x: Tensor[(), float32]) -> Tensor[(), float32] { add(%x, %x) }, %l)
}
def @total(%l: List[Tensor[(), float32]]) -> Tensor[(), float32] {
  @foldl(fn (%acc: Tensor[(), float32], %x: Tensor[(), float32]) -> Tensor[(), float32] {
    add(%acc, %x)
  }, 0.0f32, %l)
}
def @copy(%l: List[Tensor[(), float32]]) -> List[Tensor[(), float32]] {
  @foldr(fn (%x: Tensor[(), float32], %acc: List[Tensor[(), float32]]) -> List[Tensor[(), float32]] {
    Cons(%x, %acc)
  }, Nil, %l)
}
def @len(%l: List[Tensor[(), float32]]) -> Tensor[(), int64] { @length(%l) }
"""


@pytest.fixture(scope="module")
def list_vm():
    return VirtualMachine(build(prelude.parse(LIST_PROGRAM)))


def test_prelude_recursion_over_a_100000_element_list_fits_the_default_depth(list_vm):
    """map and foldr recurse once per element (foldl and length are loops)."""
    values = np.arange(100_000, dtype=np.float32) % 7
    items = to_list([np.float32(v) for v in values])
    assert [float(v) for v in from_list(list_vm.invoke("double_all", items))] == list(2 * values)
    assert [float(v) for v in from_list(list_vm.invoke("copy", items))] == list(values)


def test_foldl_and_length_over_a_long_list(list_vm):
    values = np.arange(1000, dtype=np.float32) % 7
    items = to_list([np.float32(v) for v in values])
    assert float(list_vm.invoke("total", items)) == float(values.sum(dtype=np.float64))
    assert int(list_vm.invoke("len", items)) == 1000


def test_a_cyclic_adt_argument_is_a_typed_error(list_vm):
    items = to_list([np.float32(1), np.float32(2)])
    items.fields[1].fields = (np.float32(2), items)        # the tail points back to the head
    with pytest.raises(InvokeArgumentError, match="len: parameter 'l' contains itself"):
        list_vm.invoke("len", items)
    shared = to_list([np.float32(3)])
    assert int(list_vm.invoke("len", ADT("Cons", 0, (np.float32(1), shared)))) == 2
    assert int(list_vm.invoke("len", to_list([np.float32(1)] * 3))) == 3


# ---------------------------------------------------------------- the boundary's promises

def test_big_endian_input_is_converted():
    vm = VirtualMachine(elementwise_exe())
    x = np.linspace(-2, 2, 9).astype(">f4")
    np.testing.assert_array_equal(vm.invoke("main", x), vm.invoke("main", x.astype(np.float32)))
    m = np.arange(6, dtype=">f4").reshape(2, 3)[:, ::2]   # big-endian and strided
    np.testing.assert_array_equal(vm.invoke("matrix", m), vm.invoke("matrix", m.astype(np.float32)))
    with pytest.raises(InvokeArgumentError, match="expected dtype float32"):
        vm.invoke("main", x.astype(">f8"))


def test_a_parameter_returned_as_it_is_comes_back_as_a_copy():
    mod = ir.IRModule()
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    mod["same"] = ir.Function([x], x)
    mod["flat"] = ir.Function([x], op.reshape(x, (-1, 1)))
    mod["pair"] = ir.Function([x], ir.Tuple([x, op.tanh(x)]))
    vm = VirtualMachine(build(mod))
    a = np.arange(4, dtype=np.float32)
    for name in ("same", "flat", "pair"):
        got = vm.invoke(name, a)
        first = got[0] if name == "pair" else got
        assert not np.shares_memory(first, a), name
        np.testing.assert_array_equal(first.reshape(-1), a)
        first[...] = -1
        assert a[0] == 0, name
