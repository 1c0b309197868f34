"""The VM's limits: max_steps counts bytecode instructions on every path (native loops charge
what the bytecode loop executes), Ctrl-C stops a native loop, max_memory_bytes, cyclic
arguments, deep lists, and the boundary's small promises (byte order, no aliasing)."""
import os
import subprocess
import sys
from pathlib import Path

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


# ---------------------------------------------------------------- Ctrl-C

SIGINT_SCRIPT = r"""
import os, signal, sys, threading, time
import numpy as np
from dynvm.compiler import build
from dynvm.vm import VirtualMachine
from tests.e2e.test_control_flow import countdown_module

vm = VirtualMachine(build(countdown_module()))

def interrupted_after_300ms():
    '''Run a 10**9-iteration native loop, SIGINT at 0.3 s: (exception, ms from signal to it).'''
    sent = []
    def interrupt():
        time.sleep(0.3)
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt).start()
    try:
        vm.invoke("loop", np.int64(10 ** 9), np.int64(0))
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
    assert int(vm.invoke("loop", np.int64(10), np.int64(0))) == 55    # usable afterwards
time.sleep(0.05)        # no second KeyboardInterrupt is pending
print("done")
"""


def test_ctrl_c_stops_a_native_loop_within_50ms_and_the_vm_stays_usable():
    """Python's own handler raises KeyboardInterrupt; a handler installed later is chained as
    well; one that does not raise still ends the invocation with KeyboardInterrupt."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SIGINT_SCRIPT], cwd=root, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[-2] == "done"
    kinds = [line.split()[0] for line in lines[:3]]
    assert kinds == ["default", "mine", "native"]      # "native loop loop_loop interrupted ..."
    for line in lines[:3]:
        assert float(line.split()[-1]) < 50, line
