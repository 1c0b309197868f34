"""dense of a weight packed at build time (kernels/matmul.py PackedDense, spec "packed_units"):
against a float64 numpy reference over row counts around the micro-tile (every in-place row
group form, the packed-A path past PACKED_IN_PLACE_ROWS), N not a multiple of NR, K past KC;
bit-identical on 1 and 2 threads (row and column items) and to the unpacked kernel's
"fast"/"blocked" results (the same KC blocks, the same FMA chains); a weight whose packed shape
or layout does not fit is an error, never a wrong read."""
import functools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynvm.kernels import load_kernels, pool
from dynvm.kernels.abi import ERR_LAYOUT, ERR_SHAPE
from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels.matmul import Blocking, pack_weight, packed_width
from dynvm.vm.errors import KernelError
from tests.kernels.support import raw_call
from tests.strategies import examples

BIAS = ["add", ["in", 0], ["in", 1]]
N32, N64, N3 = 100, 19, 300    # none a multiple of NR
KERNELS = {
    "f32_bias": ({"op": "dense", "packed_units": N32, "epilogue": BIAS},
                 [("float32", 2), ("float32", 3), ("float32", 1)], ("float32", 2)),
    "f64": ({"op": "dense", "packed_units": N64}, [("float64", 2), ("float64", 3)],
            ("float64", 2)),
    "f32_rank3": ({"op": "dense", "packed_units": N3}, [("float32", 3), ("float32", 3)],
                  ("float32", 3)),
    "f32_plain_bias": ({"op": "dense", "epilogue": BIAS},
                       [("float32", 2), ("float32", 2), ("float32", 1)], ("float32", 2)),
}


@functools.cache
def table():
    kb = KernelBuilder()
    index = {key: kb.add_compiled(key, "matmul", {**spec, "parallel_work": 0}, ins, [out])
             for key, (spec, ins, out) in KERNELS.items()}
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}


def run(kernel, inputs, shape, dtype, threads):
    pool.use_threads(threads)
    try:
        out = np.full(shape, 7, dtype)
        kernel(inputs, [out])
        return out
    finally:
        pool.use_threads(1)


def test_pack_weight_layout():
    w = np.arange(21 * 5, dtype=np.float32).reshape(21, 5)
    nr = packed_width("float32")
    assert nr == Blocking("float32").nr
    wp = pack_weight(w)
    assert wp.shape == (-(-21 // nr), 5, nr) and wp.flags.c_contiguous
    for n in range(wp.shape[0] * nr):
        for k in range(5):
            assert wp[n // nr, k, n % nr] == (w[n, k] if n < 21 else 0)


@settings(max_examples=examples(30), deadline=None)
@given(m=st.sampled_from([0, 1, 2, 5, 6, 7, 8, 16, 17, 33, 130]),
       k=st.sampled_from([0, 1, 3, 64, 255, 256, 257, 300]), seed=st.integers(0, 2**16))
@example(m=3, k=0, seed=0)      # an empty weight: zeros, then the bias
@example(m=1, k=300, seed=0)    # one row, several strips per call, two KC blocks
def test_packed_dense_matches_numpy_identical_on_threads(m, k, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((m, k), np.float32), rng.standard_normal((N32, k), np.float32)
    bias = rng.standard_normal(N32, np.float32)
    kernels = table()
    outs = [run(kernels["f32_bias"], [x, pack_weight(w), bias], (m, N32), np.float32, t)
            for t in (1, 2)]
    assert outs[0].tobytes() == outs[1].tobytes()
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5 * k)
    if kernels["f32_bias"].last_variant == "packed" and m > 8:
        # the unpacked kernel sums the same way in its packed forms (not in gemv/skinny)
        plain = run(kernels["f32_plain_bias"], [x, w, bias], (m, N32), np.float32, 1)
        if kernels["f32_plain_bias"].last_variant in ("fast", "blocked", "skinny"):
            assert plain.tobytes() == outs[0].tobytes()


@settings(max_examples=examples(15), deadline=None)
@given(m=st.sampled_from([1, 2, 4, 7, 130]), k=st.sampled_from([1, 5, 129, 200]),
       seed=st.integers(0, 2**16))
def test_packed_dense_float64(m, k, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((m, k)), rng.standard_normal((N64, k))
    outs = [run(table()["f64"], [x, pack_weight(w)], (m, N64), np.float64, t) for t in (1, 2)]
    assert outs[0].tobytes() == outs[1].tobytes()
    np.testing.assert_allclose(outs[0], x @ w.T, rtol=1e-12, atol=1e-12 * k)


@pytest.mark.parametrize("batch, rows, layout", [(2, 65, "c"), (3, 5, "c"), (1, 1, "c"),
                                                 (1, 2, "c"), (2, 20, "step"), (1, 2, "step")])
def test_packed_dense_rank3_row_and_column_items(batch, rows, layout):
    """x of rank 3: many rows (row items on two threads, packed A), a few (column items, rows
    read in place), and x's rows not evenly spaced or not contiguous along K (packed A)."""
    rng = np.random.default_rng(rows)
    k = 70
    x = rng.standard_normal((batch, rows, 2 * k if layout == "step" else k), np.float32)
    if layout == "step":
        x = x[:, :, ::2]
    w = rng.standard_normal((N3, k), np.float32)
    outs = [run(table()["f32_rank3"], [x, pack_weight(w)], (batch, rows, N3), np.float32, t)
            for t in (1, 2)]
    assert outs[0].tobytes() == outs[1].tobytes()
    np.testing.assert_allclose(outs[0], x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-4)


def test_a_packed_weight_that_does_not_fit_is_an_error():
    kernel = table()["f32_bias"]
    nr = packed_width("float32")
    x, bias = np.ones((3, 8), np.float32), np.ones(N32, np.float32)
    out = np.zeros((3, N32), np.float32)
    good = pack_weight(np.ones((N32, 8), np.float32))
    strips = good.shape[0]
    for bad in (np.ones((strips + 1, 8, nr), np.float32),      # another N
                np.ones((strips, 9, nr), np.float32),          # another K
                np.ones((strips * 2, 8, nr // 2), np.float32)):  # another NR
        for variant in (None, "packed", "tiny"):
            assert raw_call(kernel, [x, bad, bias, out], variant) == ERR_SHAPE | 1 << 8
        with pytest.raises(KernelError, match="extents do not fit"):
            kernel([x, bad, bias], [out])
    strided = np.ones((strips, 8, 2 * nr), np.float32)[:, :, ::2]
    assert raw_call(kernel, [x, strided, bias, out], "packed") == ERR_LAYOUT | 1 << 8
    assert raw_call(kernel, [x, good, bias, out], "packed") == 0


@functools.cache
def other_widths():
    """f32_bias's kernel for weights packed on machines with half and twice this one's NR (an
    AVX-512 file on AVX2, an AVX2 file on AVX-512): {width: kernel}."""
    spec, ins, out = KERNELS["f32_bias"]
    nr = packed_width("float32")
    kb = KernelBuilder()
    index = {w: kb.add_compiled(f"w{w}", "matmul", {**spec, "packed_width": w,
                                                     "parallel_work": 0}, ins, [out])
             for w in (nr // 2, nr * 2)}
    loaded = load_kernels(kb.finish())
    return {w: loaded[i] for w, i in index.items()}


@pytest.mark.parametrize("m", [1, 2, 7, 40, 130])
def test_a_weight_packed_for_another_vector_width_gives_the_same_bits(m):
    rng = np.random.default_rng(m)
    x = rng.standard_normal((m, 300)).astype(np.float32)
    w = rng.standard_normal((N32, 300)).astype(np.float32)
    bias = rng.standard_normal(N32).astype(np.float32)
    want = run(table()["f32_bias"], [x, pack_weight(w), bias], (m, N32), np.float32, 1)
    for width, kernel in other_widths().items():
        for threads in (1, 2):
            got = run(kernel, [x, pack_weight(w, width), bias], (m, N32), np.float32, threads)
            assert got.tobytes() == want.tobytes(), (width, threads)
        assert raw_call(kernel, [x, pack_weight(w), bias, np.empty((m, N32), np.float32)],
                        "packed") == ERR_SHAPE | 1 << 8      # this machine's strips: not its width
    np.testing.assert_allclose(want, x.astype(np.float64) @ w.T + bias, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("spec, ins, phrase", [
    ({"op": "dense", "packed_units": 4, "packed_width": 12}, [("float32", 2), ("float32", 3)],
     "power of two"),
    ({"op": "dense", "packed_units": 4}, [("float32", 2), ("float32", 2)], "ranks"),
    ({"op": "matmul", "packed_units": 4}, [("float32", 2), ("float32", 2)], "dense only"),
    ({"op": "dense", "packed_units": -1}, [("float32", 2), ("float32", 3)], "int >= 0"),
])
def test_packed_spec_errors(spec, ins, phrase):
    with pytest.raises(KernelError, match=phrase):
        KernelBuilder().add_compiled("d", "matmul", spec, ins, [("float32", 2)])


def test_a_streaming_few_row_product_splits_with_the_same_bits():
    """Below PARALLEL_WORK, a wide enough weight of PACKED_STREAM_WEIGHT elements still splits
    (the default spec, as a model's dense gets it): an LSTM step's 1 x 256 x 1024."""
    kb = KernelBuilder()
    i = kb.add_compiled("step", "matmul", {"op": "dense", "packed_units": 1024},
                        [("float32", 2), ("float32", 3)], [("float32", 2)])
    kernel = load_kernels(kb.finish())[i]
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1024, 256)).astype(np.float32)
    for m in (1, 2, 5):
        x = rng.standard_normal((m, 256)).astype(np.float32)
        outs = [run(kernel, [x, pack_weight(w)], (m, 1024), np.float32, t) for t in (1, 2)]
        assert outs[0].tobytes() == outs[1].tobytes()
        np.testing.assert_allclose(outs[0], x.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-3)
