"""ConvTranspose (1-d and 2-d: strides, pads, dilations, group, output_padding, output_shape,
auto_pad) against a numpy scatter reference written here: every input cell adds its weight
window into the output at (cell * stride + tap * dilation), then the pads are cropped. Explicit
pads build with dynamic batch and spatial dims and run at several sizes (0 and 1 included)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("onnx")

from onnx import helper  # noqa: E402

from dynvm.compiler import build  # noqa: E402
from dynvm.frontend.onnx import from_onnx  # noqa: E402
from dynvm.vm import VirtualMachine  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402
from tests.strategies import examples  # noqa: E402


def scatter_reference(x, w, strides, dilations, pads, extra, group):
    """x (N, C, *S), w (C, O/g, *K) -> (N, O, *out), float64."""
    n, c, *sizes = x.shape
    _, og, *kernel = w.shape
    full = [(s - 1) * st_ + d * (k - 1) + 1 + e
            for s, st_, d, k, e in zip(sizes, strides, dilations, kernel, extra)]
    out = np.zeros((n, og * group, *full))
    cg = c // group
    for g in range(group):
        xg, wg = x[:, g * cg:(g + 1) * cg].astype(np.float64), w[g * cg:(g + 1) * cg]
        for tap in np.ndindex(*kernel):
            cells = tuple(slice(t * d, t * d + (s - 1) * st_ + 1, st_)
                          for t, d, s, st_ in zip(tap, dilations, sizes, strides))
            out[(slice(None), slice(g * og, (g + 1) * og)) + cells] += np.einsum(
                "nc...,co->no...", xg, wg[(slice(None), slice(None)) + tap])
    k = len(sizes)
    crop = tuple(slice(b, f - e) for b, e, f in zip(pads[:k], pads[k:], full))
    return out[(slice(None), slice(None)) + crop]


def model(x_dims, w_shape, bias, **attrs):
    ins = [helper.make_tensor_value_info("x", M.F, x_dims),
           helper.make_tensor_value_info("w", M.F, list(w_shape))]
    names = ["x", "w"]
    if bias:
        ins.append(helper.make_tensor_value_info("b", M.F, [w_shape[1] * attrs.get("group", 1)]))
        names.append("b")
    node = helper.make_node("ConvTranspose", names, ["y"], **attrs)
    m = M.model([node], ins, [helper.make_tensor_value_info("y", M.F, None)], check=False)
    return VirtualMachine(build(from_onnx(m)))


# (channels, w shape, attrs): explicit pads (dynamic N and spatial dims)
EXPLICIT = {
    "stride2": (2, (2, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    "groups_dilation": (4, (4, 1, 2, 3), dict(strides=[1, 3], dilations=[2, 1], group=2,
                                              pads=[0, 2, 1, 0])),
    "1d": (3, (3, 2, 4), dict(strides=[2], pads=[1, 0], dilations=[2])),
}
VMS = {key: model(["N", c] + ["S"] * (len(w) - 2), w, bias=(key != "1d"), **attrs)
       for key, (c, w, attrs) in EXPLICIT.items()}


@settings(max_examples=examples(10), deadline=None)
@given(key=st.sampled_from(sorted(EXPLICIT)), n=st.sampled_from([0, 1, 2]),
       size=st.sampled_from([1, 2, 5]), seed=st.integers(0, 2**31))
def test_explicit_pads_match_the_scatter_reference(key, n, size, seed):
    c, w_shape, attrs = EXPLICIT[key]
    rng = np.random.default_rng(seed)
    k = len(w_shape) - 2
    x = rng.standard_normal((n, c) + (size,) * k).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    want = scatter_reference(x, w, attrs["strides"], attrs.get("dilations", [1] * k),
                             attrs["pads"], attrs.get("output_padding", [0] * k),
                             attrs.get("group", 1))
    assume(min(want.shape[2:]) > 0)    # pads larger than the output: not a valid model
    args = [x, w]
    if key != "1d":
        b = rng.standard_normal(want.shape[1]).astype(np.float32)
        args.append(b)
        want = want + b.reshape(-1, *[1] * k)
    np.testing.assert_allclose(VMS[key].invoke("main", *args), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attrs, pads, extra", [
    (dict(strides=[2, 2], output_shape=[10, 8]), [0, 0, 0, 0], [1, 1]),   # past the full 9 x 7
    (dict(strides=[2, 2], auto_pad="SAME_LOWER"), [1, 1, 0, 0], [0, 0]),
])
def test_output_shape_and_auto_pad_place_the_odd_cell_like_onnx(attrs, pads, extra):
    """Input 4 x 3, kernel 3 x 3, stride 2: the full output is 9 x 7."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 4, 3)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    got = model([1, 2, 4, 3], w.shape, bias=False, **attrs).invoke("main", x, w)
    want = scatter_reference(x, w, [2, 2], [1, 1], pads, extra, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
