"""Kernels' stack: the largest kernels take no more than `abi.KERNEL_STACK_BYTES` below their
caller's frame (measured: the stack below the frame is filled with a pattern first), and the
native tier, which stops its recursion that far above the end of the stack, can call them
from its deepest frame without overflowing (it used to leave 256 KiB: a dense at the bottom
of a deep recursion crashed the process)."""
import ctypes
import functools
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.kernels import codelib, load_kernels, pool
from dynvm.kernels.abi import KERNEL_STACK_BYTES
from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels.matmul import pack_weight

_IR = r"""
declare ptr @llvm.frameaddress.p0(i32)
define i64 @frame() {
  %p = call ptr @llvm.frameaddress.p0(i32 0)
  %i = ptrtoint ptr %p to i64
  ret i64 %i
}
"""
PATTERN = 0xA5


@functools.cache
def frame_address():
    """A function returning the address of its own frame: about the caller's stack pointer."""
    host = codelib.host_target()
    library = codelib.CodeLibrary(_IR, codelib.compile_ir(_IR, host), host)
    return library, ctypes.CFUNCTYPE(ctypes.c_uint64)(library.address("frame"))


def stack_used(call):
    """Bytes of stack `call()` takes below the caller's frame, on a thread of 8 MiB whose
    kernels run on that thread alone."""
    libc = ctypes.CDLL(None)
    libc.pthread_self.restype = ctypes.c_ulong
    attr = ctypes.create_string_buffer(256)
    low, size = ctypes.c_void_p(), ctypes.c_size_t()
    frame = frame_address()[1]
    used = []

    def run():
        assert libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attr) == 0
        assert libc.pthread_attr_getstack(attr, ctypes.byref(low), ctypes.byref(size)) == 0
        libc.pthread_attr_destroy(attr)
        start, end = low.value + 65536, frame() - 65536    # well below the live frames
        ctypes.memset(start, PATTERN, end - start)
        pool.use_threads(1)
        call()
        unused = np.frombuffer((ctypes.c_ubyte * (end - start)).from_address(start), np.uint8)
        touched = np.flatnonzero(unused != PATTERN)
        used.append(65536 + (end - start - touched[0] if len(touched) else 0))
    old = threading.stack_size(8 << 20)
    try:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    return used[0]


# the kernels with the largest frames: the matmul family's packing buffers, every variant
KERNELS = {
    "dense fast": ({"op": "dense"}, "float32", (200, 300, 256), False),
    "dense float64": ({"op": "dense"}, "float64", (200, 300, 256), False),
    "matmul blocked": ({"op": "matmul"}, "float32", (200, 300, 250), False),
    "dense skinny": ({"op": "dense"}, "float32", (16, 512, 256), False),
    "dense packed": ({"op": "dense", "packed_units": 256}, "float32", (200, 300, 256), True),
}


@functools.cache
def kernels():
    """Every kernel of KERNELS, built together (one compile)."""
    kb = KernelBuilder()
    index = {}
    for name, (spec, dtype, _, packed) in KERNELS.items():
        weight = (dtype, 3 if packed else 2)
        index[name] = kb.add_compiled(name, "matmul", spec, [(dtype, 2), weight], [(dtype, 2)])
    loaded = load_kernels(kb.finish())
    return {name: loaded[i] for name, i in index.items()}


@pytest.mark.parametrize("name", KERNELS)
def test_the_largest_kernels_fit_the_stack_budget(name):
    """On one thread: a chunk runs the same frames on a worker (whose stack is glibc's
    default, 8 MiB), and on several a loaded machine may leave the caller no chunk to run."""
    spec, dtype, (m, k, n), packed = KERNELS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(dtype)
    weight = rng.standard_normal((k, n) if spec["op"] == "matmul" else (n, k)).astype(dtype)
    w = pack_weight(weight) if packed else weight
    kernel = kernels()[name]
    out = np.empty((m, n), dtype)
    used = stack_used(lambda: kernel([x, w], [out]))
    want = x @ weight if spec["op"] == "matmul" else x @ weight.T
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
    assert used <= KERNEL_STACK_BYTES, (name, kernel.last_variant, used)
    if name == "dense fast":        # the measurement sees the packing buffers' full frame
        assert used > 512 * 1024, used


DEEP_SCRIPT = """
import threading, warnings
import numpy as np
from tests.kernels.test_stack import dense_at_every_level
from dynvm.vm import VirtualMachine

exe = dense_at_every_level()
a = np.ones((64, 64), np.float32)
warnings.simplefilter("ignore")


def run():
    vm = VirtualMachine(exe, max_depth=10 ** 5, threads=1)
    for depth in (3000, 4000, 4500, 5000):
        assert np.asarray(vm.invoke("f", np.int64(depth), a, a)).sum() == 0
        print(depth, vm._native.fallbacks, flush=True)


threading.stack_size(4 << 20)
t = threading.Thread(target=run)
t.start()
t.join()
"""


def dense_at_every_level():
    """f(n, x, w) = n < 1 ? x : dense(f(n - 1, x, w), w) * 0: a GEMM kernel (its packing
    buffers on the stack) called from every native frame, the deepest one first."""
    t = ir.TensorType((64, 64), "float32")
    mod = ir.IRModule()
    f = mod.get_global_var("f")
    n, x, w = ir.var("n", ir.TensorType((), "int64")), ir.var("x", t), ir.var("w", t)
    one = ir.const(1, "int64")
    inner = op.dense(ir.Call(f, [op.subtract(n, one), x, w]), w)
    mod["f"] = ir.Function([n, x, w], ir.If(op.less(n, one), x,
                                            op.multiply(inner, ir.const(0.0, "float32"))),
                           ret_type=t)
    return build(mod, native_loops=False)


def test_a_kernel_called_from_the_deepest_native_frame_has_its_stack():
    """On a 4 MiB thread of a fresh process (glibc reuses a larger cached stack for a thread
    in this one; znver2, CPython 3.11: about 700 bytes of native stack per level, deferral from
    about 4300 levels), a depth inside the native stack and three past it, where the old
    256 KiB margin left the deepest dense less than its 610 KiB frame (about 800 levels on a
    1 MiB thread crashed the process): the deeper ones defer to the Python tier, none
    overflows."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", DEEP_SCRIPT], cwd=root, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    fallbacks = [int(line.split()[1]) for line in done.stdout.split("\n") if line]
    assert len(fallbacks) == 4
    assert fallbacks[0] == 0 and fallbacks[-1] > 0     # native at first, deferred at last
