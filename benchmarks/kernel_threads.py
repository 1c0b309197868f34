"""The VM at 1 and 2 kernel threads in one process, interleaved: BERT (dynvm.models.bert_varlen,
the small config and, with --base, BERT-base) over sequence lengths, the one-op invoke (a
1-element add) and every model of `dynvm bench` at size 1 (`--size-one`): no kernel there is big
enough to split, so the columns must match (no wake-up tail). Not a test.

    python benchmarks/kernel_threads.py [--reps 15] [--seqs 1 16 128 256] [--base] [--size-one]
                                        [--tiny] [--no-prepack]

Both VMs share one executable; their invocations alternate batch by batch
(dynvm.bench.harness.measure), so machine noise hits both alike: the speedup column is the
number to read. Each batch is timed after 50 ms of its own VM's untimed calls, so the pool's
worker and the caches are as a program using one thread count finds them. The load average is printed before and after: on a machine busier than its
cores, a second thread cannot help (and a preempted worker holding the last chunk makes the
caller wait).
"""
import argparse
import os

import numpy as np

from dynvm.bench.harness import fmt_time, measure
from dynvm.bench.suite import MODELS
from dynvm.compiler import build, ir, op
from dynvm.models import bert_varlen
from dynvm.vm import VirtualMachine

THREADS = (1, 2)
# each batch follows this long of its own VM's untimed calls: a batch right after the other
# VM's found the worker asleep and the data in the other core's cache (BERT seq 256 measured
# 1.39x without, 1.61x with, quiet machine), which a program on one thread count never sees
SETTLE_SECONDS = 0.05


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def compare(exe, args, reps, result=np.asarray):
    """{threads: median seconds} of `main(*args)` on one VM per thread count, interleaved;
    `result` turns an invocation's value into an array (to check the bits are identical)."""
    vms = {t: VirtualMachine(exe, threads=t) for t in THREADS}
    results = [result(vm.invoke("main", *args)) for vm in vms.values()]
    assert all(r.tobytes() == results[0].tobytes() for r in results)    # identical bits
    return measure({t: (lambda vm=vm: vm.invoke("main", *args)) for t, vm in vms.items()}, reps,
                   settle=SETTLE_SECONDS)


def size_one_rows(reps):
    """Every model of `dynvm bench` (BERT-base aside: slow to build) at size 1."""
    for name, model in MODELS.items():
        if name == "bert_base":
            continue
        ctx = model.setup()
        runner = model.runners["vm"](ctx, 1)         # builds ctx["exe"]
        args = runner.prepare(model.sample(ctx, 1))
        row(f"{name} size 1", compare(ctx["exe"], args if type(args) is tuple else (args,), reps,
                                      runner.result))


def row(label, times):
    one, two = times[1], times[2]
    print(f"{label:>18} {fmt_time(one):>10} {fmt_time(two):>10} {one / two:8.2f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--seqs", type=int, nargs="+", default=[1, 16, 128, 256])
    p.add_argument("--base", action="store_true", help="BERT-base as well (slow to build)")
    p.add_argument("--size-one", action="store_true",
                   help="every model of dynvm bench at size 1 as well")
    p.add_argument("--tiny", action="store_true", help="seq 16, 3 repetitions (a smoke run)")
    p.add_argument("--no-prepack", action="store_true",
                   help="build with prepack=False: dense packs its weight on every call")
    args = p.parse_args()
    if args.tiny:
        args.reps, args.seqs = 3, [16]
    print(f"load average {load()} ({os.cpu_count()} cores); median of {args.reps}")
    print(f"{'':>18} {'1 thread':>10} {'2 threads':>10} {'speedup':>8}")
    t = ir.TensorType((1,), "float32")
    x, y = ir.var("x", t), ir.var("y", t)
    one = np.ones(1, np.float32)
    row("one-op add", compare(build(ir.IRModule.from_expr(ir.Function([x, y], op.add(x, y)))),
                              (one, one), args.reps))
    configs = [("bert", bert_varlen.SMALL)]
    if args.base:
        configs.append(("bert-base", bert_varlen.BASE))
    for name, config in configs:
        exe = build(bert_varlen.build_module(bert_varlen.weights(config)),
                    prepack=not args.no_prepack)
        for seq in args.seqs:
            row(f"{name} seq {seq}",
                compare(exe, (bert_varlen.make_input(seq, config=config),), args.reps))
    if args.size_one:
        size_one_rows(args.reps)
    print(f"load average {load()}")


if __name__ == "__main__":
    main()
