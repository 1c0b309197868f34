"""Run-time values: tensors, ADT objects, closures, storage.

Inside the VM a tensor is a `Tensor` (data address, dtype, shape, and the buffer that owns the
memory): kernel calls need the address, and asking numpy for it costs microseconds. At the
`invoke` boundary tensors become numpy arrays (`Tensor.array`, built lazily and cached) and
numpy arrays become Tensors (`Tensor.from_array`). Tuples are Python tuples.
"""
import math

import cffi
import numpy as np

from dynvm.vm.dtypes import dtype_name, np_dtype
from dynvm.vm.errors import InvokeArgumentError, VMError

_NP_DTYPES = {name: np_dtype(name) for name in ("float32", "float64", "int32", "int64", "bool")}
_ITEMSIZE = {name: dt.itemsize for name, dt in _NP_DTYPES.items()}
_ffi = cffi.FFI()
_EMPTY = _ffi.new("char[8]")  # stands in for the data of size-0 tensors: never NULL, never read
_EMPTY_ADDRESS = int(_ffi.cast("uintptr_t", _EMPTY))


# cffi's backend functions with pre-resolved types: ffi.cast / ffi.from_buffer are Python
# wrappers around these, and this runs once per tensor entering the VM
_cast, _from_buffer = _ffi._backend.cast, _ffi._backend.from_buffer
_UINTPTR, _CHARS = _ffi.typeof("uintptr_t"), _ffi.typeof("char[]")
_newp, _buffer, _INT64S = _ffi._backend.newp, _ffi._backend.buffer, _ffi.typeof("int64_t[]")


def _address(buffer) -> int:
    """Address of a non-empty C-contiguous buffer (~4x cheaper than `arr.ctypes.data`)."""
    return int(_cast(_UINTPTR, _from_buffer(_CHARS, buffer, False)))


def cache_aligned(a: np.ndarray, alignment: int = 64) -> np.ndarray:
    """`a` itself if its data starts on an `alignment`-byte boundary, else a read-only aligned
    copy. numpy aligns big arrays only to 16 bytes; kernels read constants (weights) with
    vector loads, and one that straddles cache lines costs ~20% on a memory-bound gemv."""
    if not a.size or a.__array_interface__["data"][0] % alignment == 0:
        return a
    raw = np.empty(a.nbytes + alignment, np.uint8)
    start = -raw.__array_interface__["data"][0] % alignment
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    out.setflags(write=a.flags.writeable)
    return out


class Tensor:
    """A compact row-major tensor inside the VM.

    address: data address (an int, what kernels get); meta: (dtype name, shape tuple) — one
    object, so that a kernel call site can tell "same dtype and shape as last time" with one
    identity test; base/offset: the buffer that owns the memory (a numpy array, or a Storage's
    owning buffer) and the byte offset of element 0 in it. Holding `base` keeps the memory
    alive, and lets `array` build a view that holds it too: pooled storage goes back to its pool
    only when no Tensor and no array can reach it (see vm/memory.py).
    """

    __slots__ = ("address", "meta", "base", "offset", "_array")

    def __init__(self, address, meta, base, offset, array=None):
        self.address, self.meta, self.base, self.offset, self._array = address, meta, base, offset, array

    @classmethod
    def from_array(cls, a: np.ndarray) -> "Tensor":
        """Wrap a C-contiguous, aligned array of a supported dtype (no copy)."""
        return cls.of(a, dtype_name(a.dtype))

    @classmethod
    def of(cls, a: np.ndarray, dtype: str) -> "Tensor":
        """from_array when the caller already knows the dtype's name."""
        return cls(_address(a) if a.size else _EMPTY_ADDRESS, (dtype, a.shape), a, 0, a)

    @property
    def dtype(self) -> str:
        return self.meta[0]

    @property
    def shape(self) -> tuple:
        return self.meta[1]

    @property
    def ndim(self) -> int:
        return len(self.meta[1])

    @property
    def size(self) -> int:
        return math.prod(self.meta[1])

    @property
    def array(self) -> np.ndarray:
        """The tensor as a numpy array viewing the same memory (read-only if the buffer is)."""
        a = self._array
        if a is None:
            dtype, shape = self.meta
            if len(shape) == 1 and shape[0]:    # the same view, ~3x cheaper to make
                a = np.frombuffer(self.base, _NP_DTYPES[dtype], shape[0], self.offset)
            else:
                a = np.ndarray(shape, _NP_DTYPES[dtype], buffer=self.base, offset=self.offset)
            self._array = a
        return a

    def reshaped(self, shape) -> "Tensor":
        """A zero-copy tensor with another shape of the same element count (checked by caller)."""
        return Tensor(self.address, (self.meta[0], shape), self.base, self.offset)

    def __int__(self):
        return int(self.array)

    def __index__(self):
        return int(self.array)

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def __repr__(self):
        return f"Tensor({self.dtype}{list(self.shape)} @0x{self.address:x})"


_I64_MAX = (1 << 63) - 1
_SHAPE_METAS = {}       # rank -> ("int64", (rank,)): one meta object per length, so kernel
                        # call sites see the same object every time


def shape_meta(n: int):
    m = _SHAPE_METAS.get(n)
    if m is None:
        m = _SHAPE_METAS[n] = ("int64", (n,))
    return m


class ShapeTensor(Tensor):
    """A 1-D int64 shape tensor (what ShapeOf and CallShapeFunc produce) that carries its
    values as a tuple of Python ints, `dims` (each in [0, 2**63)): AllocStorageReg,
    AllocTensorReg and ReshapeTensor read the tuple directly. The int64 memory is made only
    when a kernel or Python needs it (`address`, `base`, `offset`, `array`); it is read-only,
    so `dims` and the memory always agree (`invoke` returns a copy the caller owns).
    Build one with `ShapeTensor.make(dims)`, which validates nothing: callers pass checked dims.
    """

    __slots__ = ("dims", "_mem", "_addr", "_arr")

    @classmethod
    def make(cls, dims: tuple) -> "ShapeTensor":
        t = _new_shape(cls)
        meta = _SHAPE_METAS.get(len(dims))
        t.dims, t.meta, t._addr, t._arr = dims, meta if meta is not None else shape_meta(len(dims)), None, None
        return t

    @property
    def address(self) -> int:
        """The int64 values in cffi-owned memory (made on first use; kernels only read it)."""
        a = self._addr
        if a is None:
            if self.dims:
                m = self._mem = _newp(_INT64S, self.dims)
                a = self._addr = int(_cast(_UINTPTR, m))
            else:
                a = self._addr = _EMPTY_ADDRESS
        return a

    @property
    def array(self) -> np.ndarray:
        """A read-only numpy view of the values (the memory `address` points to)."""
        a = self._arr
        if a is None:
            if self.dims:
                self.address
                a = np.frombuffer(_buffer(self._mem), np.int64)
            else:
                a = np.empty(0, np.int64)
            a.setflags(write=False)
            self._arr = a
        return a

    base = array            # the read-only array owns (keeps alive) the memory
    offset = property(lambda self: 0)

    def reshaped(self, shape) -> Tensor:
        return Tensor(self.address, (self.meta[0], shape), self.array, 0)


_new_shape = ShapeTensor.__new__


def checked_dims(value):
    """`value` as a tuple of ints in [0, 2**63) if it already is one (shape functions' usual
    result), else None (the caller takes its general path)."""
    if type(value) is not tuple:
        return None
    for d in value:
        if type(d) is not int or d < 0 or d > _I64_MAX:
            return None
    return value


_SCALAR_CTYPES = {"float32": _ffi.typeof("float *"), "float64": _ffi.typeof("double *"),
                  "int32": _ffi.typeof("int32_t *"), "int64": _ffi.typeof("int64_t *")}


def scalar_value(t: Tensor):
    """The value of a one-element float32/float64/int32/int64 Tensor as a Python number, read
    through cffi from its address (no numpy view); None for anything else (other dtypes or
    sizes, non-Tensors): the caller uses numpy then."""
    if not isinstance(t, Tensor):
        return None
    dtype, shape = t.meta
    ctype = _SCALAR_CTYPES.get(dtype)
    if ctype is None or math.prod(shape) != 1:
        return None
    if type(t) is ShapeTensor:
        return t.dims[0]
    return _cast(ctype, t.address)[0]

_INT64_PTR = _ffi.typeof("int64_t *")


def int64_at(address: int) -> int:
    """The int64 stored at `address` (the caller knows it is a live int64 tensor's data)."""
    return _cast(_INT64_PTR, address)[0]


def int64s_at(address: int, count: int) -> list:
    """`count` int64s stored from `address` (the caller knows they are a live tensor's data)."""
    return _ffi.unpack(_cast(_INT64_PTR, address), count)


def values_equal(a, b) -> bool:
    """Structural equality of run-time values; arrays compare by dtype, shape and contents.

    Iterative, so a 100000-element Cons list compares without hitting Python's recursion limit.
    """
    pairs = [(a, b)]
    while pairs:
        a, b = pairs.pop()
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            a, b = (x.array if isinstance(x, Tensor) else x for x in (a, b))
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


_OPEN = object()    # rebuild: a node whose fields are being rebuilt


def rebuild(value, leaf, make_tuple=tuple, make_adt=None, where="the value"):
    """Rebuild nested tuples and ADTs bottom-up, applying `leaf` to every other value.

    `make_adt(adt, fields)` builds an ADT node (default: a new ADT with the same constructor).
    Iterative, for the same reason as `values_equal`: user data such as long lists is deep. A
    node reached twice (shared) is rebuilt once; a node that contains itself (an ADT's fields
    can be reassigned) is an InvokeArgumentError, not an endless walk.
    """
    if not isinstance(value, (tuple, ADT)):
        return leaf(value)
    make_adt = make_adt or (lambda adt, fields: ADT(adt.constructor, adt.tag, fields))
    built = {}                  # id(node) -> its rebuilt node, or _OPEN while its fields are
    stack = [value]             # the open nodes on the stack are exactly the current path
    while stack:
        node = stack[-1]
        state = built.get(id(node))
        kids = node if isinstance(node, tuple) else node.fields
        if state is None:       # first visit: open it, then its composite fields first
            built[id(node)] = _OPEN
            for kid in kids:
                if isinstance(kid, (tuple, ADT)):
                    seen = built.get(id(kid))
                    if seen is _OPEN:
                        raise InvokeArgumentError(f"{where} contains itself (a cycle through "
                                                  f"{type(kid).__name__} fields)")
                    if seen is None:
                        stack.append(kid)
            continue
        stack.pop()
        if state is _OPEN:      # every composite field is rebuilt
            fields = [built[id(k)] if isinstance(k, (tuple, ADT)) else leaf(k) for k in kids]
            built[id(node)] = make_tuple(fields) if isinstance(node, tuple) else make_adt(node, fields)
    return built[id(value)]


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
    if isinstance(value, Tensor):
        value = value.array
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


def check_storage_request(size: int, alignment: int) -> None:
    if size < 0:
        raise VMError(f"storage size must be >= 0, got {size}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise VMError(f"storage alignment must be a power of two, got {alignment}")


class Storage:
    """An aligned block of bytes from which tensors are carved as zero-copy numpy views.

    Separating storage from tensors is what lets the memory planner put several tensors in one
    block and reuse a block after its tensors die. `Storage(size, alignment, dtype)` makes a
    standalone block (a numpy buffer over-allocated by `alignment` bytes, starting at the first
    aligned address inside it); the VM gets its storage from `vm.memory.StoragePool` instead.
    Either way `_buf` is the buffer object that owns the bytes for as long as anything can reach
    them: every Tensor carved from the storage holds it as its `base`, every numpy view has it
    at the end of its base chain, and `_start` is the block's byte offset inside it.
    """

    __slots__ = ("size", "alignment", "dtype", "address", "_buf", "_start")

    def __init__(self, size: int, alignment: int = 64, dtype: str = "float32"):
        size, alignment = int(size), int(alignment)
        check_storage_request(size, alignment)
        self.size, self.alignment, self.dtype = size, alignment, dtype
        self._buf = np.empty(size + alignment, np.uint8)
        raw_address = _address(self._buf)
        self._start = -raw_address % alignment
        self.address = raw_address + self._start

    @property
    def data(self) -> np.ndarray:
        """The block's bytes as a uint8 array (a view)."""
        return np.ndarray((self.size,), np.uint8, buffer=self._buf, offset=self._start)

    def view(self, offset: int, shape, dtype: str) -> np.ndarray:
        """A C-contiguous tensor of `shape`/`dtype` starting `offset` bytes into the block."""
        dt = np_dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        if offset < 0 or offset + nbytes > self.size or offset % dt.itemsize:
            raise VMError(
                f"tensor {dtype}{list(shape)} at byte offset {offset} does not fit in storage of "
                f"{self.size} bytes (needs {nbytes} bytes at an offset aligned to {dt.itemsize})")
        try:
            return np.ndarray(shape, dt, buffer=self._buf, offset=self._start + offset)
        except (ValueError, TypeError) as e:  # e.g. a negative dimension
            raise VMError(f"bad tensor shape {shape!r} for storage: {e}") from None

    def tensor(self, offset: int, meta, nbytes: int) -> Tensor:
        """A Tensor with `meta` = (dtype, shape) of `nbytes` bytes at byte `offset` (the VM's
        fast path: the caller precomputed meta and nbytes; alignment is checked here)."""
        if offset < 0 or offset + nbytes > self.size or offset % _ITEMSIZE[meta[0]]:
            self.view(offset, meta[1], meta[0])  # raises the descriptive VMError
        return Tensor(self.address + offset, meta, self._buf, self._start + offset)

    def __repr__(self):
        return f"<Storage {self.size} bytes, alignment {self.alignment}, {self.dtype}>"
