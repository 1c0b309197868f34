"""dense / matmul float32 kernels vs numpy (OpenBLAS) and ONNX Runtime's MatMul: GFLOP/s at
square sizes on 1 and 2 threads, the matrix-vector ("gemv") shapes in microseconds, then BERT's
dense + bias shapes over sequence lengths, the weight packed at build time (as `build()` packs
a constant weight) and as it is, against numpy, torch.nn.functional.linear
(torch.set_num_threads(1), if installed) and ORT's MatMul with the weight an initializer
(not a test).

    python benchmarks/kernels_matmul.py [--reps 30] [--runs 3] [--sizes 64 256 512 1024]
                                        [--cpu-time] [--bert-only] [--gemv-only] [--tiny]

Square sizes: dynvm at 1 and 2 kernel threads (kernels/pool.py), numpy at 1 and 2 OpenBLAS
threads (switched per call through OpenBLAS's own set_num_threads) and ORT's MatMul in sessions
of 1 and 2 intra-op threads take turns, a batch of calls (about 20 ms) each per repetition, so
machine noise hits them alike. Each batch follows 0.1 s of untimed calls of its own
(`SETTLE_SECONDS`, as `dynvm bench` does): OpenBLAS's and ORT's idle workers spin for tens of
milliseconds after a call and would take the next runtime's second core. Each number is the
median of the repetitions, and the whole table is taken `--runs`
times with the load average before each (the machine may be shared: compare ratios within one
run). The ratios are dynvm / numpy and dynvm / ORT at the same thread count. `--cpu-time`
times the one-thread columns only, by the calling thread's CPU time (time.thread_time: on a
machine busier than its cores the time other processes take is not counted; their cache
traffic still is).
The gemv table (`--gemv-only`: only it) runs dense and matmul with M = 1, 2, 4, 8 rows against
every K x N weight of 256, 1024, 4096 on one thread, against numpy and ORT's MatMul with the
weight as an initializer (as in a model); with `--cpu-time` by thread CPU time too.
Where a second thread starts to pay (the threshold) is benchmarks/kernel_thresholds.py.
`--tiny` runs size 64 with 3 repetitions and two small gemv shapes (the test suite's smoke run).
"""
import argparse
import functools
import ctypes
import glob
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")   # the most threads numpy is switched to

import numpy as np  # noqa: E402

from dynvm.bench.harness import measure  # noqa: E402
from dynvm.bench.peers import SETTLE_SECONDS  # noqa: E402
from dynvm.kernels import abi, load_kernels, pool  # noqa: E402
from dynvm.kernels.builder import KernelBuilder  # noqa: E402


def interleaved(reps, *fns, clock=time.perf_counter):
    """Median seconds of each function, all called in turn once per repetition (so machine
    noise hits them alike)."""
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, spent in zip(fns, times):
            t = clock()
            fn()
            spent.append(clock() - t)
    return [float(np.median(spent)) for spent in times]


def openblas_threads():
    """set(n): the OpenBLAS numpy loaded runs on n threads from now on (its own
    set_num_threads; None when numpy's BLAS is not the bundled OpenBLAS)."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                  "libscipy_openblas*.so"))
    if not libs:
        return None
    lib = ctypes.CDLL(libs[0])
    for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
        if hasattr(lib, name):
            return getattr(lib, name)
    return None


def ort_matmul(a_shape, b_shape, threads, weight=None):
    """An ONNX Runtime session computing MatMul(a, b) on `threads` intra-op threads (b a
    constant initializer when `weight` is given, as in a model: ORT may pre-pack it), or None
    without onnx / onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    from onnx import TensorProto, helper, numpy_helper
    m, n = a_shape[0], b_shape[1]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape))]
    if weight is None:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape)))
    out = [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])]
    inits = [] if weight is None else [numpy_helper.from_array(weight, "b")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", inputs,
                              out, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def operands(n):
    rng = np.random.default_rng(n)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    return a, b, np.empty((n, n), np.float32)


def gflops(n, seconds):
    return 2 * n ** 3 / seconds / 1e9


def build(**spec):
    kb = KernelBuilder()
    sig = [("float32", 2), ("float32", 2)]
    idx = {op: kb.add_compiled(op, "matmul", {"op": op, **spec}, sig, [("float32", 2)])
           for op in ("matmul", "dense")}
    loaded = load_kernels(kb.finish())
    return {op: loaded[i] for op, i in idx.items()}


def on_threads(threads, fn):
    """`fn` called with the kernels of this thread on `threads` threads."""
    def call():
        pool.use_threads(threads)
        return fn()
    return call


def time_square(kernel, n, reps, transpose_b, set_blas, sessions, threads, clock):
    """{(runtime, threads): median seconds} of dynvm, numpy and ORT (when available) at each
    count of `threads`, all interleaved, and the variant dynvm ran."""
    a, b, c = operands(n)
    codes = [abi.dtype_code("float32")] * 3
    tensors, keep = abi.pack([a, b, c], codes)
    entry = abi.kernel_function(kernel.address)
    bt = b.T if transpose_b else b    # dense: data @ weight.T (a transposed view for numpy)
    ref = np.empty_like(c)
    assert entry(tensors, 3) == 0
    assert np.allclose(c, a @ bt, rtol=1e-3, atol=1e-3 * n ** 0.5)
    bc = np.ascontiguousarray(bt)

    def numpy_on(t):
        def call():
            set_blas(t)
            np.matmul(a, bt, out=ref)
        return call
    fns = {}
    for t in threads:
        fns["dynvm", t] = on_threads(t, lambda: entry(tensors, 3))
        if set_blas:
            fns["numpy", t] = numpy_on(t)
        if t in sessions:
            fns["ORT", t] = functools.partial(sessions[t].run, None, {"a": a, "b": bc})
    if clock is time.perf_counter:     # each batch after SETTLE_SECONDS of its own calls
        times = measure(fns, reps, budget=0.02, settle=SETTLE_SECONDS)
    else:
        times = dict(zip(fns, interleaved(reps, *fns.values(), clock=clock)))
    del keep
    return times, kernel.last_variant


# gemv shapes: M rows (an LSTM step, a decoder at batch 1, BERT at a few tokens) against every
# weight K x N of GEMV_SIZES (256 x 256 stays in L2, 4096 x 4096 is 64 MB)
GEMV_ROWS = [1, 2, 4, 8]
GEMV_SIZES = [256, 1024, 4096]


def time_gemv(kernel, shape, reps, transpose_b, clock):
    """(median dynvm, numpy, ORT seconds (nan without it), variant) for x (M, K) against a
    weight (N, K) for dense (numpy: x @ w.T) or (K, N) for matmul; ORT's MatMul with the
    (K, N) weight as an initializer; interleaved calls."""
    m, n, k = shape
    rng = np.random.default_rng(m * n + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k) if transpose_b else (k, n)).astype(np.float32)
    out, ref = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    tensors, keep = abi.pack([x, w, out], [abi.dtype_code("float32")] * 3)
    entry = abi.kernel_function(kernel.address)
    wt = w.T if transpose_b else w
    assert entry(tensors, 3) == 0 and np.allclose(out, x @ wt, rtol=1e-3, atol=1e-3 * k ** 0.5)
    fns = [lambda: entry(tensors, 3), lambda: np.matmul(x, wt, out=ref)]
    session = ort_matmul((m, k), (k, n), 1, np.ascontiguousarray(wt))
    if session is not None:
        fns.append(functools.partial(session.run, None, {"a": x}))
    ours, theirs, *ort = interleaved(reps, *fns, clock=clock)
    del keep
    return ours, theirs, ort[0] if ort else float("nan"), kernel.last_variant


def gemv_table(kernels, reps, runs, clock, rows=GEMV_ROWS, sizes=GEMV_SIZES):
    """dense and matmul at `rows` x `sizes`^2 on one thread against numpy (1 OpenBLAS thread)
    and ORT (1 intra-op thread), `runs` times."""
    for run in range(runs):
        print(f"\ngemv shapes (M x K x N), median of {reps} (us), 1 thread, run {run + 1}/{runs}, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              "GB/s = weight bytes / dynvm time")
        print(f"{'kernel':8} {'shape':>14} {'variant':>8} {'dynvm':>9} {'numpy':>9} {'ORT':>9} "
              f"{'np/dyn':>7} {'ort/dyn':>7} {'GB/s':>6}")
        for m in rows:
            for k in sizes:
                for n in sizes:
                    for op, transpose_b in (("dense", True), ("matmul", False)):
                        ours, blas, ort, variant = time_gemv(kernels[op], (m, n, k), reps,
                                                             transpose_b, clock)
                        label = f"{m}x{k}x{n}"
                        print(f"{op:8} {label:>14} {variant:>8} {ours * 1e6:9.1f} "
                              f"{blas * 1e6:9.1f} {ort * 1e6:9.1f} {blas / ours:7.2f} "
                              f"{ort / ours:7.2f} {n * k * 4 / ours / 1e9:6.1f}")


# BERT (dynvm.models.bert_varlen): weights (N, K) of dense(x (S, K)) + bias, S = sequence length
BERT_WEIGHTS = [(256, 256), (1024, 256), (256, 1024)]
BERT_SEQS = [1, 16, 64, 128, 256]


def bert_kernels():
    """{None: dense + bias with the weight as it is, N: with the weight packed for N units}."""
    kb = KernelBuilder()
    bias = {"op": "dense", "epilogue": ["add", ["in", 0], ["in", 1]]}
    sig = [("float32", 2), ("float32", 2), ("float32", 1)]
    index = {None: kb.add_compiled("dense_bias", "matmul", bias, sig, [("float32", 2)])}
    for n in sorted({n for n, _ in BERT_WEIGHTS}):
        index[n] = kb.add_compiled(f"dense_bias_packed{n}", "matmul", {**bias, "packed_units": n},
                                   [sig[0], ("float32", 3), sig[2]], [("float32", 2)])
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}


def bert_table(reps, clock):
    """dense + bias at the BERT shapes: dynvm with the weight packed at build time (as
    `build()` does for a constant weight) and as it is (packed on every call) vs numpy
    x @ w.T + b vs torch linear vs ORT's MatMul (weight an initializer, packed once by the
    session; bias not added), interleaved calls, median microseconds."""
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    from dynvm.kernels.matmul import pack_weight
    kernels = bert_kernels()
    print(f"\nBERT dense + bias (S x K) @ (N x K)^T, median of {reps} (us); "
          "numpy and torch 1 thread; 'packed': the weight packed at build time")
    print(f"{'N x K':>10} {'S':>4} {'variant':>8} {'packed':>8} {'dynvm':>8} {'numpy':>8} "
          f"{'torch':>8} {'ORT':>8} {'GF/s':>6} {'dyn/pk':>7} {'np/pk':>7} {'th/pk':>7} "
          f"{'ort/pk':>7} {'ort/dyn':>7}")
    for n, k in BERT_WEIGHTS:
        for s in BERT_SEQS:
            rng = np.random.default_rng(s * n + k)
            x = rng.standard_normal((s, k)).astype(np.float32)
            w = rng.standard_normal((n, k)).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32)
            ref = x @ w.T + bias
            calls, keep = [], []
            for key, weight in ((n, pack_weight(w)), (None, w)):
                out = np.empty((s, n), np.float32)
                tensors, kept = abi.pack([x, weight, bias, out], [abi.dtype_code("float32")] * 4)
                entry = abi.kernel_function(kernels[key].address)
                assert entry(tensors, 4) == 0
                assert np.allclose(out, ref, rtol=1e-3, atol=1e-3 * k ** 0.5)
                calls.append(functools.partial(entry, tensors, 4))
                keep.append((kept, weight, out))
            calls.append(lambda: np.add(x @ w.T, bias))
            if torch:
                tx, tw, tb = (torch.from_numpy(v) for v in (x, w, bias))
                calls.append(lambda: torch.nn.functional.linear(tx, tw, tb))
            sess = ort_matmul((s, k), (k, n), 1, weight=w.T.copy())
            if sess:
                calls.append(lambda: sess.run(None, {"a": x}))
            times = interleaved(reps, *calls, clock=clock) + [float("nan")] * (5 - len(calls))
            pk, o, p, q, r = times
            del keep
            print(f"{n:>4}x{k:<5} {s:>4} {kernels[None].last_variant:>8} {pk * 1e6:8.1f} "
                  f"{o * 1e6:8.1f} {p * 1e6:8.1f} {q * 1e6:8.1f} {r * 1e6:8.1f} "
                  f"{2 * s * n * k / pk / 1e9:6.1f} {o / pk:7.2f} {p / pk:7.2f} {q / pk:7.2f} "
                  f"{r / pk:7.2f} {r / o:7.2f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024])
    p.add_argument("--runs", type=int, default=1, help="times the square table is taken")
    p.add_argument("--cpu-time", action="store_true",
                   help="square sizes on 1 thread only, timed by the calling thread's CPU time")
    p.add_argument("--bert-only", action="store_true", help="only the BERT dense table")
    p.add_argument("--gemv-only", action="store_true",
                   help="only the gemv table (M = 1..8 rows), --runs times")
    p.add_argument("--tiny", action="store_true", help="size 64, 3 repetitions (a smoke run)")
    args = p.parse_args()
    if args.tiny:
        args.reps, args.sizes, args.runs = 3, [64], 1
    if args.gemv_only:
        pool.use_threads(1)
        set_blas = openblas_threads()
        if set_blas:
            set_blas(1)
        gemv_table(build(), args.reps, args.runs,
                   time.thread_time if args.cpu_time else time.perf_counter)
        return
    if args.bert_only:
        pool.use_threads(1)
        set_blas = openblas_threads()
        if set_blas:
            set_blas(1)
        bert_table(args.reps, time.thread_time if args.cpu_time else time.perf_counter)
        return
    set_blas = openblas_threads()
    kernels = build()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "?")
    print(f"CPU: {cpu}; {os.cpu_count()} cores; numpy {np.__version__} (OpenBLAS threads "
          f"{'switched per call' if set_blas else 'NOT switchable: numpy columns missing'}); "
          f"median of {args.reps}; GF/s; ratio = dynvm / other at the same thread count")
    threads, clock = ((1,), time.thread_time) if args.cpu_time else ((1, 2), time.perf_counter)
    for run in range(args.runs):
        print(f"\nrun {run + 1}/{args.runs}, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'kernel':8} {'n':>5} {'variant':>8} {'threads':>7} {'dynvm':>7} {'numpy':>7} "
              f"{'ORT':>7} {'/numpy':>7} {'/ORT':>6}")
        for n in args.sizes:
            sessions = {t: s for t in threads
                        if (s := ort_matmul((n, n), (n, n), t)) is not None}
            for op, transpose_b in (("matmul", False), ("dense", True)):
                times, variant = time_square(kernels[op], n, args.reps, transpose_b,
                                             set_blas, sessions, threads, clock)
                for t in threads:
                    ours, blas, ort = (gflops(n, times.get((who, t), float("nan")))
                                       for who in ("dynvm", "numpy", "ORT"))
                    print(f"{op:8} {n:5d} {variant:>8} {t:7d} {ours:7.1f} {blas:7.1f} "
                          f"{ort:7.1f} {ours / blas:7.2f} {ours / ort:6.2f}")
    if set_blas:
        set_blas(1)
    pool.use_threads(1)     # the tables below compare one thread with one thread
    if args.tiny:
        gemv_table(kernels, args.reps, 1, clock, rows=[1, 2], sizes=[256])
    else:
        gemv_table(kernels, max(args.reps, 100), args.runs, clock)
    bert_table(args.reps, clock)


if __name__ == "__main__":
    main()
