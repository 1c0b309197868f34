"""Native shape functions (kernels/shape.py) against the Python ones they are traced from.

For every registered shape function (but the few in NATIVE_UNSUPPORTED) and several attrs and
signatures per function, hypothesis draws shapes (0 and 1 dims included; dims from a small pool
so that matching and mismatching dims both occur) and values: the native kernel writes exactly
the shapes the Python function returns, and where Python raises ShapeError the kernel returns
ERR_SHAPE. The call sites of the table are compiled once, in one module.
"""
import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.kernels import abi, load_kernels
from dynvm.kernels.builder import KernelBuilder, rebuild_section
from dynvm.kernels.shape import NATIVE_UNSUPPORTED, native_shape_func_spec
from dynvm.vm.errors import NotNative
from dynvm.shape_funcs import SHAPE_FUNCS, ShapeFunc, lookup, shape_func
from dynvm.shape_funcs.common import TraceError
from dynvm.shape_funcs.vision import nms_select
from dynvm.vm.dtypes import dtype_name
from dynvm.vm.errors import ShapeError
from dynvm.vm.values import Tensor
from tests.strategies import examples

SETTINGS = settings(max_examples=examples(25))
F, I = "float32", "int64"

# (name, attrs, [(dtype, rank or [static extents / None])...]): the call sites compiled
SITES = [
    ("add", {}, [(F, 2), (F, 2)]),
    ("add", {}, [(F, 3), (F, 1)]),
    ("multiply", {}, [(F, 0), (F, 2)]),
    ("negative", {}, [(F, 3)]),
    ("where", {}, [("bool", 2), (F, 1), (F, 0)]),
    ("broadcast", {"perms": [[1, [1, 0]]]}, [(F, 2), (F, 2), (F, 1)]),
    ("broadcast", {}, [(F, [None, 3]), (F, [2, None])]),
    ("dense", {}, [(F, 2), (F, 2)]),
    ("dense", {}, [(F, 3), (F, 2)]),
    ("matmul", {}, [(F, 2), (F, 2)]),
    ("batch_matmul", {}, [(F, 3), (F, 3)]),
    ("batch_matmul", {"transpose_a": True, "transpose_b": False}, [(F, 3), (F, 3)]),
    ("softmax", {"axis": -1}, [(F, 2)]),
    ("layer_norm", {"axis": -1}, [(F, 2), (F, 1), (F, 1)]),
    ("layer_norm", {"axis": 1}, [(F, 3), (F, 1), (F, 1)]),
    ("conv2d", {"padding": [1, 1]}, [(F, 4), (F, 4)]),
    ("conv2d", {"strides": [2, 1], "dilation": [1, 2], "padding": [0, 1, 2, 1], "groups": 2},
     [(F, 4), (F, 4)]),
    ("shape_of", {}, [(F, 3)]),
    ("reshape", {"newshape": [0, -1]}, [(F, 3)]),
    ("reshape", {"newshape": [-1]}, [(F, 2)]),
    ("reshape", {"newshape": [2, -1, 0]}, [(F, 3)]),
    ("reshape", {"newshape": [6, 0]}, [(F, 2)]),
    ("expand_dims", {"axis": 1, "num_newaxis": 2}, [(F, 2)]),
    ("squeeze", {"axis": [0]}, [(F, 2)]),
    ("squeeze", {"axis": None}, [(F, [1, 3, 1])]),
    ("transpose", {"axes": [1, 0, 2]}, [(F, 3)]),
    ("transpose", {"axes": None}, [(F, 2)]),
    ("concatenate", {"axis": 1}, [(F, 2), (F, 2), (F, 2)]),
    ("concatenate", {"axis": 0}, [(F, 1)]),
    ("split", {"indices_or_sections": 2, "axis": 0}, [(F, 2)]),
    ("split", {"indices_or_sections": [1, 3], "axis": 1}, [(F, 2)]),
    ("strided_slice", {"begin": [1], "end": [3], "strides": None, "axes": None}, [(F, 2)]),
    ("strided_slice", {"begin": [-1, 0], "end": [-4, 100], "strides": [-1, 2]}, [(F, 2)]),
    ("strided_slice", {"begin": [2], "end": [-1], "strides": [3], "axes": [1]}, [(F, 2)]),
    ("take", {"axis": 0}, [(F, 2), (I, 1)]),
    ("take", {"axis": None}, [(F, 2), (I, 2)]),
    ("take", {"axis": -1}, [(F, 3), (I, 0)]),
    ("set_row", {}, [(F, 3), (I, 0), (F, 2)]),
    ("cumulative", {"axis": -1, "mode": "prod"}, [(F, 2)]),
    ("scatter_rows", {"reduction": "none"}, [(F, 2), (I, 1), (F, 2)]),
    ("recurrent", {"cell": "gru", "activations": ["Sigmoid", "Tanh"]},
     [(F, 3), (F, 1), (F, 2), (F, 1), (F, 2), (F, 2), (I, 1)]),
    ("broadcast_to", {"shape": [2, 3]}, [(F, 1)]),
    ("broadcast_to", {"shape": [4, 2, 3]}, [(F, 2)]),
    ("zeros", {"shape": [2, 3], "dtype": F}, []),
    ("ones", {"shape": [], "dtype": F}, []),
    ("full", {"shape": [4], "dtype": None}, [(F, 0)]),
    ("sum", {"axis": [1], "keepdims": False}, [(F, 3)]),
    ("mean", {"axis": None, "keepdims": True}, [(F, 2)]),
    ("sum", {"axis": [0, -1], "exclude": True}, [(F, 3)]),
    ("max", {"axis": 1}, [(F, 3)]),
    ("argmax", {"axis": None, "keepdims": False}, [(F, 2)]),
    ("max", {"axis": [0], "keepdims": True}, [(F, 2)]),
    ("arange", {"dtype": "float32"}, [(F, 0), (F, 0), (F, 0)]),
    ("arange", {"dtype": "int32"}, [("float64", 0), ("float64", 0), ("float64", 0)]),
    ("arange", {"dtype": "int64"}, [(I, 0), (I, 0), (I, 0)]),
    ("arange", {"dtype": "float64"}, [("int32", 1), ("int32", 0), ("int32", 0)]),
    ("arange", {"dtype": "int64"}, [(F, 0), ("int32", 0), ("bool", 0)]),
    ("argwhere", {}, [("bool", 2)]),
    ("argwhere", {}, [(F, 3)]),
    ("argwhere", {}, [("int32", 0)]),
    ("dyn.reshape", {}, [(F, 3), (I, [2])]),
    ("dyn.reshape", {}, [(F, 2), ("int32", [3])]),
    ("dyn.zeros", {"dtype": F}, [(I, [3])]),
    ("dyn.ones", {"dtype": F}, [("int32", [0])]),
    ("dyn.full", {"dtype": None}, [(F, 0), (I, [2])]),
    ("dyn.strided_slice", {"axes": None}, [(F, 2), (I, [2]), (I, [2]), (I, [2])]),
    ("dyn.strided_slice", {"axes": [1]}, [(F, 3), ("int32", [1]), ("int32", [1]), (I, [1])]),
    ("nms", {"max_output": 3}, [(F, 2), (F, 1)]),
    ("nms", {"max_output": 10, "iou_threshold": 0.2, "score_threshold": 0.0},
     [(F, [None, 4]), (F, 1)]),
    ("nms.upper_bound", {"max_output": 3}, [(F, 2), (F, 1)]),
    ("nms.upper_bound", {"max_output": 0, "iou_threshold": 0.3}, [(F, 2), (F, 1)]),
    ("get_valid_counts", {"score_threshold": 0.0, "id_index": 0, "score_index": 1}, [(F, 3)]),
    ("non_max_suppression", {"coord_start": 2, "score_index": 1, "id_index": 0,
                             "return_indices": True}, [(F, 3), ("int32", 1), ("int32", 2)]),
    ("non_max_suppression", {"coord_start": 1, "score_index": 0, "id_index": -1,
                             "return_indices": False}, [(F, 3), ("int32", 1), ("int32", 2)]),
    ("sort", {"axis": -1, "is_ascend": True}, [(F, 2)]),
    ("argsort", {"axis": 0, "is_ascend": False, "dtype": I}, [(F, 1)]),
    ("topk", {"k": 3, "axis": -1, "ret_type": "both"}, [(F, 2)]),
    ("topk", {"k": 0, "axis": 0, "ret_type": "values"}, [(F, 2)]),
    ("unique", {"return_counts": False}, [(F, 1)]),
    ("unique", {"return_counts": True}, [("int32", 1)]),
    ("unique", {}, [("float64", [5])]),
    ("pool", {"pool_size": [3, 2], "strides": [2, 1], "padding": [1, 0, 1, 1], "ceil_mode": True},
     [(F, 4)]),
    ("pool", {"pool_size": [2], "dilation": [2], "mode": "avg"}, [(F, 3)]),
    ("roi_align", {"output_height": 2, "output_width": 3}, [(F, 4), (F, 2), (I, 1)]),
    ("col2im", {"strides": [2, 1], "padding": [1, -1, 0, 2], "output_padding": [1, 0]},
     [(F, 6)]),
]

DIM = st.sampled_from([0, 1, 1, 2, 3, 3, 4, 6])


def site_id(site):
    return f"{site[0]}-{json.dumps(site[1], sort_keys=True)}-{site[2]}"


@functools.cache
def compiled_sites():
    """{site index: (kernel, result lengths)}, every site in one module."""
    kb = KernelBuilder()
    specs = {i: native_shape_func_spec(*site) for i, site in enumerate(SITES)}
    index = {i: spec.add_to(kb, site_id(SITES[i])) for i, spec in specs.items()}
    kernels = load_kernels(kb.finish())
    return {i: (kernels[index[i]], specs[i].lengths) for i in specs}


def run_native(kernel, lengths, arrays):
    """(return code, the shapes written) of the kernel's dispatcher on `arrays`."""
    outs = [np.full(n, -7, np.int64) for n in lengths]
    args = list(arrays) + outs
    tensors, keep = abi.pack(args, [abi.dtype_code(dtype_name(a.dtype)) for a in args])
    rc = abi.kernel_function(kernel.address)(tensors, len(args))
    del keep
    return rc, [tuple(int(v) for v in o) for o in outs]


def run_python(name, arrays, attrs):
    """The Python function as the VM calls it (VM Tensors, or numpy arrays for the
    data-dependent functions that read them); its shapes, or the ShapeError it raises."""
    sf = lookup(name)
    wants_arrays = sf.mode == "data_dependent" and not sf.tensor_inputs
    inputs = arrays if wants_arrays else [Tensor.from_array(a.copy(order="C")) for a in arrays]
    try:
        return sf.fn(inputs, attrs)
    except ShapeError as e:
        return e


def assert_agree(kernel, lengths, name, attrs, arrays):
    expected = run_python(name, arrays, attrs)
    rc, shapes = run_native(kernel, lengths, arrays)
    if isinstance(expected, ShapeError):
        assert rc == abi.ERR_SHAPE, (rc, expected)
        assert all(set(s) <= {-7} for s in shapes), "a failing kernel wrote its outputs"
    else:
        assert rc == 0, (rc, expected)
        assert shapes == [tuple(s) for s in expected]


# ---------------------------------------------------------------------------------------------
# drawing inputs


def values(draw, dtype, shape, name):
    """Values a data-dependent function reads: small ints around the special -1 / 0, floats
    with NaN / inf and zero now and then, booleans."""
    size = int(np.prod(shape, dtype=np.int64))
    if dtype == "bool":
        elems = st.booleans()
    elif dtype.startswith("float"):
        specials = st.sampled_from([0.0, float("inf"), float("nan"), -0.5])
        elems = st.one_of(st.floats(-30, 30, width=32), specials) if name == "arange" else \
            st.sampled_from([0.0, -0.0, 1.0, float("nan"), -2.5])
    else:
        elems = st.integers(-12, 12) if name == "arange" else st.integers(-3, 6)
    return np.array(draw(st.lists(elems, min_size=size, max_size=size)),
                    dtype).reshape(shape)


def draw_arrays(draw, site):
    name, _, sigs = site
    reads_values = lookup(name).mode == "data_dependent"
    arrays = []
    for k, (dtype, dims) in enumerate(sigs):
        dims = [None] * dims if isinstance(dims, int) else dims
        shape = tuple(draw(DIM) if d is None else d for d in dims)
        if name == "arange" and draw(st.integers(0, 5)):
            shape = (1,) * len(shape)          # mostly one-element, as arange needs
        if reads_values and (k > 0 or name in ("arange", "argwhere")):
            arrays.append(values(draw, dtype, shape, name))
        else:
            arrays.append(np.zeros(shape, dtype))
    return arrays


# ---------------------------------------------------------------------------------------------
# every shape function, native == Python


def test_every_registered_function_but_the_unsupported_has_a_site():
    covered = {lookup(name).fn for name, _, _ in SITES}
    missing = sorted(n for n, sf in SHAPE_FUNCS.items()
                     if sf.fn not in covered and n not in NATIVE_UNSUPPORTED)
    assert missing == []
    assert set(NATIVE_UNSUPPORTED) <= set(SHAPE_FUNCS)
    modes = {lookup(name).mode for name, _, _ in SITES}
    assert modes == {"data_independent", "data_dependent", "upper_bound"}


@pytest.mark.parametrize("i", range(len(SITES)), ids=[site_id(s) for s in SITES])
@SETTINGS
@given(data=st.data())
def test_native_agrees_with_python(i, data):
    kernel, lengths = compiled_sites()[i]
    name, attrs, _ = SITES[i]
    assert_agree(kernel, lengths, name, attrs, draw_arrays(data.draw, SITES[i]))


# attrs drawn too: each distinct call site compiles on first use

@functools.cache
def compiled(name, attrs_json, sigs_json):
    spec = native_shape_func_spec(name, json.loads(attrs_json), json.loads(sigs_json))
    kb = KernelBuilder()
    index = spec.add_to(kb, name)
    return load_kernels(kb.finish())[index], spec.lengths


def check_drawn(draw, name, attrs, sigs):
    """native == Python at a drawn call site; a call site that fails whatever the input is
    not native, and then Python fails too."""
    site = (name, attrs, sigs)
    arrays = draw_arrays(draw, site)
    try:
        kernel, lengths = compiled(name, json.dumps(attrs, sort_keys=True), json.dumps(sigs))
    except NotNative as e:
        assert "fails for every input" in str(e), e
        assert isinstance(run_python(name, arrays, attrs), ShapeError)
        return
    assert_agree(kernel, lengths, name, attrs, arrays)


AXIS = st.integers(-4, 3)


@settings(max_examples=examples(15))
@given(data=st.data(), rank=st.integers(0, 3),
       newshape=st.lists(st.sampled_from([-2, -1, -1, 0, 0, 1, 2, 3, 6]), max_size=4))
def test_reshape_with_drawn_newshape(data, rank, newshape):
    check_drawn(data.draw, "reshape", {"newshape": newshape}, [(F, rank)])


@settings(max_examples=examples(15))
@given(data=st.data(), rank=st.integers(1, 3),
       spec=st.lists(st.tuples(st.one_of(st.none(), st.integers(-7, 7)),
                               st.one_of(st.none(), st.integers(-7, 7)),
                               st.sampled_from([None, 1, 2, -1, -3])), min_size=1, max_size=3))
def test_strided_slice_with_drawn_bounds(data, rank, spec):
    spec = spec[:rank]
    attrs = {"begin": [s[0] for s in spec], "end": [s[1] for s in spec],
             "strides": [1 if s[2] is None else s[2] for s in spec]}
    check_drawn(data.draw, "strided_slice", attrs, [(F, rank)])


@settings(max_examples=examples(15))
@given(data=st.data(), rank=st.integers(0, 3),
       axis=st.one_of(st.none(), AXIS, st.lists(AXIS, max_size=2)),
       keepdims=st.booleans(), exclude=st.booleans(), op=st.sampled_from(["sum", "max"]))
def test_reductions_with_drawn_axes(data, rank, axis, keepdims, exclude, op):
    attrs = {"axis": axis, "keepdims": keepdims, "exclude": exclude}
    check_drawn(data.draw, op, attrs, [(F, rank)])


@settings(max_examples=examples(15))
@given(data=st.data(), rank=st.integers(1, 3), axis=AXIS,
       sections=st.one_of(st.integers(1, 3), st.lists(st.integers(-4, 6), max_size=3)))
def test_split_with_drawn_sections(data, rank, axis, sections):
    check_drawn(data.draw, "split", {"indices_or_sections": sections, "axis": axis}, [(F, rank)])


@settings(max_examples=examples(10))
@given(data=st.data(), k=st.integers(-1, 5), axis=AXIS, rank=st.integers(1, 3))
def test_topk_with_drawn_k(data, k, axis, rank):
    check_drawn(data.draw, "topk", {"k": k, "axis": axis, "ret_type": "indices"}, [(F, rank)])


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("n", [0, 1, 2, 1000, 5000])
def test_unique_counts_like_numpy_on_long_inputs(dtype, n):
    """The hash set of count_distinct: many duplicates, NaNs of several payloads, -0.0."""
    kernel, lengths = compiled("unique", "{}", json.dumps([(dtype, 1)]))
    rng = np.random.default_rng(n)
    if dtype.startswith("float"):
        bits = np.uint32 if dtype == "float32" else np.uint64
        payload_nan = np.array([np.nan], dtype).view(bits) | bits(1)     # a NaN of other bits
        pool = np.concatenate([np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.5,
                                         1e30], dtype), payload_nan.view(dtype)])
        x = np.concatenate([rng.choice(pool, n // 2),
                            rng.standard_normal(n - n // 2).astype(dtype)])
    else:
        x = rng.integers(-40, 40, n).astype(dtype)
    assert run_native(kernel, lengths, [x]) == (0, [(len(np.unique(x)),)])


# ---------------------------------------------------------------------------------------------
# contracts


def test_a_symbolic_dim_in_a_python_if_raises_at_trace_time(monkeypatch):
    def bad(inputs, attrs):
        if inputs[0].shape[0] > 2:      # value-dependent control flow outside the interface
            return [(1,)]
        return [(2,)]
    monkeypatch.setitem(SHAPE_FUNCS, "test.bad_if",
                        ShapeFunc("test.bad_if", "data_independent", bad))
    assert bad([np.zeros(3)], {}) == [(1,)]          # fine on Python ints
    with pytest.raises(NotNative, match=r"value-dependent control flow at bad line \d+"):
        native_shape_func_spec("test.bad_if", {}, [(F, 1)])
    # ...and compiles once the extent is static
    assert native_shape_func_spec("test.bad_if", {}, [(F, [3])]).lengths == [1]


def test_symbolic_dims_refuse_truth_values_and_indexing():
    from dynvm.kernels.llvm_util import new_function
    from dynvm.kernels.shape import Sym, I64, c64
    from llvmlite import ir
    _, b = new_function(ir.Module(), "f")
    d = Sym(b, b.add(c64(1), c64(2)), "int")
    for use in (bool, int, lambda x: [0, 1][x], lambda x: range(x), lambda x: min(x, 3),
                lambda x: x == 2 and True):
        with pytest.raises(TraceError):
            use(d)
    assert (d + 1).v.type == I64 and (d == 3).kind == "bool"


def test_squeeze_of_every_unit_dim_needs_static_extents():
    with pytest.raises(NotNative, match="value-dependent control flow"):
        native_shape_func_spec("squeeze", {"axis": None}, [(F, 2)])
    assert native_shape_func_spec("squeeze", {"axis": None}, [(F, [1, 4])]).lengths == [1]


def test_sites_without_a_native_form_say_why():
    assert NATIVE_UNSUPPORTED == {}      # every registered function compiles somewhere
    with pytest.raises(NotNative, match="fails for every input.*must be 4-D"):
        native_shape_func_spec("conv2d", {}, [(F, 3), (F, 4)])
    with pytest.raises(NotNative, match="needs a static length"):
        native_shape_func_spec("dyn.zeros", {"dtype": F}, [(I, 1)])
    with pytest.raises(NotNative, match="does not fit in int64"):
        native_shape_func_spec("zeros", {"shape": [1 << 64], "dtype": F}, [])
    with pytest.raises(NotNative, match="no vision kernel for this call site"):
        native_shape_func_spec("nms", {"max_output": 2}, [("float64", 2), ("float64", 1)])


@pytest.mark.parametrize("n, max_output", [(0, 5), (1, 5), (300, 50), (2000, 2000)])
def test_nms_counts_what_the_greedy_selection_keeps(n, max_output):
    """The exact nms count runs nms's own kernel natively: as many boxes as nms_select."""
    attrs = {"max_output": max_output, "iou_threshold": 0.4, "score_threshold": 0.1}
    kernel, lengths = compiled("nms", json.dumps(attrs, sort_keys=True),
                               json.dumps([(F, 2), (F, 1)]))
    rng = np.random.default_rng(n)
    corners = rng.uniform(0, 50, (n, 2)).astype(F)
    boxes = np.concatenate([corners, corners + rng.uniform(1, 10, (n, 2)).astype(F)], axis=1)
    scores = rng.uniform(0, 1, n).astype(F)
    expected = len(nms_select(boxes, scores, attrs))
    assert run_native(kernel, lengths, [boxes, scores]) == (0, [(expected,)])
    assert 0 < expected <= max_output or n == 0


def test_static_extents_are_checked_on_entry():
    spec = native_shape_func_spec("add", {}, [(F, [None, 3]), (F, 2)])
    kb = KernelBuilder()
    index = spec.add_to(kb, "add")
    kernel = load_kernels(kb.finish())[index]
    assert run_native(kernel, [2], [np.zeros((2, 3), F), np.zeros((2, 3), F)]) == (0, [(2, 3)])
    rc, _ = run_native(kernel, [2], [np.zeros((2, 4), F), np.zeros((2, 4), F)])
    assert rc == abi.ERR_SHAPE | 0 << 8 | 1 << 16


def test_wrong_output_length_is_a_shape_error_and_nothing_is_written():
    kernel, lengths = compiled("add", "{}", json.dumps([(F, 2), (F, 2)]))
    rc, shapes = run_native(kernel, [3], [np.zeros((2, 3), F), np.zeros((2, 3), F)])
    assert rc == abi.ERR_SHAPE | 2 << 8 and shapes == [(-7, -7, -7)]


def test_overflow_is_err_arith_where_python_computes_exactly():
    kernel, lengths = compiled("arange", json.dumps({"dtype": I}), json.dumps([(I, 0)] * 3))
    big = [np.array(v, np.int64) for v in (-(1 << 63) + 1, 10, 1)]
    assert run_native(kernel, lengths, big)[0] == abi.ERR_ARITH
    assert run_python("arange", big, {"dtype": I}) == [((1 << 63) + 9,)]


def test_the_kernels_are_rebuilt_from_their_specs():
    """A file's shape-function kernels are regenerated from (family, spec, signature) alone."""
    spec = native_shape_func_spec("dyn.reshape", {}, [(F, 3), (I, [2])])
    kb = KernelBuilder()
    spec.add_to(kb, "dyn.reshape")
    section = kb.finish()
    rebuilt = rebuild_section({**section, "llvm_ir": [], "object": []})
    kernel = load_kernels(rebuilt)[0]
    arrays = [np.zeros((2, 3, 4), F), np.array([0, -1], np.int64)]
    assert run_native(kernel, spec.lengths, arrays) == (0, [(2, 12)])
    assert rebuilt["kernels"][0]["op"] == "shape_func"


def test_a_registered_function_compiles_without_registering_anything_else():
    """The family traces the registry's own function: registering one is all it takes."""
    registry_before = dict(SHAPE_FUNCS)
    try:
        @shape_func("test.double_last")
        def double_last(inputs, attrs):
            shape = inputs[0].shape
            return [shape[:-1] + (2 * shape[-1] + attrs["extra"],)]
        kernel, lengths = compiled("test.double_last", json.dumps({"extra": 1}),
                                   json.dumps([(F, 2)]))
        assert run_native(kernel, lengths, [np.zeros((3, 5), F)]) == (0, [(3, 11)])
    finally:
        SHAPE_FUNCS.clear()
        SHAPE_FUNCS.update(registry_before)
