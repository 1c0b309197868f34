"""The shape-function table: lookup, modes, and data-independent functions reading shapes only."""
import numpy as np
import pytest

from dynvm import shape_funcs
from dynvm.shape_funcs import ShapeFunc, lookup
from tests.shape_funcs.helpers import ShapeOnly


def test_lookup_returns_named_shape_func():
    sf = lookup("add")
    assert isinstance(sf, ShapeFunc) and sf.name == "add" and sf.mode == "data_independent"
    assert sf([np.zeros((2, 1)), np.zeros(3)], {}) == [(2, 3)]


def test_lookup_of_unknown_op_raises_key_error():
    with pytest.raises(KeyError, match="no shape function for op 'nope'"):
        lookup("nope")


@pytest.mark.parametrize("name", ["arange", "argwhere", "dyn.reshape", "dyn.zeros", "dyn.ones",
                                  "dyn.full", "dyn.strided_slice"])
def test_value_dependent_ops_are_data_dependent(name):
    assert lookup(name).mode == "data_dependent"


# one valid call per data-independent shape function, given only shapes: (input shapes, attrs,
# the output shapes worked out by hand)
CALLS = {
    "get_valid_counts": [((1, 5, 6),), {"score_threshold": 0.0, "id_index": 0, "score_index": 1}, [(1,), (1, 5, 6), (1, 5)]],
    "non_max_suppression": [((1, 5, 6), (1,), (1, 5)), {"coord_start": 2, "score_index": 1, "id_index": 0, "return_indices": True}, [(1, 5), (1, 1)]],
    "sort": [((2, 3),), {"axis": -1, "is_ascend": True}, [(2, 3)]],
    "argsort": [((2, 3),), {"axis": -1, "is_ascend": True, "dtype": "int64"}, [(2, 3)]],
    "topk": [((2, 3),), {"k": 2, "axis": -1, "ret_type": "both", "is_ascend": False, "dtype": "int64"}, [(2, 2), (2, 2)]],
    "add": [((2, 1), (3,)), {}, [(2, 3)]],
    "conv2d": [((1, 4, 5, 6), (6, 2, 3, 3)), {"padding": [1], "groups": 2}, [(1, 6, 5, 6)]],
    "pool": [((1, 2, 5, 6),), {"pool_size": [3, 3], "strides": [2, 2], "ceil_mode": True},
             [(1, 2, 2, 3)]],
    "roi_align": [((2, 3, 5, 5), (4, 4), (4,)), {"output_height": 2, "output_width": 3},
                  [(4, 3, 2, 3)]],
    "col2im": [((1, 2, 3, 3, 4, 5),), {"strides": [2, 2], "padding": [1, 1, 1, 1]},
               [(1, 2, 7, 9)]],
    "cast": [((2, 3),), {"dtype": "int32"}, [(2, 3)]],
    "where": [((2, 1), (1, 3), ()), {}, [(2, 3)]],
    "shape_of": [((2, 3),), {}, [(2,)]],
    "reshape": [((2, 3),), {"newshape": [-1]}, [(6,)]],
    "expand_dims": [((2, 3),), {"axis": 1, "num_newaxis": 1}, [(2, 1, 3)]],
    "squeeze": [((1, 3),), {"axis": None}, [(3,)]],
    "transpose": [((2, 3),), {"axes": None}, [(3, 2)]],
    "concatenate": [((2, 3), (1, 3)), {"axis": 0}, [(3, 3)]],
    "split": [((4, 3),), {"indices_or_sections": 2, "axis": 0}, [(2, 3), (2, 3)]],
    "strided_slice": [((4, 3),), {"begin": [1], "end": [3], "strides": None, "axes": None}, [(2, 3)]],
    "take": [((4, 3), (5,)), {"axis": 0, "mode": "clip"}, [(5, 3)]],
    "set_row": [((4, 3), (), (3,)), {}, [(4, 3)]],
    "cumulative": [((4, 3),), {"axis": 1, "mode": "sum", "exclusive": False, "reverse": False}, [(4, 3)]],
    "scatter_rows": [((4, 3), (2,), (2, 3)), {"reduction": "add"}, [(4, 3)]],
    "recurrent": [((5, 2, 12), (12,), (3, 12), (12,), (2, 3), (2, 3), (2,)),
                  {"cell": "lstm", "activations": ["Sigmoid", "Tanh", "Tanh"]},
                  [(5, 2, 3), (2, 3), (2, 3)]],
    "broadcast_to": [((3,),), {"shape": [2, 3]}, [(2, 3)]],
    "zeros": [(), {"shape": [2], "dtype": "float32"}, [(2,)]],
    "ones": [(), {"shape": [2], "dtype": "float32"}, [(2,)]],
    "full": [((),), {"shape": [2], "dtype": None}, [(2,)]],
    "sum": [((2, 3),), {"axis": 1, "keepdims": False, "exclude": False}, [(2,)]],
    "max": [((2, 3),), {"axis": 1, "keepdims": False, "exclude": False}, [(2,)]],
    "dense": [((2, 3), (4, 3)), {}, [(2, 4)]],
    "matmul": [((2, 3), (3, 4)), {}, [(2, 4)]],
    "batch_matmul": [((1, 2, 3), (5, 4, 3)), {"transpose_a": False, "transpose_b": True}, [(5, 2, 4)]],
    "softmax": [((2, 3),), {"axis": -1}, [(2, 3)]],
    "layer_norm": [((2, 3), (3,), (3,)), {"axis": -1, "epsilon": 1e-5}, [(2, 3)]],
}


@pytest.mark.parametrize("name", sorted(n for n, sf in shape_funcs.SHAPE_FUNCS.items()
                                        if sf.mode == "data_independent"))
def test_data_independent_functions_read_only_shapes(name):
    sf = lookup(name)
    call = CALLS.get(name) or next(c for n, c in CALLS.items() if lookup(n).fn is sf.fn)
    shapes, attrs, expected = call
    out = sf.fn([ShapeOnly(s) for s in shapes], attrs)
    assert out == expected
    assert all(type(d) is int for s in out for d in s)
