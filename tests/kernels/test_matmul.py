"""The "matmul" kernel family (kernels/matmul.py): dense, matmul and batch_matmul, every variant
(tiny, gemv, blocked, fast, skinny) called directly through its symbol and through the
dispatcher, against a float64 numpy reference, with fused epilogues and bad descriptors.

Tolerance: the forward error bound of a K-term dot product, |got - ref| <= 2 K eps (|A| @ |B|),
plus a few ulps of the result for the epilogue.
"""
import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import load_kernels, pool
from dynvm.kernels.abi import ERR_LAYOUT, ERR_NARGS, ERR_NDIM, ERR_SHAPE
from dynvm.kernels.matmul import (GEMV_K_ROWS, GEMV_MAX_ROWS, GEMV_ROWS, GEMV_STREAM_BYTES,
                                  Blocking, skinny_columns, skinny_depth)
from tests.kernels.support import raw_call, with_layout
from dynvm.vm.errors import KernelError, ShapeError
from tests.strategies import examples

BLK = Blocking("float32")
BIAS_RELU = ["relu", ["add", ["in", 0], ["in", 1]]]
TANH_MUL = ["tanh", ["multiply", ["in", 0], ["in", 1]]]
BIAS_SIGMOID = ["sigmoid", ["add", ["in", 0], ["in", 1]]]

KERNELS = {
    "matmul_f32": ({"op": "matmul"}, [("float32", 2), ("float32", 2)], ("float32", 2)),
    "matmul_i32": ({"op": "matmul"}, [("int32", 2), ("int32", 2)], ("int32", 2)),
    "matmul_bias_relu": ({"op": "matmul", "epilogue": BIAS_RELU},
                         [("float32", 2), ("float32", 2), ("float32", 1)], ("float32", 2)),
    "dense_f64": ({"op": "dense"}, [("float64", 2), ("float64", 2)], ("float64", 2)),
    "dense_bias_sigmoid": ({"op": "dense", "epilogue": BIAS_SIGMOID},
                           [("float32", 2), ("float32", 2), ("float32", 1)], ("float32", 2)),
    "dense3_bias_relu": ({"op": "dense", "epilogue": BIAS_RELU},
                         [("float32", 3), ("float32", 2), ("float32", 1)], ("float32", 3)),
    "bmm_tanh": ({"op": "batch_matmul", "transpose_a": False, "transpose_b": True,
                  "epilogue": TANH_MUL},
                 [("float32", 3), ("float32", 3), ("float32", 3)], ("float32", 3)),
    "bmm_ta_f64": ({"op": "batch_matmul", "transpose_a": True, "transpose_b": False},
                   [("float64", 3), ("float64", 3)], ("float64", 3)),
}


@functools.cache
def table():
    """All kernels of this module in one LLVM module, compiled once."""
    kb = KernelBuilder()
    index = {key: kb.add_compiled(key, "matmul", spec, ins, [out])
             for key, (spec, ins, out) in KERNELS.items()}
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}



def reference(key, inputs):
    """float64 result and the error bound of each element."""
    spec = KERNELS[key][0]
    a, b = (x.astype(np.float64) for x in inputs[:2])
    op = spec["op"]
    if op == "dense":
        b = b.T
    elif op == "batch_matmul":
        a = np.swapaxes(a, 1, 2) if spec["transpose_a"] else a
        b = np.swapaxes(b, 1, 2) if spec["transpose_b"] else b
    raw = np.matmul(a, b)
    k = a.shape[-1]
    eps = np.finfo(inputs[0].dtype).eps if inputs[0].dtype.kind == "f" else 0
    bound = 2 * k * eps * np.matmul(np.abs(a), np.abs(b))
    epi = spec.get("epilogue")
    if epi is BIAS_RELU:
        raw = np.maximum(raw + inputs[2], 0)
    elif epi is TANH_MUL:
        raw = np.tanh(raw * inputs[2])
        bound = bound * np.abs(inputs[2])
    elif epi is BIAS_SIGMOID:
        raw = 1 / (1 + np.exp(-(raw + inputs[2])))
    return raw, bound + 8 * eps * np.abs(raw) + 1e-30


def check_result(key, inputs, got):
    ref, bound = reference(key, inputs)
    assert got.shape == ref.shape
    if got.dtype.kind == "i":
        np.testing.assert_array_equal(got, ref.astype(got.dtype))
    else:
        err = np.abs(got.astype(np.float64) - ref)
        assert np.all(err <= bound), f"max error {err.max()} (bound {bound.max()})"


def skinny_refuses(inputs, dtype):
    """"skinny" (rank-2 dense) takes up to skinny_columns rows of x, K up to skinny_depth,
    and W's rows contiguous."""
    x, w = inputs[:2]
    blk = Blocking(dtype)
    return (x.shape[0] > skinny_columns(blk) or x.shape[1] > skinny_depth(blk)
            or w.strides[1] != w.itemsize)


def run_everywhere(key, inputs, out_shape, out_layout="c"):
    """Dispatcher, then every variant directly; "fast" and "skinny" may only refuse with
    ERR_LAYOUT, when the shapes or strides are not theirs."""
    kernel = table()[key]
    dtype = KERNELS[key][2][0]
    out = with_layout(np.full(out_shape, np.nan if dtype.startswith("f") else -7, dtype),
                      out_layout)
    kernel(inputs, [out])
    check_result(key, inputs, out)
    for variant in kernel.variants:
        out[...] = np.nan if dtype.startswith("f") else -7
        rc = raw_call(kernel, variant=variant, arrays=[*inputs, out])
        if variant == "fast" and rc == ERR_LAYOUT:
            assert out.shape[-1] % BLK.nr or out.strides[-1] != out.itemsize or dtype != "float32"
            continue
        if variant == "skinny" and rc == ERR_LAYOUT:
            assert skinny_refuses(inputs, dtype)
            continue
        assert rc == 0, f"variant {variant} returned {rc:#x}"
        check_result(key, inputs, out)
    return kernel.last_variant


# extents around the register block (MR 12, NR 32 float32), the cache blocks and primes
DIM = st.sampled_from([0, 1, 2, 3, 7, 11, 12, 13, 16, 31, 32, 33, 64, 95, 96, 97])
DEPTH = st.sampled_from([0, 1, 2, 5, 16, 17, 31, 64, 255, 256, 257])
LAYOUT = st.sampled_from(["c", "c", "c", "transpose", "step"])


def data(rng, shape, dtype):
    if np.dtype(dtype).kind == "i":
        return rng.integers(-20, 20, size=shape).astype(dtype)
    return rng.uniform(-2, 2, size=shape).astype(dtype)


@settings(max_examples=examples(40))
@given(m=DIM, n=DIM, k=DEPTH, la=LAYOUT, lb=LAYOUT, lc=LAYOUT, seed=st.integers(0, 2**16))
def test_matmul_float32_matches_numpy_in_every_variant(m, n, k, la, lb, lc, seed):
    rng = np.random.default_rng(seed)
    a = with_layout(data(rng, (m, k), "float32"), la)
    b = with_layout(data(rng, (k, n), "float32"), lb)
    run_everywhere("matmul_f32", [a, b], (m, n), lc)


@settings(max_examples=examples(15))
@given(m=DIM, n=DIM, k=DEPTH, seed=st.integers(0, 2**16))
def test_matmul_int32_is_exact(m, n, k, seed):
    rng = np.random.default_rng(seed)
    run_everywhere("matmul_i32", [data(rng, (m, k), "int32"), data(rng, (k, n), "int32")], (m, n))


@settings(max_examples=examples(20))
@given(m=DIM, n=DIM, k=DEPTH, seed=st.integers(0, 2**16))
def test_dense_float64_matches_numpy(m, n, k, seed):
    rng = np.random.default_rng(seed)
    run_everywhere("dense_f64", [data(rng, (m, k), "float64"), data(rng, (n, k), "float64")],
                   (m, n))


@settings(max_examples=examples(25))
@given(lead=st.sampled_from([0, 1, 2, 5]), m=DIM, n=DIM, k=DEPTH,
       bias_len=st.sampled_from([None, 1]), lx=LAYOUT, seed=st.integers(0, 2**16))
def test_dense_rank3_with_fused_bias_relu(lead, m, n, k, bias_len, lx, seed):
    rng = np.random.default_rng(seed)
    x = with_layout(data(rng, (lead, m, k), "float32"), lx)
    w = data(rng, (n, k), "float32")
    bias = data(rng, (bias_len or n,), "float32")
    run_everywhere("dense3_bias_relu", [x, w, bias], (lead, m, n))


@settings(max_examples=examples(25))
@given(batch=st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (0, 0), (0, 1)]), m=DIM, n=DIM,
       k=DEPTH, extra=st.sampled_from(["full", "row", "col", "scalar"]),
       seed=st.integers(0, 2**16))
def test_batch_matmul_broadcasts_batch_and_fuses_epilogue(batch, m, n, k, extra, seed):
    rng = np.random.default_rng(seed)
    ba, bb = batch
    nb = max(ba, bb) if min(ba, bb) else 0
    a, b = data(rng, (ba, m, k), "float32"), data(rng, (bb, n, k), "float32")
    shape = {"full": (nb, m, n), "row": (1, m, 1), "col": (nb, 1, n), "scalar": (1, 1, 1)}[extra]
    run_everywhere("bmm_tanh", [a, b, data(rng, shape, "float32")], (nb, m, n))


@settings(max_examples=examples(15))
@given(batch=st.sampled_from([(2, 2), (1, 2), (2, 1)]), m=DIM, n=DIM, k=DEPTH,
       seed=st.integers(0, 2**16))
def test_batch_matmul_transpose_a_float64(batch, m, n, k, seed):
    rng = np.random.default_rng(seed)
    ba, bb = batch
    a, b = data(rng, (ba, k, m), "float64"), data(rng, (bb, k, n), "float64")
    run_everywhere("bmm_ta_f64", [a, b], (max(ba, bb), m, n))


def test_dispatcher_picks_tiny_gemv_fast_or_blocked():
    rng = np.random.default_rng(0)
    cases = {(4, 4, 4): "gemv", (GEMV_MAX_ROWS + 1, 4, 4): "tiny", (64, 64, 0): "tiny", (64, 64, 64): "fast",
             (GEMV_MAX_ROWS + 1, 64, 64): "fast", (GEMV_MAX_ROWS + 1, 63, 64): "blocked",
             (1, 300, 64): "gemv", (GEMV_ROWS, 64, 64): "gemv", (GEMV_ROWS + 1, 64, 64): "gemv",
             (GEMV_MAX_ROWS, 64, 64): "gemv", (1, 1024, 1025): "gemv"}
    for (m, n, k), want in cases.items():
        got = run_everywhere("matmul_f32", [data(rng, (m, k), "float32"),
                                            data(rng, (k, n), "float32")], (m, n))
        assert got == want, (m, n, k)
    # dense: the LSTM-step shape, and a rank-3 input whose rows are the batch (M = 2 * 2)
    w = data(rng, (1024, 256), "float32")
    for m in (1, 2, GEMV_MAX_ROWS):           # BERT's dense at a few tokens
        assert run_everywhere("dense_bias_sigmoid", [data(rng, (m, 256), "float32"), w,
                                                     data(rng, (1024,), "float32")],
                              (m, 1024)) == "gemv"
    assert run_everywhere("dense_bias_sigmoid", [data(rng, (GEMV_MAX_ROWS + 1, 256), "float32"),
                                                 w, data(rng, (1024,), "float32")],
                          (GEMV_MAX_ROWS + 1, 1024)) == "fast"
    x3 = data(rng, (2, 2, 33), "float32")
    assert run_everywhere("dense3_bias_relu", [x3, w[:100, :33], data(rng, (100,), "float32")],
                          (2, 2, 100)) == "gemv"


def test_skinny_dense_gives_the_bits_of_fast():
    """BERT's dense + bias at 16 and 32 tokens goes to "skinny" on one thread and to "fast" on
    two: the same bits either way (K blocks summed alike), also for W's rows 4 KiB apart, K
    past one block and x read with a stride."""
    rng = np.random.default_rng(3)
    kernel = table()["dense_bias_sigmoid"]
    before = pool.current_threads()
    pool.use_threads(1)
    try:
        for m, n, k, layout in [(16, 1024, 256, "c"), (32, 256, 1024, "c"),
                                (16, 96, 300, "transpose"), (32, 48, 17, "step")]:
            x = with_layout(data(rng, (m, k), "float32"), layout)
            inputs = [x, data(rng, (n, k), "float32"), data(rng, (n,), "float32")]
            assert run_everywhere("dense_bias_sigmoid", inputs, (m, n)) == "skinny"
            outs = {v: np.full((m, n), np.nan, np.float32) for v in ("skinny", "fast")}
            for v, out in outs.items():
                assert raw_call(kernel, variant=v, arrays=[*inputs, out]) == 0
            assert outs["skinny"].tobytes() == outs["fast"].tobytes()
        x = data(rng, (24, 64), "float32")       # a half-empty strip of x^T: fast
        assert run_everywhere("dense_bias_sigmoid", [x, data(rng, (64, 64), "float32"),
                                                     data(rng, (64,), "float32")],
                              (24, 64)) == "fast"
    finally:
        pool.use_threads(before)


# extents for the gemv variant: 0, 1, primes, the vector width (16 float32 lanes) +- 1
GEMV_N = [0, 1, 2, 5, 7, 15, 16, 17, 33, 67]
GEMV_K = [0, 1, 3, 13, 15, 16, 17, 31, 33, 100]


@pytest.mark.parametrize("m", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13])
def test_gemv_rows_against_numpy_with_bias_sigmoid_in_every_variant(m):
    """dense (the dot form: weight rows contiguous along K) with a bias broadcast and sigmoid,
    every N/K of the grid, S__gemv called directly and through the dispatcher."""
    rng = np.random.default_rng(m)
    for n in GEMV_N:
        for k in GEMV_K:
            x, w = data(rng, (m, k), "float32"), data(rng, (n, k), "float32")
            bias = data(rng, (n,) if k % 2 else (1,), "float32")
            run_everywhere("dense_bias_sigmoid", [x, w, bias], (m, n))


@pytest.mark.parametrize("m", [3, 31, 127, 128, 129])
@pytest.mark.parametrize("n, k", [(256, 1024), (67, 4097), (100, 513), (33, 17)])
def test_gemv_column_panels_with_epilogues(m, n, k):
    """Several rows of A over B in column panels (GEMV_PANEL_BYTES: K = 1024 gives 32 columns a
    panel, K = 4097 the one-chunk minimum, K = 513 a 63 -> 32 rounding): dense with a bias +
    sigmoid (contiguous and strided output: the vector and the scalar epilogue walk, each
    starting mid-row at a panel boundary), rank-3 dense with bias + relu, and matmul (axpy)."""
    rng = np.random.default_rng(m * n + k)
    x, w = data(rng, (m, k), "float32"), data(rng, (n, k), "float32")
    for bias_len, layout in ((n, "c"), (1, "c"), (n, "step")):
        run_everywhere("dense_bias_sigmoid", [x, w, data(rng, (bias_len,), "float32")], (m, n),
                       layout)
    x3 = data(rng, (1, m, k), "float32")
    run_everywhere("dense3_bias_relu", [x3, w, data(rng, (n,), "float32")], (1, m, n))
    run_everywhere("matmul_f32", [x, data(rng, (k, n), "float32")], (m, n))


@pytest.mark.parametrize("n", [128, 129, 300, 1024])
def test_gemv_walks_panels_both_ways_with_the_same_result(n):
    """Each gemv call flips the order of B's column panels (K = 256: 128 columns a panel):
    consecutive calls, i.e. both directions, give the same, correct output."""
    rng = np.random.default_rng(n)
    x, w, bias = data(rng, (1, 256), "float32"), data(rng, (n, 256), "float32"), data(rng, (n,), "float32")
    kernel = table()["dense_bias_sigmoid"]
    outs = []
    for _ in range(3):
        out = np.zeros((1, n), np.float32)
        assert raw_call(kernel, [x, w, bias, out], "gemv") == 0
        outs.append(out)
    check_result("dense_bias_sigmoid", [x, w, bias], outs[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[1], outs[2])


@pytest.mark.parametrize("m", [1, 3, 5, 11])
def test_gemv_axpy_form_and_strided_fallback(m):
    """matmul (the axpy form: weight rows contiguous along N, masked last chunk) and layouts
    that fit neither streaming form (gemv then runs the tiny code)."""
    rng = np.random.default_rng(10 + m)
    for n in [1, 15, 16, 17, 63, 64, 65, 130]:
        for k in [1, 16, 17, 40]:
            a, b = data(rng, (m, k), "float32"), data(rng, (k, n), "float32")
            run_everywhere("matmul_f32", [a, b], (m, n))
            run_everywhere("matmul_f32", [with_layout(a, "step"), with_layout(b, "transpose")],
                           (m, n), "step")
            run_everywhere("matmul_i32", [data(rng, (m, k), "int32"), data(rng, (k, n), "int32")],
                           (m, n))


@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_gemv_axpy_segments_with_bias_relu(m):
    """The axpy form over every row at once, in segments of C of GEMV_STREAM_BYTES (float32:
    4096 / M columns): N past one segment, K around the GEMV_K_ROWS groups, vector tails, the
    epilogue over all rows of each segment."""
    rng = np.random.default_rng(20 + m)
    for n in [17, GEMV_STREAM_BYTES // (4 * m) + 5]:
        for k in [1, 3, GEMV_K_ROWS, 5, 9]:
            a, b = data(rng, (m, k), "float32"), data(rng, (k, n), "float32")
            bias = data(rng, (n,) if k % 2 else (1,), "float32")
            run_everywhere("matmul_bias_relu", [a, b, bias], (m, n))


def test_gemv_batched_with_tanh_and_float64():
    rng = np.random.default_rng(5)
    for (ba, bb), m, n, k in [((3, 3), 1, 67, 33), ((1, 4), 3, 33, 17), ((2, 1), 4, 31, 40)]:
        nb = max(ba, bb)
        a, b = data(rng, (ba, m, k), "float32"), data(rng, (bb, n, k), "float32")
        assert run_everywhere("bmm_tanh", [a, b, data(rng, (nb, 1, n), "float32")],
                              (nb, m, n)) == "gemv"
    x, w = data(rng, (2, 41), "float64"), data(rng, (97, 41), "float64")
    assert run_everywhere("dense_f64", [x, w], (2, 97)) == "gemv"


def test_zero_depth_gives_the_epilogue_of_zero():
    x, w = np.ones((2, 3, 0), np.float32), np.ones((4, 0), np.float32)
    bias = np.array([-1, 2, -3, 4], np.float32)
    out = np.full((2, 3, 4), np.nan, np.float32)
    table()["dense3_bias_relu"]([x, w, bias], [out])
    np.testing.assert_array_equal(out, np.broadcast_to([0, 2, 0, 4], (2, 3, 4)))


def test_large_square_matmul_in_blocked_and_fast_variants():
    rng = np.random.default_rng(1)
    a, b = data(rng, (300, 520), "float32"), data(rng, (520, 288), "float32")
    assert run_everywhere("matmul_f32", [a, b], (300, 288)) == "fast"


# ---------------------------------------------------------------- bad descriptors


def test_mismatched_reduction_dims_are_a_shape_error_in_every_variant():
    kernel = table()["matmul_f32"]
    a, b = np.ones((3, 4), np.float32), np.ones((5, 2), np.float32)
    out = np.ones((3, 2), np.float32)
    with pytest.raises(ShapeError, match="extents do not fit"):
        kernel([a, b], [out])
    for variant in kernel.variants:
        assert raw_call(kernel, variant=variant, arrays=[a, b, out]) & 0xFF == ERR_SHAPE
    dense = table()["dense_bias_sigmoid"]     # wrong K on the gemv shape
    x, w, bias = np.ones((1, 256), np.float32), np.ones((8, 255), np.float32), np.ones(8, np.float32)
    with pytest.raises(ShapeError, match="input 1"):
        dense([x, w, bias], [np.ones((1, 8), np.float32)])
    for variant in dense.variants:
        assert raw_call(dense, variant=variant, arrays=[x, w, bias, np.ones((1, 8), np.float32)]) \
            == ERR_SHAPE | 1 << 8 | 1 << 16


def test_wrong_output_shape_and_non_broadcasting_bias_are_rejected():
    kernel = table()["dense3_bias_relu"]
    x, w = np.ones((2, 3, 4), np.float32), np.ones((5, 4), np.float32)
    good_bias, out = np.ones(5, np.float32), np.ones((2, 3, 5), np.float32)
    with pytest.raises(ShapeError, match="does not broadcast"):
        kernel([x, w, np.ones(3, np.float32)], [out])
    for variant in [None, *kernel.variants]:
        fn = kernel.variants[0] if variant is None else variant
        assert raw_call(kernel, variant=fn, arrays=[x, w, good_bias, np.ones((2, 3, 6), np.float32)]) \
            == ERR_SHAPE | 3 << 8 | 2 << 16
        assert raw_call(kernel, variant=fn, arrays=[x, w, good_bias, np.ones((2, 4, 5), np.float32)]) & 0xFF \
            == ERR_SHAPE


def test_batch_that_does_not_broadcast_is_rejected():
    kernel = table()["bmm_ta_f64"]
    a, b, out = np.ones((2, 3, 4)), np.ones((3, 3, 5)), np.ones((3, 4, 5))
    for variant in kernel.variants:
        assert raw_call(kernel, variant=variant, arrays=[a, b, out]) & 0xFF == ERR_SHAPE


def test_wrong_rank_and_argument_count_return_codes_without_touching_memory():
    kernel = table()["matmul_f32"]
    a, b = np.ones((3, 4), np.float32), np.ones((4, 2), np.float32)
    out = np.ones((3, 2), np.float32)
    for variant in kernel.variants:
        assert raw_call(kernel, variant=variant, arrays=[a, b]) == ERR_NARGS
        assert raw_call(kernel, variant=variant, arrays=[a, b, out], nargs=2) == ERR_NARGS
        assert raw_call(kernel, variant=variant, arrays=[a[None], b, out]) & 0xFF == ERR_NDIM


def test_build_rejects_bad_specs():
    kb = KernelBuilder()
    f32 = ("float32", 2)
    with pytest.raises(KernelError, match="ranks"):
        kb.add_compiled("m", "matmul", {"op": "matmul"}, [f32, ("float32", 3)], [f32])
    with pytest.raises(KernelError, match="one dtype"):
        kb.add_compiled("m", "matmul", {"op": "matmul"}, [f32, ("float64", 2)], [f32])
    with pytest.raises(KernelError, match="epilogue gives"):
        kb.add_compiled("m", "matmul", {"op": "matmul", "epilogue": ["less", ["in", 0], ["in", 1]]},
                        [f32, f32, f32], [f32])
    with pytest.raises(KernelError, match="unknown op"):
        kb.add_compiled("m", "matmul", {"op": "conv3d"}, [f32, f32], [f32])
