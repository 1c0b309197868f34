"""Shape functions: the Python back end (what the Python VM calls) against the native one (the
same function traced into a kernel, what the native tier calls), per call (not a test).

    python benchmarks/shape_funcs.py [--reps 20] [--tiny]

"python" calls `lookup(name).fn(inputs, attrs)` with the VM's tensors (numpy arrays for the
data-dependent functions that read them), as `CallShapeFunc` does before any memoisation;
"native" calls the kernel's dispatcher through its cffi pointer with descriptors packed once
(what a call site does; most of that time is the cffi call itself). Each row first checks that
both back ends give the same shapes (a MISMATCH row otherwise). Calls are interleaved and each
number is a median (dynvm.bench.harness). `--tiny` runs four rows with few repetitions.
"""
from __future__ import annotations

import argparse

import numpy as np

from dynvm.bench import harness
from dynvm.kernels import abi, load_kernels
from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels.shape import native_shape_func_spec
from dynvm.shape_funcs import lookup
from dynvm.vm.dtypes import dtype_name
from dynvm.vm.values import Tensor


def a(shape, dtype="float32", value=None):
    return np.zeros(shape, dtype) if value is None else np.array(value, dtype)


# (label, name, attrs, input arrays)
CASES = [
    ("add, same shapes", "add", {}, [a((4, 8)), a((4, 8))]),
    ("add, broadcasting", "add", {}, [a((4, 1, 8)), a((3, 8))]),
    ("broadcast of 3", "broadcast", {}, [a((2, 3, 4)), a((1, 4)), a((2, 3, 1))]),
    ("dense", "dense", {}, [a((16, 64)), a((32, 64))]),
    ("batch_matmul", "batch_matmul", {}, [a((2, 5, 64)), a((2, 7, 64))]),
    ("reshape [0, -1]", "reshape", {"newshape": [0, -1]}, [a((2, 3, 4))]),
    ("transpose", "transpose", {"axes": [0, 2, 1]}, [a((2, 3, 4))]),
    ("concatenate", "concatenate", {"axis": 1}, [a((2, 3)), a((2, 5))]),
    ("strided_slice", "strided_slice", {"begin": [1, 2], "end": [8, -1], "strides": [2, 1]},
     [a((10, 12))]),
    ("take", "take", {"axis": 0}, [a((10, 4)), a((3,), "int64")]),
    ("sum", "sum", {"axis": [1]}, [a((3, 4, 5))]),
    ("max keepdims", "max", {"axis": [1], "keepdims": True}, [a((3, 4, 5))]),
    ("conv2d", "conv2d", {"padding": [1, 1]}, [a((1, 3, 16, 16)), a((8, 3, 3, 3))]),
    ("topk", "topk", {"k": 3}, [a((4, 16))]),
    ("arange int64", "arange", {"dtype": "int64"},
     [a((), "int64", 0), a((), "int64", 10), a((), "int64", 1)]),
    ("arange float32", "arange", {"dtype": "float32"},
     [a((), "float32", 0), a((), "float32", 5), a((), "float32", 0.5)]),
    ("dyn.reshape", "dyn.reshape", {}, [a((2, 3, 4)), a((2,), "int64", [6, 4])]),
    ("argwhere 1000", "argwhere", {}, [np.arange(1000, dtype=np.float32) % 3]),
    ("unique 1000", "unique", {}, [np.arange(1000, dtype=np.float32) % 37]),
    ("nms.upper_bound", "nms.upper_bound", {"max_output": 10}, [a((100, 4)), a((100,))]),
]
TINY = ("add, broadcasting", "reshape [0, -1]", "arange int64", "dyn.reshape")


def signature(name, arrays):
    """Input signatures: ranks, plus the static length of a shape vector a function reads."""
    vectors = name.startswith("dyn.")
    return [(dtype_name(x.dtype), list(x.shape) if vectors and k else x.ndim)
            for k, x in enumerate(arrays)]


def python_call(name, attrs, arrays):
    sf = lookup(name)
    wants_arrays = sf.mode == "data_dependent" and not sf.tensor_inputs
    inputs = arrays if wants_arrays else [Tensor.from_array(x) for x in arrays]
    return lambda: sf.fn(inputs, attrs)


def native_call(kernel, lengths, arrays):
    """A call with descriptors packed once; returns (call, read the written shapes)."""
    outs = [np.zeros(n, np.int64) for n in lengths]
    args = list(arrays) + outs
    tensors, keep = abi.pack(args, [abi.dtype_code(dtype_name(x.dtype)) for x in args])
    fn, nargs = abi.kernel_function(kernel.address), len(args)

    def call():
        return fn(tensors, nargs)
    call.keep = keep
    return call, lambda: [tuple(int(v) for v in o) for o in outs]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.tiny or c[0] in TINY]
    reps = 3 if args.tiny else args.reps
    kb = KernelBuilder()
    specs = [native_shape_func_spec(name, attrs, signature(name, arrays))
             for _, name, attrs, arrays in cases]
    index = [spec.add_to(kb, label) for spec, (label, *_) in zip(specs, cases)]
    kernels = load_kernels(kb.finish())
    for line in harness.cpu_lines():
        print(line)
    print("\n## shape functions: Python back end vs native back end (ns per call)\n")
    print(f"{'call':22s} {'python':>8s} {'native':>8s} {'python/native':>14s}")
    for (label, name, attrs, arrays), spec, k in zip(cases, specs, index):
        py = python_call(name, attrs, arrays)
        nat, written = native_call(kernels[k], spec.lengths, arrays)
        if nat() != 0 or written() != [tuple(s) for s in py()]:
            print(f"{label:22s} MISMATCH: native {written()} python {py()}")
            continue
        t = harness.measure({"python": py, "native": nat}, reps=reps, budget=0.001)
        print(f"{label:22s} {t['python'] * 1e9:8.0f} {t['native'] * 1e9:8.0f} "
              f"{t['python'] / t['native']:14.1f}")


if __name__ == "__main__":
    main()
