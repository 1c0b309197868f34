"""The VM's limits: max_steps counts bytecode instructions on every path (native loops charge
what the bytecode loop executes), Ctrl-C stops a native loop, max_memory_bytes, cyclic
arguments, deep lists, and the boundary's small promises (byte order, no aliasing)."""
import numpy as np
import pytest

from dynvm.compiler import build
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import VMStepLimitError

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
