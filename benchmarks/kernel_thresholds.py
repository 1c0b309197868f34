"""Where a second kernel thread starts to pay, per kernel family: the numbers behind
llvm_util.PARALLEL_WORK (not a test).

    python benchmarks/kernel_thresholds.py [--reps 41] [--families matmul softmax ...] [--tiny]

Every family's kernel is built with parallel_work 0 (every size goes through the pool) and
called at 1 and 2 kernel threads, interleaved call by call (each sample a batch of calls lasting
about 200 us, so the timer's cost vanishes), over sizes growing by about 2x; each line is the
median of the repetitions. The crossover is the smallest size from which 2 threads are faster
by at least CROSS at every larger size of the sweep: the family's PARALLEL_WORK is that size
rounded up to a power of two (in the family's unit: multiply-adds for matmul, elements of the
input for the others). The load average is printed before and after: on a machine busier than
its cores a second thread cannot help, and the crossover moves up.
"""
import argparse
import os
import time

import numpy as np

from dynvm.kernels import abi, load_kernels, pool
from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels.llvm_util import PARALLEL_WORK
from dynvm.kernels.matmul import pack_weight

CROSS = 1.1     # 2 threads at least this much faster than 1 from the crossover on
# BERT's tanh-GELU as the model fuses it: 0.5 x (1 + tanh(0.79788456 (x + 0.044715 x**3)))
_X = ["in", 0]
_CUBE = ["multiply", ["const", 0.044714998453855515, "float32"],
         ["multiply", _X, ["multiply", _X, _X]]]
GELU = ["multiply", ["multiply", ["const", 0.5, "float32"], _X], [
    "add", ["const", 1.0, "float32"],
    ["tanh", ["multiply", ["const", 0.7978845834732056, "float32"], ["add", _X, _CUBE]]]]]
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# name: (kernel family, spec, signature, cases); a case is (label, work, inputs, output shape)
def cases(name, rng):
    if name == "matmul":
        shapes = [(8, 64, 64), (16, 64, 64), (16, 128, 64), (32, 128, 64), (32, 128, 128),
                  (64, 128, 128), (64, 256, 128), (128, 256, 128), (128, 256, 256),
                  (128, 512, 256), (256, 512, 256), (256, 512, 512), (512, 512, 512)]
        return [(f"{m}x{n}x{k}", m * n * k, [_f32(rng, m, k), _f32(rng, n, k)], (m, n))
                for m, n, k in shapes]
    if name == "dense_packed":      # a constant weight, packed at build time: N = 256
        return [(f"{m}x256x{k}", m * 256 * k, [_f32(rng, m, k), pack_weight(_f32(rng, 256, k))],
                 (m, 256)) for m, k in [(1, 64), (2, 64), (4, 64), (8, 64), (16, 64), (16, 128),
                                        (16, 256), (32, 256), (64, 256), (128, 256), (256, 256),
                                        (512, 256), (512, 512)]]
    if name == "transpose":     # BERT-base's heads: (S, 12, 64) -> (12, S, 64), rows of 64
        return [(f"{rows}x12x64", rows * 768, [_f32(rng, rows, 12, 64)], (12, rows, 64))
                for rows in ROWS]
    if name == "transpose_tiled":     # BERT-small's (S, 4, 64) -> (4, 64, S): a 2-D transpose
        return [(f"{rows}x4x64", rows * 256, [_f32(rng, rows, 4, 64)], (4, 64, rows))
                for rows in ROWS]
    width = {"softmax": 128, "layer_norm": 768, "reduce": 256, "elementwise": 1024}[name]
    out = []
    for rows in ROWS:
        x = _f32(rng, rows, width)
        inputs = {"layer_norm": [x, _f32(rng, width), _f32(rng, width)]}.get(name, [x])
        shape = (rows,) if name == "reduce" else (rows, width)
        out.append((f"{rows}x{width}", rows * width, inputs, shape))
    return out


KERNELS = {
    "matmul": ("matmul", {"op": "dense"}, [("float32", 2)] * 2, ("float32", 2)),
    "dense_packed": ("matmul", {"op": "dense", "packed_units": 256},
                     [("float32", 2), ("float32", 3)], ("float32", 2)),
    "softmax": ("softmax", {"op": "softmax", "axis": -1}, [("float32", 2)], ("float32", 2)),
    "layer_norm": ("layer_norm", {"op": "layer_norm", "axis": -1},
                   [("float32", 2), ("float32", 1), ("float32", 1)], ("float32", 2)),
    "elementwise": ("elementwise", {"expr": GELU}, [("float32", 2)], ("float32", 2)),
    "reduce": ("reduce", {"op": "sum", "axis": -1}, [("float32", 2)], ("float32", 1)),
    "transpose": ("transpose", {"op": "transpose", "axes": [1, 0, 2]}, [("float32", 3)],
                  ("float32", 3)),
    "transpose_tiled": ("transpose", {"op": "transpose", "axes": [1, 2, 0]}, [("float32", 3)],
                        ("float32", 3)),
}


def build(families):
    kb = KernelBuilder()
    index = {name: kb.add_compiled(name, family, {**spec, "parallel_work": 0}, ins, [out])
             for name, (family, spec, ins, out) in KERNELS.items() if name in families}
    loaded = load_kernels(kb.finish())
    return {name: loaded[i] for name, i in index.items()}


def batch_size(call):
    """Calls per sample so that one sample lasts about 200 us."""
    pool.use_threads(1)
    t = time.perf_counter()
    call()
    return max(1, int(2e-4 / max(time.perf_counter() - t, 1e-7)))


def one_and_two(call, reps):
    """Median seconds per call at 1 and 2 kernel threads, interleaved sample by sample."""
    count = batch_size(call)
    times = {1: [], 2: []}
    for _ in range(reps):
        for threads, spent in times.items():
            pool.use_threads(threads)
            t = time.perf_counter()
            for _ in range(count):
                call()
            spent.append((time.perf_counter() - t) / count)
    return float(np.median(times[1])), float(np.median(times[2]))


def crossover(rows):
    """The smallest work from which every speedup of the sweep is >= CROSS (None: never)."""
    found = None
    for work, speedup in reversed(rows):
        if speedup < CROSS:
            break
        found = work
    return found


def sweep(name, kernel, reps):
    rng = np.random.default_rng(0)
    entry = abi.kernel_function(kernel.address)
    unit = "multiply-adds" if KERNELS[name][0] == "matmul" else "elements"
    print(f"\n{name} (PARALLEL_WORK now {PARALLEL_WORK[KERNELS[name][0]]} {unit})")
    print(f"{'shape':>14} {'work':>9} {'variant':>12} {'1 thread':>10} {'2 threads':>10} "
          f"{'speedup':>8}")
    rows = []
    for label, work, inputs, shape in cases(name, rng):
        out = np.empty(shape, np.float32)
        arrays = inputs + [out]
        tensors, keep = abi.pack(arrays, [abi.dtype_code(str(a.dtype)) for a in arrays])
        assert entry(tensors, len(arrays)) == 0
        one, two = one_and_two(lambda: entry(tensors, len(arrays)), reps)
        del keep
        rows.append((work, one / two))
        print(f"{label:>14} {work:>9} {kernel.last_variant:>12} {one * 1e6:10.2f} "
              f"{two * 1e6:10.2f} {one / two:8.2f}")
    found = crossover(rows)
    suggest = "none in the sweep" if found is None else f"{found} -> 2^{(found - 1).bit_length()}"
    print(f"crossover (speedup >= {CROSS} from there on): {suggest}")


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=41)
    p.add_argument("--families", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--tiny", action="store_true", help="3 repetitions (a smoke run)")
    args = p.parse_args()
    if args.tiny:
        args.reps = 3
    kernels = build(args.families)
    print(f"load average {load()} ({os.cpu_count()} cores); median of {args.reps}")
    for name in args.families:
        sweep(name, kernels[name], args.reps)
    print(f"\nload average {load()}")


if __name__ == "__main__":
    main()
