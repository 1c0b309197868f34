"""Creation and data-dependent kernels (kernels/dynamic.py): zeros / ones / full and their dyn.
forms, arange, argwhere. Each agrees exactly with the numpy reference of tests/numpy_reference.py (output
shaped by the shape function), through the dispatcher and every variant; shapes, counts and
values they rely on are checked natively (error codes, never a write past the output).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.kernels.abi import ERR_SHAPE, ERR_VALUE
from tests.kernels.support import with_layout
from tests.kernels.test_transform import (DTYPES, LAYOUTS, cached, check_all_variants, kind,
                                          native_table, random_array, reference)
from tests.strategies import examples

DIM = st.sampled_from([0, 1, 1, 2, 3, 5, 17])
NUMERIC = ("float32", "float64", "int32", "int64")
# every dtype once per kind of fill (static / dynamic), the other combinations sampled
FILL_DTYPES = {"zeros": DTYPES, "ones": ("float64", "bool"), "dyn.ones": DTYPES,
               "dyn.zeros": ("int32",)}
FULL_CASTS = [("float64", "int32"), ("float32", "bool"), ("int64", "float32"), ("bool", "int64"),
              ("float32", None), ("int32", "float64")]


# ---------------------------------------------------------------------------------------------
# zeros / ones / full


@cached
def fill_kernels():
    specs = {}
    for op, dtypes in FILL_DTYPES.items():
        for dt in dtypes:
            if op.startswith("dyn."):
                specs[(op, dt)] = ("fill", {"op": op, "dtype": dt}, [["int64", 1]], [[dt, 2]])
            else:
                specs[(op, dt)] = ("fill", {"op": op, "shape": [3, 5], "dtype": dt}, [], [[dt, 2]])
    for rank in (0, 1, 3):
        specs[("dyn.zeros", rank)] = ("fill", {"op": "dyn.zeros", "dtype": "float32"},
                                      [["int32", 1]], [["float32", rank]])
    for src, dst in FULL_CASTS:
        out = dst or src
        specs[("full", src, dst)] = ("fill", {"op": "full", "shape": [2, 0 if src == "bool" else 7],
                                              "dtype": dst}, [[src, 0]], [[out, 2]])
        specs[("dyn.full", src, dst)] = ("fill", {"op": "dyn.full", "dtype": dst},
                                         [[src, 0], ["int64", 1]], [[out, 3]])
    return native_table(specs)


@pytest.mark.parametrize("op, dtype", [(op, dt) for op in ("zeros", "ones")
                                       for dt in FILL_DTYPES[op]])
def test_static_zeros_and_ones(op, dtype):
    attrs = {"shape": [3, 5], "dtype": dtype}
    for layout in ("c", "step", "transpose"):
        check_all_variants(fill_kernels()[(op, dtype)], op, attrs, [], layout, compact=False)
    assert fill_kernels()[(op, dtype)].last_variant == "strided"
    check_all_variants(fill_kernels()[(op, dtype)], op, attrs, [])
    assert fill_kernels()[(op, dtype)].last_variant == "contiguous"


@pytest.mark.parametrize("op, dtype", [(op, dt) for op in ("dyn.zeros", "dyn.ones")
                                       for dt in FILL_DTYPES[op]])
@settings(max_examples=examples(20))
@given(shape=st.tuples(DIM, DIM), layout=st.sampled_from(LAYOUTS))
def test_dynamic_zeros_and_ones(op, dtype, shape, layout):
    check_all_variants(fill_kernels()[(op, dtype)], op, {"dtype": dtype},
                       [np.array(shape, np.int64)], layout, compact=False)


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_dynamic_zeros_of_any_rank_with_an_int32_shape(rank):
    shape = np.array([4, 0, 3][:rank] if rank != 1 else [33], np.int32)
    check_all_variants(fill_kernels()[("dyn.zeros", rank)], "dyn.zeros", {"dtype": "float32"},
                       [shape])


@pytest.mark.parametrize("src, dst", FULL_CASTS, ids=str)
@settings(max_examples=examples(20))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_full_casts_the_fill_value_like_numpy(src, dst, data, seed):
    value = np.asarray(random_array(np.random.default_rng(seed), (), src) * 7).astype(src)
    if src == "float32" and dst == "bool":
        value = np.asarray(data.draw(st.sampled_from([0.0, -0.0, 0.5, np.nan, -3.0])), src)
    shape = [2, 0 if src == "bool" else 7]
    check_all_variants(fill_kernels()[("full", src, dst)], "full",
                       {"shape": shape, "dtype": dst}, [value])
    dyn_shape = np.array([data.draw(DIM) for _ in range(3)], np.int64)
    check_all_variants(fill_kernels()[("dyn.full", src, dst)], "dyn.full", {"dtype": dst},
                       [value, dyn_shape], data.draw(st.sampled_from(LAYOUTS)), compact=False)


def test_fill_output_must_match_the_shape():
    k = fill_kernels()[("zeros", "int32")]
    assert kind(k([np.zeros((3, 4), np.int32)])) == ERR_SHAPE
    k = fill_kernels()[("dyn.ones", "float64")]
    for v in [None] + k.variants:
        assert kind(k([np.array([2, 3]), np.zeros((2, 4))], v)) == ERR_SHAPE
        assert kind(k([np.array([2, 3, 1]), np.zeros((2, 3))], v)) == ERR_SHAPE


# ---------------------------------------------------------------------------------------------
# arange

ARANGE_SIGS = [(dt, dt) for dt in NUMERIC] + [("float64", "int32"), ("int32", "float32"),
                                              ("int64", "float64")]


@cached
def arange_kernels():
    return native_table({(src, dst): ("arange", {"op": "arange", "dtype": dst},
                                      [[src, 0]] * 3, [[dst, 1]]) for src, dst in ARANGE_SIGS})


def scalars(values, dtype):
    return [np.asarray(v).astype(dtype) for v in values]


@pytest.mark.parametrize("src, dst", ARANGE_SIGS, ids=str)
@settings(max_examples=examples(20))
@given(start=st.integers(-50, 50), stop=st.integers(-50, 50),
       step=st.sampled_from([1, 2, 3, 7, -1, -4, 0.5, -0.25, 2.5]), layout=st.sampled_from("cs"))
def test_arange_matches_numpy_including_empty_ranges(src, dst, start, stop, step, layout):
    args = scalars((start, stop, step if src.startswith("float") else int(step) or 1), src)
    if args[2].astype(dst) == 0:
        return
    check_all_variants(arange_kernels()[(src, dst)], "arange", {"dtype": dst}, args,
                       {"c": "c", "s": "step"}[layout])


def test_arange_with_empty_range_returns_zero_length():
    k = arange_kernels()[("int64", "int64")]
    out = np.zeros(0, np.int64)
    assert k([*scalars((5, 5, 1), "int64"), out]) == 0
    assert k([*scalars((5, 9, -1), "int64"), out]) == 0


def test_arange_rejects_a_zero_step_and_non_finite_bounds():
    out = np.zeros(3, np.float32)
    k = arange_kernels()[("float32", "float32")]
    for v in [None] + k.variants:
        assert kind(k([*scalars((0, 3, 0), "float32"), out], v)) == ERR_VALUE
        assert kind(k([*scalars((0, np.inf, 1), "float32"), out], v)) == ERR_VALUE
        assert kind(k([*scalars((np.nan, 3, 1), "float32"), out], v)) == ERR_VALUE
    # 0.5 truncates to a zero int step
    k = arange_kernels()[("float64", "int32")]
    assert kind(k([*scalars((0, 3, 0.5), "float64"), np.zeros(3, np.int32)])) == ERR_VALUE


# ---------------------------------------------------------------------------------------------
# argwhere

ARGWHERE_SIGS = [("bool", r) for r in range(4)] + [("float32", 2), ("float64", 1),
                                                   ("int32", 2), ("int64", 3)]


@cached
def argwhere_kernels():
    return native_table({sig: ("argwhere", {"op": "argwhere"}, [list(sig)], [["int64", 2]])
                         for sig in ARGWHERE_SIGS})


def condition(rng, shape, dtype, density):
    mask = rng.random(shape) < density
    if dtype == "bool":
        return mask
    values = random_array(rng, shape, dtype)
    values = np.where(values == 0, 1, values).astype(dtype)
    if dtype.startswith("float") and values.size:
        values.reshape(-1)[0] = np.nan     # NaN is non-zero, as in numpy
        mask.reshape(-1)[0] = True
    return np.where(mask, values, 0).astype(dtype)


@pytest.mark.parametrize("dtype, rank", ARGWHERE_SIGS, ids=str)
@settings(max_examples=examples(15))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1),
       density=st.sampled_from([0.0, 0.3, 1.0]))
def test_argwhere_matches_numpy_for_all_false_all_true_and_random(dtype, rank, data, seed,
                                                                   density):
    shape = tuple(data.draw(DIM) for _ in range(rank))
    cond = with_layout(condition(np.random.default_rng(seed), shape, dtype, density),
                       data.draw(st.sampled_from(LAYOUTS)))
    check_all_variants(argwhere_kernels()[(dtype, rank)], "argwhere", {}, [cond],
                       data.draw(st.sampled_from(LAYOUTS)))


@pytest.mark.parametrize("rows", [0, 4, 5, 100])
def test_argwhere_never_writes_past_a_stale_output(rows):
    """The shape function saw another condition: too few rows -> error before writing row
    `rows`, too many -> error after the last hit; rows below the buffer end stay untouched."""
    cond = np.zeros((4, 5), bool)
    cond[1, ::2] = True                     # 3 hits
    buf = np.full((rows + 2, 2), -7, np.int64)
    out = buf[:rows]
    assert kind(argwhere_kernels()[("bool", 2)]([cond, out])) == ERR_SHAPE
    np.testing.assert_array_equal(buf[rows:], -7)
    if rows:
        np.testing.assert_array_equal(buf[:min(rows, 3)], np.argwhere(cond)[:min(rows, 3)])


def test_argwhere_output_columns_must_equal_the_rank():
    k = argwhere_kernels()[("bool", 2)]
    assert kind(k([np.ones((2, 2), bool), np.zeros((4, 3), np.int64)])) == ERR_SHAPE
    assert k([np.ones((2, 2), bool), np.zeros((4, 2), np.int64)]) == 0
    assert reference("argwhere", {}, [np.ones((2, 2), bool)])[0].shape == (4, 2)
