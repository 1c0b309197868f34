"""Updates of a tensor's rows: set_row and scatter_rows.


`set_row(data, index, row)` is `data` with `data[index]` replaced by `row`; the index is a run-time
int scalar, clamped into [0, n - 1] like XLA's dynamic-update-slice start indices (an empty axis
has no row to replace: ShapeError). As every op it makes a new tensor (the "set_row" family of
kernels/update.py copies `data`, then writes the row); a native loop whose state is only ever
updated by set_row writes the row in place instead (compiler/codegen/native_loop.py), which is
what lets a recurrent layer's output be allocated once for the whole sequence.

`scatter_rows(data, positions, updates, reduction)` is `data` (rows, width) with update row k
written to (reduction "none") or combined into ("add", "mul", "max", "min") row positions[k],
in order of k: the last of several writes to one row wins, reductions apply one after another.
A negative position counts from the end; one outside [-rows, rows) is an error at run time.
ONNX's ScatterND and ScatterElements lower to it (kernels/update.py).
"""
from __future__ import annotations

from dynvm.compiler.ir.types import TensorType
from dynvm.compiler.op.registry import OpDef, register
from dynvm.compiler.op.type_rels import (INT_DTYPES, check_arity, fail, same_dtype, scalar_arg,
                                         tensor_arg, unify_dim)
from dynvm.shape_funcs.update import SCATTER_REDUCTIONS


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


def scatter_rows_rel(arg_types, attrs):
    check_arity("scatter_rows", arg_types, 3)
    data = tensor_arg("scatter_rows", arg_types[0], "data")
    positions = tensor_arg("scatter_rows", arg_types[1], "positions")
    updates = tensor_arg("scatter_rows", arg_types[2], "updates")
    if data.rank != 2 or updates.rank != 2 or positions.rank != 1 or positions.dtype != "int64":
        fail(f"scatter_rows: needs data and updates of rank 2 and int64 positions of rank 1, got "
             f"{data}, {positions} and {updates}")
    same_dtype("scatter_rows", [data, updates])
    reduction = attrs["reduction"]
    if reduction not in SCATTER_REDUCTIONS or (reduction != "none" and data.dtype == "bool"):
        fail(f"scatter_rows: reduction {reduction!r} on {data.dtype} (reductions: "
             f"{', '.join(SCATTER_REDUCTIONS)}; bool only 'none')")
    unify_dim("scatter_rows", positions.shape[0], updates.shape[0], "positions and update rows")
    width = unify_dim("scatter_rows", data.shape[1], updates.shape[1], "data and update widths")
    return TensorType((data.shape[0], width), data.dtype)


register(OpDef("scatter_rows", ("data", "positions", "updates"), scatter_rows_rel,
               attrs={"reduction": "none"}, pattern="opaque",
               doc="scatter_rows(data, positions, updates, reduction): data (rows, width) with "
                   "update row k written to (or combined into, by add/mul/max/min) row "
                   "positions[k], in order of k."))
