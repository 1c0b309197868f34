"""Hypothesis strategies shared by the test suite (shapes with 0 and 1 dims, broadcastable pairs)."""
import numpy as np
from hypothesis import strategies as st

DIM = st.sampled_from([0, 1, 1, 2, 3, 5, 7, 8, 9, 16, 17])


def shapes(min_rank=0, max_rank=3, dim=DIM):
    return st.lists(dim, min_size=min_rank, max_size=max_rank).map(tuple)


@st.composite
def broadcastable_pair(draw, min_rank=0, max_rank=3):
    """Two shapes that broadcast together under numpy's rules."""
    out = draw(shapes(min_rank, max_rank))
    def operand():
        rank = draw(st.integers(0, len(out)))
        tail = out[len(out) - rank:]
        return tuple(d if draw(st.booleans()) else 1 for d in tail)
    return operand(), operand()


def arrays(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(-50, 50, size=shape).astype(dtype)
