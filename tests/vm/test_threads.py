"""Threads: VMs in several threads may share one Executable; one VM used by several threads at
once refuses the second invocation with a VMError (never a wrong answer or a crash)."""
import threading

import numpy as np
import pytest

from dynvm import build, ir, op
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import VMError

SIZES = (1, 3, 1, 4096, 2, 65536, 0, 17)


@pytest.fixture(scope="module")
def exe():
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    y = op.add(op.exp(op.multiply(x, ir.const(0.5, "float32"))), op.sum(x))
    return build(ir.IRModule.from_expr(ir.Function([x], y)))


def expected(x):
    return np.exp(x * np.float32(0.5)) + x.sum(dtype=np.float32)


def hammer(invoke, rounds, seed, outcomes):
    rng = np.random.default_rng(seed)
    for i in range(rounds):
        x = rng.standard_normal(SIZES[(i + seed) % len(SIZES)]).astype(np.float32)
        try:
            got = invoke(x)
        except VMError as e:
            outcomes.append(("refused", str(e)))
            continue
        ok = got.shape == x.shape and np.allclose(got, expected(x), rtol=1e-4, atol=1e-3)
        outcomes.append(("ok" if ok else "WRONG", x.shape))


def run_threads(make_invoke, rounds=60):
    outcomes, threads = [], []
    for seed in range(4):
        invoke = make_invoke()
        threads.append(threading.Thread(target=hammer, args=(invoke, rounds, seed, outcomes)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(outcomes) == 4 * rounds
    return outcomes


def test_one_vm_per_thread_sharing_the_executable_is_always_right(exe):
    def own_vm():
        vm = VirtualMachine(exe)
        return lambda x: vm.invoke("main", x)
    outcomes = run_threads(own_vm)
    assert {kind for kind, _ in outcomes} == {"ok"}


def test_one_vm_shared_by_threads_refuses_overlapping_calls_and_is_never_wrong(exe):
    vm = VirtualMachine(exe)
    outcomes = run_threads(lambda: (lambda x: vm.invoke("main", x)), rounds=150)
    kinds = {kind for kind, _ in outcomes}
    assert "WRONG" not in kinds and kinds <= {"ok", "refused"}
    refusals = [msg for kind, msg in outcomes if kind == "refused"]
    assert all("one VirtualMachine per thread" in msg for msg in refusals)
    x = np.arange(5, dtype=np.float32)                     # still usable afterwards
    np.testing.assert_allclose(vm.invoke("main", x), expected(x), rtol=1e-5)
