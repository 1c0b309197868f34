"""Helpers shared by the shape functions; every failure is a ShapeError."""
from __future__ import annotations

import math

import numpy as np

from dynvm.vm.errors import ShapeError
from dynvm.vm.values import ShapeTensor


def normalize_axis(op: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % rank


def broadcast(op: str, *shapes) -> tuple:
    """numpy broadcasting of several shapes."""
    first = tuple(shapes[0]) if shapes else ()
    if all(tuple(s) == first for s in shapes[1:]):      # the common case, checked cheaply
        return first
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        for i, (a, b) in enumerate(zip(out, padded)):
            if a != b and a != 1 and b != 1:
                pretty = " and ".join(str(tuple(s)) for s in shapes)
                raise ShapeError(f"{op}: cannot broadcast shapes {pretty} (dims {a} vs {b})")
            out[i] = b if a == 1 else a
    return tuple(out)


def infer_reshape(op: str, in_shape, newshape) -> tuple:
    """Relay reshape rules on concrete dims: 0 copies the input dim, one -1 is inferred.

    Copied dims cancel out of the element count (as in the type relation), so `(3, 0)` with
    `[-1, 0]` is `(3, 0)` rather than ambiguous.
    """
    newshape = [int(d) for d in newshape]
    out, infer_at, copied = [], None, set()
    for i, d in enumerate(newshape):
        if d == 0:
            if i >= len(in_shape):
                raise ShapeError(f"{op}: newshape {newshape} copies dim {i} of a rank "
                                 f"{len(in_shape)} input")
            out.append(in_shape[i])
            copied.add(i)
        elif d == -1:
            if infer_at is not None:
                raise ShapeError(f"{op}: newshape {newshape} has more than one -1")
            infer_at = i
            out.append(1)
        elif d < -1:
            raise ShapeError(f"{op}: newshape {newshape} has invalid value {d}")
        else:
            out.append(d)
    total = math.prod(d for i, d in enumerate(in_shape) if i not in copied)
    known = math.prod(d for i, d in enumerate(out) if i not in copied)
    if infer_at is not None:
        if known == 0 or total % known:
            raise ShapeError(f"{op}: cannot reshape {tuple(in_shape)} into {newshape}: "
                             f"no size fits the -1")
        out[infer_at] = total // known
    elif total != known:
        raise ShapeError(f"{op}: cannot reshape {tuple(in_shape)} ({math.prod(in_shape)} "
                         f"elements) into {newshape}")
    return tuple(out)


def shape_vector(op: str, arr) -> tuple:
    """The values of a 1-D integer shape tensor as a tuple of ints (numpy array or VM Tensor)."""
    if type(arr) is ShapeTensor:
        return arr.dims
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ShapeError(f"{op}: shape must be a 1-D integer tensor, got {arr.dtype} {arr.shape}")
    return tuple(int(d) for d in arr)


def check_dims(op: str, shape) -> tuple:
    if any(d < 0 for d in shape):
        raise ShapeError(f"{op}: negative dim in shape {tuple(shape)}")
    return tuple(shape)
