"""Kernel family "sort": sort, argsort, topk and unique as native code, plus the IR helpers the
"vision" family (NMS) shares with it.

Ordering. Every kernel orders row-local element indices by the total order
`precedes(i, j)`: key_i before key_j (ascending: smaller first; descending: larger first), equal
keys by the lower index. NaN counts as larger than every number and equal to itself (numpy's
sort order), so ascending puts NaNs last and descending puts them first; -0.0 equals 0.0.
Because ties are broken by index the order is total and the result is exactly that of a stable
sort (numpy `kind="stable"`), whatever algorithm produces it.

Algorithm: a binary heap of int64 indices ordered by `precedes` (heapify O(n), each pop
O(log n)). A full sort is n pops; topk pops only k (O(n + k log n)); NMS pops candidates lazily
until it has selected enough boxes. The only scratch is the heap itself: n int64 per call,
taken with malloc and freed before returning (a NULL from malloc -> ERR_ALLOC). It is allocated
once per kernel call and reused for every row.

Errors (besides llvm_util's prologue codes): ERR_SHAPE when an output's extents do not fit the
inputs and attributes (e.g. topk with k larger than the axis, a unique output whose length is
not the number of distinct values), ERR_ALLOC when scratch memory is unavailable. Nothing is
written past an output's extents: every check runs before the first store that relies on it.
"""
from __future__ import annotations

from llvmlite import ir

from dynvm.kernels.abi import ERR_ALLOC, ERR_NULL, ERR_SHAPE
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol
from dynvm.kernels.llvm_util import (I1, I32, I64, MEM_TYPE, PTR, const, for_nest, for_range,
                                     get_function, is_float, load_strides, product, prologue)
from dynvm.vm.errors import KernelError

SORT_DTYPES = ("float32", "float64", "int32", "int64")
INDEX_DTYPES = ("int32", "int64")


# ---------------------------------------------------------------------------------------------
# structured IR emission: allocas in the entry block (promoted to registers by the optimiser),
# loops and early exits that free scratch memory


class Emitter:
    """One function under construction. Mutable locals are allocas (`var`) so loops need no
    phi bookkeeping; `fail_if` returns an error code after freeing every scratch block."""

    def __init__(self, module, name, fnty=None, internal=False):
        self.module = module
        fnty = fnty or ir.FunctionType(I32, [PTR, I32])
        self.fn = ir.Function(module, fnty, name=name)
        if internal:
            self.fn.linkage = "internal"
        entry = self.fn.append_basic_block("entry")
        self._body = self.fn.append_basic_block("body")
        self.ab = ir.IRBuilder(entry)
        self.b = ir.IRBuilder(self._body)
        self.scratch = []

    def finish(self):
        self.ab.branch(self._body)
        return self.fn

    # -- values
    def var(self, ty, init=None):
        p = self.ab.alloca(ty)
        if init is not None:
            self.b.store(init, p)
        return p

    def get(self, p):
        return self.b.load(p)

    def set(self, p, value):
        self.b.store(value, p)

    def load(self, dtype, base, index):
        ty = MEM_TYPE[dtype]
        return self.b.load(self.b.gep(base, [index], inbounds=True, source_etype=ty), typ=ty)

    def store(self, dtype, value, base, index):
        ty = MEM_TYPE[dtype]
        self.b.store(value, self.b.gep(base, [index], inbounds=True, source_etype=ty))

    def ptr(self, dtype, base, index):
        return self.b.gep(base, [index], inbounds=True, source_etype=MEM_TYPE[dtype])

    # -- control flow
    def for_range(self, start, stop, body):
        """for i in range(start, stop): body(i) — the toolkit's loop, in the top-tested shape
        this family is tuned with."""
        for_range(self.b, start, stop, body, rotated=False)

    def while_(self, cond, body):
        """while cond(): body() — `cond` emits its test in the loop head."""
        b, fn = self.b, self.fn
        head, loop, end = (fn.append_basic_block(n) for n in ("while.head", "while.body",
                                                              "while.end"))
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(cond(), loop, end)
        b.position_at_end(loop)
        body()
        b.branch(head)
        b.position_at_end(end)

    def if_(self, cond):
        return self.b.if_then(cond)

    def if_else(self, cond):
        return self.b.if_else(cond)

    def fail_if(self, cond, code):
        """Return `code` (after freeing scratch) when `cond` holds."""
        fn, b = self.fn, self.b
        fail, cont = fn.append_basic_block("fail"), fn.append_basic_block("ok")
        b.cbranch(cond, fail, cont)
        b.position_at_end(fail)
        self._free_all()
        b.ret(const(I32, code))
        b.position_at_end(cont)

    def ret_ok(self):
        self._free_all()
        self.b.ret(const(I32, 0))

    # -- scratch memory
    def malloc_i64(self, count):
        """Scratch for `count` int64 (at least one), freed on every exit after this point."""
        malloc = get_function(self.module, "malloc", ir.FunctionType(PTR, [I64]))
        nbytes = self.b.mul(self.b.select(self.b.icmp_signed(">", count, const(I64, 0)), count,
                                          const(I64, 1)), const(I64, 8))
        p = self.b.call(malloc, [nbytes])
        self.fail_if(self.b.icmp_unsigned("==", p, ir.Constant(PTR, None)), ERR_ALLOC)
        self.scratch.append(p)
        return p

    def _free_all(self):
        free = get_function(self.module, "free", ir.FunctionType(ir.VoidType(), [PTR]))
        for p in self.scratch:
            self.b.call(free, [p])


def check_extents(e, k, extents, wanted):
    """ERR_SHAPE | k << 8 | d << 16 unless extents[d] == wanted[d] for every d."""
    for d, (got, want) in enumerate(zip(extents, wanted)):
        e.fail_if(e.b.icmp_signed("!=", got, want), ERR_SHAPE | k << 8 | d << 16)


def check_data_nonempty(e, arrays):
    """Data pointers of non-empty arrays must not be NULL (an empty array's is never read)."""
    for k, (data, ext, _) in enumerate(arrays):
        count = product(e.b, ext)
        null = e.b.icmp_unsigned("==", data, ir.Constant(PTR, None))
        e.fail_if(e.b.and_(null, e.b.icmp_signed("!=", count, const(I64, 0))), ERR_NULL | k << 8)


def new_kernel(module, symbol, sig):
    """Variant function `symbol` with the shared prologue; returns (emitter, arrays, strides)."""
    e = Emitter(module, symbol)
    arrays = prologue(e.b, *e.fn.args, sig)
    strides = [load_strides(e.b, ext, sp) for _, ext, sp in arrays]
    return e, arrays, strides


def single_variant(module, symbol, sig, emit_variant):
    """A kernel with one variant "generic" and its dispatcher (the family.py layout)."""
    emit_variant(module, variant_symbol(symbol, "generic"), sig)
    return emit_dispatcher(module, symbol, sig, [("generic", None)])


# ---------------------------------------------------------------------------------------------
# ordering and the index heap


def key_less(b, dtype, x, y):
    """x < y in numpy's sort order (NaN largest)."""
    if not is_float(dtype):
        return b.icmp_signed("<", x, y)
    return b.or_(b.fcmp_ordered("<", x, y),
                 b.and_(b.fcmp_unordered("uno", y, y), b.fcmp_ordered("ord", x, x)))


def key_equal(b, dtype, x, y):
    """x == y in numpy's sort order (NaN equals NaN, -0.0 equals 0.0)."""
    if not is_float(dtype):
        return b.icmp_signed("==", x, y)
    return b.or_(b.fcmp_ordered("==", x, y),
                 b.and_(b.fcmp_unordered("uno", x, x), b.fcmp_unordered("uno", y, y)))


def precedes(b, dtype, descending, kx, ky, ix, iy):
    """Element ix (key kx) comes before iy (key ky): by key, then by the lower index."""
    first, second = (ky, kx) if descending else (kx, ky)
    tie = b.and_(key_equal(b, dtype, kx, ky), b.icmp_signed("<", ix, iy))
    return b.or_(key_less(b, dtype, first, second), tie)


class Heap:
    """A binary heap of int64 indices into keys `base[i * stride]`; the root is the index that
    `precedes` every other. The sift-down loop is an internal function per (dtype, direction)."""

    def __init__(self, e, dtype, descending, base, stride, heap):
        self.e, self.base, self.stride, self.heap = e, base, stride, heap
        self.sift = _sift_down_function(e.module, dtype, descending)

    def heapify(self, n):
        """Reorder heap[0:n) into a heap (n may be 0)."""
        e = self.e
        half = e.b.sdiv(n, const(I64, 2))

        def body(j):
            pos = e.b.sub(e.b.sub(half, const(I64, 1)), j)
            e.b.call(self.sift, [self.base, self.stride, self.heap, pos, n])
        e.for_range(0, half, body)

    def fill_iota(self, n):
        e = self.e
        e.for_range(0, n, lambda i: e.store("int64", i, self.heap, i))

    def pop(self, size_var):
        """Remove and return the root of a heap of `*size_var` (> 0) elements."""
        e = self.e
        top = e.load("int64", self.heap, const(I64, 0))
        n = e.b.sub(e.get(size_var), const(I64, 1))
        e.set(size_var, n)
        e.store("int64", e.load("int64", self.heap, n), self.heap, const(I64, 0))
        e.b.call(self.sift, [self.base, self.stride, self.heap, const(I64, 0), n])
        return top


def _sift_down_function(module, dtype, descending):
    """void sift(ptr keys, i64 stride, ptr heap, i64 pos, i64 n) over a binary heap of indices
    ordered by their keys."""
    name = f"dynvm.heap.sift.{dtype}.{'desc' if descending else 'asc'}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fnty = ir.FunctionType(ir.VoidType(), [PTR, I64, PTR, I64, I64])
    e = Emitter(module, name, fnty, internal=True)
    keys, stride, heap, pos0, n = e.fn.args
    b = e.b

    def key(i):
        return e.load(dtype, keys, b.mul(i, stride))

    item = e.load("int64", heap, pos0)
    item_key = key(item)

    def pick(left):
        right = b.add(left, const(I64, 1))
        li = e.load("int64", heap, left)
        lk = key(li)
        safe_right = b.select(b.icmp_signed("<", right, n), right, left)
        ri = e.load("int64", heap, safe_right)
        rk = key(ri)
        take_right = b.and_(b.icmp_signed("<", right, n),
                            precedes(b, dtype, descending, rk, lk, ri, li))
        ci, ck = b.select(take_right, ri, li), b.select(take_right, rk, lk)
        return b.select(take_right, right, left), ci, precedes(b, dtype, descending, ck, item_key, ci, item)

    return _emit_sift(e, heap, pos0, item, n, 2, pick)


def _emit_sift(e, heap, pos0, item, n, arity, pick):
    """The sift-down loop both heaps share: while the hole at `pos` (which `item`, read from
    pos0, will fill) has children, `pick(first child)` returns (the child to follow, its word,
    i1 it goes above `item`); that child moves up, or the loop stops. Finishes the function."""
    b = e.b
    pos = e.var(I64, pos0)
    going = e.var(I1, const(I1, 1))

    def first_child():
        return b.add(b.mul(e.get(pos), const(I64, arity)), const(I64, 1))

    def cond():
        return b.and_(e.get(going), b.icmp_signed("<", first_child(), n))

    def body():
        child, word, above = pick(first_child())
        with e.if_else(above) as (move, stop):
            with move:
                e.store("int64", word, heap, e.get(pos))
                e.set(pos, child)
            with stop:
                e.set(going, const(I1, 0))

    e.while_(cond, body)
    e.store("int64", item, heap, e.get(pos))
    b.ret_void()
    return e.finish()


class PackedHeap:
    """A 4-ary heap of uint64 words `rank << 32 | index`, smallest first: no key indirection,
    one integer compare per child. Four children a node halve the levels a pop walks (its
    dependent load-compare chain is what NMS waits on) and sit in one 32-byte run.
    `descending_f32_rank` gives the rank that orders float32 values descending (ties then
    pop by lower index, as `precedes` does). Needs indices < 2**32."""

    def __init__(self, e, heap):
        self.e, self.heap = e, heap
        self.sift = _sift_packed_function(e.module)

    def push_back(self, size_var, rank32, index):
        e, b = self.e, self.e.b
        m = e.get(size_var)
        word = b.or_(b.shl(b.zext(rank32, I64), const(I64, 32)), index)
        e.store("int64", word, self.heap, m)
        e.set(size_var, b.add(m, const(I64, 1)))

    def heapify(self, n):
        """Sift every internal node, the last one ((n - 2) // 4) first."""
        e, b = self.e, self.e.b
        internal = b.sdiv(b.add(n, const(I64, 2)), const(I64, 4))   # (n - 2) // 4 + 1, n >= 0
        e.for_range(0, internal, lambda j: b.call(self.sift, [
            self.heap, b.sub(b.sub(internal, const(I64, 1)), j), n]))

    def pop(self, size_var):
        """The index of the root of a heap of `*size_var` (> 0) words, removed."""
        e = self.e
        top = e.load("int64", self.heap, const(I64, 0))
        n = e.b.sub(e.get(size_var), const(I64, 1))
        e.set(size_var, n)
        e.store("int64", e.load("int64", self.heap, n), self.heap, const(I64, 0))
        e.b.call(self.sift, [self.heap, const(I64, 0), n])
        return e.b.and_(top, const(I64, 0xFFFFFFFF))


def descending_f32_rank(b, value):
    """uint32 rank, smaller for larger float32 values; -0.0 ranks as 0.0 (NaN: callers
    exclude it)."""
    bits = b.bitcast(b.fadd(value, ir.Constant(ir.FloatType(), 0.0)), I32)
    negative = b.icmp_signed("<", bits, const(I32, 0))
    ascending = b.select(negative, b.not_(bits), b.or_(bits, const(I32, -0x80000000)))
    return b.not_(ascending)


def _sift_packed_function(module):
    """void sift(ptr heap, i64 pos, i64 n) over uint64 words of a 4-ary heap (children of p:
    4p+1..4p+4), smallest at the root. Children past n are read as the first child (so they
    never win) instead of being loaded."""
    name = "dynvm.heap.sift.packed4"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    e = Emitter(module, name, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]), internal=True)
    heap, pos0, n = e.fn.args
    b = e.b
    item = e.load("int64", heap, pos0)

    def smaller(x, y):
        (ix, wx), (iy, wy) = x, y
        take_y = b.icmp_unsigned("<", wy, wx)
        return b.select(take_y, iy, ix), b.select(take_y, wy, wx)

    def pick(first):
        kids = [(first, e.load("int64", heap, first))]
        for j in range(1, 4):
            c = b.add(first, const(I64, j))
            c = b.select(b.icmp_signed("<", c, n), c, first)
            kids.append((c, e.load("int64", heap, c)))
        child, word = smaller(smaller(kids[0], kids[1]), smaller(kids[2], kids[3]))
        return child, word, b.icmp_unsigned("<", word, item)

    return _emit_sift(e, heap, pos0, item, n, 4, pick)


# ---------------------------------------------------------------------------------------------
# rows: loops over every index of the non-axis dims


def for_each_row(e, extents, axis, strides, body):
    """body(offsets) for every combination of the non-axis indices; `offsets[k]` is array k's
    element offset of that row (its axis stride is strides[k][axis])."""
    dims = [d for d in range(len(extents)) if d != axis]

    for_nest(e.b, [(extents[d], [s[d] for s in strides]) for d in dims],
             [const(I64, 0)] * len(strides), body)


def store_index(e, dtype, value, base, index):
    """Store an i64 index as int32 or int64."""
    if dtype == "int32":
        value = e.b.trunc(value, I32)
    e.store(dtype, value, base, index)


def _sorted_rows(module, symbol, sig, spec):
    """sort / argsort / topk: pop each row's heap into the outputs."""
    op = spec["op"]
    dtype, rank = sig[0]
    axis = spec["axis"] % rank
    e, arrays, strides = new_kernel(module, symbol, sig)
    b = e.b
    ext = arrays[0][1]
    n = ext[axis]
    count = n
    if op == "topk":
        k = int(spec["k"])
        count = const(I64, k) if k >= 1 else n
        e.fail_if(b.icmp_signed(">", count, n), ERR_SHAPE | 1 << 8 | axis << 16)
    for j in range(1, len(arrays)):
        check_extents(e, j, arrays[j][1], [count if d == axis else ext[d] for d in range(rank)])
    check_data_nonempty(e, arrays)
    heap_mem = e.malloc_i64(n)
    descending = not spec["is_ascend"]
    outs = _sort_outputs(spec, sig)

    def row(offsets):
        base = e.ptr(dtype, arrays[0][0], offsets[0])
        heap = Heap(e, dtype, descending, base, strides[0][axis], heap_mem)
        heap.fill_iota(n)
        heap.heapify(n)
        size = e.var(I64, n)

        def emit(j):
            idx = heap.pop(size)
            for k, kind in outs:
                at = b.add(offsets[k], b.mul(j, strides[k][axis]))
                if kind == "values":
                    value = e.load(dtype, arrays[0][0], b.add(offsets[0],
                                                               b.mul(idx, strides[0][axis])))
                    e.store(dtype, value, arrays[k][0], at)
                else:
                    store_index(e, sig[k][0], idx, arrays[k][0], at)
        e.for_range(0, count, emit)

    for_each_row(e, ext, axis, strides, row)
    e.ret_ok()
    e.finish()


def _sort_outputs(spec, sig):
    """[(arg position, "values" | "indices")] of the outputs of a sort-like kernel."""
    op = spec["op"]
    if op == "sort":
        return [(1, "values")]
    if op == "argsort":
        return [(1, "indices")]
    kinds = {"both": ["values", "indices"], "values": ["values"], "indices": ["indices"]}
    return [(1 + i, kind) for i, kind in enumerate(kinds[spec["ret_type"]])]


def _unique(module, symbol, sig, spec):
    """Sorted distinct values (NaNs collapse into one, last); optional int64 counts."""
    dtype = sig[0][0]
    e, arrays, strides = new_kernel(module, symbol, sig)
    b = e.b
    n = arrays[0][1][0]
    width = arrays[1][1][0]
    if len(arrays) == 3:
        check_extents(e, 2, arrays[2][1], [width])
    check_data_nonempty(e, arrays)
    heap_mem = e.malloc_i64(n)
    data, s_in = arrays[0][0], strides[0][0]
    heap = Heap(e, dtype, False, data, s_in, heap_mem)
    heap.fill_iota(n)
    heap.heapify(n)
    size = e.var(I64, n)
    found = e.var(I64, const(I64, 0))
    prev = e.var(MEM_TYPE[dtype])

    def emit(j):
        value = e.load(dtype, data, b.mul(heap.pop(size), s_in))
        fresh = b.or_(b.icmp_signed("==", j, const(I64, 0)),
                      b.not_(key_equal(b, dtype, value, e.get(prev))))
        with e.if_else(fresh) as (new, same):
            with new:
                k = e.get(found)
                e.fail_if(b.icmp_signed(">=", k, width), ERR_SHAPE | 1 << 8)
                e.store(dtype, value, arrays[1][0], b.mul(k, strides[1][0]))
                if len(arrays) == 3:
                    e.store("int64", const(I64, 1), arrays[2][0], b.mul(k, strides[2][0]))
                e.set(found, b.add(k, const(I64, 1)))
                e.set(prev, value)
            with same:
                if len(arrays) == 3:
                    at = b.mul(b.sub(e.get(found), const(I64, 1)), strides[2][0])
                    e.store("int64", b.add(e.load("int64", arrays[2][0], at), const(I64, 1)),
                            arrays[2][0], at)
    e.for_range(0, n, emit)
    e.fail_if(b.icmp_signed("!=", e.get(found), width), ERR_SHAPE | 1 << 8)
    e.ret_ok()
    e.finish()


# ---------------------------------------------------------------------------------------------
# the family


def expect(cond, message):
    """A build-time spec check: KernelError(message) unless `cond`."""
    if not cond:
        raise KernelError(message)


def check_sort(spec, inputs, outputs):
    """Build-time validation: op, attrs and the [dtype, rank] signature."""
    op = spec.get("op")
    expect(op in ("sort", "argsort", "topk", "unique"), f"sort family: unknown op {op!r}")
    expect(len(inputs) == 1, f"{op}: expected 1 input, got {len(inputs)}")
    dtype, rank = inputs[0]
    expect(dtype in SORT_DTYPES, f"{op}: unsupported dtype {dtype}")
    if op == "unique":
        expect(rank == 1, f"unique: input must be 1-D, got rank {rank}")
        want = [[dtype, 1]] + ([["int64", 1]] if spec.get("return_counts") else [])
        expect(list(map(list, outputs)) == want, f"unique: outputs must be {want}, got {outputs}")
        return
    expect(rank >= 1, f"{op}: input must have rank >= 1")
    axis = spec.get("axis")
    expect(isinstance(axis, int) and -rank <= axis < rank,
            f"{op}: axis {axis!r} out of range for rank {rank}")
    if op == "topk":
        expect(spec.get("ret_type") in ("both", "values", "indices"),
                f"topk: bad ret_type {spec.get('ret_type')!r}")
        expect(isinstance(spec.get("k"), int), f"topk: k must be an int, got {spec.get('k')!r}")
    if op != "sort":
        expect(spec.get("dtype", "int64") in INDEX_DTYPES,
                f"{op}: index dtype must be int32 or int64, got {spec.get('dtype')!r}")
    want = [[dtype, rank] if kind == "values" else [spec.get("dtype", "int64"), rank]
            for _, kind in _sort_outputs(spec, None)]
    expect(list(map(list, outputs)) == want, f"{op}: outputs must be {want}, got {outputs}")


def emit_sort(module, symbol, spec, inputs, outputs):
    sig = [tuple(x) for x in inputs] + [tuple(x) for x in outputs]
    body = _unique if spec["op"] == "unique" else _sorted_rows
    return single_variant(module, symbol, sig, lambda m, s, g: body(m, s, g, spec))


register(Family("sort", check_sort, emit_sort))
