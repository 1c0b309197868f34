"""The native kernel ABI: DLPack's DLTensor and `int32_t f(DLTensor *args, int32_t nargs)`.

This is the one place that turns addresses into cffi function pointers and numpy arrays into
DLTensor descriptors. Strides are in elements (DLPack convention), byte_offset is always 0 and
the device is always CPU.
"""
import struct
import threading

import cffi
import numpy as np

from dynvm.vm.dtypes import DTYPES

# Error codes a kernel returns: `kind | arg << 8 | dim << 16` (0 is success); `arg` is the
# argument index (inputs then outputs) and `dim` the dimension the check failed on.
ERR_NARGS, ERR_NDIM, ERR_DTYPE, ERR_BROADCAST, ERR_NULL, ERR_LAYOUT, ERR_EXTENT = range(1, 8)
ERR_SHAPE, ERR_EMPTY = 8, 9  # output/operand extents do not fit the op; reduction of nothing
ERR_VALUE = 10  # an input value is unusable (zero arange step, non-finite bound, index out of range)
ERR_ALLOC = 11  # malloc of scratch memory failed
ERR_STEPS = 12  # a native loop ran out of its step budget (a native loop kernel)
ERR_ARITH = 13  # a shape function's int64 arithmetic overflowed, divided by zero or cast out of range
ERR_INTERRUPT = 14  # a native loop saw the interrupt word set (Ctrl-C: kernels/interrupt.py)
ERROR_KINDS = {
    ERR_NARGS: "wrong number of arguments",
    ERR_NDIM: "wrong rank",
    ERR_DTYPE: "wrong dtype",
    ERR_BROADCAST: "shapes do not broadcast",
    ERR_NULL: "NULL data, shape or args pointer",
    ERR_LAYOUT: "array layout does not fit the contiguous variant",
    ERR_EXTENT: "negative extent",
    ERR_SHAPE: "extents do not fit the op (output shape or operand length)",
    ERR_EMPTY: "reduction over an empty axis has no value",
    ERR_VALUE: "invalid input value (a zero step, a non-finite bound or an index out of range)",
    ERR_ALLOC: "out of memory for scratch space",
    ERR_STEPS: "step budget exhausted",
    ERR_ARITH: "shape arithmetic overflowed int64, divided by zero or cast out of range",
    ERR_INTERRUPT: "interrupted (SIGINT)",
}


# The highest rank a kernel argument may have (numpy allows 64 dims; generated code is unrolled
# per dimension, so a bound keeps a hostile signature from costing unbounded build time).
MAX_RANK = 32
# The most stack a kernel may take below its caller's frame (the matmul family's packing
# buffers, KC*NC + MC*KC + MR*NR elements: 610 KiB; tests/kernels/test_stack.py measures the
# largest kernels against it). A caller's thread must have this much left: the native tier
# stops its recursion this far (plus a margin) above the stack's end.
KERNEL_STACK_BYTES = 768 * 1024


def variant_symbol(symbol: str, variant: str) -> str:
    """The symbol of one variant of kernel `symbol` (a test hook may call it directly)."""
    return f"{symbol}__{variant}"


def variant_global(symbol: str) -> str:
    """The `i32` global in which the dispatcher of `symbol` records the index of the variant it ran."""
    return f"{symbol}__variant"


ffi = cffi.FFI()
ffi.cdef("""
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} DLTensor;
typedef int32_t (*dynvm_kernel_fn)(DLTensor *args, int32_t nargs);
/* the same layout with the data pointer as an integer: the VM assigns Python ints to it */
typedef struct {
    uintptr_t data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} DLTensorAddr;
typedef int32_t (*dynvm_kernel_addr_fn)(DLTensorAddr *args, int32_t nargs);
""")

KDL_CPU = 1
DLTENSOR_SIZE = ffi.sizeof("DLTensor")

# A live byte whose address stands in for the data pointer of arrays numpy gives address 0
# (possible for some size-0 views): kernels may compare it with NULL but never read it.
_EMPTY = ffi.new("char[8]")
EMPTY_ADDRESS = int(ffi.cast("uintptr_t", _EMPTY))


def address_of(a: np.ndarray) -> int:
    """Data address of a C-contiguous array as an int (~0.5 us, vs 2 us for arr.ctypes.data);
    size-0 arrays get a live dummy address so that kernels never see NULL."""
    if not a.size:
        return EMPTY_ADDRESS
    return int(ffi.cast("uintptr_t", ffi.from_buffer(a)))


def kernel_function(address: int):
    """A callable cffi function pointer for a kernel at `address`."""
    return ffi.cast("dynvm_kernel_fn", address)


def dtype_code(name: str):
    """(DLPack type code, bits) of a dynvm dtype name."""
    _, code, bits = DTYPES[name]
    return code, bits


def _data_pointer(a: np.ndarray):
    """Element 0's address as a cdata (`arr.ctypes.data` costs microseconds).

    ffi.from_buffer is the fast path but needs a C-contiguous, non-empty array; the returned
    cdata keeps the buffer exported while it lives.
    """
    if a.flags.c_contiguous and a.size:
        return ffi.from_buffer(a)
    address = a.__array_interface__["data"][0]
    return ffi.cast("void *", address) if address else _EMPTY


_STRIDES = {}


def _element_strides(a):
    """numpy byte strides -> element strides, memoised (the division loop is the slow part)."""
    key = (a.strides, a.itemsize)
    strides = _STRIDES.get(key)
    if strides is None:
        if len(_STRIDES) > 4096:
            _STRIDES.clear()
        strides = _STRIDES[key] = tuple(s // a.itemsize for s in a.strides)
    return strides


class ArgPacker:
    """Builds the DLTensor array for one kernel signature (fixed dtypes and ranks).

    Everything that does not depend on the call (device, ndim, dtype, where the shape and
    stride vectors live) is written once per thread; a call only stores the data pointers and
    packs all extents and element strides with one struct.pack_into.
    """

    def __init__(self, codes, ranks):
        self.codes, self.ranks = list(codes), list(ranks)
        self.n = len(ranks)
        self.dims = struct.Struct("=%dq" % (2 * sum(ranks)))
        self._local = threading.local()

    def _buffers(self):
        local = self._local
        try:
            return local.tensors, local.items, local.raw
        except AttributeError:
            pass
        tensors = ffi.new("DLTensor[]", self.n)
        dims = ffi.new("int64_t[]", 2 * sum(self.ranks) or 1)
        pos = 0
        for k, ((code, bits), rank) in enumerate(zip(self.codes, self.ranks)):
            t = tensors[k]
            t.device.device_type = KDL_CPU
            t.ndim = rank
            t.dtype.code, t.dtype.bits, t.dtype.lanes = code, bits, 1
            t.shape, t.strides = dims + pos, dims + pos + rank
            pos += 2 * rank
        local.tensors, local.dims = tensors, dims
        local.items = [tensors[k] for k in range(self.n)]
        local.raw = ffi.buffer(dims)
        return tensors, local.items, local.raw

    def pack(self, arrays):
        """Describe `arrays` (already checked against the signature); returns (DLTensor*, keep).

        `keep` holds the buffer exports: keep it alive until the native call returned.
        """
        tensors, items, raw = self._buffers()
        keep = []
        values = []
        for item, a in zip(items, arrays):
            p = _data_pointer(a)
            keep.append(p)
            item.data = p
            values += a.shape
            values += _element_strides(a)
        if values:
            self.dims.pack_into(raw, 0, *values)
        return tensors, keep


def pack(arrays, codes):
    """One-off DLTensor array for `arrays` (tests and tools; kernels use ArgPacker).

    The packer owns the shape/stride buffer the descriptors point into, so it travels in `keep`:
    the descriptors stay valid exactly as long as the caller holds `keep`."""
    packer = ArgPacker(codes, [a.ndim for a in arrays])
    tensors, keep = packer.pack(arrays)
    keep.append(packer)
    return tensors, keep


class CallSite:
    """Descriptors of one call site (a CallKernel instruction) of a compiled kernel, prepared once.

    device, ndim, dtype, the shape pointers (into one int64 buffer owned by the site) and NULL
    strides (= compact row-major) are written here; a call writes only the data addresses, and
    the extents of an argument whose (dtype, shape) changed since the previous call (`layouts`
    remembers them). The kernel's native dispatcher validates everything else.
    """

    __slots__ = ("fn", "tensors", "items", "nargs", "layouts", "_shapes", "ranks", "dtypes")

    def __init__(self, address: int, dtypes, ranks):
        self.fn = ffi.cast("dynvm_kernel_addr_fn", address)
        self.nargs = len(ranks)
        self.tensors = ffi.new("DLTensorAddr[]", max(1, self.nargs))
        self.items = [self.tensors[k] for k in range(self.nargs)]
        self.ranks, self.dtypes = list(ranks), list(dtypes)
        self.layouts = [None] * self.nargs
        self._shapes = []
        for t, dtype, rank in zip(self.items, dtypes, ranks):
            code, bits = dtype_code(dtype)
            t.device.device_type = KDL_CPU
            t.ndim = rank
            t.dtype.code, t.dtype.bits, t.dtype.lanes = code, bits, 1
            shape = ffi.new("int64_t[]", max(1, rank))
            self._shapes.append(shape)
            t.shape = shape
            t.strides = ffi.NULL

    def set_shape(self, k: int, shape) -> None:
        """Write the extents of argument k (rank already checked by the caller)."""
        if shape:
            self._shapes[k][0:len(shape)] = shape
