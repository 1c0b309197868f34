"""Data-dependent shape functions: arange, argwhere, dyn.zeros/ones/full (they read values)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from dynvm.shape_funcs import lookup
from tests.shape_funcs.helpers import check_op
from tests.strategies import arrays, examples, shapes
from dynvm.vm.errors import ShapeError

SETTINGS = settings(max_examples=examples(80))


@SETTINGS
@given(start=st.integers(-20, 20), stop=st.integers(-20, 20),
       step=st.integers(-7, 7).filter(bool), in_dtype=st.sampled_from(["int32", "int64"]),
       out_dtype=st.sampled_from(["int32", "int64", "float32", "float64"]))
def test_integer_arange_matches_numpy_including_empty(start, stop, step, in_dtype, out_dtype):
    args = [np.array(v, in_dtype) for v in (start, stop, step)]
    check_op("arange", args, {"dtype": out_dtype}, np.arange(start, stop, step).astype(out_dtype))


@SETTINGS
@given(start=st.floats(-50, 50), length=st.floats(-30, 30), step=st.floats(0.1, 7),
       negate=st.booleans(), dtype=st.sampled_from(["float32", "float64"]))
def test_float_arange_matches_numpy_after_cast(start, length, step, negate, dtype):
    step = -step if negate else step
    vals = [np.array(v, dtype) for v in (start, start + length, step)]
    s, e, st_ = (float(v) for v in vals)
    assume(st_ != 0)
    expected = np.arange(s, e, st_, dtype=np.float64)
    check_op("arange", vals, {"dtype": dtype}, expected.astype(dtype), rtol=1e-5, atol=1e-5)


def test_arange_casts_arguments_to_the_output_dtype_first():
    args = [np.array(v, np.float32) for v in (0.5, 3.9, 1.2)]
    check_op("arange", args, {"dtype": "int32"}, np.arange(0, 3, 1, dtype=np.int32))


def test_arange_with_empty_range_returns_zero_length():
    args = [np.array(v, np.int64) for v in (5, 5, 1)]
    assert lookup("arange").fn(args, {"dtype": "float32"}) == [(0,)]
    check_op("arange", [np.array(3.0), np.array(1.0), np.array(1.0)], {"dtype": "float64"},
             np.zeros(0))


@pytest.mark.parametrize("step, dtype", [(0, "int64"), (0.0, "float32"), (0.4, "int32")])
def test_arange_zero_step_is_shape_error(step, dtype):
    args = [np.array(0.0), np.array(4.0), np.array(step)]
    with pytest.raises(ShapeError, match="arange step must not be zero"):
        lookup("arange").fn(args, {"dtype": dtype})


def test_arange_non_finite_bound_is_shape_error():
    with pytest.raises(ShapeError, match="must be finite"):
        lookup("arange").fn([np.array(0.0), np.array(np.inf), np.array(1.0)], {"dtype": "float32"})


@SETTINGS
@given(shape=shapes(), dtype=st.sampled_from(["bool", "float32", "int32"]), seed=st.integers(0, 9),
       all_false=st.booleans())
def test_argwhere_matches_numpy(shape, dtype, seed, all_false):
    cond = arrays(shape, dtype, seed)
    if all_false:
        cond = np.zeros(shape, dtype)
    check_op("argwhere", [cond], {}, np.argwhere(cond).astype(np.int64))


def test_argwhere_all_false_gives_zero_rows():
    assert lookup("argwhere").fn([np.zeros((3, 4), bool)], {}) == [(0, 2)]


@SETTINGS
@given(shape=shapes(), dtype=st.sampled_from(["int32", "int64"]))
def test_dyn_fills_take_shape_from_values(shape, dtype):
    s = np.array(shape, dtype).reshape(len(shape))
    check_op("dyn.zeros", [s], {"dtype": "float32"}, np.zeros(shape, np.float32))
    check_op("dyn.ones", [s], {"dtype": "int64"}, np.ones(shape, np.int64))
    check_op("dyn.full", [np.array(7, np.int32), s], {"dtype": None}, np.full(shape, 7, np.int32))


@pytest.mark.parametrize("name, inputs, phrase", [
    ("dyn.zeros", [np.array([2, -1])], "negative dim"),
    ("dyn.ones", [np.array([[2]])], "1-D integer tensor"),
    ("dyn.full", [np.array(1.0), np.array([2.0])], "1-D integer tensor"),
    ("dyn.reshape", [np.zeros(4), np.array([3, -1])], "no size fits"),
])
def test_bad_shape_tensors_are_shape_errors(name, inputs, phrase):
    with pytest.raises(ShapeError, match=phrase):
        lookup(name).fn(inputs, {"dtype": "float32"})


def _tensor(shape, dtype="float32", value=None):
    from dynvm.vm.values import Tensor
    a = np.zeros(shape, dtype) if value is None else np.array(value, dtype)
    return Tensor.from_array(a)


def test_prepared_nms_upper_bound_matches_the_general_function():
    sf = lookup("nms.upper_bound").fn
    attrs = {"max_output": 100, "iou_threshold": 0.5, "score_threshold": 0.05}
    fast = sf.check_attrs(attrs)
    for n in (0, 7, 100, 1000):
        inputs = [_tensor((n, 4)), _tensor((n,))]
        assert fast(inputs) == sf(inputs, attrs)
    with pytest.raises(ShapeError, match="boxes must be"):
        fast([_tensor((5, 3)), _tensor((5,))])
    for check in (fast, lambda inputs: sf(inputs, attrs)):
        with pytest.raises(ShapeError, match="^nms: scores has 6 rows but boxes has 5$"):
            check([_tensor((5, 4)), _tensor((6,))])
    for bad in ({"max_output": -1}, {"max_output": True}, {"max_output": 3, "iou_threshold": 1.5}):
        with pytest.raises(ShapeError):
            sf.check_attrs(bad)


def test_vm_keeps_the_general_shape_function_when_attrs_fail_the_check():
    from dynvm.vm.prepare import specialized

    def fn(inputs, attrs):
        return [(1,)]
    fn.check_attrs = lambda attrs: (_ for _ in ()).throw(ShapeError("bad"))
    assert specialized(fn, {}) is None
    fn.check_attrs = lambda attrs: "fast"
    assert specialized(fn, {}) == "fast"
    del fn.check_attrs
    assert specialized(fn, {}) is None
