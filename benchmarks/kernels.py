"""Kernel and call-overhead benchmarks: dynvm vs numpy, printed as one table (not a test).

    python benchmarks/kernels.py [--reps 20] [--tiny]

Every number is the median of >= `reps` repetitions, each repetition timing a batch of calls;
dynvm and its baseline are measured in the same run and interleaved (one batch of each per
repetition) so machine noise hits both alike. The ratio column is baseline time / dynvm time
(> 1: dynvm is faster), or for overhead rows the measured value against its target. `--tiny`
takes 2 repetitions (the test suite's smoke run).

Programs are built with the public API (compiler.ir/op/build, vm.VirtualMachine). To add rows,
append a function to BENCHMARKS that returns a list of `row(...)` dicts; rows for ops that do
not compile yet should say "n/a" (see `na_row`).
"""
import argparse

import numpy as np

from dynvm.bench import harness
from dynvm.bench.harness import compare, cpu_lines, kernel_kinds, na_row, print_table, row
from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine

REPS = harness.REPS


# ---------------------------------------------------------------------------------------------
# benchmarks (each returns rows)


def vec(name, n, dtype="float32"):
    return ir.var(name, ir.TensorType((n,), dtype))


def chain_program(n):
    a, b, c = vec("a", n), vec("b", n), vec("c", n)
    y = op.multiply(op.tanh(op.add(op.multiply(a, b), c)), op.sigmoid(a))
    return ir.IRModule.from_expr(ir.Function([a, b, c], y))


def bench_fused_chain():
    """tanh(a*b + c) * sigmoid(a), float32: one fused kernel vs numpy op by op."""
    rows = []
    for n in (1000, 100_000, 1_000_000):
        exe = build(chain_program(n))
        vm = VirtualMachine(exe)
        rng = np.random.default_rng(0)
        a, b, c = (rng.standard_normal(n).astype(np.float32) for _ in range(3))

        def numpy_chain():
            return np.tanh(a * b + c) * (1 / (1 + np.exp(-a)))

        got = vm.invoke("main", a, b, c)
        np.testing.assert_allclose(got, numpy_chain(), rtol=1e-5, atol=1e-6)
        d, base = compare(lambda: vm.invoke("main", a, b, c), numpy_chain)
        rows.append(row("chain tanh(a*b+c)*sigmoid(a) vm.invoke", n, d, base,
                        note=kernel_kinds(exe)))
    return rows


def bench_add():
    """a + b, float32, 1e6 elements: vm.invoke (allocates its output) vs np.add."""
    n = 1_000_000
    a, b = vec("a", n), vec("b", n)
    exe = build(ir.IRModule.from_expr(ir.Function([a, b], op.add(a, b))))
    vm = VirtualMachine(exe)
    x, y = np.ones(n, np.float32), np.full(n, 2.0, np.float32)
    np.testing.assert_array_equal(vm.invoke("main", x, y), x + y)
    d, base = compare(lambda: vm.invoke("main", x, y), lambda: np.add(x, y))
    return [row("add vm.invoke", n, d, base, note=kernel_kinds(exe))]


def bench_call_overhead():
    """A 1-element add end to end through vm.invoke, and the VM's own cost per kernel
    instruction from the profiler (CallKernel handler time minus native kernel time)."""
    a, b = vec("a", 1), vec("b", 1)
    exe = build(ir.IRModule.from_expr(ir.Function([a, b], op.add(a, b))))
    vm = VirtualMachine(exe)
    x, y = np.ones(1, np.float32), np.ones(1, np.float32)
    d, base = compare(lambda: vm.invoke("main", x, y), lambda: np.add(x, y))
    rows = [row("1-element add vm.invoke (target <= 10 us)", 1, d, base, note=kernel_kinds(exe))]
    costs = []
    for _ in range(REPS):
        pvm = VirtualMachine(exe, profile=True)
        for _ in range(2000):
            pvm.invoke("main", x, y)
        costs.append(pvm.profile().kernel_instruction_overhead())
    rows.append(row("VM cost per kernel instruction (target <= 1.5 us)", 1, float(np.median(costs)),
                    None, baseline="", note="profiler: CallKernel time - native time"))
    return rows


BENCHMARKS = [bench_fused_chain, bench_add, bench_call_overhead]


def main(argv=None):
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions per number (>= 20)")
    parser.add_argument("--tiny", action="store_true", help="2 repetitions (a smoke run)")
    args = parser.parse_args(argv)
    REPS = harness.REPS = 2 if args.tiny else max(20, args.reps)
    for line in cpu_lines():
        print(line)
    rows = []
    for bench in BENCHMARKS:
        try:
            rows += bench()
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not hide the others
            rows.append(na_row(bench.__name__, "-", f"{type(e).__name__}: {e}"[:80]))
    print_table(rows)


if __name__ == "__main__":
    main()
