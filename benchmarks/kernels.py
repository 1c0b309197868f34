"""Kernel and call-overhead benchmarks: dynvm vs numpy, printed as one table (not a test).

    python benchmarks/kernels.py [--reps 20]

Every number is the median of >= `reps` repetitions, each repetition timing a batch of calls;
dynvm and its baseline are measured in the same run and interleaved (one batch of each per
repetition) so machine noise hits both alike. The ratio column is baseline time / dynvm time
(> 1: dynvm is faster), or for overhead rows the measured value against its target.

Programs are built with the public API (compiler.ir/op/build, vm.VirtualMachine). To add rows,
append a function to BENCHMARKS that returns a list of `row(...)` dicts; rows for ops that do
not compile yet should say "n/a" (see `na_row`).
"""
import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from compiler import build, ir, op  # noqa: E402
from vm import VirtualMachine  # noqa: E402

REPS = 20


# ---------------------------------------------------------------------------------------------
# measuring


def batch_size(fn, budget=0.002):
    """Calls per batch so that a batch lasts about `budget` seconds (at least 1)."""
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-7)
    return max(1, int(budget / once))


def compare(dynvm, baseline, reps=None):
    """Median seconds per call of `dynvm` and `baseline`, interleaved batch by batch."""
    reps = reps or REPS
    for fn in (dynvm, baseline):
        fn()
    n_d, n_b = batch_size(dynvm), batch_size(baseline)
    times_d, times_b = [], []
    for _ in range(reps):
        for fn, n, times in ((dynvm, n_d, times_d), (baseline, n_b, times_b)):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - t) / n)
    return float(np.median(times_d)), float(np.median(times_b))


def row(name, size, dynvm_s, baseline_s=None, baseline="numpy", note=""):
    return {"name": name, "size": size, "dynvm": dynvm_s, "baseline": baseline_s,
            "baseline_name": baseline, "note": note}


def na_row(name, size, why):
    return {"name": name, "size": size, "dynvm": None, "baseline": None, "baseline_name": "",
            "note": f"n/a ({why})"}


def kernel_kinds(exe):
    """e.g. "1 compiled" or "3 compiled, 1 extern": what the executable really runs."""
    kinds = [k["kind"] for k in exe.kernels["kernels"]]
    return ", ".join(f"{kinds.count(k)} {k}" for k in ("compiled", "extern") if k in kinds)


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


# ---------------------------------------------------------------------------------------------
# report


def cpu_lines():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    import llvmlite.binding as llvm
    from kernels import codelib
    return [f"CPU (/proc/cpuinfo): {model}, {os.cpu_count()} cores",
            f"llvmlite host CPU: {codelib.host_target()['cpu']} ({llvm.get_process_triple()})",
            f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    return f"{seconds * 1e6:.2f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3f} ms"


def print_table(rows):
    print(f"{'benchmark':52} {'size':>9} {'dynvm':>12} {'baseline':>12} {'ratio':>7}  note")
    for r in rows:
        ratio = (f"{r['baseline'] / r['dynvm']:.2f}x" if r["baseline"] and r["dynvm"] else "")
        base = fmt_time(r["baseline"]) if r["baseline"] is not None else ""
        print(f"{r['name']:52} {r['size']:>9} {fmt_time(r['dynvm']):>12} {base:>12} {ratio:>7}  "
              f"{r['baseline_name'] + '; ' if r['baseline_name'] else ''}{r['note']}")


def main(argv=None):
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions per number (>= 20)")
    REPS = max(20, parser.parse_args(argv).reps)
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
