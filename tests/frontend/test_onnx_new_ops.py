"""Ops built from existing dynvm ops: Sin, Cos, ReduceProd and Einsum against numpy, on inputs
with dynamic dims (one executable per op, every drawn shape, size-0 and size-1 dims included);
ScatterElements, ScatterND and LRN against numpy; Resize and ceil_mode pooling against ONNX
Runtime."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnx")

from onnx import helper  # noqa: E402

from dynvm.compiler import build  # noqa: E402
from dynvm.frontend.onnx import UnsupportedOnnxError, from_onnx  # noqa: E402
from dynvm.vm import VirtualMachine  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402

SETTINGS = settings(max_examples=10, deadline=None)
dims = st.integers(0, 4)


def compiled(node, ranks):
    """A VM running `node` on float32 inputs i0, i1... of the given ranks, every dim dynamic."""
    ins = [helper.make_tensor_value_info(f"i{k}", M.F, [None] * r) for k, r in enumerate(ranks)]
    m = M.model([node], ins, [helper.make_tensor_value_info("y", M.F, None)], check=False)
    return VirtualMachine(build(from_onnx(m)))


SIN = compiled(helper.make_node("Sin", ["i0"], ["y"]), [2])
COS = compiled(helper.make_node("Cos", ["i0"], ["y"]), [2])


@SETTINGS
@given(st.tuples(dims, dims), st.floats(0.1, 1e4), st.integers(0, 2 ** 31))
def test_sin_and_cos_match_numpy(shape, scale, seed):
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    np.testing.assert_allclose(SIN.invoke("main", x), np.sin(x), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(COS.invoke("main", x), np.cos(x), rtol=1e-5, atol=2e-6)


PRODS = {(axis, keep): compiled(helper.make_node("ReduceProd", ["i0"], ["y"], axes=[axis],
                                                 keepdims=keep), [3])
         for axis in (0, 2) for keep in (0, 1)}


@SETTINGS
@given(st.tuples(dims, dims, dims), st.sampled_from(sorted(PRODS)), st.integers(0, 2 ** 31))
def test_reduce_prod_matches_numpy_with_zeros_negatives_and_empty_axes(shape, key, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, shape).astype(np.float32)
    x[rng.random(shape) < 0.1] = 0.0
    axis, keep = key
    want = np.prod(x.astype(np.float64), axis=axis, keepdims=bool(keep)).astype(np.float32)
    np.testing.assert_allclose(PRODS[key].invoke("main", x), want, rtol=1e-5, atol=1e-7)


EQUATIONS = ["ij,jk->ik", "bij,bjk->bik", "ij->ji", "ij->", "i,i", "i,j->ij", "ij,kj",
             "bhqd,bhkd->bhqk", "abc,cd->abd", "ijk->j", "ij,ij->ij"]


def operand_shapes(equation, sizes):
    terms = equation.split("->")[0].split(",")
    return [tuple(sizes[ord(c) - ord("a")] for c in t) for t in terms]


EINSUMS = {eq: compiled(helper.make_node("Einsum", [f"i{k}" for k in range(len(
    eq.split("->")[0].split(",")))], ["y"], equation=eq),
    [len(t) for t in eq.split("->")[0].split(",")]) for eq in EQUATIONS}


@SETTINGS
@given(st.sampled_from(EQUATIONS), st.lists(st.integers(1, 4), min_size=26, max_size=26),
       st.integers(0, 2 ** 31))
def test_einsum_matches_numpy(equation, sizes, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(s).astype(np.float32) for s in operand_shapes(equation, sizes)]
    got = EINSUMS[equation].invoke("main", *xs)
    np.testing.assert_allclose(got, np.einsum(equation, *xs), rtol=1e-5, atol=1e-5)


def test_einsum_rejects_three_operands_and_broadcast_dims():
    for equation, shapes in (("i,i,i->i", [[3]] * 3), ("ij,ij->ij", [[3, 1], [3, 4]])):
        names = [f"i{k}" for k in range(len(shapes))]
        with pytest.raises(UnsupportedOnnxError, match="Einsum with|Einsum whose"):
            from_onnx(M.model([helper.make_node("Einsum", names, ["y"], equation=equation)],
                              [helper.make_tensor_value_info(n, M.F, s) for n, s in zip(names, shapes)],
                              [helper.make_tensor_value_info("y", M.F, None)], check=False))


@pytest.mark.parametrize("attrs, scales, sizes", [
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [1, 1, 0.5, 1.5], None),
    ({"mode": "linear"}, None, [1, 2, 3, 7]),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 1, 2, 0.4], None),
])
def test_resize_matches_onnxruntime(attrs, scales, sizes):
    pytest.importorskip("onnxruntime")
    inits = {"roi": np.zeros(0, np.float32),
             "scales": np.array(scales or [], np.float32)}
    if sizes:
        inits["sizes"] = np.array(sizes, np.int64)
    node = helper.make_node("Resize", ["x", "roi", "scales"] + (["sizes"] if sizes else []),
                            ["y"], **attrs)
    m = M.model([node], [helper.make_tensor_value_info("x", M.F, [1, 2, 4, 5])],
                [helper.make_tensor_value_info("y", M.F, None)], inits, check=False)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 5)).astype(np.float32)
    got = VirtualMachine(build(from_onnx(m))).invoke("main", x)
    want = M.ort_run(m, x)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def scatter_model(op_type, **attrs):
    node = helper.make_node(op_type, ["data", "indices", "updates"], ["y"], **attrs)
    ins = [helper.make_tensor_value_info("data", M.F, [None, None]),
           helper.make_tensor_value_info("indices", M.I64,
                                         [None, 1 if op_type == "ScatterND" else None]),
           helper.make_tensor_value_info("updates", M.F, [None, None])]
    return M.model([node], ins, [helper.make_tensor_value_info("y", M.F, None)], check=False)


SCATTERS = {key: VirtualMachine(build(from_onnx(scatter_model(*key[:1], **dict(key[1:])))))
            for key in [("ScatterElements", ("axis", 1)), ("ScatterElements", ("axis", 0),
                                                                ("reduction", "add")),
                        ("ScatterND",), ("ScatterND", ("reduction", "add"))]}


@SETTINGS
@given(st.sampled_from(sorted(SCATTERS)), st.integers(1, 5), st.integers(1, 5),
       st.integers(0, 4), st.integers(0, 2 ** 31))
def test_scatter_elements_and_nd_match_numpy(key, rows, cols, count, seed):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((rows, cols)).astype(np.float32)
    attrs = dict(key[1:])
    add = attrs.get("reduction") == "add"
    want = data.copy()
    if key[0] == "ScatterND":       # whole rows: indices (count, 1), updates (count, cols)
        picked = rng.choice(rows, min(count, rows), replace=add) if not add else \
            rng.integers(0, rows, count)
        indices = picked.reshape(-1, 1).astype(np.int64)
        updates = rng.standard_normal((len(picked), cols)).astype(np.float32)
        for k, i in enumerate(picked):
            want[i] = want[i] + updates[k] if add else updates[k]
    else:
        axis = attrs["axis"]
        other = cols if axis == 0 else rows
        size = rows if axis == 0 else cols
        n = min(count, size)
        idx = np.stack([rng.choice(size, n, replace=False) for _ in range(other)], 1 - axis) \
            if n else np.zeros((0, other) if axis == 0 else (other, 0), np.int64)
        indices = (idx - size * (rng.random(idx.shape) < 0.3)).astype(np.int64)   # negatives
        updates = rng.standard_normal(indices.shape).astype(np.float32)
        for pos in np.ndindex(indices.shape):
            target = list(pos)
            target[axis] = indices[pos] % size
            want[tuple(target)] = want[tuple(target)] + updates[pos] if add else updates[pos]
    got = SCATTERS[key].invoke("main", data, indices, updates)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_type, attrs", [
    ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1,
                         count_include_pad=1)),
])
def test_pooling_with_ceil_mode_matches_onnxruntime(op_type, attrs):
    """The last window is partial (and dropped when it would start in the end padding)."""
    pytest.importorskip("onnxruntime")
    m = M.model([helper.make_node(op_type, ["x"], ["y"], **attrs)],
                [helper.make_tensor_value_info("x", M.F, [1, 2, 7, 6])],
                [helper.make_tensor_value_info("y", M.F, None)], check=False)
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 6)).astype(np.float32)
    got = VirtualMachine(build(from_onnx(m))).invoke("main", x)
    want = M.ort_run(m, x)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def lrn_reference(x, size, alpha, beta, bias):
    """ONNX's LRN, written out: the square sum over channels [c - (size-1)//2, c + size//2]."""
    squares = np.zeros_like(x)
    channels = x.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - (size - 1) // 2), min(channels - 1, c + size // 2)
        squares[:, c] = (x[:, lo:hi + 1] ** 2).sum(axis=1)
    return x / (bias + alpha / size * squares) ** beta


@pytest.mark.parametrize("rank, attrs", [
    (4, dict(size=3)),                                           # ONNX's defaults otherwise
    (3, dict(size=4, alpha=0.5, beta=0.6, bias=2.0)),            # an even window
])
def test_lrn_matches_numpy(rank, attrs):
    vm = compiled(helper.make_node("LRN", ["i0"], ["y"], **attrs), [rank])
    full = dict(alpha=1e-4, beta=0.75, bias=1.0) | attrs
    rng = np.random.default_rng(rank)
    for channels in (1, 2, 7):                                   # fewer channels than the window
        shape = (2, channels, 3, 5)[:rank]
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        np.testing.assert_allclose(vm.invoke("main", x), lrn_reference(x, **full), rtol=1e-5,
                                   atol=1e-6)
