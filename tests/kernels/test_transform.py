"""Data-movement kernels (kernels/transform.py) agree exactly with the numpy reference kernels of
tests/numpy_reference.py, through the dispatcher and through every variant symbol `S__<variant>`.

Values are moved, never computed, so every comparison is exact (NaN payloads included). Output
shapes come from the shape functions, as in the VM. Each test module builds its kernels in one
KernelBuilder per table (few LLVM compiles), and calls the native symbols through kernels.abi.
"""
import ctypes
import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm import shape_funcs
from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import abi, codelib
from tests.numpy_reference import REFERENCE_KERNELS
from dynvm.kernels.abi import (ERR_BROADCAST, ERR_DTYPE, ERR_LAYOUT, ERR_NARGS, ERR_NDIM, ERR_NULL,
                               ERR_SHAPE, ERR_VALUE)
from tests.kernels.support import with_layout
from tests.strategies import examples

DTYPES = ("float32", "float64", "int32", "int64", "bool")
LAYOUTS = ("c", "c", "step", "transpose", "reversed")
DIM = st.sampled_from([0, 1, 1, 2, 3, 5, 7])


# ---------------------------------------------------------------------------------------------
# harness: one builder per table, native symbols called directly


class Native:
    """One compiled kernel: call the dispatcher or a named variant, read `S__variant`."""

    def __init__(self, library, entry):
        self.symbol = entry["symbol"]
        self.variants = [v["name"] for v in entry["variants"]]
        self._fns = {None: abi.kernel_function(library.address(self.symbol))}
        for v in entry["variants"]:
            self._fns[v["name"]] = abi.kernel_function(library.address(v["symbol"]))
        self._chosen = ctypes.c_int32.from_address(library.address(self.symbol + "__variant"))
        self._library = library

    def __call__(self, arrays, variant=None, nargs=None):
        """Return code of the native call on `arrays` (inputs then outputs)."""
        tensors, keep = abi.pack(arrays, [abi.dtype_code(a.dtype.name) for a in arrays])
        rc = self._fns[variant](tensors, len(arrays) if nargs is None else nargs)
        del keep
        return rc

    def raw(self, tensors, nargs, variant=None):
        return self._fns[variant](tensors, nargs)

    @property
    def last_variant(self):
        return self.variants[self._chosen.value]


def native_table(specs):
    """{key: (family, spec, inputs, outputs)} -> {key: Native}, one LLVM module for all."""
    kb = KernelBuilder()
    index = {key: kb.add_compiled(f"t_{fam}", fam, spec, ins, outs)
             for key, (fam, spec, ins, outs) in specs.items()}
    section = kb.finish()
    library = codelib.CodeLibrary(section["llvm_ir"], section["object"], section["target"])
    return {key: Native(library, section["kernels"][i]) for key, i in index.items()}


def cached(fn):
    return functools.cache(fn)


def random_array(rng, shape, dtype):
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-1000, 1000, size=shape).astype(dtype)


def reference(op, attrs, inputs):
    """Outputs of the extern (numpy) kernel, shaped by the op's shape function."""
    shapes = shape_funcs.lookup(op).fn(inputs, attrs)
    dtypes = out_dtypes(op, attrs, inputs, len(shapes))
    outs = [np.zeros(s, dt) for s, dt in zip(shapes, dtypes)]
    REFERENCE_KERNELS[op](inputs, outs, attrs)
    return outs


def out_dtypes(op, attrs, inputs, n):
    if op == "argwhere":
        return ["int64"]
    if op in ("arange", "zeros", "ones", "dyn.zeros", "dyn.ones"):
        return [attrs["dtype"]]
    if op in ("full", "dyn.full"):
        return [attrs["dtype"] or inputs[0].dtype.name]
    return [inputs[0].dtype.name] * n


def check_all_variants(kernel, op, attrs, inputs, out_layout="c", compact=True):
    """Dispatcher and every variant give the reference; a fast variant may only refuse with
    ERR_LAYOUT (when the arrays do not fit it). Returns the variant the dispatcher chose."""
    want = reference(op, attrs, inputs)
    chosen = None
    for variant in [None] + kernel.variants:
        got = [with_layout(np.zeros(w.shape, w.dtype), out_layout) for w in want]
        rc = kernel([*inputs, *got], variant)
        if variant is None:
            chosen = kernel.last_variant
        if rc and variant is not None and variant != kernel.variants[-1] and \
                rc & 0xFF == ERR_LAYOUT and not (compact and out_layout == "c"):
            continue
        assert rc == 0, f"variant {variant}: native code returned {rc:#x}"
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=f"variant {variant}")
    return chosen


def kind(rc):
    return rc & 0xFF


# ---------------------------------------------------------------------------------------------
# transpose

PERMS = [p for r in range(5) for p in itertools.permutations(range(r))]


@cached
def transpose_kernels():
    specs = {("f32", perm): ("transpose", {"op": "transpose", "axes": list(perm)},
                             [["float32", len(perm)]], [["float32", len(perm)]])
             for perm in PERMS}
    for dt in DTYPES[1:]:
        specs[(dt, (1, 0))] = ("transpose", {"op": "transpose", "axes": [1, 0]},
                               [[dt, 2]], [[dt, 2]])
    specs[("float32", (1, 0))] = specs[("f32", (1, 0))]
    specs["none3"] = ("transpose", {"op": "transpose", "axes": None},
                      [["int32", 3]], [["int32", 3]])
    specs["neg"] = ("transpose", {"op": "transpose", "axes": [0, -1, -2]},
                    [["int64", 3]], [["int64", 3]])
    return native_table(specs)


@pytest.mark.parametrize("perm", PERMS, ids=str)
@settings(max_examples=examples(20))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_transpose_every_perm_matches_numpy(perm, data, seed):
    shape = tuple(data.draw(DIM) for _ in perm)
    x = random_array(np.random.default_rng(seed), shape, "float32")
    layout, out_layout = data.draw(st.sampled_from(LAYOUTS)), data.draw(st.sampled_from(LAYOUTS))
    check_all_variants(transpose_kernels()[("f32", perm)], "transpose", {"axes": list(perm)},
                       [with_layout(x, layout)], out_layout, compact=layout == "c")


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(20))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_transpose_every_dtype_matches_numpy(dtype, data, seed):
    """Shapes around the 32 x 32 tile edge, so partial tiles are covered."""
    perm = (1, 0)
    big = st.sampled_from([0, 1, 2, 17, 31, 32, 33, 64, 70])
    shape = tuple(data.draw(big) for _ in perm)
    x = random_array(np.random.default_rng(seed), shape, dtype)
    layout = data.draw(st.sampled_from(LAYOUTS))
    check_all_variants(transpose_kernels()[(dtype, perm)], "transpose", {"axes": list(perm)},
                       [with_layout(x, layout)], compact=layout == "c")


def test_transpose_dispatcher_picks_tiles_for_compact_last_two_axes_swap():
    k = transpose_kernels()[("f32", (0, 2, 1))]
    assert k.variants == ["tiled", "generic"]
    check_all_variants(k, "transpose", {"axes": [0, 2, 1]},
                       [np.random.default_rng(0).standard_normal((3, 40, 37)).astype("float32")])
    assert k.last_variant == "tiled"
    x = np.zeros((3, 4, 5), np.float32)
    assert k([x[:, :, ::-1], np.zeros((3, 5, 4), np.float32)]) == 0
    assert k.last_variant == "generic"


SWAPS = [(1, 2, 0), (2, 0, 1), (0, 3, 1, 2)]


@cached
def swap_kernels():
    return native_table({(dt, perm): ("transpose", {"op": "transpose", "axes": list(perm)},
                                      [[dt, len(perm)]], [[dt, len(perm)]])
                         for dt in ("float32", "float64") for perm in SWAPS})


@pytest.mark.parametrize("perm", SWAPS, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])     # 4- and 8-byte vector blocks
@settings(max_examples=examples(8))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_transpose_of_axis_blocks_runs_tiles_of_vector_blocks(perm, dtype, data, seed):
    """Batches of 2-D transposes ([1, 2, 0]: BERT's heads) take the tiled variant; the merged
    extents cross the vector width and the tile edge, so the in-register blocks, the tile
    edges and the element-wise rest all run."""
    shape = tuple(data.draw(st.sampled_from([1, 2, 3, 4, 8, 9, 17, 33])) for _ in perm)
    x = random_array(np.random.default_rng(seed), shape, dtype)
    k = swap_kernels()[(dtype, perm)]
    assert k.variants[0] == "tiled"
    assert check_all_variants(k, "transpose", {"axes": list(perm)}, [x]) == "tiled"


def test_transpose_keeping_the_last_axis_copies_rows():
    k = transpose_kernels()[("f32", (1, 0, 2))]
    assert k.variants == ["rows", "generic"]
    check_all_variants(k, "transpose", {"axes": [1, 0, 2]},
                       [np.arange(60, dtype=np.float32).reshape(3, 4, 5)])
    assert k.last_variant == "rows"


def test_transpose_default_and_negative_axes():
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    check_all_variants(transpose_kernels()["none3"], "transpose", {"axes": None}, [x])
    check_all_variants(transpose_kernels()["neg"], "transpose", {"axes": [0, -1, -2]},
                       [x.astype(np.int64)])


# ---------------------------------------------------------------------------------------------
# concatenate and split


SPLIT_POINTS = ([2, 5], [-3, 100, 2, 0])   # plain; negative, past the end, decreasing


@cached
def concat_split_kernels():
    specs = {}
    for dt in DTYPES:
        specs[("cat", dt)] = ("concatenate", {"op": "concatenate", "axis": 0},
                              [[dt, 1], [dt, 1]], [[dt, 1]])
    for axis in (0, 1, -1):
        specs[("cat3", axis)] = ("concatenate", {"op": "concatenate", "axis": axis},
                                 [["float32", 3]] * 3, [["float32", 3]])
    specs["cat1"] = ("concatenate", {"op": "concatenate", "axis": 1},
                     [["int64", 2]], [["int64", 2]])
    for axis in (0, -1):
        specs[("split3", axis)] = ("split", {"op": "split", "indices_or_sections": 3,
                                             "axis": axis}, [["float32", 2]], [["float32", 2]] * 3)
    for points in SPLIT_POINTS:
        specs[("splitp", tuple(points))] = (
            "split", {"op": "split", "indices_or_sections": points, "axis": 1},
            [["int32", 3]], [["int32", 3]] * (len(points) + 1))
    for dt in DTYPES:
        specs[("split", dt)] = ("split", {"op": "split", "indices_or_sections": 2, "axis": 0},
                                [[dt, 1]], [[dt, 1]] * 2)
    return native_table(specs)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(20))
@given(a=st.integers(0, 40), b=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
def test_concatenate_1d_every_dtype(dtype, a, b, seed):
    rng = np.random.default_rng(seed)
    xs = [random_array(rng, (n,), dtype) for n in (a, b)]
    chosen = check_all_variants(concat_split_kernels()[("cat", dtype)], "concatenate",
                                {"axis": 0}, xs)
    assert chosen == "blocks"


@pytest.mark.parametrize("axis", [0, 1, -1])
@settings(max_examples=examples(24))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_concatenate_three_inputs_any_axis_and_layout(axis, data, seed):
    rng = np.random.default_rng(seed)
    shape = [data.draw(DIM) for _ in range(3)]
    xs = []
    for _ in range(3):
        s = list(shape)
        s[axis] = data.draw(DIM)
        xs.append(with_layout(random_array(rng, tuple(s), "float32"),
                              data.draw(st.sampled_from(LAYOUTS))))
    out_layout = data.draw(st.sampled_from(LAYOUTS))
    check_all_variants(concat_split_kernels()[("cat3", axis)], "concatenate", {"axis": axis},
                       xs, out_layout, compact=all(x.flags.c_contiguous for x in xs))


def test_concatenate_of_one_tensor_copies_it():
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    check_all_variants(concat_split_kernels()["cat1"], "concatenate", {"axis": 1}, [x])


def test_concatenate_mismatched_extents_return_shape_error_code():
    k = concat_split_kernels()[("cat3", 1)]
    a, b = np.zeros((2, 3, 4), np.float32), np.zeros((2, 5, 4), np.float32)
    bad_off_axis = np.zeros((2, 1, 5), np.float32)
    assert kind(k([a, b, bad_off_axis, np.zeros((2, 9, 4), np.float32)])) == ERR_SHAPE
    assert kind(k([a, b, a, np.zeros((2, 10, 4), np.float32)])) == ERR_SHAPE   # sum is 11
    for v in k.variants:
        assert kind(k([a, b, a, np.zeros((2, 12, 4), np.float32)], v)) == ERR_SHAPE


@pytest.mark.parametrize("axis", [0, -1])
@settings(max_examples=examples(20))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_split_into_equal_sections(axis, data, seed):
    shape = [data.draw(DIM), data.draw(DIM)]
    shape[axis] = 3 * data.draw(st.integers(0, 4))
    x = with_layout(random_array(np.random.default_rng(seed), tuple(shape), "float32"),
                    data.draw(st.sampled_from(LAYOUTS)))
    out_layout = data.draw(st.sampled_from(LAYOUTS))
    check_all_variants(concat_split_kernels()[("split3", axis)], "split",
                       {"indices_or_sections": 3, "axis": axis}, [x], out_layout,
                       compact=x.flags.c_contiguous)


@pytest.mark.parametrize("points", SPLIT_POINTS, ids=str)
@settings(max_examples=examples(20))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_split_at_points_clamps_like_numpy(points, data, seed):
    shape = (data.draw(DIM), data.draw(st.integers(0, 9)), data.draw(DIM))
    x = with_layout(random_array(np.random.default_rng(seed), shape, "int32"),
                    data.draw(st.sampled_from(LAYOUTS)))
    check_all_variants(concat_split_kernels()[("splitp", tuple(points))], "split",
                       {"indices_or_sections": points, "axis": 1}, [x],
                       compact=x.flags.c_contiguous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_every_dtype(dtype):
    x = random_array(np.random.default_rng(1), (10,), dtype)
    check_all_variants(concat_split_kernels()[("split", dtype)], "split",
                       {"indices_or_sections": 2, "axis": 0}, [x])


def test_split_of_indivisible_or_misshaped_input_returns_shape_error_code():
    k = concat_split_kernels()[("split3", 0)]
    x = np.zeros((7, 2), np.float32)
    outs = [np.zeros((2, 2), np.float32)] * 3
    assert kind(k([x, *outs])) == ERR_SHAPE
    x = np.zeros((6, 2), np.float32)
    assert kind(k([x, np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32),
                   np.zeros((2, 3), np.float32)])) == ERR_SHAPE


# ---------------------------------------------------------------------------------------------
# strided_slice

SLICES = {
    "basic": {"begin": [1, 0], "end": [4, 3], "strides": None, "axes": None},
    "negstep": {"begin": [-1, 5], "end": [-100, None], "strides": [-1, -2], "axes": None},
    "huge": {"begin": [-(1 << 70)], "end": [1 << 70], "strides": [3], "axes": [1]},
    "axes": {"begin": [2], "end": [-1], "strides": [-1], "axes": [-1]},
    "partial": {"begin": [1], "end": [None], "strides": [2], "axes": None},
    "bigstep": {"begin": [None, None], "end": [None, None], "strides": [1 << 70, -(1 << 70)],
                "axes": None},
}


@cached
def slice_kernels():
    specs = {name: ("strided_slice", {"op": "strided_slice", **attrs},
                    [["float32", 2]], [["float32", 2]]) for name, attrs in SLICES.items()}
    for dt in DTYPES:
        specs[(dt, "rows")] = ("strided_slice", {"op": "strided_slice", "begin": [5, 1],
                                                 "end": [0, -1], "strides": [-2, 1],
                                                 "axes": None}, [[dt, 3]], [[dt, 3]])
    return native_table(specs)


@pytest.mark.parametrize("name", list(SLICES))
@settings(max_examples=examples(24))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_strided_slice_matches_numpy(name, data, seed):
    shape = (data.draw(st.integers(0, 9)), data.draw(st.integers(0, 9)))
    x = with_layout(random_array(np.random.default_rng(seed), shape, "float32"),
                    data.draw(st.sampled_from(LAYOUTS)))
    out_layout = data.draw(st.sampled_from(LAYOUTS))
    check_all_variants(slice_kernels()[name], "strided_slice", SLICES[name], [x], out_layout,
                       compact=x.flags.c_contiguous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_slice_every_dtype_with_negative_strides(dtype):
    rng = np.random.default_rng(2)
    x3 = random_array(rng, (8, 3, 6), dtype)
    k = slice_kernels()[(dtype, "rows")]
    assert k.variants == ["rows", "strided"]
    check_all_variants(k, "strided_slice", {"begin": [5, 1], "end": [0, -1], "strides": [-2, 1],
                                            "axes": None}, [x3])
    assert k.last_variant == "rows"


def test_strided_slice_output_shape_must_match_the_attrs():
    k = slice_kernels()["basic"]
    x = np.zeros((5, 5), np.float32)
    for v in [None] + k.variants:
        assert kind(k([x, np.zeros((3, 2), np.float32)], v)) == ERR_SHAPE
        assert kind(k([x, np.zeros((2, 3), np.float32)], v)) == ERR_SHAPE
    assert k([x, np.zeros((3, 3), np.float32)]) == 0


# ---------------------------------------------------------------------------------------------
# take

TAKES = [(axis, mode, idt) for axis in (None, 0, 1, -1) for mode, idt in
         ((("clip", "int32"), ("wrap", "int64")) if axis in (None, 1) else
          (("clip", "int64"), ("wrap", "int32")))] + [(0, "raise", "int64"), (None, "raise", "int32")]


@cached
def take_kernels():
    specs = {(axis, mode, idt): ("take", {"op": "take", "axis": axis, "mode": mode},
                                 [["float32", 3], [idt, 2]],
                                 [["float32", 2 if axis is None else 4]])
             for axis, mode, idt in TAKES}
    for dt in DTYPES:
        specs[dt] = ("take", {"op": "take", "axis": 0, "mode": "clip"},
                     [[dt, 2], ["int64", 1]], [[dt, 2]])
    return native_table(specs)


@pytest.mark.parametrize("axis, mode, idt", TAKES, ids=str)
@settings(max_examples=examples(20))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_take_matches_numpy_with_out_of_range_indices(axis, mode, idt, data, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(data.draw(st.sampled_from([1, 2, 3, 5, 40])) for _ in range(3))
    if data.draw(st.integers(0, 5)) == 0:      # an empty axis needs empty indices
        shape = (0,) + shape[1:] if axis in (0, None) else shape
    ishape = (data.draw(DIM), data.draw(DIM))
    x = with_layout(random_array(rng, shape, "float32"), data.draw(st.sampled_from(LAYOUTS)))
    n = x.size if axis is None else shape[axis]
    if n == 0:
        ishape = (0, ishape[1])
    low, high = (-n, n) if mode == "raise" else (-3 * n - 2, 3 * n + 3)   # raise: in range
    idx = with_layout(rng.integers(low, max(high, low + 1), size=ishape).astype(idt),
                      data.draw(st.sampled_from(LAYOUTS)))
    out_layout = data.draw(st.sampled_from(LAYOUTS))
    check_all_variants(take_kernels()[(axis, mode, idt)], "take", {"axis": axis, "mode": mode},
                       [x, idx], out_layout,
                       compact=x.flags.c_contiguous and idx.flags.c_contiguous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_take_every_dtype_and_row_copy_variant(dtype):
    k = take_kernels()[dtype]
    assert k.variants == ["rows", "gather", "strided"]
    x = random_array(np.random.default_rng(3), (7, 200), dtype)
    idx = np.array([6, -1, 0, 9, 3], np.int64)
    assert check_all_variants(k, "take", {"axis": 0, "mode": "clip"}, [x[:, :50].copy(), idx]) \
        == "rows"
    assert check_all_variants(k, "take", {"axis": 0, "mode": "clip"}, [x, idx]) == "gather"
    assert check_all_variants(k, "take", {"axis": 0, "mode": "clip"}, [x[:, :3].copy(), idx]) \
        == "gather"


def test_take_raise_refuses_an_index_outside_the_axis():
    k = take_kernels()[(0, "raise", "int64")]
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for bad in (2, -3):
        rc = k([x, np.array([[0, bad]], np.int64), np.zeros((1, 2, 3, 4), np.float32)])
        assert kind(rc) == ERR_VALUE and rc >> 8 & 0xFF == 1


def test_take_from_an_empty_axis_returns_shape_error_code():
    k = take_kernels()[(0, "clip", "int64")]
    x = np.zeros((0, 2, 3), np.float32)
    idx = np.zeros((1, 1), np.int64)
    for v in [None] + k.variants:
        assert kind(k([x, idx, np.zeros((1, 1, 2, 3), np.float32)], v)) == ERR_SHAPE
    assert k([x, np.zeros((0, 1), np.int64), np.zeros((0, 1, 2, 3), np.float32)]) == 0


def test_take_output_shape_is_checked():
    k = take_kernels()[(1, "wrap", "int64")]
    x = np.zeros((2, 3, 4), np.float32)
    idx = np.zeros((5, 1), np.int64)
    assert k([x, idx, np.zeros((2, 5, 1, 4), np.float32)]) == 0
    assert kind(k([x, idx, np.zeros((2, 5, 1, 3), np.float32)])) == ERR_SHAPE
    assert kind(k([x, idx, np.zeros((2, 4, 1, 4), np.float32)])) == ERR_SHAPE


# ---------------------------------------------------------------------------------------------
# broadcast_to

BROADCASTS = [((1, 5), (4, 5)), ((3, 1), (3, 6)), ((5,), (2, 3, 5)), ((), (2, 3)),
              ((2, 1, 7), (2, 4, 7)), ((1, 2), (3, 0, 2))]


@cached
def broadcast_kernels():
    specs = {(src, dst): ("broadcast_to", {"op": "broadcast_to", "shape": list(dst)},
                          [["float64", len(src)]], [["float64", len(dst)]])
             for src, dst in BROADCASTS}
    for dt in DTYPES:
        specs[(dt, 1)] = ("broadcast_to", {"op": "broadcast_to", "shape": [4, 3]},
                          [[dt, 1]], [[dt, 2]])
    return native_table(specs)


@pytest.mark.parametrize("src, dst", BROADCASTS, ids=str)
@pytest.mark.parametrize("layout", ["c", "step", "reversed", "transpose"])
def test_broadcast_to_matches_numpy(src, dst, layout):
    x = with_layout(random_array(np.random.default_rng(4), src, "float64"), layout)
    for out_layout in ("c", "step"):
        check_all_variants(broadcast_kernels()[(src, dst)], "broadcast_to", {"shape": list(dst)},
                           [x], out_layout, compact=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_to_every_dtype(dtype):
    rng = np.random.default_rng(5)
    k = broadcast_kernels()[(dtype, 1)]
    check_all_variants(k, "broadcast_to", {"shape": [4, 3]}, [random_array(rng, (3,), dtype)])
    assert k.last_variant == "rows"


def test_broadcast_to_rejects_mismatched_extents():
    k = broadcast_kernels()[((1, 5), (4, 5))]
    assert kind(k([np.zeros((2, 5)), np.zeros((4, 5))])) == ERR_BROADCAST
    assert kind(k([np.zeros((1, 5)), np.zeros((3, 5))])) == ERR_SHAPE   # not the attr's shape


# ---------------------------------------------------------------------------------------------
# bad descriptors never crash


def test_bad_descriptors_return_error_codes():
    k = transpose_kernels()[("f32", (1, 0))]
    x, out = np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32)
    for v in [None] + k.variants:
        assert kind(k([x, out], v, nargs=1)) == ERR_NARGS
        assert kind(k([x, out, out], v)) == ERR_NARGS
        assert kind(k([x.reshape(6), out], v)) == ERR_NDIM
        assert kind(k([x.astype(np.float64), out], v)) == ERR_DTYPE
        assert kind(k([x, np.zeros((2, 3), np.float32)], v)) == ERR_SHAPE
        assert kind(k.raw(abi.ffi.NULL, 2, v)) == ERR_NULL
        tensors, keep = abi.pack([x, out], [abi.dtype_code("float32")] * 2)
        tensors[0].data = abi.ffi.NULL
        assert kind(k.raw(tensors, 2, v)) == ERR_NULL
        tensors, keep = abi.pack([x, out], [abi.dtype_code("float32")] * 2)
        tensors[1].shape = abi.ffi.NULL
        assert kind(k.raw(tensors, 2, v)) == ERR_NULL
        tensors, keep = abi.pack([x, out], [abi.dtype_code("float32")] * 2)
        tensors[0].shape[0] = -1
        assert kind(k.raw(tensors, 2, v)) in (ERR_SHAPE, 7)


def test_empty_arrays_may_have_null_data():
    k = transpose_kernels()[("f32", (1, 0))]
    x, out = np.zeros((0, 3), np.float32), np.zeros((3, 0), np.float32)
    tensors, keep = abi.pack([x, out], [abi.dtype_code("float32")] * 2)
    tensors[0].data = tensors[1].data = abi.ffi.NULL
    for v in [None] + k.variants:
        assert k.raw(tensors, 2, v) == 0


# ---------------------------------------------------------------------------------------------
# through the runtime (kernels.load_kernels), as the VM loads them


def test_loaded_kernels_run_their_dispatcher_and_report_native_errors():
    from dynvm.kernels import load_kernels
    from dynvm.vm.errors import DynVMError

    kb = KernelBuilder()
    i = kb.add_compiled("t_concatenate", "concatenate", {"op": "concatenate", "axis": 0},
                        [("int32", 2), ("int32", 2)], [("int32", 2)])
    assert kb.add_compiled("again", "concatenate", {"op": "concatenate", "axis": 0},
                           [("int32", 2), ("int32", 2)], [("int32", 2)]) == i
    (k,) = load_kernels(kb.finish())
    a, b = np.arange(6, dtype=np.int32).reshape(2, 3), np.ones((1, 3), np.int32)
    out = np.zeros((3, 3), np.int32)
    k([a, b], [out])
    np.testing.assert_array_equal(out, np.concatenate([a, b]))
    assert k.last_variant == "blocks"
    with pytest.raises(DynVMError, match="t_concatenate"):
        k([a, b], [np.zeros((4, 3), np.int32)])
