"""The VM's storage allocator: aligned blocks pooled by size class across invocations.

A `StoragePool` hands out `Storage` objects carved from reusable blocks. Blocks are grouped by
size class (64-byte granules up to 512 bytes, then four classes per power of two, so a block
wastes at most 25%); a request takes a free block of its class (or of one of the two next
classes) and only asks numpy for new memory when none is free. With the same shapes every
invocation, a steady-state run therefore makes no new allocations.

Ownership is what makes reuse safe. Each hand-out (a *lease*) gets a fresh cffi buffer object
over the block, and everything that can reach the bytes holds that buffer: the Storage, every
`Tensor` carved from it (`Tensor.base`), and every numpy array built from those tensors
(numpy keeps a non-array buffer as the array's base, and views of views keep the first array).
The block comes back to the pool only when the lease buffer dies: when the last register,
tensor, ADT field, closure or array handed to Python that could reach it is gone. A result
returned by `invoke` keeps its lease for as long as the caller keeps the array, so a later
invocation can never write into it. The return is signalled by a cffi destructor on the lease
(`ffi.gc`); it may run on any thread (whichever dropped the last reference), so it only appends
the block's cdata to a thread-safe deque (a C-level `deque.append`: no Python code runs then).
Everything else (free lists, counters) is touched only by the pool's owner, the VM, which
drains that deque before it takes a block: one VM per thread needs no locks.
"""
from __future__ import annotations

import collections
import sys

import cffi
import numpy as np

from dynvm.vm.errors import VMMemoryError
from dynvm.vm.values import Storage, check_storage_request

GRANULE = 64            # every block starts at a multiple of this
_ffi = cffi.FFI()
_gc, _buffer, _from_buffer, _cast = (_ffi._backend.gcp, _ffi._backend.buffer,
                                     _ffi._backend.from_buffer, _ffi._backend.cast)
_CHARS, _UINTPTR = _ffi.typeof("char[]"), _ffi.typeof("uintptr_t")
_new_storage = Storage.__new__


def size_class(nbytes: int) -> int:
    """The block size serving a request of `nbytes`: a multiple of 64, at most 25% larger
    above 512 bytes (64, 128, ..., 512, 640, 768, 896, 1024, 1280, ...)."""
    if nbytes <= GRANULE:
        return GRANULE
    step = max(GRANULE, 1 << ((nbytes - 1).bit_length() - 3))
    return -(-nbytes // step) * step


def class_for(size: int, alignment: int) -> int:
    """Size class of a (checked) request; alignments above 64 need slack inside the block."""
    return size_class(size + (alignment - GRANULE if alignment > GRANULE else 0))


class _Block:
    """One reusable chunk of memory: `size` usable bytes at the 64-byte aligned `address`."""

    __slots__ = ("size", "address", "start", "raw_size", "cdata")

    def __init__(self, size: int):
        raw = np.empty(size + GRANULE, np.uint8)
        self.cdata = _from_buffer(_CHARS, raw, False)      # keeps `raw` alive
        base = int(_cast(_UINTPTR, self.cdata))
        self.start = -base % GRANULE
        self.address, self.size, self.raw_size = base + self.start, size, raw.size


class StoragePool:
    """Size-class pools of storage blocks for one VM (use from one thread at a time).

    max_free_bytes caps the memory kept in free lists; blocks beyond it go back to the OS.
    max_live_bytes (None: no limit) caps the bytes in blocks handed out and not yet returned:
    a request that would go beyond it raises VMMemoryError before anything is allocated.
    """

    def __init__(self, max_free_bytes: int = 1 << 30, max_live_bytes=None):
        self.max_free_bytes = max_free_bytes
        self.max_live_bytes = max_live_bytes
        self._live_cap = sys.maxsize if max_live_bytes is None else max_live_bytes
        self._free: dict[int, list] = {}
        # a lease's destructor is this C-level append of the block's cdata: no Python frame runs
        # when the last reference dies, on whichever thread (deque.append is atomic)
        self._returned = collections.deque()
        self._on_return = self._returned.append
        self._blocks = {}                   # block cdata -> block
        self.allocations = self.bytes_allocated = self.pool_hits = 0
        self.bytes_live = self.peak_bytes_live = self.bytes_free = 0

    def storage(self, size: int, alignment: int = GRANULE, dtype: str = "float32") -> Storage:
        """A Storage of `size` bytes aligned to `alignment`, from the pool when possible."""
        size, alignment = int(size), int(alignment)
        check_storage_request(size, alignment)
        return self.lease(class_for(size, alignment), size, alignment, dtype)

    def lease(self, cls: int, size: int, alignment: int, dtype: str) -> Storage:
        """`storage` for a request already checked and classified (the VM's fast path)."""
        block = self._take(cls)
        s = _new_storage(Storage)
        extra = -block.address % alignment if alignment > GRANULE else 0
        s.size, s.alignment, s.dtype, s.address = size, alignment, dtype, block.address + extra
        s._buf, s._start = _buffer(_gc(block.cdata, self._on_return), block.raw_size), block.start + extra
        return s

    def _take(self, cls: int) -> _Block:
        if self._returned:
            self._drain()
        free = self._free.get(cls)
        if not free:
            free = self._free.get(size_class(cls + 1)) or self._free.get(size_class(size_class(cls + 1) + 1))
        if free:
            block = free.pop()
            self.pool_hits += 1
            self.bytes_free -= block.size
        else:
            if self.bytes_live + cls > self._live_cap:
                self._refuse(cls)
            try:
                block = _Block(cls)
            except MemoryError:
                raise VMMemoryError(f"out of memory: the system cannot provide a block of {cls} bytes "
                                    f"({self.bytes_live} bytes live)") from None
            self._blocks[block.cdata] = block
            self.allocations += 1
            self.bytes_allocated += cls
        self.bytes_live += block.size
        if self.bytes_live > self.peak_bytes_live:     # a new peak: the only time the cap can be crossed
            if self.bytes_live > self._live_cap:
                self.bytes_live -= block.size
                self.bytes_free += block.size
                free.append(block)
                self._refuse(block.size)
            self.peak_bytes_live = self.bytes_live
        return block

    def _refuse(self, size):
        raise VMMemoryError(f"allocating {size} bytes would exceed max_memory_bytes="
                            f"{self.max_live_bytes} ({self.bytes_live} bytes live)")

    def _drain(self):
        returned, free, blocks = self._returned, self._free, self._blocks
        while returned:
            block = blocks[returned.popleft()]
            self.bytes_live -= block.size
            if self.bytes_free + block.size <= self.max_free_bytes:
                free.setdefault(block.size, []).append(block)
                self.bytes_free += block.size
            else:
                del blocks[block.cdata]     # back to the OS once nothing holds it

    def stats(self) -> dict:
        """Counters since the last reset (see VirtualMachine.memory_stats)."""
        self._drain()
        return {"allocations": self.allocations, "bytes_allocated": self.bytes_allocated,
                "pool_hits": self.pool_hits, "peak_bytes_live": self.peak_bytes_live,
                "bytes_live": self.bytes_live, "bytes_free": self.bytes_free}

    def reset_stats(self) -> None:
        """Zero the counters; the peak restarts from the bytes live now."""
        self._drain()
        self.allocations = self.bytes_allocated = self.pool_hits = 0
        self.peak_bytes_live = self.bytes_live

    def release(self) -> None:
        """Give every free block back (blocks in use are unaffected)."""
        self._drain()
        for free in self._free.values():
            for block in free:
                del self._blocks[block.cdata]
        self._free.clear()
        self.bytes_free = 0
