"""Every elementwise variant, called directly through its symbol `S__<variant>` (the test hook),
agrees with numpy; the dispatcher `S` picks the documented variant and records it in `S__variant`.

Documented choice (kernels/elementwise.py), W = lanes of the widest element (16 x float32 with
AVX-512): flat (compact, no broadcast) and n < W -> "scalar"; flat and n % W == 0 ->
"vector_exact"; flat -> "vector"; otherwise "strided".
Tolerances: float32 rtol 1e-5 (polynomial tanh/sigmoid within 5e-7), float64 rtol 1e-12,
integers and bools exact.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import abi, load_kernels
from dynvm.kernels.elementwise import lanes_for
from dynvm.kernels.abi import ERR_LAYOUT
from tests.kernels.support import cached_table, values, with_layout
from tests.strategies import examples

CHAIN = ["multiply", ["tanh", ["add", ["multiply", ["in", 0], ["in", 1]], ["in", 2]]],
         ["sigmoid", ["in", 0]]]
EXPRS = {
    "chain32": (CHAIN, [("float32", 1)] * 3, ("float32", 1)),
    "chain64": (CHAIN, [("float64", 1)] * 3, ("float64", 1)),
    "div_pow_i32": (["add", ["divide", ["in", 0], ["in", 1]], ["power", ["in", 1], ["const", 2, "int32"]]],
                    [("int32", 1)] * 2, ("int32", 1)),
    "less_bool": (["logical_and", ["less", ["in", 0], ["in", 1]], ["in", 2]],
                  [("float32", 1), ("float32", 1), ("bool", 1)], ("bool", 1)),
    "cast_f32_i32": (["cast", ["multiply", ["in", 0], ["const", 100.0, "float32"]], "int32"],
                     [("float32", 1)], ("int32", 1)),
    "bcast2": (["maximum", ["in", 0], ["in", 1]], [("float32", 2), ("float32", 1)], ("float32", 2)),
}


def reference(key, xs):
    if key.startswith("chain"):
        a, b, c = xs
        return np.tanh(a * b + c) * (1 / (1 + np.exp(-a)))
    if key == "div_pow_i32":
        a, b = xs
        safe = np.where(b == 0, 1, b)
        q = np.where(b == 0, 0, np.trunc(a / safe)).astype(np.int32)
        return q + b * b
    if key == "less_bool":
        return np.logical_and(xs[0] < xs[1], xs[2])
    if key == "cast_f32_i32":
        return (xs[0] * np.float32(100.0)).astype(np.int32)  # one IEEE multiply: exact match
    return np.maximum(xs[0], xs[1])


@cached_table
def table():
    kb = KernelBuilder()
    index = {key: kb.add_elementwise(key, *spec) for key, spec in EXPRS.items()}
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}


def lanes(key):
    expr, inputs, output = EXPRS[key]
    return lanes_for(list(inputs) + [output])


def sizes_around(w):
    """0, 1, primes and the vector width +- 1 (and twice it)."""
    return sorted({0, 1, 2, 3, 5, 7, 13, 31, 97, w - 1, w, w + 1, 2 * w - 1, 2 * w, 2 * w + 1})


def inputs_for(key, shapes, seed):
    rng = np.random.default_rng(seed)
    _, sig, _ = EXPRS[key]
    low = {"cast_f32_i32": (-3, 10)}.get(key, (-3, 3))
    xs = [values(rng, shape, dt, *low) for shape, (dt, _) in zip(shapes, sig)]
    if key == "div_pow_i32":
        xs[1][::3] = 0  # division by zero gives 0
    return xs


def call(kernel, variant, arrays):
    """Run `variant` directly (None = the dispatcher); returns the native return code."""
    tensors, keep = abi.pack(arrays, [abi.dtype_code(dt) for dt in kernel.dtypes])
    fn = kernel._entry if variant is None else kernel.variant_function(variant)
    return fn(tensors, len(arrays))


def assert_matches(got, want):
    if got.dtype.kind == "f":
        rtol = 1e-5 if got.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want.astype(got.dtype), rtol=rtol, atol=rtol / 10)
    else:
        np.testing.assert_array_equal(got, want.astype(got.dtype))


FLAT_KEYS = ["chain32", "chain64", "div_pow_i32", "less_bool", "cast_f32_i32"]


@pytest.mark.parametrize("variant", ["scalar", "vector", "vector_exact", "strided"])
@pytest.mark.parametrize("key", FLAT_KEYS)
@settings(max_examples=examples(15))
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_each_variant_called_directly_matches_numpy(key, variant, data, seed):
    n = data.draw(st.sampled_from(sizes_around(lanes(key))))
    kernel = table()[key]
    xs = inputs_for(key, [(n,)] * len(EXPRS[key][1]), seed)
    out = np.zeros(n, EXPRS[key][2][0])
    rc = call(kernel, variant, xs + [out])
    if variant == "vector_exact" and n % lanes(key):
        assert rc & 0xFF == ERR_LAYOUT  # refuses sizes with a tail instead of overrunning
        return
    assert rc == 0
    assert_matches(out, reference(key, xs))


@settings(max_examples=examples(30))
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_strided_variant_broadcasts_any_layout_like_numpy(data, seed):
    """Inner strides 0/1 take the vectorised inner loop, others the scalar one."""
    w = lanes("bcast2")
    rows = data.draw(st.sampled_from([1, 2, 3, 7]))
    cols = data.draw(st.sampled_from(sizes_around(w)))
    a_shape = (data.draw(st.sampled_from([1, rows])), data.draw(st.sampled_from([1, cols])))
    b_shape = (data.draw(st.sampled_from([1, cols])),)
    a, b = inputs_for("bcast2", [a_shape, b_shape], seed)
    a_view = with_layout(a, data.draw(st.sampled_from(["c", "step", "transpose", "reversed"])))
    out = np.zeros((rows, cols), np.float32)
    for variant in ("strided", None):
        out[...] = 0
        assert call(table()["bcast2"], variant, [a_view, b, out]) == 0
        np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(a, b), out.shape))


@pytest.mark.parametrize("key", ["chain32", "chain64"])
def test_dispatcher_picks_the_documented_variant(key):
    kernel, w = table()[key], lanes(key)
    expected = {0: "scalar", 1: "scalar", w - 1: "scalar", w: "vector_exact", w + 1: "vector",
                3 * w: "vector_exact", 3 * w + 5: "vector"}
    for n, variant in expected.items():
        xs = inputs_for(key, [(n,)] * 3, n)
        out = np.empty(n, xs[0].dtype)
        kernel(xs, [out])
        assert kernel.last_variant == variant, n
        assert_matches(out, reference(key, xs))
    xs = inputs_for(key, [(2 * w,)] * 3, 0)
    kernel([xs[0][::-1], xs[1], xs[2]], [np.empty(2 * w, xs[0].dtype)])
    assert kernel.last_variant == "strided"


def test_dispatcher_sends_broadcasts_to_strided():
    kernel = table()["bcast2"]
    kernel([np.ones((3, 16), np.float32), np.ones(16, np.float32)], [np.empty((3, 16), np.float32)])
    assert kernel.last_variant == "strided"
    assert kernel.variants == ["scalar", "vector_exact", "vector", "strided"]


def test_lanes_follow_the_host_simd_width():
    from dynvm.kernels.family import vector_bits
    assert lanes("chain32") == vector_bits() // 32
    assert lanes("chain64") == vector_bits() // 64


def test_section_lists_variant_symbols_and_the_dispatcher():
    kb = KernelBuilder()
    kb.add_elementwise("neg", ["negative", ["in", 0]], [("float32", 1)], ("float32", 1))
    section = kb.finish()
    entry = section["kernels"][0]
    assert entry["symbol"] == "dynvm_k0_neg"
    assert [v["symbol"] for v in entry["variants"]] == [
        "dynvm_k0_neg__scalar", "dynvm_k0_neg__vector_exact", "dynvm_k0_neg__vector",
        "dynvm_k0_neg__strided"]
    ir_text = "".join(text for unit in section["llvm_ir"] for text in unit)
    assert "@\"dynvm_k0_neg__variant\" = global i32 -1" in ir_text
    assert "<16 x float>" in ir_text or "<8 x float>" in ir_text or "<4 x float>" in ir_text


@pytest.mark.parametrize("variant", [None, "scalar", "vector", "vector_exact", "strided"])
def test_bad_descriptors_return_error_codes(variant):
    kernel = table()["chain32"]
    arrays = [np.ones(32, np.float32) for _ in range(4)]
    f32 = abi.dtype_code("float32")
    fn = kernel._entry if variant is None else kernel.variant_function(variant)
    for edit in (lambda t: setattr(t[1], "ndim", 2), lambda t: setattr(t[3], "data", abi.ffi.NULL),
                 lambda t: setattr(t[0], "shape", abi.ffi.NULL),
                 lambda t: setattr(t[2].dtype, "bits", 64),
                 lambda t: t[1].shape.__setitem__(0, -1),
                 lambda t: t[1].shape.__setitem__(0, 7)):
        tensors, keep = abi.pack(arrays, [f32] * 4)
        edit(tensors)
        assert fn(tensors, 4) != 0
    tensors, keep = abi.pack(arrays, [f32] * 4)
    assert fn(tensors, 3) != 0 and fn(abi.ffi.NULL, 4) != 0


def test_permuted_inputs_read_transposed_through_the_strided_variant():
    from dynvm.kernels.builder import KernelBuilder
    from dynvm.kernels import load_kernels
    from dynvm.vm.errors import KernelError, ShapeError
    kb = KernelBuilder()
    k = kb.add_compiled("perm", "elementwise",
                        {"expr": ["multiply", ["in", 0], ["in", 1]], "perms": [[0, [2, 0, 1]]]},
                        [("float32", 3), ("float32", 1)], [("float32", 3)])
    with pytest.raises(KernelError, match="perms"):
        kb.add_compiled("bad", "elementwise", {"expr": ["in", 0], "perms": [[0, [0, 0]]]},
                        [("float32", 2)], [("float32", 2)])
    kernel = load_kernels(kb.finish())[k]
    assert kernel.variants == ["strided"]
    rng = np.random.default_rng(3)
    for shape in [(2, 3, 4), (1, 5, 1), (0, 2, 3), (3, 1, 17)]:
        a = rng.standard_normal(shape).astype(np.float32)
        t = a.transpose(2, 0, 1)
        b = rng.standard_normal(t.shape[-1:]).astype(np.float32)
        out = np.empty(t.shape, np.float32)
        kernel([a, b], [out])
        np.testing.assert_allclose(out, t * b, rtol=1e-6)
        if t.shape[-1] > 1 and t.size:   # a last dim that neither input can broadcast to
            bad = np.empty(t.shape[:-1] + (t.shape[-1] + 1,), np.float32)
            with pytest.raises(ShapeError):
                kernel([a, b], [bad])
