"""The "conv2d" kernel family (kernels/conv2d.py): NCHW conv2d with strides, padding, dilation,
groups and a fused epilogue, every variant against a float64 direct-loop reference written for
the tests (tests/references.py); the shape function against the reference's shapes, the type
relation and one program through the VM.

Tolerance: 2 K eps (|X| * |W|) per element with K = C/groups * KH * KW (the dot-product bound).
"""
import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import load_kernels
from tests.numpy_reference import REFERENCE_KERNELS
from dynvm.kernels.abi import ERR_LAYOUT, ERR_NDIM, ERR_SHAPE
from dynvm.kernels.matmul import Blocking
from dynvm.shape_funcs import lookup
from tests.kernels.support import raw_call, with_layout
from tests.references import conv2d as conv2d_reference
from dynvm.vm.errors import DynVMError, ShapeError
from tests.strategies import examples

NR = Blocking("float32").nr
BIAS_RELU = ["relu", ["add", ["in", 0], ["in", 1]]]

KERNELS = {
    "plain": ({"strides": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1},
              "float32", None),
    "grouped": ({"strides": [2, 1], "padding": [0, 1, 2, 3], "dilation": [2, 1], "groups": 2},
                "float32", BIAS_RELU),
    "f64": ({"strides": [1, 2], "padding": [1], "dilation": [1, 1], "groups": 1}, "float64", None),
}


@functools.cache
def table():
    kb = KernelBuilder()
    index = {}
    for key, (attrs, dtype, epi) in KERNELS.items():
        spec = {"op": "conv2d", **attrs}
        ins = [(dtype, 4), (dtype, 4)]
        if epi is not None:
            spec["epilogue"], ins = epi, ins + [(dtype, 3)]
        index[key] = kb.add_compiled(key, "conv2d", spec, ins, [(dtype, 4)])
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}



def direct(x, w, attrs):
    return conv2d_reference(x, w, attrs["strides"], attrs["padding"], attrs["dilation"],
                            attrs["groups"])


def reference(key, x, w, extra):
    attrs, dtype, epi = KERNELS[key]
    ref, bound = direct(x, w, attrs), direct(np.abs(x), np.abs(w), attrs)
    assert lookup("conv2d").fn([x, w], attrs) == [ref.shape]
    eps = np.finfo(dtype).eps
    k = w.shape[1] * w.shape[2] * w.shape[3]
    if epi is not None:
        ref = np.maximum(ref + extra, 0)
    return ref, 2 * k * eps * bound + 8 * eps * np.abs(ref) + 1e-30


def run_everywhere(key, x, w, extra=None, out_layout="c"):
    kernel = table()[key]
    ref, bound = reference(key, x, w, extra)
    inputs = [x, w] + ([extra] if extra is not None else [])
    out = with_layout(np.full(ref.shape, np.nan, x.dtype), out_layout)
    kernel(inputs, [out])
    assert np.all(np.abs(out - ref) <= bound), np.abs(out - ref).max()
    for variant in kernel.variants:
        out[...] = np.nan
        rc = raw_call(kernel, variant=variant, arrays=[*inputs, out])
        if variant == "fast" and rc == ERR_LAYOUT:
            assert (ref.shape[2] * ref.shape[3]) % NR or out_layout != "c" or x.dtype != np.float32
            continue
        assert rc == 0, f"variant {variant} returned {rc:#x}"
        assert np.all(np.abs(out - ref) <= bound), (variant, np.abs(out - ref).max())
    return kernel.last_variant


SPATIAL = st.sampled_from([1, 2, 3, 5, 8, 13, 17])


def data(rng, shape, dtype="float32"):
    return rng.uniform(-1, 1, size=shape).astype(dtype)


@settings(max_examples=examples(25))
@given(n=st.sampled_from([0, 1, 2]), c=st.sampled_from([0, 1, 3, 4]), h=SPATIAL, w=SPATIAL,
       o=st.sampled_from([1, 5, 12, 13]), kh=st.sampled_from([1, 3]), kw=st.sampled_from([1, 2, 3]),
       lx=st.sampled_from(["c", "c", "transpose", "step"]), lo=st.sampled_from(["c", "c", "step"]),
       seed=st.integers(0, 2**16))
def test_conv2d_same_padding_matches_reference(n, c, h, w, o, kh, kw, lx, lo, seed):
    rng = np.random.default_rng(seed)
    x = with_layout(data(rng, (n, c, h, w)), lx)
    run_everywhere("plain", x, data(rng, (o, c, kh, kw)), out_layout=lo)


@settings(max_examples=examples(25))
@given(n=st.sampled_from([1, 2]), cg=st.sampled_from([1, 3]), h=st.sampled_from([5, 8, 13]),
       w=SPATIAL, og=st.sampled_from([1, 6, 13]), kh=st.sampled_from([1, 2, 3]),
       kw=st.sampled_from([1, 3]),
       bias=st.sampled_from(["channel", "full_hw", "scalar", "width", "height"]),
       seed=st.integers(0, 2**16))
def test_conv2d_strides_dilation_groups_and_fused_bias_relu(n, cg, h, w, og, kh, kw, bias, seed):
    rng = np.random.default_rng(seed)
    x, wt = data(rng, (n, 2 * cg, h, w)), data(rng, (2 * og, cg, kh, kw))
    (shape,) = lookup("conv2d").fn([x, wt], KERNELS["grouped"][0])
    # channel/full_hw/scalar: column offsets linear in p = oh * OW + ow (vector epilogue);
    # width/height broadcast over one spatial dim: the scalar epilogue's (oh, ow) cursor
    extra_shape = {"channel": (2 * og, 1, 1), "full_hw": (2 * og,) + shape[2:],
                   "scalar": (1, 1, 1), "width": (1, 1, shape[3]), "height": (2 * og, shape[2], 1)}[bias]
    run_everywhere("grouped", x, wt, data(rng, extra_shape))


@settings(max_examples=examples(20))
@given(h=SPATIAL, w=SPATIAL, seed=st.integers(0, 2**16))
def test_conv2d_float64(h, w, seed):
    rng = np.random.default_rng(seed)
    run_everywhere("f64", data(rng, (2, 3, h, w), "float64"), data(rng, (4, 3, 3, 3), "float64"))


def test_conv2d_large_enough_for_the_fast_variant():
    rng = np.random.default_rng(3)
    # 32 x 32 output plane: a multiple of the micro-tile width, so the dispatcher picks "fast"
    assert run_everywhere("plain", data(rng, (1, 16, 32, 32)), data(rng, (24, 16, 3, 3))) == "fast"


def test_conv2d_bad_shapes_return_error_codes():
    kernel = table()["plain"]
    x, w = np.ones((1, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32)
    out = np.ones((1, 4, 5, 5), np.float32)
    bad = {"channels": [x, np.ones((4, 2, 3, 3), np.float32), out],
           "output": [x, w, np.ones((1, 4, 5, 4), np.float32)],
           "kernel too big": [np.ones((1, 3, 1, 1), np.float32), np.ones((4, 3, 5, 5), np.float32),
                              np.ones((1, 4, 1, 1), np.float32)]}
    for variant in kernel.variants:
        for what, arrays in bad.items():
            assert raw_call(kernel, variant=variant, arrays=arrays) & 0xFF == ERR_SHAPE, (variant, what)
        assert raw_call(kernel, variant=variant, arrays=[x[0], w, out]) & 0xFF == ERR_NDIM


# ---------------------------------------------------------------- shape function and op


@pytest.mark.parametrize("key", sorted(KERNELS))
def test_the_numpy_reference_kernel_matches_the_direct_loop(key):
    attrs, dtype, _ = KERNELS[key]
    rng = np.random.default_rng(5)
    x, w = data(rng, (2, 4, 9, 7), dtype), data(rng, (6, 4 // attrs["groups"], 3, 2), dtype)
    want = direct(x, w, attrs)
    got = np.zeros(want.shape)
    REFERENCE_KERNELS["conv2d"]([x.astype(np.float64), w.astype(np.float64)], [got], attrs)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_shape_function_follows_relay_padding_forms():
    sf = lookup("conv2d").fn
    x, w = np.empty((2, 4, 10, 9)), np.empty((6, 2, 3, 3))
    assert sf([x, w], {"strides": [2, 2], "padding": [1], "groups": 2}) == [(2, 6, 5, 5)]
    assert sf([x, np.empty((6, 4, 3, 3))], {"padding": [1, 0, 0, 2], "dilation": [2, 1]}) == \
        [(2, 6, 7, 9)]
    with pytest.raises(ShapeError, match="channels"):
        sf([x, w], {})
    with pytest.raises(ShapeError, match="does not fit"):
        sf([np.empty((1, 4, 2, 2)), np.empty((1, 4, 3, 3))], {})
    with pytest.raises(ShapeError, match="padding"):
        sf([x, w], {"padding": [1, 2, 3], "groups": 2})


def test_conv2d_op_types_any_dims_and_runs_fused_through_the_vm():
    from dynvm.compiler import build, ir, op
    from dynvm.vm import VirtualMachine

    x = ir.var("x", ir.TensorType((ir.Any(), 3, ir.Any(), ir.Any()), "float32"))
    rng = np.random.default_rng(7)
    w, bias = data(rng, (8, 3, 3, 3)), data(rng, (8, 1, 1))
    y = op.relu(op.add(op.conv2d(x, ir.const(w), strides=[2, 2], padding=[1, 1]),
                       ir.const(bias)))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], y))))
    for shape in [(2, 3, 9, 10), (1, 3, 1, 1), (0, 3, 4, 4)]:
        xs = data(rng, shape)
        got = vm.invoke("main", xs)
        ref = conv2d_reference(xs, w, strides=(2, 2), padding=(1, 1))
        np.testing.assert_allclose(got, np.maximum(ref + bias, 0), rtol=1e-5, atol=1e-5)


def test_conv2d_type_relation_rejects_channel_mismatch():
    from dynvm.compiler import build, ir, op

    x = ir.var("x", ir.TensorType((1, 4, 8, 8), "float32"))
    w = ir.const(np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(DynVMError, match="channels"):
        build(ir.IRModule.from_expr(ir.Function([x], op.conv2d(x, w))))
