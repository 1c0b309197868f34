"""The "reduce" kernel family (kernels/reduce.py) agrees with the numpy reference (tests/numpy_reference.py).

Every axis set of ranks 1-4 (with keepdims, negative axes and exclude) is compiled once, and
every variant (`S__inner`/`S__outer`/`S__generic`, called directly) and the dispatcher `S` run
on drawn shapes with 0, 1, prime and vector-width +-1 extents. Tolerance: integers, max/min and
argmax exact; float sums/means within rtol 1e-5 (float32) / 1e-12 (float64) plus an absolute
slack of eps * count * max|x| (summation order differs from numpy's pairwise sums).
"""
import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from llvmlite import ir

from dynvm.kernels import abi, codelib, llvm_math
from tests.numpy_reference import REFERENCE_KERNELS
from dynvm.kernels.family import get_family, variant_global, variant_symbol
from dynvm.kernels.abi import (ERR_DTYPE, ERR_EMPTY, ERR_LAYOUT, ERR_NARGS, ERR_NDIM, ERR_NULL,
                               ERR_SHAPE)
from dynvm.kernels.reduce import Layout
from dynvm.shape_funcs.reduce import reduce_shape, reduced_axes
from dynvm.vm.errors import KernelError, ShapeError
from tests.strategies import examples, laid_out, layouts

LANES = llvm_math.vector_lanes(llvm_math.F32)
DIMS = st.sampled_from([0, 1, 1, 2, 3, 5, 7, LANES - 1, LANES, LANES + 1, 37])
OPS = ("sum", "mean", "max", "min", "argmax")
DTYPES = ("float32", "float64", "int32", "int64")


class NativeTable:
    """Kernels of any family emitted into one module, compiled once; variants callable by name
    (a test hook independent of the builder and runtime)."""

    def __init__(self, entries):
        target = codelib.host_target()
        module = ir.Module("test_table")
        module.triple = target["triple"]
        self.meta = {}
        for i, (key, family, spec, inputs, outputs) in enumerate(entries):
            fam = get_family(family)
            fam.check(spec, inputs, outputs)
            symbol = f"t{i}"
            names = fam.emit(module, symbol, spec, inputs, outputs)
            self.meta[key] = (symbol, names, [tuple(s) for s in inputs + outputs])
        self.lib = codelib.CodeLibrary(str(module), codelib.compile_ir(str(module), target), target)

    def variants(self, key):
        return self.meta[key][1]

    def call(self, key, arrays, variant=None, tamper=None):
        """Return code of the dispatcher (variant None) or of `S__variant` on `arrays`."""
        symbol, _, sig = self.meta[key]
        name = symbol if variant is None else variant_symbol(symbol, variant)
        fn = abi.kernel_function(self.lib.address(name))
        packer = abi.ArgPacker([abi.dtype_code(dt) for dt, _ in sig], [a.ndim for a in arrays])
        tensors, keep = packer.pack(arrays)
        nargs = len(arrays)
        if tamper is not None:
            tensors, nargs = tamper(tensors, nargs)
        rc = fn(tensors, nargs)
        del keep, packer
        return rc

    def last_variant(self, key):
        symbol, names, _ = self.meta[key]
        index = abi.ffi.cast("int32_t *", self.lib.address(variant_global(symbol)))[0]
        return names[index]


def spec_of(op, axis, keepdims=False, exclude=False):
    return {"op": op, "axis": axis, "keepdims": keepdims, "exclude": exclude}


def entry(key, op, dtype, rank, spec):
    out = "int64" if op == "argmax" else dtype
    return (key, "reduce", spec, [[dtype, rank]], [[out, Layout(spec, rank).out_rank]])


def axis_forms(rank):
    """Every axis set of `rank` once, written in varied ways (None, int, negative, exclude)."""
    forms = []
    for size in range(rank + 1):
        for k, axes in enumerate(itertools.combinations(range(rank), size)):
            if size == rank:
                forms.append((None, False))
            elif len(axes) == 1 and k % 2 == 0:
                forms.append((axes[0] - rank, False))            # negative int
            elif k % 3 == 1:
                forms.append(([a for a in range(rank) if a not in axes], True))  # exclude
            else:
                forms.append(([a - rank if a % 2 else a for a in axes], False))
    return forms


@functools.cache
def all_axis_entries():
    """One kernel per axis set of ranks 1-4; op, dtype and keepdims rotate across them."""
    out = []
    for rank in range(1, 5):
        for j, (axis, exclude) in enumerate(axis_forms(rank)):
            n = len(out)
            op, dtype = OPS[n % len(OPS)], DTYPES[(n // 2) % len(DTYPES)]
            keepdims = n % 3 == 0
            out.append(entry(("axes", rank, j), op, dtype, rank,
                             spec_of(op, axis, keepdims, exclude)))
    return out


def matrix_entries():
    """Every op with every dtype on the inner structure; every op on the outer structure (with
    rotating dtypes) and a rank-0 sum. (Compiles cost ~50 ms per function: keep this small.)"""
    out = [entry(("inner", op, dtype), op, dtype, 2, spec_of(op, [1]))
           for op in OPS for dtype in DTYPES]
    out += [entry(("outer", op, DTYPES[k % 4]), op, DTYPES[k % 4], 3, spec_of(op, [0, 1]))
            for k, op in enumerate(OPS)]
    out.append(entry(("scalar", "sum", "float64"), "sum", "float64", 0, spec_of("sum", None)))
    return out


@functools.cache
def axes_table():
    return NativeTable(all_axis_entries())


@functools.cache
def table():
    return NativeTable(matrix_entries())


# ---------------------------------------------------------------------------------------------
# reference and comparison


def reference(op, x, spec):
    """(expected array, None) or (None, error) from the extern kernel (np.min for min)."""
    shape = reduce_shape(op, x.shape, spec)
    out = np.zeros(shape, np.int64 if op == "argmax" else x.dtype)
    if op == "min":
        axes = tuple(reduced_axes(op, x.ndim, spec))
        if out.size and x.size == 0:
            return None, ShapeError("min of nothing")
        if out.size:
            out[...] = np.min(x, axis=axes, keepdims=spec["keepdims"])
        return out, None
    try:
        REFERENCE_KERNELS[op]([x], [out], spec)
    except ShapeError as e:
        return None, e
    return out, None


def assert_reduced(op, got, want, x, spec):
    if op == "mean" and got.dtype == np.int64:
        # float64 accumulation of huge int64 values depends on the summation order: the error
        # bound is count * eps * max|x| (cancellation makes it large relative to the mean)
        count = int(np.prod([x.shape[a] for a in reduced_axes(op, x.ndim, spec)]))
        bound = 4 * np.finfo(np.float64).eps * count * (float(np.abs(x).max()) if x.size else 0)
        np.testing.assert_allclose(got.astype(float), want.astype(float), rtol=0, atol=bound + 1)
        return
    if got.dtype.kind in "iu" or op in ("max", "min", "argmax"):
        np.testing.assert_array_equal(got, want)
        return
    axes = reduced_axes(op, x.ndim, spec)
    count = int(np.prod([x.shape[a] for a in axes]))
    finite = np.abs(x[np.isfinite(x)])
    scale = float(finite.max()) if finite.size else 1.0
    eps = np.finfo(x.dtype).eps
    atol = 4 * eps * max(count, 1) * scale / (count if op == "mean" and count else 1)
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def draw_values(rng, shape, dtype, special):
    """Floats from a small integer grid (many ties for argmax) or normal; NaN/inf sprinkled."""
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        big = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        small = rng.integers(-3, 4, size=shape).astype(dtype)
        return big if special == 1 else small
    x = (rng.integers(-3, 4, size=shape) if special == 1 else rng.standard_normal(shape) * 10)
    x = np.asarray(x, dtype)
    if special == 2 and x.size:
        flat = x.reshape(-1)
        picks = rng.integers(0, x.size, size=min(3, x.size))
        flat[picks] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype), size=len(picks))
    return x


def check_all_variants(tab, key, op, spec, x):
    want, error = reference(op, x, spec)
    shape = reduce_shape(op, x.shape, spec)
    out_dtype = np.int64 if op == "argmax" else x.dtype
    for variant in [None] + tab.variants(key):
        got = np.full(shape, 77, out_dtype)
        rc = tab.call(key, [x, got], variant)
        if variant in ("inner", "outer") and not x.flags.c_contiguous:
            assert rc == ERR_LAYOUT, (variant, rc, x.strides)   # compact arrays only
            continue
        if error is not None:
            assert rc == ERR_EMPTY, (variant, rc)
            continue
        assert rc == 0, (variant, rc, x.shape)
        assert_reduced(op, got, want, x, spec)


# ---------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("index", range(len(all_axis_entries())))
@settings(max_examples=examples(15))
@given(data=st.data())
def test_every_axis_set_of_ranks_1_to_4_matches_numpy_in_every_variant(index, data):
    key, _, spec, (sig,), _ = all_axis_entries()[index]
    op, rank = spec["op"], sig[1]
    shape = tuple(data.draw(DIMS) for _ in range(rank))
    if np.prod(shape) > 4000:
        shape = tuple(min(d, 5) for d in shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = laid_out(draw_values(rng, shape, sig[0], data.draw(st.integers(0, 2))), data.draw(layouts()))
    check_all_variants(axes_table(), key, op, spec, x)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(20))
@given(rows=DIMS, cols=DIMS, depth=DIMS, special=st.integers(0, 2), seed=st.integers(0, 2**32 - 1),
       layout=layouts())
def test_every_op_and_dtype_matches_numpy_in_every_variant(op, dtype, rows, cols, depth, special,
                                                           seed, layout):
    rng = np.random.default_rng(seed)
    tab = table()
    check_all_variants(tab, ("inner", op, dtype), op, spec_of(op, [1]),
                       laid_out(draw_values(rng, (rows, cols), dtype, special), layout))
    outer = ("outer", op, DTYPES[OPS.index(op) % 4])
    check_all_variants(tab, outer, op, spec_of(op, [0, 1]),
                       laid_out(draw_values(rng, (rows % 4, depth, cols), outer[2], special), layout))
    check_all_variants(tab, ("scalar", "sum", "float64"), "sum", spec_of("sum", None),
                       draw_values(rng, (), "float64", special))


def test_argmax_picks_first_maximum_and_first_nan():
    tab = table()
    cases = [[1.0, 3.0, 3.0, 2.0], [np.nan, 5.0, np.nan], [-np.inf, -np.inf], [2.0, np.inf, np.inf, np.nan]]
    for row in cases:
        x = np.tile(np.array(row + [0.0] * (2 * LANES), np.float32)[None], (2, 1))
        x[1, -1] = 100.0
        for variant in [None, "inner", "generic"]:
            got = np.zeros(2, np.int64)
            assert tab.call(("inner", "argmax", "float32"), [x, got], variant) == 0
            np.testing.assert_array_equal(got, np.argmax(x, axis=1))


def test_integer_sum_wraps_and_integer_mean_truncates_toward_zero():
    tab = table()
    x = np.full((2, LANES * 3), np.iinfo(np.int32).max, np.int32)
    got = np.zeros(2, np.int32)
    assert tab.call(("inner", "sum", "int32"), [x, got]) == 0
    np.testing.assert_array_equal(got, np.sum(x, axis=1, dtype=np.int32))
    x = np.array([[-3, -4, 0], [3, 4, 0]], np.int64)
    got = np.zeros(2, np.int64)
    assert tab.call(("inner", "mean", "int64"), [x, got]) == 0
    np.testing.assert_array_equal(got, [-2, 2])


def test_dispatcher_picks_vector_variant_for_long_compact_rows_else_generic():
    tab = table()
    key = ("inner", "sum", "float32")
    out = np.zeros(3, np.float32)
    tab.call(key, [np.ones((3, LANES), np.float32), out])
    assert tab.last_variant(key) == "inner"
    tab.call(key, [np.ones((3, LANES - 1), np.float32), out])
    assert tab.last_variant(key) == "generic"
    strided = np.ones((3, 4 * LANES), np.float32)[:, ::2]
    assert tab.call(key, [strided, out]) == 0
    assert tab.last_variant(key) == "generic"
    np.testing.assert_array_equal(out, [2 * LANES] * 3)
    key = ("outer", "max", "int32")
    tab.call(key, [np.ones((2, 3, LANES), np.int32), np.zeros(LANES, np.int32)])
    assert tab.last_variant(key) == "outer"


def test_non_contiguous_arrays_work_in_generic_and_are_refused_by_vector_variants():
    tab = table()
    key = ("outer", "sum", "float32")
    base = np.arange(4 * 5 * 2 * 40, dtype=np.float32).reshape(4, 5, 80)
    x = base[::-1, :, ::2]
    want = x.sum(axis=(0, 1))
    out_base = np.zeros(80, np.float32)
    out = out_base[::2]
    assert tab.call(key, [x, out], "outer") == ERR_LAYOUT
    assert tab.call(key, [x, out], "generic") == 0
    np.testing.assert_allclose(out, want)
    out[...] = 0
    assert tab.call(key, [x, out]) == 0
    np.testing.assert_allclose(out, want)


def test_empty_reductions_give_error_code_or_identity():
    tab = table()
    x = np.zeros((3, 0), np.float32)
    for op, rc_want, value in (("max", ERR_EMPTY, None), ("argmax", ERR_EMPTY, None),
                               ("sum", 0, 0.0), ("mean", 0, np.nan)):
        out = np.zeros(3, np.int64 if op == "argmax" else np.float32)
        for variant in [None, "inner", "generic"]:
            assert tab.call(("inner", op, "float32"), [x, out], variant) == rc_want
            if value is not None:
                np.testing.assert_array_equal(out, [value] * 3)
    out = np.zeros(3, np.int32)
    assert tab.call(("inner", "mean", "int32"), [np.zeros((3, 0), np.int32), out]) == ERR_EMPTY
    # empty output: nothing to do, never an error
    assert tab.call(("inner", "max", "float32"), [np.zeros((0, 0), np.float32),
                                                  np.zeros(0, np.float32)]) == 0


def test_bad_descriptors_give_error_codes_not_crashes():
    tab = table()
    key = ("inner", "sum", "float32")
    x, out = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    for variant in [None] + tab.variants(key):
        assert tab.call(key, [x, np.zeros(4, np.float32)], variant) & 0xFF == ERR_SHAPE
        assert tab.call(key, [x, out], variant, lambda t, n: (t, 1)) == ERR_NARGS
        assert tab.call(key, [x, out], variant, lambda t, n: (abi.ffi.NULL, n)) == ERR_NULL

        def bad_rank(t, n):
            t[0].ndim = 3
            return t, n

        def bad_dtype(t, n):
            t[1].dtype.bits = 64
            return t, n

        def null_data(t, n):
            t[0].data = abi.ffi.NULL
            return t, n

        def negative(t, n):
            t[0].shape[1] = -4
            return t, n

        assert tab.call(key, [x, out], variant, bad_rank) & 0xFF == ERR_NDIM
        assert tab.call(key, [x, out], variant, bad_dtype) & 0xFF == ERR_DTYPE
        assert tab.call(key, [x, out], variant, null_data) & 0xFF == ERR_NULL
        assert tab.call(key, [x, out], variant, negative) != 0


def test_bad_specs_are_rejected_at_build_time():
    check = get_family("reduce").check
    with pytest.raises(KernelError, match="unknown op"):
        check(spec_of("prod", None), [["float32", 2]], [["float32", 0]])
    with pytest.raises(KernelError, match="output rank"):
        check(spec_of("sum", [0]), [["float32", 2]], [["float32", 2]])
    with pytest.raises(KernelError, match="output dtype"):
        check(spec_of("argmax", [0]), [["float32", 2]], [["float32", 1]])
    with pytest.raises(KernelError, match="bad axes"):
        check(spec_of("sum", [5]), [["float32", 2]], [["float32", 1]])


def test_builder_and_runtime_run_a_reduce_kernel():
    """The family through KernelBuilder.add_compiled and load_kernels (the VM's path)."""
    from dynvm.kernels.builder import KernelBuilder
    from dynvm.kernels import load_kernels
    kb = KernelBuilder()
    i = kb.add_compiled("sum", "reduce", spec_of("sum", [1]), [("float32", 2)], [("float32", 1)])
    j = kb.add_compiled("max", "reduce", spec_of("max", [1]), [("float32", 2)], [("float32", 1)])
    ks = load_kernels(kb.finish())
    x = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    out = np.zeros(3, np.float32)
    ks[i]([x], [out])
    np.testing.assert_allclose(out, x.sum(axis=1))
    # ERR_EMPTY: ShapeError once kernels/runtime.py maps it (today KernelError, same phrase)
    with pytest.raises((ShapeError, KernelError), match="empty axis"):
        ks[j]([np.zeros((3, 0), np.float32)], [out])
