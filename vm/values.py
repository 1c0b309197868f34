"""Run-time values that are not plain numpy arrays or tuples: ADT objects, closures, storage.

Tensors are numpy arrays and tuples are Python tuples, so those cross the `invoke` boundary
unchanged; only the three kinds here need their own classes.
"""
import math

import numpy as np

from vm.dtypes import np_dtype
from vm.errors import VMError


def values_equal(a, b) -> bool:
    """Structural equality of run-time values; arrays compare by dtype, shape and contents.

    Iterative, so a 100000-element Cons list compares without hitting Python's recursion limit.
    """
    pairs = [(a, b)]
    while pairs:
        a, b = pairs.pop()
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            a, b = np.asarray(a), np.asarray(b)
            if not (a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)):
                return False
        elif isinstance(a, tuple) and isinstance(b, tuple) or isinstance(a, ADT) and isinstance(b, ADT):
            if isinstance(a, ADT) and (a.constructor, a.tag) != (b.constructor, b.tag):
                return False
            fa, fb = _children(a), _children(b)
            if len(fa) != len(fb):
                return False
            pairs.extend(zip(fa, fb))
        elif isinstance(a, Closure) and isinstance(b, Closure):
            if a.func_index != b.func_index or len(a.captured) != len(b.captured):
                return False
            pairs.extend(zip(a.captured, b.captured))
        elif type(a) is not type(b) or a != b:
            return False
    return True


def _children(value):
    return value if isinstance(value, tuple) else value.fields


def rebuild(value, leaf, make_tuple=tuple, make_adt=None):
    """Rebuild nested tuples and ADTs bottom-up, applying `leaf` to every other value.

    `make_adt(adt, fields)` builds an ADT node (default: a new ADT with the same constructor).
    Iterative, for the same reason as `values_equal`: user data such as long lists is deep.
    """
    make_adt = make_adt or (lambda adt, fields: ADT(adt.constructor, adt.tag, fields))
    out, stack = [], [(value, False)]
    while stack:
        node, expanded = stack.pop()
        if not isinstance(node, (tuple, ADT)):
            out.append(leaf(node))
        elif not expanded:
            kids = _children(node)
            stack.append((node, True))
            stack.extend((k, False) for k in reversed(kids))
        else:
            n = len(_children(node))
            fields = out[len(out) - n:]
            del out[len(out) - n:]
            out.append(make_tuple(fields) if isinstance(node, tuple) else make_adt(node, fields))
    return out[0]


class ADT:
    """A value built by a user-defined constructor, e.g. `Cons(1.0, Nil)`.

    `constructor` is the constructor's name, `tag` its number within its ADT (what GetTag reads),
    `fields` a tuple of values.
    """

    __slots__ = ("constructor", "tag", "fields")

    def __init__(self, constructor: str, tag: int, fields=()):
        self.constructor = constructor
        self.tag = int(tag)
        self.fields = tuple(fields)

    def __eq__(self, other):
        if not isinstance(other, ADT):
            return NotImplemented
        return values_equal(self, other)

    __hash__ = None  # fields may hold mutable arrays

    def __repr__(self):
        return value_repr(self)


def value_repr(value) -> str:
    """`Cons(1.5, Nil)`-style text for nested ADTs/tuples, iterative and linear in the output size."""
    parts, stack = [], [(False, value)]
    while stack:
        literal, item = stack.pop()
        if literal:
            parts.append(item)
        elif isinstance(item, (tuple, ADT)):
            kids = _children(item)
            opener = "(" if isinstance(item, tuple) else item.constructor + ("(" if kids else "")
            closer = ("," if isinstance(item, tuple) and len(kids) == 1 else "") + ")"
            parts.append(opener)
            if kids or isinstance(item, tuple):
                stack.append((True, closer))
            for i in reversed(range(len(kids))):
                stack.append((False, kids[i]))
                if i:
                    stack.append((True, ", "))
        else:
            parts.append(_short_repr(item))
    return "".join(parts)


def _short_repr(value):
    """Arrays print as their values (`1.0`, `[1 2]`), not as `array(...)` noise."""
    if isinstance(value, np.ndarray):
        return np.array2string(value, threshold=8) if value.ndim else repr(value.item())
    return repr(value)


class Closure:
    """A function value: a function index plus the values it captured. Opaque to users: get one
    from `invoke` and pass it back in."""

    __slots__ = ("func_index", "captured")

    def __init__(self, func_index: int, captured=()):
        self.func_index = func_index
        self.captured = tuple(captured)

    def __eq__(self, other):
        if not isinstance(other, Closure):
            return NotImplemented
        return values_equal(self, other)

    __hash__ = None

    def __repr__(self):
        return f"<Closure of function #{self.func_index} capturing {len(self.captured)} values>"


class Storage:
    """An aligned block of bytes from which tensors are carved as zero-copy numpy views.

    Separating storage from tensors is what lets the memory planner put several tensors in one
    block and reuse a block after its tensors die. The numpy buffer is over-allocated by
    `alignment` bytes and the block starts at the first aligned address inside it.
    """

    __slots__ = ("size", "alignment", "dtype", "_raw", "_start")

    def __init__(self, size: int, alignment: int = 64, dtype: str = "float32"):
        size, alignment = int(size), int(alignment)
        if size < 0:
            raise VMError(f"storage size must be >= 0, got {size}")
        if alignment <= 0 or alignment & (alignment - 1):
            raise VMError(f"storage alignment must be a power of two, got {alignment}")
        self.size, self.alignment, self.dtype = size, alignment, dtype
        self._raw = np.empty(size + alignment, np.uint8)
        self._start = -self._raw.__array_interface__["data"][0] % alignment

    @property
    def data(self) -> np.ndarray:
        """The block's bytes as a uint8 array (a view)."""
        return self._raw[self._start:self._start + self.size]

    def view(self, offset: int, shape, dtype: str) -> np.ndarray:
        """A C-contiguous tensor of `shape`/`dtype` starting `offset` bytes into the block."""
        dt = np_dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        if offset < 0 or offset + nbytes > self.size or offset % dt.itemsize:
            raise VMError(
                f"tensor {dtype}{list(shape)} at byte offset {offset} does not fit in storage of "
                f"{self.size} bytes (needs {nbytes} bytes at an offset aligned to {dt.itemsize})")
        try:
            return np.ndarray(shape, dt, buffer=self._raw, offset=self._start + offset)
        except (ValueError, TypeError) as e:  # e.g. a negative dimension
            raise VMError(f"bad tensor shape {shape!r} for storage: {e}") from None

    def __repr__(self):
        return f"<Storage {self.size} bytes, alignment {self.alignment}, {self.dtype}>"
