"""Run-time shape functions, one per op, grouped by op family (see registry.py).

    shape_funcs.lookup("arange").fn([start, stop, step], {"dtype": "float32"}) -> [(n,)]
"""
from dynvm.shape_funcs.registry import SHAPE_FUNCS, ShapeFunc, lookup, shape_func  # noqa: F401
from dynvm.shape_funcs import elementwise, transform, reduce, nn, dynamic, vision, window, update, recurrent  # noqa: F401,E402  (registers)
