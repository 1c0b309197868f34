"""Reduction shape functions vs numpy; max/argmax of an empty axis is a ShapeError."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.shape_funcs import lookup
from tests.shape_funcs.helpers import check_op, run_op
from tests.strategies import arrays, examples, layouts, shapes
from dynvm.vm.errors import ShapeError


@st.composite
def reduce_case(draw, nonempty=False):
    shape = draw(shapes(dim=st.sampled_from([1, 2, 3, 5])) if nonempty else shapes())
    rank = len(shape)
    axis = draw(st.one_of(
        st.none(),
        st.integers(-rank, rank - 1) if rank else st.none(),
        st.lists(st.integers(0, rank - 1), unique=True) if rank else st.none()))
    return shape, {"axis": axis, "keepdims": draw(st.booleans()), "exclude": draw(st.booleans())}


def numpy_axes(rank, attrs):
    axis = attrs["axis"]
    axes = list(range(rank)) if axis is None else [axis % rank] if isinstance(axis, int) else axis
    if attrs["exclude"]:
        axes = [a for a in range(rank) if a not in axes]
    return tuple(axes)


@settings(max_examples=examples(80))
@given(case=reduce_case(), layout=layouts())
def test_sum_and_mean_match_numpy(case, layout):
    shape, attrs = case
    x = arrays(shape, "float64", 0, layout)
    axes = numpy_axes(len(shape), attrs)
    check_op("sum", [x], attrs, np.sum(x, axis=axes, keepdims=attrs["keepdims"]))
    with np.errstate(all="ignore"):
        expected = np.sum(x, axis=axes, keepdims=attrs["keepdims"]) / np.prod(
            [shape[a] for a in axes])
    check_op("mean", [x], attrs, expected)


@settings(max_examples=examples(80))
@given(case=reduce_case(nonempty=True), layout=layouts())
def test_max_and_argmax_match_numpy(case, layout):
    shape, attrs = case
    x = arrays(shape, "int32", 0, layout)
    axes = numpy_axes(len(shape), attrs)
    keep = attrs["keepdims"]
    check_op("max", [x], attrs, np.max(x, axis=axes, keepdims=keep))
    check_op("argmax", [x], attrs, argmax_reference(x, axes, keep))


def argmax_reference(x, axes, keep):
    """Loop over the kept positions; flat row-major index of the first maximum in the block."""
    kept = [a for a in range(x.ndim) if a not in axes]
    out = np.zeros([x.shape[a] for a in kept], np.int64)
    for pos in np.ndindex(*out.shape):
        index = [slice(None)] * x.ndim
        for a, p in zip(kept, pos):
            index[a] = p
        out[pos] = int(np.argmax(x[tuple(index)]))
    if keep:
        out = out.reshape([1 if a in axes else d for a, d in enumerate(x.shape)])
    return out


def test_argmax_over_several_axes_gives_flat_index_within_them():
    x = np.array([[[0, 9], [3, 1]], [[5, 2], [2, 7]]])
    check_op("argmax", [x], {"axis": [1, 2], "keepdims": False, "exclude": False},
             np.array([1, 3], np.int64))
    check_op("argmax", [x], {"axis": 0, "keepdims": False, "exclude": True},
             np.array([1, 3], np.int64))


@pytest.mark.parametrize("name", ["max", "argmax"])
def test_max_over_empty_axis_is_shape_error(name):
    attrs = {"axis": 1, "keepdims": False, "exclude": False}
    with pytest.raises(ShapeError, match="empty axis"):
        lookup(name).fn([np.zeros((2, 0))], attrs)
    with pytest.raises(ShapeError, match="empty axis"):
        run_op(name, [np.zeros((0,))], {"axis": None, "keepdims": False, "exclude": False},
               ["float64"])


def test_max_with_empty_result_is_fine():
    attrs = {"axis": 1, "keepdims": False, "exclude": False}
    check_op("max", [np.zeros((0, 0))], attrs, np.zeros((0,)))


def test_sum_over_empty_axis_is_zero_and_integer_mean_of_nothing_fails():
    attrs = {"axis": 0, "keepdims": False, "exclude": False}
    check_op("sum", [np.zeros((0, 3), np.int32)], attrs, np.zeros(3, np.int32))
    with pytest.raises(ShapeError, match="integer mean over an empty axis"):
        run_op("mean", [np.zeros((0, 3), np.int32)], attrs, ["int32"])


def test_reduce_axis_out_of_range_is_shape_error():
    with pytest.raises(ShapeError, match="out of range"):
        lookup("sum").fn([np.zeros((2,))], {"axis": 1, "keepdims": False, "exclude": False})
