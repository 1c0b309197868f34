"""Compile time and memory against graph size: `build` should cost the same per node at any size.

    python benchmarks/compile_scaling.py [--ops 1000 10000 100000] [--tiny] [--no-memory]

The graph is the plain sequential model a user writes, `h = tanh(add(dense(h, w), b))` per
layer on x: float32[?, 64], in two forms of the same ops:
- nested: one nested expression (the layer of depth d is d calls deep; no lets at all);
- lets: every op bound by its own `let` (a let chain as long as the number of ops).
All layers share one weight and one bias constant (the measure is the compiler, not the
constant pool), so every size compiles the same kernels: a first build warms the kernel cache
and the timed builds compile no LLVM code. For each size: the build time (a build without
tracing), the peak memory Python allocated during the build (a second build under
tracemalloc; tracing slows it, so its time is not reported), and both per op. A build has a
fixed cost (emitting the kernels' LLVM IR, about a second), so the linearity measure is the
marginal cost per op between consecutive sizes, (t2 - t1) / (ops2 - ops1): the last line of a
form says whether it grows from the first pair of sizes to the last (more than 2x: "grows",
i.e. something in the compiler is not linear). Not a test.
"""
import argparse
import gc
import os
import time
import tracemalloc

import numpy as np

from dynvm.bench.harness import cpu_lines
from dynvm.compiler import build, ir, op
from dynvm.compiler.passes.fuse_ops import use_counts

HIDDEN = 64
OPS_PER_LAYER = 3
GROWTH_LIMIT = 2.0      # marginal cost ratio last/first pair of sizes above which it "grows"


def model(layers: int, form: str) -> ir.IRModule:
    """`layers` layers of tanh(add(dense(h, w), b)) as one nested expression or a let chain."""
    x = ir.var("x", ir.TensorType((ir.Any(), HIDDEN), "float32"))
    rng = np.random.default_rng(0)
    w = ir.const((rng.standard_normal((HIDDEN, HIDDEN)) * 0.1).astype(np.float32))
    b = ir.const((rng.standard_normal(HIDDEN) * 0.1).astype(np.float32))
    if form == "nested":
        h = x
        for _ in range(layers):
            h = op.tanh(op.add(op.dense(h, w), b))
        return ir.IRModule.from_expr(ir.Function([x], h))
    steps = []                       # (var, value) of every op, then the lets from the inside out
    h = x
    for i in range(layers):
        for k, make in enumerate((lambda v: op.dense(v, w), lambda v: op.add(v, b), op.tanh)):
            v = ir.var(f"h{i}_{k}")
            steps.append((v, make(h)))
            h = v
    body = h
    for v, value in reversed(steps):
        body = ir.Let(v, value, body)
    return ir.IRModule.from_expr(ir.Function([x], body))


def ir_nodes(mod) -> int:
    """Distinct expression nodes of the graph (calls, lets, vars, constants; not op names)."""
    body = mod["main"].body
    return len(use_counts(body)) + 1


def timed_build(layers: int, form: str) -> float:
    mod = model(layers, form)
    gc.collect()
    start = time.perf_counter()
    build(mod)
    return time.perf_counter() - start


def peak_build_memory(layers: int, form: str) -> float:
    """Peak bytes Python allocated during `build` (the graph itself excluded)."""
    mod = model(layers, form)
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    build(mod)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def check(x_rows=3, layers=4):
    """The benchmark's model computes what numpy does (both forms), so the timings are of a
    correct compile."""
    from dynvm.vm import VirtualMachine
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((HIDDEN, HIDDEN)) * 0.1).astype(np.float32)
    b = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((x_rows, HIDDEN)).astype(np.float32)
    want = x
    for _ in range(layers):
        want = np.tanh(want @ w.T + b)
    for form in ("nested", "lets"):
        got = VirtualMachine(build(model(layers, form))).invoke("main", x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000],
                        help="graph sizes in ops (3 ops per layer)")
    parser.add_argument("--tiny", action="store_true", help="two small sizes (smoke test)")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc builds")
    args = parser.parse_args(argv)
    sizes = [30, 100, 300] if args.tiny else args.ops
    for line in cpu_lines():
        print(line)
    check()
    timed_build(2, "nested")                     # warm the kernel cache
    print(f"{'form':8} {'ops':>8} {'IR nodes':>9} {'build s':>9} {'us/op':>8} {'marginal':>9} "
          f"{'peak MB':>9} {'KB/op':>7}")
    for form in ("nested", "lets"):
        marginal, last = [], None
        for ops in sizes:
            layers = max(1, ops // OPS_PER_LAYER)
            n_ops = layers * OPS_PER_LAYER
            nodes = ir_nodes(model(layers, form))
            seconds = timed_build(layers, form)
            peak = None if args.no_memory else peak_build_memory(layers, form)
            step = ""
            if last is not None:
                marginal.append((seconds - last[1]) / (n_ops - last[0]))
                step = f"{marginal[-1] * 1e6:9.1f}"
            last = (n_ops, seconds)
            mem = "" if peak is None else f"{peak / 2**20:9.1f} {peak / n_ops / 1024:7.2f}"
            print(f"{form:8} {n_ops:>8} {nodes:>9} {seconds:9.3f} {seconds / n_ops * 1e6:8.1f} "
                  f"{step:>9} {mem}", flush=True)
        growth = marginal[-1] / marginal[0] if len(marginal) > 1 and marginal[0] > 0 else 1.0
        verdict = "grows" if growth > GROWTH_LIMIT else "linear"
        print(f"{form}: marginal us/op x{growth:.2f} from the first to the last pair of sizes: "
              f"{verdict}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
