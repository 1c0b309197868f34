"""recurrent (compiler/op/rnn.py): Y (seq, batch, hidden), Y_h and Y_c (batch, hidden).
The cells and activations the op takes are listed here, where the type relation and the kernel
family (kernels/recurrent.py) both find them."""
from __future__ import annotations

from dynvm.shape_funcs.common import all_of, fails
from dynvm.shape_funcs.registry import shape_func
from dynvm.vm.errors import ShapeError

CELLS = {"rnn": (1, 1), "gru": (3, 2), "lstm": (4, 3)}    # cell -> (gates, activations)
ACTIVATIONS = ("Sigmoid", "Tanh", "Relu")


def check_recurrent_attrs(attrs) -> int:
    """The gate count of a valid attribute set; a message naming what is wrong otherwise."""
    cell = attrs["cell"]
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    gates, n_acts = CELLS[cell]
    acts = list(attrs["activations"])
    if len(acts) != n_acts or any(a not in ACTIVATIONS for a in acts):
        raise ValueError(f"a {cell} cell takes {n_acts} activation(s) among {ACTIVATIONS}, "
                         f"got {acts}")
    clip = attrs.get("clip")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    return gates


@shape_func("recurrent")
def recurrent(inputs, attrs):
    x, wb, r_t, rb, h0, c0, lens = (t.shape for t in inputs)
    seq, batch, width = x
    hidden = r_t[0]
    gates = CELLS[attrs["cell"]][0]
    ok = all_of([r_t[1] == width, rb[0] == width, wb[0] == width, width == hidden * gates,
                 h0[0] == batch, h0[1] == hidden, c0[0] == batch, c0[1] == hidden,
                 lens[0] == batch])
    if fails(ok):
        raise ShapeError(f"recurrent: a {attrs['cell']} layer needs x_proj (seq, batch, "
                         f"{gates} * hidden), w_bias ({gates} * hidden,), r_t (hidden, {gates} "
                         f"* hidden), r_bias ({gates} * hidden,), h0 and c0 (batch, hidden), "
                         f"lens (batch,); got {x}, {wb}, {r_t}, {rb}, {h0}, {c0}, {lens}")
    return [(seq, batch, hidden), (batch, hidden), (batch, hidden)]
