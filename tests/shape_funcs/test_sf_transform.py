"""Transform shape functions agree with the numpy result the extern kernel writes into them."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.shape_funcs import lookup
from tests.shape_funcs.helpers import check_op
from tests.strategies import arrays, broadcastable_pair, examples, shapes
from dynvm.vm.errors import ShapeError

SETTINGS = settings(max_examples=examples(60))


def relay_target(in_shape, newshape):
    """Relay's reshape target written out: 0 copies dim i; -1 gets the elements of the input
    dims that were not copied divided by the explicit dims."""
    copied = {i for i, d in enumerate(newshape) if d == 0}
    rest = int(np.prod([d for i, d in enumerate(in_shape) if i not in copied]))
    explicit = int(np.prod([d for d in newshape if d > 0]))
    return [in_shape[i] if d == 0 else rest // explicit if d == -1 else d
            for i, d in enumerate(newshape)]


@st.composite
def reshape_case(draw):
    shape = draw(shapes())
    kind = draw(st.sampled_from(["flat", "keep_first", "split_last", "scalar", "reverse"]))
    if kind == "keep_first" and shape:
        return shape, [0, -1]
    if kind == "split_last" and shape:
        return shape, [0] * (len(shape) - 1) + [1, -1]
    if kind == "scalar" and np.prod(shape) == 1:
        return shape, []
    if kind == "reverse" and 0 not in shape:
        return shape, list(shape[::-1])
    return shape, [-1]


@SETTINGS
@given(case=reshape_case())
def test_reshape_matches_numpy(case):
    shape, newshape = case
    x = arrays(shape, "float32", 0)
    expected = x.reshape(relay_target(shape, newshape))
    check_op("reshape", [x], {"newshape": newshape}, expected)
    check_op("dyn.reshape", [x, np.array(newshape, np.int64)], {}, expected)


def test_reshape_copied_dims_cancel_so_zero_sizes_are_not_ambiguous():
    check_op("reshape", [np.zeros((3, 0))], {"newshape": [-1, 0]}, np.zeros((3, 0)))


@pytest.mark.parametrize("shape, newshape, phrase", [
    ((2, 3), [4], "6 elements"),
    ((2, 3), [4, -1], "no size fits the -1"),
    ((2, 3), [-1, -1], "more than one -1"),
    ((2,), [0, 0], "copies dim 1"),
    ((2,), [-3], "invalid value"),
])
def test_reshape_errors(shape, newshape, phrase):
    with pytest.raises(ShapeError, match=phrase):
        lookup("reshape").fn([np.zeros(shape)], {"newshape": newshape})
    with pytest.raises(ShapeError, match=phrase):
        lookup("dyn.reshape").fn([np.zeros(shape), np.array(newshape, np.int64)], {})


@SETTINGS
@given(shape=shapes(), data=st.data(), n=st.integers(0, 2))
def test_expand_dims_matches_numpy(shape, data, n):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    x = arrays(shape, "int64", 0)
    pos = axis if axis >= 0 else axis + len(shape) + 1
    expected = x.reshape(shape[:pos] + (1,) * n + shape[pos:])
    check_op("expand_dims", [x], {"axis": axis, "num_newaxis": n}, expected)


@SETTINGS
@given(shape=shapes(dim=st.sampled_from([0, 1, 1, 3])), data=st.data())
def test_squeeze_matches_numpy(shape, data):
    x = arrays(shape, "float32", 0)
    check_op("squeeze", [x], {"axis": None}, np.squeeze(x))
    ones = [i for i, d in enumerate(shape) if d == 1]
    axes = data.draw(st.lists(st.sampled_from(ones), unique=True)) if ones else []
    axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]
    check_op("squeeze", [x], {"axis": axes}, np.squeeze(x, axis=tuple(axes)))


def test_squeeze_of_a_non_unit_dim_is_shape_error():
    with pytest.raises(ShapeError, match="has size 3, not 1"):
        lookup("squeeze").fn([np.zeros((3, 1))], {"axis": [0]})


@SETTINGS
@given(shape=shapes(), data=st.data())
def test_transpose_matches_numpy(shape, data):
    x = arrays(shape, "float64", 0)
    perm = data.draw(st.permutations(range(len(shape))))
    perm = [p - len(shape) if data.draw(st.booleans()) else p for p in perm]
    check_op("transpose", [x], {"axes": perm}, np.transpose(x, perm))
    check_op("transpose", [x[..., ::-1] if shape else x], {"axes": None}, np.transpose(x[..., ::-1] if shape else x))


@SETTINGS
@given(shape=shapes(min_rank=1), data=st.data())
def test_concatenate_matches_numpy(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.sampled_from([0, 1, 2, 5]), min_size=1, max_size=4))
    parts = []
    for i, size in enumerate(sizes):
        s = list(shape)
        s[axis] = size
        parts.append(arrays(tuple(s), "int32", i))
    check_op("concatenate", parts, {"axis": axis}, np.concatenate(parts, axis=axis))


def test_concatenate_mismatch_is_shape_error():
    with pytest.raises(ShapeError, match="differ off axis 0"):
        lookup("concatenate").fn([np.zeros((2, 3)), np.zeros((2, 4))], {"axis": 0})


@SETTINGS
@given(shape=shapes(min_rank=1), data=st.data())
def test_split_matches_numpy(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    x = arrays(shape, "float32", 0)
    if data.draw(st.booleans()):
        divisors = [k for k in range(1, max(dim, 1) + 1) if dim % k == 0]
        spec = data.draw(st.sampled_from(divisors))
    else:
        spec = data.draw(st.lists(st.integers(-dim - 2, dim + 2), max_size=3))
    expected = np.split(x, spec, axis=axis)
    check_op("split", [x], {"indices_or_sections": spec, "axis": axis}, expected)


def test_split_into_unequal_sections_is_shape_error():
    with pytest.raises(ShapeError, match="does not divide into 4"):
        lookup("split").fn([np.zeros((6,))], {"indices_or_sections": 4, "axis": 0})


BOUND = st.one_of(st.none(), st.integers(-12, 12))


@SETTINGS
@given(shape=shapes(min_rank=1), data=st.data())
def test_strided_slice_matches_numpy_slicing(shape, data):
    x = arrays(shape, "float32", 0)
    if data.draw(st.booleans()):
        n = data.draw(st.integers(0, len(shape)))
        axes = list(range(n))
        attrs = {"axes": None}
    else:
        axes = data.draw(st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1))
        attrs = {"axes": [a - len(shape) if data.draw(st.booleans()) else a for a in axes]}
    begin = [data.draw(BOUND) for _ in axes]
    end = [data.draw(BOUND) for _ in axes]
    strides = [data.draw(st.sampled_from([1, 2, 3, -1, -2])) for _ in axes]
    attrs.update(begin=begin, end=end, strides=strides)
    index = [slice(None)] * len(shape)
    for a, b, e, s in zip(axes, begin, end, strides):
        index[a] = slice(b, e, s)
    check_op("strided_slice", [x], attrs, x[tuple(index)])


def test_strided_slice_with_short_strides_pads_with_one():
    x = np.arange(24).reshape(4, 6)
    check_op("strided_slice", [x], {"begin": [1, -1], "end": [4, 0], "strides": [2], "axes": None},
             x[1:4:2, -1:0])


def test_strided_slice_zero_stride_is_shape_error():
    with pytest.raises(ShapeError, match="stride must not be zero"):
        lookup("strided_slice").fn([np.zeros(4)], {"begin": [0], "end": [2], "strides": [0]})


@SETTINGS
@given(shape=shapes(min_rank=1, dim=st.sampled_from([1, 2, 3, 5])), idx_shape=shapes(max_rank=2),
       data=st.data())
def test_take_matches_numpy_clip_and_wrap(shape, idx_shape, data):
    x = arrays(shape, "float32", 0)
    idx = np.random.default_rng(1).integers(-12, 12, size=idx_shape).astype(
        data.draw(st.sampled_from(["int32", "int64"])))
    mode = data.draw(st.sampled_from(["clip", "wrap"]))
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    check_op("take", [x, idx], {"axis": axis, "mode": mode}, np.take(x, idx, axis=axis, mode=mode))


def test_take_from_empty_axis_is_shape_error_not_index_error():
    with pytest.raises(ShapeError, match="empty axis"):
        lookup("take").fn([np.zeros((0, 3)), np.zeros(2, np.int64)], {"axis": 0, "mode": "clip"})
    check_op("take", [np.zeros((0, 3)), np.zeros((0,), np.int64)], {"axis": 0, "mode": "clip"},
             np.zeros((0, 3)))


@SETTINGS
@given(pair=broadcastable_pair())
def test_broadcast_to_matches_numpy(pair):
    a, b = pair
    target = np.broadcast_shapes(a, b)
    x = arrays(a, "int64", 0)
    check_op("broadcast_to", [x], {"shape": list(target)}, np.broadcast_to(x, target))


def test_broadcast_to_mismatch_is_shape_error():
    with pytest.raises(ShapeError, match="cannot broadcast"):
        lookup("broadcast_to").fn([np.zeros(3)], {"shape": [4]})


@given(shape=shapes())
@settings(max_examples=examples(20))
def test_static_fills_use_the_shape_attribute(shape):
    attrs = {"shape": list(shape), "dtype": "int32"}
    check_op("zeros", [], attrs, np.zeros(shape, np.int32))
    check_op("ones", [], attrs, np.ones(shape, np.int32))
    check_op("full", [np.array(2.5)], {"shape": list(shape), "dtype": "float64"},
             np.full(shape, 2.5))


def test_shape_of_gives_rank():
    check_op("shape_of", [np.zeros((2, 0, 3))], {}, np.array([2, 0, 3], np.int64))
    check_op("shape_of", [np.zeros(())], {}, np.zeros((0,), np.int64))
