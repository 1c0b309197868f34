"""set_row: a tensor with one row replaced (dynamic-update-slice along axis 0).

`set_row(data, index, row)` is `data` with `data[index]` replaced by `row`; the index is a run-time
int scalar, clamped into [0, n - 1] like XLA's dynamic-update-slice start indices (an empty axis
has no row to replace: ShapeError). As every op it makes a new tensor (the "set_row" family of
kernels/update.py copies `data`, then writes the row); a native loop whose state is only ever
updated by set_row writes the row in place instead (compiler/codegen/native_loop.py), which is
what lets a recurrent layer's output be allocated once for the whole sequence.
"""
from __future__ import annotations

from dynvm.compiler.ir.types import TensorType
from dynvm.compiler.op.registry import OpDef, register
from dynvm.compiler.op.type_rels import (INT_DTYPES, check_arity, fail, same_dtype, scalar_arg,
                                         tensor_arg, unify_dim)


def set_row_rel(arg_types, attrs):
    check_arity("set_row", arg_types, 3)
    data = tensor_arg("set_row", arg_types[0], "data")
    scalar_arg("set_row", arg_types[1], "index", INT_DTYPES)
    row = tensor_arg("set_row", arg_types[2], "row")
    if data.rank == 0 or row.rank != data.rank - 1:
        fail(f"set_row: row must have the rank of data minus 1, got data {data} and row {row}")
    same_dtype("set_row", [data, row])
    rest = tuple(unify_dim("set_row", d, r, "row dims and data dims after the first")
                 for d, r in zip(data.shape[1:], row.shape))
    return TensorType(data.shape[:1] + rest, data.dtype)


register(OpDef("set_row", ("data", "index", "row"), set_row_rel, pattern="opaque",
               doc="set_row(data, index, row): data with row `index` (axis 0) replaced by `row`; "
                   "the index is clamped into [0, n - 1] (an empty axis: ShapeError)."))
