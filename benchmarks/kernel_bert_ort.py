"""BERT (dynvm.models.bert_varlen, the small config) on the VM against ONNX Runtime at one
thread, by the calling thread's CPU time (not a test).

    python benchmarks/kernel_bert_ort.py [--seqs 16 128 256] [--reps 31] [--profile] [--tiny]

At one thread both run every kernel on the calling thread (ORT with intra_op_num_threads=1), so
time.thread_time counts their work and not the time other processes take the core from them
(their cache traffic still counts): on a shared machine this is the comparison to read, where
`dynvm bench`'s wall-clock ratios are marked noisy. The two are called in turn once per
repetition; each number is the median (needs onnx and onnxruntime). The "unpacked" column is
the VM on the same model built with `prepack=False` (dense packs its weight on every call).
`--profile` adds the per-kernel table of both: the VM
profiler's kernels and ORT's per-node profile (wall time, summed per op and output shape).
"""
import argparse
import collections
import json
import os
import time

import numpy as np

from dynvm.bench import peers
from dynvm.compiler import build
from dynvm.models import bert_varlen
from dynvm.vm import VirtualMachine


def ort_session(model, profile=False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    if profile:
        so.enable_profiling = True
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def cpu_medians(reps, *fns):
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, spent in zip(fns, times):
            t = time.thread_time()
            fn()
            spent.append(time.thread_time() - t)
    return [float(np.median(s)) for s in times]


def profile_tables(exe, model, x, reps):
    vm = VirtualMachine(exe, profile=True, threads=1)
    sess = ort_session(model, profile=True)
    for _ in range(reps):
        vm.invoke("main", x)
        sess.run(None, {"x": x})
    rows = sorted(((s / reps, c // reps, f"{n} [{v}]") for (n, v), (c, s) in
                   vm.profile().kernels.items()), reverse=True)
    print(f"  dynvm kernels {sum(r[0] for r in rows) * 1e6:.0f} us")
    for sec, calls, name in rows:
        print(f"    {sec * 1e6:8.1f} us x{calls:<3} {name}")
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    per = collections.defaultdict(float)
    count = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = f'{e["args"]["op_name"]} {e["args"].get("output_type_shape", "")}'
            per[key] += e["dur"] / reps
            count[key] += 1
    print(f"  ORT nodes {sum(per.values()):.0f} us")
    for key, us in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"    {us:8.1f} us x{count[key] // reps:<3} {key}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seqs", type=int, nargs="+", default=[16, 128, 256])
    p.add_argument("--reps", type=int, default=31)
    p.add_argument("--profile", action="store_true", help="per-kernel tables too")
    p.add_argument("--tiny", action="store_true",
                   help="seq 16, 3 repetitions (a smoke run; the model of kernel_threads.py, so "
                        "its kernels are built once for both)")
    args = p.parse_args()
    config = bert_varlen.SMALL
    if args.tiny:
        args.seqs, args.reps = [16], 3
    w = bert_varlen.weights(config)
    exe = build(bert_varlen.build_module(w))
    unpacked = VirtualMachine(build(bert_varlen.build_module(w), prepack=False), threads=1)
    model = peers.onnx_bert_model(w)
    vm, sess = VirtualMachine(exe, threads=1), ort_session(model)
    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); "
          f"thread CPU time, median of {args.reps}")
    print(f"{'seq':>5} {'dynvm':>10} {'unpacked':>10} {'ORT':>10} {'vm/ORT':>7} "
          f"{'unp/ORT':>7}")
    for seq in args.seqs:
        x = bert_varlen.make_input(seq, config=config)
        np.testing.assert_allclose(vm.invoke("main", x), sess.run(None, {"x": x})[0],
                                   rtol=1e-3, atol=1e-3)
        for _ in range(3):
            vm.invoke("main", x), unpacked.invoke("main", x), sess.run(None, {"x": x})
        mine, plain, theirs = cpu_medians(args.reps, lambda: vm.invoke("main", x),
                                          lambda: unpacked.invoke("main", x),
                                          lambda: sess.run(None, {"x": x}))
        print(f"{seq:>5} {mine * 1e3:8.3f}ms {plain * 1e3:8.3f}ms {theirs * 1e3:8.3f}ms "
              f"{mine / theirs:7.2f} {plain / theirs:7.2f}")
        if args.profile:
            profile_tables(exe, model, x, args.reps)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
