"""Run a shape function, allocate its outputs, fill them with the op's numpy extern kernel."""
import numpy as np

from tests.numpy_reference import REFERENCE_KERNELS
from dynvm.shape_funcs import lookup


def run_op(name, inputs, attrs, out_dtypes):
    """(shapes from the shape function, outputs written by the extern kernel into them)."""
    shapes = lookup(name).fn(inputs, attrs)
    assert all(isinstance(s, tuple) and all(isinstance(d, int) for d in s) for s in shapes)
    outs = [np.empty(s, dtype) for s, dtype in zip(shapes, out_dtypes)]
    assert len(outs) == len(shapes)
    REFERENCE_KERNELS[name](inputs, outs, attrs)
    return shapes, outs


def check_op(name, inputs, attrs, expected, out_dtype=None, rtol=1e-6, atol=1e-6):
    """Shape function and kernel agree with `expected` (a numpy result or a list of them)."""
    expected = expected if isinstance(expected, list) else [expected]
    expected = [np.asarray(e) for e in expected]
    dtypes = [out_dtype or e.dtype for e in expected]
    shapes, outs = run_op(name, inputs, attrs, dtypes)
    assert shapes == [e.shape for e in expected]
    for out, exp in zip(outs, expected):
        np.testing.assert_allclose(out, exp.astype(out.dtype), rtol=rtol, atol=atol)
    return outs


class ShapeOnly:
    """Stands for a tensor whose values must not be read (data-independent shape functions)."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
