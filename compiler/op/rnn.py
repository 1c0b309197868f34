"""recurrent: every time step of one direction of an RNN, GRU or LSTM layer in one kernel call.

`recurrent(x_proj, w_bias, r_t, r_bias, h0, c0, lens, cell, activations, reverse=False,
linear_before_reset=False, clip=None)` with G gates of `hidden` units (rnn 1, gru 3 in ONNX's
z r h order, lstm 4 in i o f c order):
  x_proj (seq, batch, G*hidden)  the input projection X W^T of every step (one GEMM before)
  w_bias (G*hidden,)             Wb, added to x_proj's row at every step
  r_t    (hidden, G*hidden)      the recurrence weight R, transposed
  r_bias (G*hidden,)             Rb, added to h R^T at every step
  h0, c0 (batch, hidden)         the initial states (c0 is read by lstm only)
  lens   (batch,) int32/int64    each sequence's length (clamped into [0, seq])
returns the tuple (Y (seq, batch, hidden), Y_h (batch, hidden), Y_c (batch, hidden)) with ONNX's
meaning: rows of Y at t >= lens[b] are 0, Y_h / Y_c are each sequence's states after its own
last step (0 for a sequence of length 0, as ONNX Runtime gives; Y_c is 0 for rnn and gru),
`reverse` runs each sequence backwards from its own last element. `activations`
names the layer's functions in ONNX's order (rnn: [f], gru: [f, g], lstm: [f, g, h]), each one
of Sigmoid, Tanh, Relu; `clip` bounds every gate's input to [-clip, clip].
"""
from __future__ import annotations

from dynvm.compiler.ir.types import TensorType, TupleType
from dynvm.compiler.op.registry import REQUIRED, OpDef, register
from dynvm.compiler.op.type_rels import (FLOAT_DTYPES, INT_DTYPES, check_arity, check_dtype_in,
                                         fail, same_dtype, tensor_arg, unify_dim)
from dynvm.shape_funcs.recurrent import check_recurrent_attrs


ARGS = ("x_proj", "w_bias", "r_t", "r_bias", "h0", "c0", "lens")


def recurrent_rel(arg_types, attrs):
    check_arity("recurrent", arg_types, 7)
    x, wb, r_t, rb, h0, c0, lens = (tensor_arg("recurrent", t, what) for t, what in zip(
        arg_types, ARGS))
    try:
        gates = check_recurrent_attrs(attrs)
    except ValueError as e:
        fail(f"recurrent: {e}")
    for t, rank, what in zip((x, wb, r_t, rb, h0, c0, lens), (3, 1, 2, 1, 2, 2, 1), ARGS):
        if t.rank != rank:
            fail(f"recurrent: {what} must have rank {rank}, got {t}")
    same_dtype("recurrent", [x, wb, r_t, rb, h0, c0])
    check_dtype_in("recurrent", x, FLOAT_DTYPES)
    check_dtype_in("recurrent", lens, INT_DTYPES, "lens")
    hidden = unify_dim("recurrent", r_t.shape[0], h0.shape[1], "hidden dims (r_t[0], h0[1])")
    hidden = unify_dim("recurrent", hidden, c0.shape[1], "hidden dims (h0[1], c0[1])")
    width = unify_dim("recurrent", x.shape[2], r_t.shape[1], "gate dims (x_proj[2], r_t[1])")
    unify_dim("recurrent", width, rb.shape[0], "gate dims (r_t[1], r_bias[0])")
    unify_dim("recurrent", width, wb.shape[0], "gate dims (r_t[1], w_bias[0])")
    if isinstance(hidden, int) and isinstance(width, int) and width != gates * hidden:
        fail(f"recurrent: a {attrs['cell']} cell of hidden size {hidden} needs {gates * hidden} "
             f"gate columns, got {width}")
    batch = x.shape[1]
    for t, what in ((h0, "h0"), (c0, "c0"), (lens, "lens")):
        batch = unify_dim("recurrent", batch, t.shape[0], f"batch dims (x_proj[1], {what}[0])")
    state = TensorType((batch, hidden), x.dtype)
    return TupleType([TensorType((x.shape[0], batch, hidden), x.dtype), state, state])


register(OpDef("recurrent", ARGS, recurrent_rel,
               attrs={"cell": REQUIRED, "activations": REQUIRED, "reverse": False,
                      "linear_before_reset": False, "clip": None},
               pattern="opaque",
               doc="recurrent(x_proj, w_bias, r_t, r_bias, h0, c0, lens, cell, activations, "
                   "reverse=False, linear_before_reset=False, clip=None): every step of one "
                   "direction of an rnn/gru/lstm layer (ONNX's gate order and sequence_lens "
                   "semantics) -> (Y (seq, batch, hidden), Y_h, Y_c); x_proj is X W^T, w_bias "
                   "Wb, r_t R transposed, r_bias Rb."))
