"""The "window" kernel family (kernels/window.py): pool (max / average, 1-d to 3-d) against a
direct loop over output positions written here, and the numpy reference (tests/numpy_reference.py)
against the same loop; the shape function, type relation, error codes, and one program with
Any dims through the VM. col2im against a scatter loop written here, roi_align against its
numpy reference (ONNX's own RoiAlign node cases,
run in tests/frontend/test_onnx_conformance.py, check both against ONNX's expected outputs).

Tolerance: an average sums at most 9 float32 values of magnitude <= 1: 1e-5 absolute.
"""
import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.kernels import load_kernels
from dynvm.kernels.abi import ERR_NDIM, ERR_SHAPE, ERR_VALUE
from dynvm.kernels.builder import KernelBuilder
from dynvm.shape_funcs import lookup
from dynvm.shape_funcs.window import pool_params
from dynvm.vm.errors import DynVMError, KernelError, ShapeError
from tests.kernels.support import raw_call, with_layout
from tests.numpy_reference import REFERENCE_KERNELS
from tests.strategies import examples


def attrs(mode, k, s=None, d=None, pads=None, ceil=False, include=False):
    n = len(k)
    return {"mode": mode, "pool_size": k, "strides": s or [1] * n, "dilation": d or [1] * n,
            "padding": pads or [0] * 2 * n, "ceil_mode": ceil, "count_include_pad": include}


# key -> (attrs, dtype)
KERNELS = {
    "max3x3": (attrs("max", [3, 3], [2, 2], pads=[1, 1, 1, 1]), "float32"),
    "max_dilated_ceil": (attrs("max", [2, 3], [2, 1], [2, 2], [0, 1, 1, 0], ceil=True), "float32"),
    "max_i64": (attrs("max", [2, 2], [1, 2], pads=[1, 0, 0, 1]), "int64"),
    "avg_include": (attrs("avg", [3, 2], [1, 2], [1, 2], [1, 1, 2, 0], include=True), "float32"),
    "avg_ceil": (attrs("avg", [3, 3], [3, 2], pads=[1, 0, 1, 2], ceil=True), "float32"),
    "avg_ceil_include_f64": (attrs("avg", [2, 3], [2, 2], pads=[1, 1, 0, 1], ceil=True,
                                   include=True), "float64"),
    "max1d": (attrs("max", [3], [2], pads=[1, 2], ceil=True), "float32"),
    "avg1d": (attrs("avg", [4], [1], [2], [2, 1], include=True), "float64"),
    "max3d": (attrs("max", [2, 3, 2], [1, 2, 2], [2, 1, 1], [1, 0, 1, 0, 1, 1], ceil=True),
              "float32"),
    "avg3d_include": (attrs("avg", [3, 2, 2], [2, 1, 2], pads=[1, 1, 0, 1, 0, 1],
                            include=True), "float32"),
}
# the same pooling split over the kernel threads from any size (parallel_work 0)
PARALLEL = {"max3x3", "avg_ceil"}


def roi(mode, oh, ow, ratio, scale, coords):
    return {"mode": mode, "output_height": oh, "output_width": ow, "sampling_ratio": ratio,
            "spatial_scale": scale, "coordinate_transformation_mode": coords}


ROI_KERNELS = {
    "avg_half_ratio2": (roi("avg", 3, 2, 2, 0.5, "half_pixel"), "float32"),
    "max_output_half_adaptive": (roi("max", 2, 3, 0, 1.0, "output_half_pixel"), "float32"),
    "avg_output_half_adaptive_f64": (roi("avg", 4, 1, 0, 0.25, "output_half_pixel"), "float64"),
    "max_half_ratio1": (roi("max", 1, 2, 1, 2.0, "half_pixel"), "float64"),
}


COL2IM = {
    "stride2": ({"strides": [2, 2], "padding": [1, 1, 1, 1], "output_padding": [1, 0]}, "float32"),
    "dilated_negative_pad": ({"strides": [3, 1], "dilation": [1, 2], "padding": [0, -1, 2, 0],
                              "output_padding": [0, 0]}, "float64"),
}


@functools.cache
def table():
    kb = KernelBuilder()
    index = {}
    for key, (a, dtype) in KERNELS.items():
        r = 2 + len(a["pool_size"])
        for par in ([False, True] if key in PARALLEL else [False]):
            spec = {"op": "pool", **a, **({"parallel_work": 0} if par else {})}
            index[key, par] = kb.add_compiled(key, "window", spec, [(dtype, r)], [(dtype, r)])
    for key, (a, dtype) in ROI_KERNELS.items():
        for par in (False, True):
            spec = {"op": "roi_align", **a, **({"parallel_work": 0} if par else {})}
            index[key, par] = kb.add_compiled(key, "window", spec,
                                              [(dtype, 4), (dtype, 2), ("int64", 1)], [(dtype, 4)])
    for key, (a, dtype) in COL2IM.items():
        for par in (False, True):
            spec = {"op": "col2im", **a, **({"parallel_work": 0} if par else {})}
            index[key, par] = kb.add_compiled(key, "window", spec, [(dtype, 6)], [(dtype, 4)])
    loaded = load_kernels(kb.finish())
    return {k: loaded[i] for k, i in index.items()}


def direct(x, a):
    """One output position at a time: the taps inside the data, the cells of the declared
    padding for count_include_pad."""
    mode, k, s, d, lo, hi, ceil, include = pool_params(a)
    (out_shape,) = lookup("pool").fn([x], a)
    out = np.zeros(out_shape, np.float64)
    for pos in itertools.product(*[range(m) for m in out_shape[2:]]):
        cells, declared = [], 0
        for tap in itertools.product(*[range(kk) for kk in k]):
            at = [p * st_ - l + t * dd for p, st_, l, t, dd in zip(pos, s, lo, tap, d)]
            if all(-l <= i < n + h for i, l, n, h in zip(at, lo, x.shape[2:], hi)):
                declared += 1
            if all(0 <= i < n for i, n in zip(at, x.shape[2:])):
                cells.append(x[(slice(None), slice(None)) + tuple(at)])
        if mode == "max":
            low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
            value = functools.reduce(np.fmax, cells, np.full(x.shape[:2], low, np.float64))
        else:
            with np.errstate(invalid="ignore"):
                value = sum(cells, np.zeros(x.shape[:2])) / (declared if include else len(cells))
        out[(slice(None), slice(None)) + pos] = value
    return out.astype(x.dtype)


def values(rng, shape, dtype):
    if np.dtype(dtype).kind == "i":
        return rng.integers(-9, 9, size=shape).astype(dtype)
    return rng.uniform(-1, 1, size=shape).astype(dtype)


def check(key, x, out_layout="c"):
    a, _ = KERNELS[key]
    want = direct(x, a)
    for par in ([False, True] if key in PARALLEL else [False]):
        out = with_layout(np.full(want.shape, 7, x.dtype), out_layout)
        table()[key, par]([x], [out])
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
    return want


SPATIAL = st.sampled_from([1, 2, 3, 4, 7, 9])


@settings(max_examples=examples(20), deadline=None)
@given(key=st.sampled_from(sorted(KERNELS)), n=st.sampled_from([0, 1, 2]),
       c=st.sampled_from([0, 1, 3]), h=SPATIAL, w=SPATIAL,
       layout=st.sampled_from(["c", "c", "step", "transpose", "reversed"]),
       out_layout=st.sampled_from(["c", "step"]), seed=st.integers(0, 2**16))
def test_pool_matches_the_direct_loop(key, n, c, h, w, layout, out_layout, seed):
    a, dtype = KERNELS[key]
    shape = (n, c, h, w, 3)[:2 + len(a["pool_size"])]
    x = values(np.random.default_rng(seed), shape, dtype)
    try:
        lookup("pool").fn([x], a)
    except ShapeError:
        return                                         # the window does not fit (checked below)
    check(key, with_layout(x, layout), out_layout)


def test_pool_large_planes_on_the_kernel_threads():
    rng = np.random.default_rng(1)
    check("max3x3", values(rng, (2, 5, 33, 31), "float32"))
    check("avg_ceil", values(rng, (3, 4, 17, 40), "float32"))


def test_max_ignores_nan_and_a_window_in_the_padding_is_minus_inf():
    x = np.array([[[[np.nan, 1.0], [np.nan, np.nan]]]], np.float32)
    got = check("max3x3", x)
    assert got[0, 0, 0, 0] == 1.0
    a = attrs("max", [1], pads=[1, 0])
    (shape,) = lookup("pool").fn([np.zeros((1, 1, 2))], a)
    assert shape == (1, 1, 3) and direct(np.zeros((1, 1, 2), np.float32), a)[0, 0, 0] == -np.inf


@pytest.mark.parametrize("key", sorted(KERNELS))
def test_the_numpy_reference_matches_the_direct_loop(key):
    a, dtype = KERNELS[key]
    x = values(np.random.default_rng(5), (2, 3, 8, 7, 5)[:2 + len(a["pool_size"])], dtype)
    want = direct(x, a)
    got = np.zeros(want.shape, dtype)
    REFERENCE_KERNELS["pool"]([x], [got], a)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_bad_extents_return_error_codes_and_bad_specs_do_not_build():
    kernel = table()["max3x3", False]
    x = np.ones((1, 2, 5, 5), np.float32)
    assert raw_call(kernel, [x, np.ones((1, 2, 3, 2), np.float32)]) & 0xFF == ERR_SHAPE
    assert raw_call(kernel, [x, np.ones((1, 3, 3, 3), np.float32)]) & 0xFF == ERR_SHAPE
    assert raw_call(kernel, [x[0], np.ones((1, 2, 3, 3), np.float32)]) & 0xFF == ERR_NDIM
    kb = KernelBuilder()
    with pytest.raises(KernelError, match="mode must be one of"):
        kb.add_compiled("p", "window", {"op": "pool", **attrs("min", [2])}, [("float32", 3)],
                        [("float32", 3)])
    with pytest.raises(KernelError, match=r"one dtype of \('float32', 'float64'\) \(avg\)"):
        kb.add_compiled("p", "window", {"op": "pool", **attrs("avg", [2])}, [("int64", 3)],
                        [("int64", 3)])


def test_shape_function_ceil_mode_drops_a_window_starting_in_the_end_padding():
    sf = lookup("pool").fn
    x = np.empty((1, 1, 5))
    assert sf([x], attrs("max", [2], [2])) == [(1, 1, 2)]
    assert sf([x], attrs("max", [2], [2], ceil=True)) == [(1, 1, 3)]
    # 5 + 1 + 1 padded: windows would start at 0, 3, 6; the one at 6 lies in the end padding
    assert sf([x], attrs("max", [1], [3], pads=[0, 2], ceil=True)) == [(1, 1, 2)]
    with pytest.raises(ShapeError, match="does not fit"):
        sf([np.empty((1, 1, 2, 2))], attrs("avg", [3, 3]))
    with pytest.raises(ShapeError, match="rank 4"):
        sf([x], attrs("avg", [3, 3]))


def test_pool_op_types_any_dims_and_runs_through_the_vm():
    from dynvm.compiler import build, ir, op
    from dynvm.vm import VirtualMachine

    a = KERNELS["avg_ceil"][0]
    x = ir.var("x", ir.TensorType((ir.Any(), 3, ir.Any(), 6), "float32"))
    y = op.pool(x, **a)
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], y))))
    rng = np.random.default_rng(2)
    for shape in [(2, 3, 9, 6), (1, 3, 1, 6), (0, 3, 4, 6)]:
        xs = values(rng, shape, "float32")
        np.testing.assert_allclose(vm.invoke("main", xs), direct(xs, a), rtol=0, atol=1e-5)
    bad = ir.var("x", ir.TensorType((1, 3, 2, 2), "int32"))
    with pytest.raises(DynVMError, match="data"):
        build(ir.IRModule.from_expr(ir.Function([bad], op.pool(bad, **a))))


# ---------------------------------------------------------------- roi_align


@settings(max_examples=examples(25), deadline=None)
@given(key=st.sampled_from(sorted(ROI_KERNELS)), rois=st.sampled_from([0, 1, 4]),
       n=st.sampled_from([1, 2]), c=st.sampled_from([0, 1, 3]), h=st.sampled_from([0, 1, 2, 7]),
       w=st.sampled_from([0, 1, 5, 9]), layout=st.sampled_from(["c", "step", "transpose"]),
       seed=st.integers(0, 2**16))
def test_roi_align_matches_the_numpy_reference(key, rois, n, c, h, w, layout, seed):
    """rois from 3 cells before to 3 past the image (samples outside it, inverted boxes)."""
    a, dtype = ROI_KERNELS[key]
    rng = np.random.default_rng(seed)
    x = with_layout(values(rng, (n, c, h, w), dtype), layout)
    boxes = (rng.uniform(-3, max(h, w) + 3, (rois, 4)) / a["spatial_scale"]).astype(dtype)
    batch = rng.integers(0, n, rois).astype(np.int64)
    (shape,) = lookup("roi_align").fn([x, boxes, batch], a)
    want = np.zeros(shape, dtype)
    REFERENCE_KERNELS["roi_align"]([x, boxes, batch], [want], a)
    for par in (False, True):
        got = np.full(shape, 7, dtype)
        table()[key, par]([x, boxes, batch], [got])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_roi_align_rejects_bad_batch_indices_and_shapes():
    kernel = table()["avg_half_ratio2", False]
    x, boxes = np.ones((2, 1, 4, 4), np.float32), np.ones((1, 4), np.float32)
    out = np.zeros((1, 1, 3, 2), np.float32)
    assert raw_call(kernel, [x, boxes, np.array([2]), out]) & 0xFF == ERR_VALUE
    assert raw_call(kernel, [x, boxes, np.array([-1]), out]) & 0xFF == ERR_VALUE
    assert raw_call(kernel, [x, boxes, np.array([0]), out[..., :1]]) & 0xFF == ERR_SHAPE
    short = np.ones((1, 3), np.float32)
    assert raw_call(kernel, [x, short, np.array([0]), out]) & 0xFF == ERR_SHAPE
    with pytest.raises(ShapeError, match=r"rois must be \(R, 4\)"):
        lookup("roi_align").fn([x, boxes, np.array([0, 1])], ROI_KERNELS["avg_half_ratio2"][0])


# ---------------------------------------------------------------- col2im


def scatter(x, a):
    """Every (tap, input cell) added into its output cell, cells outside the output dropped."""
    (out,) = lookup("col2im").fn([x], a)
    full = np.zeros(out, np.float64)
    (sh, sw), (dh, dw) = a["strides"], a.get("dilation", [1, 1])
    top, left = a["padding"][:2]
    for ky, kx, iy, ix in itertools.product(*[range(d) for d in x.shape[2:]]):
        y, xo = iy * sh - top + ky * dh, ix * sw - left + kx * dw
        if 0 <= y < out[2] and 0 <= xo < out[3]:
            full[:, :, y, xo] += x[:, :, ky, kx, iy, ix]
    return full


@settings(max_examples=examples(20), deadline=None)
@given(key=st.sampled_from(sorted(COL2IM)), n=st.sampled_from([0, 1, 2]),
       c=st.sampled_from([0, 1, 3]), k=st.sampled_from([(1, 1), (3, 2), (4, 4)]),
       h=st.sampled_from([0, 1, 3, 6]), w=st.sampled_from([1, 2, 5]),
       layout=st.sampled_from(["c", "step", "transpose"]), seed=st.integers(0, 2**16))
def test_col2im_matches_the_scatter_loop(key, n, c, k, h, w, layout, seed):
    a, dtype = COL2IM[key]
    x = values(np.random.default_rng(seed), (n, c, *k, h, w), dtype)
    try:
        want = scatter(x, a)
    except ShapeError:
        return                                           # pads larger than the output
    ref = np.zeros(want.shape, dtype)
    REFERENCE_KERNELS["col2im"]([x], [ref], a)
    np.testing.assert_allclose(ref, want, rtol=1e-6, atol=1e-5)
    for par in (False, True):
        got = np.full(want.shape, 7, dtype)
        table()[key, par]([with_layout(x, layout)], [got])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    bad = np.zeros(want.shape[:3] + (want.shape[3] + 1,), dtype)
    assert raw_call(table()[key, False], [x, bad]) & 0xFF == ERR_SHAPE
