"""Kernels on several threads (kernels/pool.py): the pool's contract (every chunk once, one
call on one thread, a second caller alone, idle workers asleep), the results of every family on
the threads (matmul, conv2d, softmax, layer_norm, elementwise, reductions, transposes) identical
bit for bit for every thread count, and `VirtualMachine(threads=N)` / `StaticRuntime(threads=N)`.

The kernels here are built with `parallel_work: 0`, so even small shapes go through the pool.
"""
import functools
import threading
import time

import cffi
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.kernels import codelib, load_kernels, pool
from dynvm.kernels.builder import KernelBuilder
from dynvm.vm.errors import KernelError
from tests.strategies import examples

THREADS = (1, 2, 3)

# ---------------------------------------------------------------------------------------------
# the pool itself, with a JIT-compiled chunk function that records who ran which chunk

_IR = r"""
declare i32 @dynvm_parallel_for(ptr, ptr, i64)
declare i64 @pthread_self()
declare i32 @usleep(i32)
@calls = global i64 0

; ctx: i64 owner[n], i64 runs[n], i64 sleep_us
define internal i32 @body(ptr %ctx, i64 %lo, i64 %hi) {
entry:
  atomicrmw add ptr @calls, i64 1 seq_cst
  %n.p = getelementptr i64, ptr %ctx, i64 0
  %n = load i64, ptr %n.p
  %us.p = getelementptr i64, ptr %ctx, i64 1
  %us = load i64, ptr %us.p
  %us32 = trunc i64 %us to i32
  %empty = icmp uge i64 %lo, %hi
  br i1 %empty, label %out, label %loop
loop:
  %i = phi i64 [%lo, %entry], [%i1, %loop]
  %o = add i64 %i, 2
  %owner = getelementptr i64, ptr %ctx, i64 %o
  %t = call i64 @pthread_self()
  store i64 %t, ptr %owner
  %r0 = add i64 %o, %n
  %runs = getelementptr i64, ptr %ctx, i64 %r0
  atomicrmw add ptr %runs, i64 1 seq_cst
  call i32 @usleep(i32 %us32)
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, %hi
  br i1 %more, label %loop, label %out
out:
  ret i32 0
}

define i32 @run(ptr %ctx, i64 %n) {
  %r = call i32 @dynvm_parallel_for(ptr @body, ptr %ctx, i64 %n)
  ret i32 %r
}
"""
_ffi = cffi.FFI()


@functools.cache
def chunk_recorder():
    codelib.register_process_symbols(["pthread_self", "usleep"])
    host = codelib.host_target()
    library = codelib.CodeLibrary(_IR, codelib.compile_ir(_IR, host), host)
    run = _ffi.cast("int32_t (*)(int64_t *, int64_t)", library.address("run"))
    calls = _ffi.cast("int64_t *", library.global_address("calls"))
    return library, run, calls


def record(n, sleep_us=0):
    """(owner thread of each chunk, times each chunk ran, calls of the chunk function)."""
    _, run, calls = chunk_recorder()
    ctx = np.zeros(2 + 2 * n, np.int64)
    ctx[0], ctx[1] = n, sleep_us
    before = calls[0]
    assert run(_ffi.cast("int64_t *", ctx.ctypes.data), n) == 0
    return ctx[2:2 + n], ctx[2 + n:], calls[0] - before


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 64])
def test_parallel_for_runs_every_chunk_exactly_once(threads, n):
    pool.use_threads(threads)
    owners, runs, calls = record(n)
    assert runs.tolist() == [1] * n
    if threads == 1 or n <= 1:
        assert calls == 1          # fn(ctx, 0, n): the one-thread loop order, no pool
        assert len(set(owners.tolist())) <= 1
    else:
        assert calls == n


def a_worker_takes_part(n, sleep_us, pause=0.0):
    """Whether some job of n chunks (each sleeping sleep_us), started `pause` seconds after
    the last, ran a chunk on a worker, in 20 tries (a loaded machine may run everything on the
    caller once); every chunk runs once in every try."""
    for _ in range(20):
        time.sleep(pause)
        owners, runs, _ = record(n, sleep_us=sleep_us)
        assert runs.tolist() == [1] * n
        if len(set(owners.tolist())) >= 2:
            return True
    return False


def test_workers_take_chunks_and_sleep_when_idle():
    pool.use_threads(3)
    assert a_worker_takes_part(40, sleep_us=300), "no worker ever took a chunk"
    assert pool.started_workers() >= 2
    cpu = time.process_time()
    time.sleep(0.5)
    # the workers poll only briefly (pool.SPIN_CYCLES) after a job, then sleep: one worker
    # spinning on would take 0.5 s of CPU; the margin is for the process's other threads on a
    # loaded machine
    assert time.process_time() - cpu < 0.15


def test_sleeping_workers_are_woken_and_wake_a_sleeping_caller():
    """After the polling time every worker sleeps; a new job wakes them (the caller counts
    sleepers before it broadcasts), and a caller that sleeps on its workers' last chunks (each
    chunk longer than the polling time) is woken by whoever finishes the last one."""
    pool.use_threads(3)
    record(8)                      # start the workers
    # 10 ms is far past SPIN_CYCLES: every worker is asleep
    assert a_worker_takes_part(6, sleep_us=2000, pause=0.01), "no sleeping worker was woken"


def test_the_thread_count_belongs_to_the_calling_thread():
    pool.use_threads(2)
    seen = []
    t = threading.Thread(target=lambda: (pool.use_threads(1), seen.append(pool.current_threads())))
    t.start()
    t.join()
    assert seen == [1] and pool.current_threads() == 2
    t = threading.Thread(target=lambda: seen.append(pool.current_threads()))
    t.start()
    t.join()
    assert seen[-1] == pool.default_threads() == len(__import__("os").sched_getaffinity(0))


def on_threads(work, thread_counts):
    """Run work(threads) on one Python thread per count at once; re-raise the first failure."""
    errors = []

    def run(threads):
        try:
            work(threads)
        except BaseException as e:     # noqa: BLE001  (re-raised below)
            errors.append(e)
    ts = [threading.Thread(target=run, args=(t,)) for t in thread_counts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_callers_each_get_every_chunk():
    """Several Python threads in the pool at once: one owns it, the others run alone."""
    def caller(threads):
        pool.use_threads(threads)
        for _ in range(10):
            _, runs, _ = record(16, sleep_us=50)
            assert runs.tolist() == [1] * 16
    on_threads(caller, (2, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# the matmul family: identical bits for every thread count

BIAS_RELU = ["relu", ["add", ["in", 0], ["in", 1]]]
KERNELS = {
    "dense_f32": ({"op": "dense"}, [("float32", 2), ("float32", 2)], ("float32", 2)),
    "dense3_bias_relu": ({"op": "dense", "epilogue": BIAS_RELU},
                         [("float32", 3), ("float32", 2), ("float32", 1)], ("float32", 3)),
    "matmul_f64": ({"op": "matmul"}, [("float64", 2), ("float64", 2)], ("float64", 2)),
    "bmm_f32": ({"op": "batch_matmul", "transpose_b": True},
                [("float32", 3), ("float32", 3)], ("float32", 3)),
    "bmm_nt_i32": ({"op": "batch_matmul", "transpose_b": False},
                   [("int32", 3), ("int32", 3)], ("int32", 3)),
}


@functools.cache
def table():
    kb = KernelBuilder()
    index = {key: kb.add_compiled(key, "matmul", {**spec, "parallel_work": 0}, ins, [out])
             for key, (spec, ins, out) in KERNELS.items()}
    conv = kb.add_compiled("conv", "conv2d", {"op": "conv2d", "strides": [1, 1],
                                               "padding": [1, 1, 1, 1], "parallel_work": 0},
                           [("float32", 4), ("float32", 4)], [("float32", 4)])
    loaded = load_kernels(kb.finish())
    return {**{key: loaded[i] for key, i in index.items()}, "conv": loaded[conv]}


def operands(key, batch, m, n, k, rng):
    dtype = KERNELS[key][2][0]

    def make(*shape):
        if dtype.startswith("int"):
            return rng.integers(-20, 20, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)
    if key == "dense_f32":
        return [make(m, k), make(n, k)], (m, n)
    if key == "dense3_bias_relu":
        return [make(batch, m, k), make(n, k), make(n)], (batch, m, n)
    if key == "matmul_f64":
        return [make(m, k), make(k, n)], (m, n)
    if key == "bmm_f32":
        return [make(batch, m, k), make(batch, n, k)], (batch, m, n)
    return [make(batch, m, k), make(1, k, n)], (batch, m, n)


def every_thread_count(kernel, inputs, shape, dtype):
    """The kernel's output at each of THREADS (fresh, NaN-filled outputs each time)."""
    outs = []
    for threads in THREADS:
        pool.use_threads(threads)
        out = np.full(shape, 7, dtype)
        kernel(inputs, [out])
        outs.append(out)
    return outs


@settings(max_examples=examples(40), deadline=None)
@given(key=st.sampled_from(sorted(KERNELS)), batch=st.sampled_from([0, 1, 3]),
       m=st.sampled_from([0, 1, 2, 5, 13, 97, 130]),
       n=st.sampled_from([0, 1, 15, 16, 17, 33, 129, 300]),
       k=st.sampled_from([0, 1, 7, 64, 257]), seed=st.integers(0, 2**16))
def test_matmul_family_results_are_identical_for_every_thread_count(key, batch, m, n, k, seed):
    kernel = table()[key]
    inputs, shape = operands(key, batch, m, n, k, np.random.default_rng(seed))
    dtype = KERNELS[key][2][0]
    outs = every_thread_count(kernel, inputs, shape, dtype)
    for other in outs[1:]:
        assert other.tobytes() == outs[0].tobytes()
    a, w = inputs[0].astype(np.float64), inputs[1].astype(np.float64)
    ref = {"dense_f32": lambda: a @ w.T,
           "dense3_bias_relu": lambda: np.maximum(a @ w.T + inputs[2], 0),
           "matmul_f64": lambda: a @ w, "bmm_f32": lambda: a @ w.transpose(0, 2, 1),
           "bmm_nt_i32": lambda: a @ w}[key]()
    np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-4 * max(k, 1))


@pytest.mark.parametrize("m, n, k", [(256, 256, 256), (130, 768, 768), (300, 333, 257),
                                     (5, 1000, 513)])
def test_large_products_identical_for_every_thread_count(m, n, k):
    """The shapes of the benchmarks: blocked, fast and gemv variants, several chunks each."""
    rng = np.random.default_rng(m)
    kernel = table()["dense_f32"]
    inputs, shape = operands("dense_f32", 1, m, n, k, rng)
    outs = every_thread_count(kernel, inputs, shape, "float32")
    assert kernel.last_variant in ("gemv", "blocked", "fast")
    for other in outs[1:]:
        assert other.tobytes() == outs[0].tobytes()


@pytest.mark.parametrize("m, n, k", [(1, 2100, 37), (3, 700, 9), (8, 300, 64), (2, 301, 9)])
def test_gemv_axpy_segments_identical_for_every_thread_count(m, n, k):
    """matmul with a few rows streams B's rows into segments of C (float64: 2048 / M columns
    on one thread, cut smaller on more): more than one segment, vector and K tails."""
    inputs, shape = operands("matmul_f64", 1, m, n, k, np.random.default_rng(n))
    kernel = table()["matmul_f64"]
    outs = every_thread_count(kernel, inputs, shape, "float64")
    assert kernel.last_variant == "gemv"
    for other in outs[1:]:
        assert other.tobytes() == outs[0].tobytes()
    np.testing.assert_allclose(outs[0], inputs[0] @ inputs[1], rtol=1e-12, atol=1e-12 * k)


def test_conv2d_identical_for_every_thread_count():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((40, 8, 3, 3)).astype(np.float32)
    outs = every_thread_count(table()["conv"], [x, w], (2, 40, 20, 20), "float32")
    for other in outs[1:]:
        assert other.tobytes() == outs[0].tobytes()


@pytest.mark.parametrize("family, spec", [
    ("matmul", {"op": "dense"}), ("softmax", {"op": "softmax"}), ("reduce", {"op": "sum"}),
    ("elementwise", {"expr": ["exp", ["in", 0]]}), ("transpose", {"op": "transpose"})])
def test_parallel_work_must_be_a_non_negative_int(family, spec):
    kb = KernelBuilder()
    ins = [("float32", 2)] * (2 if family == "matmul" else 1)
    out = [("float32", 0 if family == "reduce" else 2)]
    for bad in (-1, 1.5):
        with pytest.raises(KernelError, match="parallel_work must be an int >= 0"):
            kb.add_compiled("k", family, {**spec, "parallel_work": bad}, ins, out)


# ---------------------------------------------------------------------------------------------
# softmax, layer_norm, elementwise and reductions: identical bits for every thread count
# (rank-3 inputs; each kernel: family, spec, the output's shape and numpy's result from x)

GELU = ["multiply", ["in", 0], ["sigmoid", ["multiply", ["in", 0], ["in", 1]]]]
GELU_TANH = ["multiply", ["multiply", ["const", 0.5, "float32"], ["in", 0]],
             ["add", ["const", 1.0, "float32"], ["tanh", [
                 "multiply", ["const", 0.8, "float32"], ["add", ["in", 0], [
                     "multiply", ["const", 0.044715, "float32"],
                     ["multiply", ["in", 0], ["multiply", ["in", 0], ["in", 0]]]]]]]]]
ROW_KERNELS = {
    "softmax_last": ("softmax", {"op": "softmax", "axis": -1}, lambda x: _softmax(x, -1)),
    "softmax_axis1": ("softmax", {"op": "softmax", "axis": 1}, lambda x: _softmax(x, 1)),
    "layer_norm_last": ("layer_norm", {"op": "layer_norm", "axis": -1, "epsilon": 1e-5},
                        lambda x: _layer_norm(x, -1)),
    "layer_norm_axis1": ("layer_norm", {"op": "layer_norm", "axis": 1, "epsilon": 1e-5},
                         lambda x: _layer_norm(x, 1)),
    "exp": ("elementwise", {"expr": ["exp", ["in", 0]]}, np.exp),
    "gelu_fused": ("elementwise", {"expr": GELU}, lambda x: x / (1 + np.exp(-1.702 * x))),
    "add_broadcast": ("elementwise", {"expr": ["add", ["in", 0], ["in", 1]]},
                      lambda x: x + _column(x)),
    "sum_last": ("reduce", {"op": "sum", "axis": -1}, lambda x: x.sum(-1)),
    "mean_first": ("reduce", {"op": "mean", "axis": [0, 1]}, lambda x: x.mean((0, 1))),
    "max_middle": ("reduce", {"op": "max", "axis": 1}, lambda x: x.max(1)),
    "argmax_last": ("reduce", {"op": "argmax", "axis": -1}, lambda x: x.argmax(-1)),
    "transpose_tiled": ("transpose", {"op": "transpose", "axes": [0, 2, 1]},
                        lambda x: x.transpose(0, 2, 1)),
    "transpose_rows": ("transpose", {"op": "transpose", "axes": [1, 0, 2]},
                       lambda x: x.transpose(1, 0, 2)),
    "transpose_swap": ("transpose", {"op": "transpose", "axes": [1, 2, 0]},
                       lambda x: x.transpose(1, 2, 0)),
    "transpose_generic": ("transpose", {"op": "transpose", "axes": [2, 1, 0]},
                          lambda x: x.transpose(2, 1, 0)),
    "gelu_tanh": ("elementwise", {"expr": GELU_TANH},
                  lambda x: 0.5 * x * (1 + np.tanh(0.8 * (x + 0.044715 * x ** 3)))),
}


def _softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True, initial=-np.inf))     # initial: an empty axis
    return e / e.sum(axis, keepdims=True)


def _layer_norm(x, axis):
    gamma, beta = _params(x.shape[axis])
    shape = [1] * 3
    shape[axis] = x.shape[axis]
    mean = x.mean(axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma.reshape(shape) + beta.reshape(shape)


def _params(n):
    return np.linspace(0.5, 1.5, n, dtype=np.float32), np.linspace(-1, 1, n, dtype=np.float32)


def _column(x):
    """The broadcast input of add_broadcast: one value per row of the middle axis."""
    return np.arange(x.shape[1], dtype=np.float32).reshape(1, -1, 1)


def _row_inputs(key, x):
    if key.startswith("layer_norm"):
        return [x, *_params(x.shape[1 if key.endswith("axis1") else 2])]
    if key == "gelu_fused":
        return [x, np.array(1.702, np.float32)]
    if key == "add_broadcast":
        return [x, _column(x)]
    return [x]


def _row_signature(key):
    family, spec, _ = ROW_KERNELS[key]
    ins = {"layer_norm": [("float32", 3), ("float32", 1), ("float32", 1)],
           "elementwise": [("float32", 3)] + {"gelu_fused": [("float32", 0)],
                                               "add_broadcast": [("float32", 3)]}.get(key, [])
           }.get(family, [("float32", 3)])
    out_rank = {"sum_last": 2, "mean_first": 1, "max_middle": 2, "argmax_last": 2}.get(key, 3)
    return ins, [("int64" if key == "argmax_last" else "float32", out_rank)]


@functools.cache
def row_table():
    kb = KernelBuilder()
    index = {key: kb.add_compiled(key, family, {**spec, "parallel_work": 0}, *_row_signature(key))
             for key, (family, spec, _) in ROW_KERNELS.items()}
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}


DIMS = st.sampled_from([0, 1, 2, 3, 7, 8, 9, 16, 17, 33, 70])


@settings(max_examples=examples(60), deadline=None)
@given(key=st.sampled_from(sorted(ROW_KERNELS)), shape=st.tuples(DIMS, DIMS, DIMS),
       seed=st.integers(0, 2**16))
def test_row_families_are_identical_for_every_thread_count(key, shape, seed):
    """Every element is computed by one chunk in the one-thread order: the same bits at 1, 2
    and 3 threads, whatever the shape (empty dims, one row, vector tails)."""
    _, _, reference = ROW_KERNELS[key]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    empty_reduce = key in ("max_middle", "argmax_last") and 0 in shape
    if empty_reduce or (key == "mean_first" and 0 in shape[:2]):
        return        # max/argmax of nothing is an error; numpy's mean of nothing warns
    want = reference(x.astype(np.float64))
    outs = every_thread_count(row_table()[key], _row_inputs(key, x), want.shape,
                              want.dtype if key == "argmax_last" else np.float32)
    for other in outs[1:]:
        assert other.tobytes() == outs[0].tobytes()
    np.testing.assert_allclose(outs[0], want, rtol=2e-5, atol=2e-5 * max(1, max(shape)))


@pytest.mark.parametrize("key, shape", [("softmax_last", (4, 128, 129)),
                                        ("layer_norm_last", (2, 256, 768)),
                                        ("gelu_fused", (3, 257, 301)),
                                        ("add_broadcast", (12, 128, 130)),
                                        ("sum_last", (8, 300, 301)),
                                        ("max_middle", (2, 500, 129)),
                                        ("transpose_rows", (256, 12, 64)),
                                        ("transpose_tiled", (3, 100, 130)),
                                        ("transpose_swap", (256, 4, 64)),
                                        ("gelu_tanh", (3, 257, 301)),
                                        ("transpose_generic", (40, 33, 70))])
def test_large_row_kernels_identical_for_every_thread_count(key, shape):
    """Sizes with many chunks per thread (and the default thresholds would split them too)."""
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    want = ROW_KERNELS[key][2](x)
    outs = every_thread_count(row_table()[key], _row_inputs(key, x), want.shape, np.float32)
    for other in outs[1:]:
        assert other.tobytes() == outs[0].tobytes()


# ---------------------------------------------------------------------------------------------
# VirtualMachine(threads=N)


@functools.cache
def dense_program():
    from dynvm.compiler import build, ir, op
    x = ir.var("x", ir.TensorType((ir.Any(), 256), "float32"))
    w = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    return build(ir.IRModule.from_expr(ir.Function([x], op.relu(op.dense(x, ir.const(w))))))


def test_vm_threads_default_validation_and_identical_results():
    from dynvm.vm import VirtualMachine
    exe = dense_program()
    assert VirtualMachine(exe).threads == pool.default_threads()
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            VirtualMachine(exe, threads=bad)
    x = np.random.default_rng(2).standard_normal((300, 256)).astype(np.float32)
    results = []
    for threads in THREADS:
        vm = VirtualMachine(exe, threads=threads)
        results.append(vm.invoke("main", x))
        assert pool.current_threads() == threads      # set on the invoking thread
    assert all(r.tobytes() == results[0].tobytes() for r in results)


def test_concurrent_vms_on_several_threads():
    from dynvm.vm import VirtualMachine
    exe = dense_program()
    x = np.random.default_rng(4).standard_normal((200, 256)).astype(np.float32)
    want = VirtualMachine(exe, threads=1).invoke("main", x)

    def worker(threads):
        vm = VirtualMachine(exe, threads=threads)
        for _ in range(5):
            assert vm.invoke("main", x).tobytes() == want.tobytes()
    on_threads(worker, (1, 2, 3, 2))


def test_static_runtime_threads_like_the_vm():
    from dynvm.compiler import build, ir, op
    from dynvm.vm import StaticRuntime
    x = ir.var("x", ir.TensorType((300, 256), "float32"))
    w = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    exe = build(ir.IRModule.from_expr(ir.Function([x], op.softmax(op.dense(x, ir.const(w))))))
    assert StaticRuntime(exe).threads == pool.default_threads()
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            StaticRuntime(exe, threads=bad)
    data = np.random.default_rng(2).standard_normal((300, 256)).astype(np.float32)
    results = []
    for threads in THREADS:
        results.append(StaticRuntime(exe, threads=threads).run(data))
        assert pool.current_threads() == threads      # set on the calling thread
    assert all(r.tobytes() == results[0].tobytes() for r in results)
