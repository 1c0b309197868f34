"""The shape-function table: op name -> ShapeFunc(name, mode, fn).

The VM finds shape functions by name (executables store only names and attrs, never code).
`fn(inputs, attrs)` returns one shape tuple per output. Data-independent functions read only
`.shape`/`.ndim` of their inputs; data-dependent ones read values too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MODES = ("data_independent", "data_dependent", "upper_bound")


@dataclass(frozen=True)
class ShapeFunc:
    name: str
    mode: str
    fn: Callable

    def __call__(self, inputs, attrs):
        return self.fn(inputs, attrs)


SHAPE_FUNCS: dict[str, ShapeFunc] = {}


def shape_func(*names: str, mode: str = "data_independent"):
    """Decorator registering `fn` as the shape function of every op in `names`."""
    assert mode in MODES, mode

    def register(fn):
        for name in names:
            assert name not in SHAPE_FUNCS, f"shape function {name} registered twice"
            SHAPE_FUNCS[name] = ShapeFunc(name, mode, fn)
        return fn
    return register


def lookup(name: str) -> ShapeFunc:
    try:
        return SHAPE_FUNCS[name]
    except KeyError:
        raise KeyError(f"no shape function for op {name!r}") from None
