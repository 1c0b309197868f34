"""set_row and scatter_rows (compiler/op/update.py): the result has data's shape."""
from __future__ import annotations

from dynvm.shape_funcs.common import fails, same_dims
from dynvm.shape_funcs.registry import shape_func
from dynvm.vm.errors import ShapeError

# how scatter_rows combines an update with a row (compiler/op/update.py, kernels/update.py)
SCATTER_REDUCTIONS = ("none", "add", "mul", "max", "min")


@shape_func("set_row")
def set_row(inputs, attrs):
    data, row = inputs[0].shape, inputs[2].shape
    if fails(same_dims(data[1:], row)):
        raise ShapeError(f"set_row: row of shape {row} does not fit a row of data of shape {data}")
    if fails(data[0] != 0):
        raise ShapeError(f"set_row: data of shape {data} has no row to replace")
    return [data]


@shape_func("scatter_rows")
def scatter_rows(inputs, attrs):
    data, positions, updates = (x.shape for x in inputs)
    if fails(same_dims(updates, (positions[0], data[1]))):
        raise ShapeError(f"scatter_rows: updates of shape {updates} for {positions[0]} rows of "
                         f"width {data[1]}")
    return [data]
