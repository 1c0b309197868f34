"""softmax / layer_norm / reductions, float32, compiled kernels vs numpy (not a test).

    python benchmarks/kernels_reduce.py [--reps 200] [--tiny]

numpy baselines are what a user writes: softmax = e / e.sum with e = exp(x - max), layer_norm =
(x - mean) / sqrt(var + eps) * g + b, reductions = x.sum / x.max / x.argmax. "native" is the
dispatcher called through its cffi pointer with descriptors packed once (what a VM call site
does); "Kernel" is the Python `Kernel.__call__` path (argument checks + packing each call).
Calls are interleaved (one of each per repetition) and each number is the median; ratio =
numpy / native. `--tiny` takes 3 repetitions (the test suite's smoke run).
"""
import argparse
import time

import numpy as np

from dynvm.kernels import abi, load_kernels
from dynvm.kernels.builder import KernelBuilder

EPS = 1e-5


def _reduce(op, axis):
    return {"op": op, "axis": axis, "keepdims": False, "exclude": False}


def cases(rng):
    """(label, family, spec, inputs, outputs, numpy callable)."""
    x = rng.standard_normal((128, 768)).astype(np.float32)
    g, b = (rng.standard_normal(768).astype(np.float32) for _ in range(2))
    big = rng.standard_normal((1024, 1024)).astype(np.float32)

    def np_softmax():
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def np_layer_norm():
        mean, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + EPS) * g + b

    out = []
    out.append(("softmax (128,768)", "softmax", {"op": "softmax", "axis": -1}, [x],
                [np.empty_like(x)], np_softmax))
    out.append(("layer_norm (128,768)", "layer_norm",
                {"op": "layer_norm", "axis": -1, "epsilon": EPS}, [x, g, b],
                [np.empty_like(x)], np_layer_norm))
    for label, op, axis, arr, ref in (
            ("sum axis=1 (128,768)", "sum", [1], x, lambda: x.sum(axis=1)),
            ("sum axis=0 (128,768)", "sum", [0], x, lambda: x.sum(axis=0)),
            ("sum all (1024,1024)", "sum", None, big, lambda: big.sum()),
            ("sum axis=0 (1024,1024)", "sum", [0], big, lambda: big.sum(axis=0)),
            ("max axis=1 (1024,1024)", "max", [1], big, lambda: big.max(axis=1)),
            ("argmax axis=1 (1024,1024)", "argmax", [1], big, lambda: big.argmax(axis=1)),
            ("mean axis=1 (1024,1024)", "mean", [1], big, lambda: big.mean(axis=1))):
        shape = ref().shape
        dtype = np.int64 if op == "argmax" else np.float32
        out.append((label, "reduce", _reduce(op, axis), [arr], [np.empty(shape, dtype)], ref))
    return out


def signature(arrays):
    return [(a.dtype.name, a.ndim) for a in arrays]


def run(reps):
    rng = np.random.default_rng(0)
    table = cases(rng)
    kb = KernelBuilder()
    index = [kb.add_compiled(label, fam, spec, signature(ins), signature(outs))
             for label, fam, spec, ins, outs, _ in table]
    kernels = load_kernels(kb.finish())
    rows = []
    for (label, _, _, ins, outs, ref), k in zip(table, (kernels[i] for i in index)):
        arrays = ins + outs
        packer = abi.ArgPacker([abi.dtype_code(a.dtype.name) for a in arrays],
                               [a.ndim for a in arrays])
        tensors, keep = packer.pack(arrays)
        entry = abi.kernel_function(k.address)
        assert entry(tensors, len(arrays)) == 0
        np.testing.assert_allclose(outs[0], ref(), rtol=1e-4, atol=1e-4)
        native, through, numpy_t = [], [], []
        for _ in range(reps):
            t = time.perf_counter()
            entry(tensors, len(arrays))
            native.append(time.perf_counter() - t)
            t = time.perf_counter()
            k(ins, outs)
            through.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref()
            numpy_t.append(time.perf_counter() - t)
        del keep
        med = [np.median(v) * 1e6 for v in (native, through, numpy_t)]
        rows.append((label, *med, med[2] / med[0], k.last_variant))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--tiny", action="store_true", help="3 repetitions (a smoke run)")
    args = parser.parse_args()
    if args.tiny:
        args.reps = 3
    print(f"{'case':28s} {'native us':>10s} {'Kernel us':>10s} {'numpy us':>10s} "
          f"{'speedup':>8s}  variant")
    for label, native, through, numpy_us, ratio, variant in run(args.reps):
        print(f"{label:28s} {native:10.1f} {through:10.1f} {numpy_us:10.1f} {ratio:7.2f}x  {variant}")


if __name__ == "__main__":
    main()
