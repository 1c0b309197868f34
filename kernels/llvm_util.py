"""The IR toolkit of the kernel families (llvmlite.ir; numba's `cgutils` is the model). General
IR building blocks live here, and a family takes them from here, never from another family;
what families share on purpose is a public entry point of its own family (the elementwise
expression emitter, the GEMM core conv2d builds on, transform's variant scaffolding, sort's
index heap). Error codes live with the ABI (kernels/abi.py).

- types and constants: I1 .. F64, PTR, DLTENSOR, REG_TYPE / MEM_TYPE (dtype -> register /
  memory type), `vector_type`, `type_suffix`, `const`, `c64`, `intrinsic`, `get_function`;
- integer arithmetic on i64 offsets: `icmp`, `eq`, `smin`, `smax`, `all_of`, `product`,
  `add_mul`, `dot_offset`, `unravel`;
- control flow: `for_range` (the one counted loop: zero trips, carried values as phis, loop
  hints), `for_nest` (a loop nest advancing offsets), `if_then` (with or without an else arm,
  optionally merging values), early exits `check` / `check_equal` / `return_zero_if`;
- memory: `elem_ptr`, `load`, `store` (scalars or vectors, element-aligned), `stack_buffer`;
- vectors: `splat`, `lane_ids`, `tail_mask`, `masked_load`, `masked_store` (a partial last
  vector needs no scalar tail), `horizontal` (lane fold), `vector_fold` (a contiguous run in
  unrolled vectors, vectors, then scalars);
- dtype semantics: `is_float`, `to_reg` / `to_mem` (bool is i1 in registers, a byte in
  memory), `truth`, `cast` (numpy `astype` on register values);
- the kernel ABI seen from inside: `int32_t f(DLTensor *args, int32_t nargs)`; `new_function`,
  `prologue` validates every argument (count, rank, dtype, NULL pointers, extents) and returns
  an error code `kind | arg << 8 | dim << 16` instead of touching memory it was not promised;
  `load_strides`, `is_compact`, `check_data`.
"""
from llvmlite import ir

from dynvm.kernels.abi import ERR_DTYPE, ERR_EXTENT, ERR_NARGS, ERR_NDIM, ERR_NULL, ERR_SHAPE
from dynvm.vm.dtypes import DTYPES


I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
DLTENSOR = ir.LiteralStructType([PTR, ir.LiteralStructType([I32, I32]), I32,
                                 ir.LiteralStructType([I8, I8, I16]), PTR, PTR, I64])
F_DATA, F_NDIM, F_DTYPE, F_SHAPE, F_STRIDES = 0, 2, 3, 4, 5

REG_TYPE = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I1}
MEM_TYPE = dict(REG_TYPE, bool=I8)


# ---------------------------------------------------------------------------------------------
# types, constants, declarations


def is_float(dtype):
    return dtype in ("float32", "float64")


def element_type(ty):
    """The scalar type of a scalar or vector type."""
    return ty.element if isinstance(ty, ir.VectorType) else ty


def with_element(ty, elem):
    """`ty`'s shape (scalar or vector of the same count) with element type `elem`."""
    return ir.VectorType(elem, ty.count) if isinstance(ty, ir.VectorType) else elem


def vector_type(elem, lanes):
    """`<lanes x elem>`, or `elem` itself for one lane."""
    return elem if lanes == 1 else ir.VectorType(elem, lanes)


def elem_bytes(ty):
    """Bytes of one element of a scalar or vector type (i1 counts as one byte)."""
    elem = element_type(ty)
    return 4 if elem == F32 else 8 if elem == F64 else max(1, elem.width // 8)


def type_suffix(ty):
    """LLVM's overload suffix of a type: f32, i64, v16f32, ..."""
    elem = element_type(ty)
    name = "f32" if elem == F32 else "f64" if elem == F64 else f"i{elem.width}"
    return f"v{ty.count}{name}" if isinstance(ty, ir.VectorType) else name


def const(ty, value):
    """A constant of type `ty`; for a vector type every lane is `value`."""
    return ir.Constant(ty, value)


def c64(value):
    return ir.Constant(I64, value)


def as_i64(value):
    """An i64 IR value from an int or an IR value."""
    return c64(value) if isinstance(value, int) else value


def get_function(module, name, fnty):
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name=name)


def intrinsic(module, name, ty, nargs=1):
    """The overloaded intrinsic `name.<ty>` taking `nargs` args of `ty` (vectors too; llvmlite's
    declare_intrinsic does not name vector overloads)."""
    return get_function(module, f"{name}.{type_suffix(ty)}", ir.FunctionType(ty, [ty] * nargs))


# ---------------------------------------------------------------------------------------------
# i64 arithmetic


def icmp(b, op, x, y):
    """Signed comparison; ints are i64 constants."""
    return b.icmp_signed(op, as_i64(x), as_i64(y))


def eq(b, x, y):
    return icmp(b, "==", x, y)


def smin(b, x, y):
    return b.select(icmp(b, "<", x, y), x, y)


def smax(b, x, y):
    return b.select(icmp(b, ">", x, y), x, y)


def all_of(b, conds):
    ok = const(I1, 1)
    for c in conds:
        ok = b.and_(ok, c)
    return ok


def product(b, values):
    """The product of i64 values (1 for none): an element count from extents."""
    n = c64(1)
    for v in values:
        n = b.mul(n, v)
    return n


def add_mul(b, base, i, stride):
    return b.add(base, b.mul(i, stride))


def dot_offset(b, idx, strides):
    """Element offset sum(idx[d] * strides[d])."""
    off = c64(0)
    for i, s in zip(idx, strides):
        off = add_mul(b, off, i, s)
    return off


def unravel(b, flat, extents):
    """Row-major multi-index of `flat` over `extents` (IR values)."""
    idx = []
    for e in reversed(extents[1:]):
        idx.append(b.urem(flat, e))
        flat = b.udiv(flat, e)
    idx.append(flat)
    return idx[::-1] if extents else []


# ---------------------------------------------------------------------------------------------
# control flow


def check(b, ok, code):
    """Continue when `ok` (i1) holds, else return `code` from the function."""
    fn = b.function
    fail = fn.append_basic_block("fail")
    cont = fn.append_basic_block("ok")
    b.cbranch(ok, cont, fail)
    b.position_at_end(fail)
    b.ret(const(I32, code))
    b.position_at_end(cont)


def check_equal(b, got, want, arg, dim):
    """`got == want` (i64) or return ERR_SHAPE for argument `arg`, dim `dim`."""
    check(b, eq(b, got, want), ERR_SHAPE | arg << 8 | dim << 16)


def return_zero_if(b, cond):
    """Return 0 (success, nothing to do) when `cond` holds."""
    fn = b.function
    done, cont = fn.append_basic_block("empty"), fn.append_basic_block("nonempty")
    b.cbranch(cond, done, cont)
    b.position_at_end(done)
    b.ret(const(I32, 0))
    b.position_at_end(cont)


def for_range(b, start, stop, body, step=1, carried=None, vectorize=True, unroll=True,
              nonempty=False, rotated=True):
    """`for i in range(start, stop, step)` over i64 (ints or IR values; step > 0); zero trips
    are fine.

    body(i) emits one iteration; with `carried` (the initial values) it is body(i, values) ->
    the values of the next iteration, each carried in a loop phi. Returns (end, values): the
    first i not below `stop` (`start` when the loop does not run) and the values after the last
    trip (the initial ones when it does not run).

    Hints (the loop means the same either way): vectorize=False / unroll=False keep LLVM's loop
    vectoriser / unroller off the loop (for loops that are already explicit vector code, or
    scalar tails where they gain little and cost compile time); nonempty=True promises
    start < stop, so there is no test before the first trip. The shape is LLVM's rotated loop (a
    guard, then the test at the bottom of each trip); rotated=False tests at the top of each
    trip instead: LLVM rotates that itself, but its inliner runs first and the later passes
    start from a different shape, so families keep the shape their code was tuned with."""
    start, stop, step = as_i64(start), as_i64(stop), as_i64(step)
    inits = [] if carried is None else list(carried)
    fn = b.function
    pre = b.block
    head, done = fn.append_basic_block("for"), fn.append_basic_block("for.end")
    if nonempty or not rotated:
        b.branch(head)
    else:
        b.cbranch(b.icmp_signed("<", start, stop), head, done)
    b.position_at_end(head)
    i = b.phi(I64, name="i")
    values = [b.phi(v.type) for v in inits]
    if not rotated:
        trip = fn.append_basic_block("for.body")
        b.cbranch(b.icmp_signed("<", i, stop), trip, done)
        b.position_at_end(trip)
    if carried is None:
        body(i)
        new = []
    else:
        new = list(body(i, list(values)))
    if len(new) != len(inits):
        raise ValueError(f"for_range: body returned {len(new)} values for {len(inits)} carried")
    nxt = b.add(i, step, name="i.next", flags=["nsw"])
    latch = b.block
    for phi, init, value in zip([i] + values, [start] + inits, [nxt] + new):
        phi.add_incoming(init, pre)
        phi.add_incoming(value, latch)
    back = b.branch(head) if not rotated else b.cbranch(b.icmp_signed("<", nxt, stop), head, done)
    if not (vectorize and unroll):
        back.set_metadata("llvm.loop", _loop_hints(b.module, vectorize, unroll))
    b.position_at_end(done)
    if not rotated:
        return i, values
    if nonempty:
        return nxt, new
    end, *out = _merge(b, [(pre, [start] + inits), (latch, [nxt] + new)])
    return end, out


def _loop_hints(module, vectorize, unroll):
    """A fresh self-referential loop-ID node carrying the loop's optimisation hints."""
    options = []
    if not vectorize:
        options.append(module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.width"),
                                            const(I32, 1)]))
    if not unroll:
        options.append(module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")]))
    node = module.add_metadata([ir.MetaDataString(module, f"dynvm.loop.{len(module.metadata)}"),
                                *options])
    node.operands = (node, *options)
    return node


def _merge(b, arms):
    """Phis (at the builder's position) of the values reaching it from each (block, values)."""
    phis = [b.phi(v.type) for v in arms[0][1]]
    for block, values in arms:
        for phi, v in zip(phis, values):
            phi.add_incoming(v, block)
    return phis


def for_nest(b, dims, offsets, body, carried=None, **hints):
    """A loop nest over dims [(extent, [stride per offset, or None: it does not move]), ...],
    outermost first: at index i of a level, offsets[k] advances by i * strides[k]. body(offsets)
    emits the innermost work; with `carried` it is body(offsets, values) -> values, the values
    flowing through every level (the final ones are returned). `hints` go to every for_range."""
    def level(d, offs, values):
        if d == len(dims):
            return body(offs) if carried is None else body(offs, values)
        extent, strides = dims[d]

        def step(i, *vals):
            inner = [o if s is None else add_mul(b, o, i, s) for o, s in zip(offs, strides)]
            return level(d + 1, inner, vals[0] if vals else None)
        return for_range(b, 0, extent, step, carried=values, **hints)[1]
    return level(0, offsets, carried)


def if_then(b, cond, then, otherwise=None, carried=None):
    """Structured if: then() / otherwise() emit the two arms (no else arm when `otherwise` is
    None); control joins afterwards. With `carried` values each arm is arm(values) -> values (a
    missing else arm keeps them) and the joined values (phis) are returned."""
    fn = b.function
    pre = b.block
    arms = [(fn.append_basic_block("then"), then)]
    if otherwise is not None:
        arms.append((fn.append_basic_block("else"), otherwise))
    join = fn.append_basic_block("endif")
    b.cbranch(cond, arms[0][0], arms[1][0] if otherwise is not None else join)
    incoming = [] if otherwise is not None else [(pre, carried)]
    for block, arm in arms:
        b.position_at_end(block)
        out = arm() if carried is None else list(arm(list(carried)))
        incoming.append((b.block, out))
        b.branch(join)
    b.position_at_end(join)
    return None if carried is None else _merge(b, incoming)


# ---------------------------------------------------------------------------------------------
# memory


# chunks of a kernel on the kernel threads (kernels/pool.py): i32 fn(ptr ctx, i64 lo, i64 hi)
CHUNK_FN = ir.FunctionType(I32, [PTR, I64, I64])


def kernel_threads(b):
    """i64: the thread count kernels called from this OS thread may use (kernels/pool.py)."""
    return b.call(get_function(b.module, "dynvm_pool_threads", ir.FunctionType(I64, [])), [])


def parallel_for(b, chunks, ctx, n, worth):
    """Run `chunks` (a CHUNK_FN) over the chunks [0, n): in one call, chunks(ctx, 0, n), unless
    `worth` (i1: the work pays for waking threads, a family's measured threshold); then through
    the pool's `dynvm_parallel_for`, which may run chunks on several threads, one chunk per call."""
    entry = get_function(b.module, "dynvm_parallel_for", ir.FunctionType(I32, [PTR, PTR, I64]))
    if_then(b, worth, lambda: b.call(entry, [chunks, ctx, n]),
            lambda: b.call(chunks, [ctx, const(I64, 0), n]))


# Work (a family's unit, below) from which a kernel's chunks go to the kernel threads; below it
# the kernel runs on the calling thread alone. One entry per family, from
# benchmarks/kernel_thresholds.py (each family's kernel built with parallel_work 0, 2 threads
# against 1 over growing sizes, interleaved; three sweeps on a quiet 2-core machine, each entry
# the largest of its crossovers; matmul's those of a prepacked dense), except layer_norm and
# transpose, set lower from BERT: on 2 threads a serial kernel reads half its input from the
# other core's cache, split it reads its own. A job costs the pool about 0.8 us, so one thread takes 6-15 us at most entries. See
# docs/design.md, "Kernel threads". A spec's "parallel_work" overrides an entry (tests use 0).
# Units: multiply-adds (M*N*K*batches) for matmul and conv2d; elements of the input for the
# others.
PARALLEL_WORK = {"matmul": 1 << 19, "softmax": 1 << 13, "layer_norm": 1 << 15,
                 "elementwise": 1 << 13, "reduce": 1 << 18, "transpose": 1 << 15}
# chunks `split_for` cuts its items into: enough that a descheduled thread (a loaded machine)
# leaves little behind (the others take what is left of its home range), few enough that
# claiming one (a compare-and-swap on the claimer's own counter) stays negligible
SPLIT_CHUNKS = 32


def parallel_work(spec, family, what):
    """The work from which `family`'s kernel for `spec` uses the kernel threads: the spec's
    "parallel_work" (validated) or the family's measured PARALLEL_WORK."""
    threshold = spec.get("parallel_work", PARALLEL_WORK[family])
    if type(threshold) is not int or threshold < 0:
        from dynvm.vm.errors import KernelError
        raise KernelError(f"{what}: parallel_work must be an int >= 0, got {threshold!r}")
    return threshold


def split_for(b, values, count, body, worth, align=1):
    """body(b', values', lo, hi) over the independent items [0, count), cut into chunks of a
    multiple of `align` items (at most SPLIT_CHUNKS chunks; only the last one may be shorter),
    run by `parallel_for`: on the kernel threads when `worth` (i1), else in one call. Each item
    is computed wholly inside one chunk in the order of a one-thread loop over [lo, hi), so
    the results do not depend on the thread count.

    `body` emits into a new internal chunk function with its own builder b'; every run-time
    value it uses must come in through `values` (nested lists/tuples of IR values and Python
    objects), which it receives rebuilt there (non-constant IR values travel in a context
    struct on the caller's stack)."""
    fields = []

    def flatten(v):
        if isinstance(v, (list, tuple)):
            return type(v)(flatten(x) for x in v)
        if isinstance(v, ir.Value) and not isinstance(v, ir.Constant):
            fields.append(v)
            return _Field(len(fields) - 1)
        return v
    template = flatten(values)
    ctx_type = ir.LiteralStructType([I64, I64] + [v.type for v in fields])
    module = b.module
    fn = ir.Function(module, CHUNK_FN, name=module.get_unique_name(b.function.name + ".chunks"))
    fn.linkage = "internal"
    ctx, lo, hi = fn.args
    cb = ir.IRBuilder(fn.append_basic_block("entry"))

    def field(builder, base, k):
        return builder.gep(base, [const(I32, 0), const(I32, k)], source_etype=ctx_type)
    got = [cb.load(field(cb, ctx, 2 + k), typ=v.type) for k, v in enumerate(fields)]

    def rebuild(v):
        if isinstance(v, (list, tuple)):
            return type(v)(rebuild(x) for x in v)
        return got[v.index] if isinstance(v, _Field) else v
    per, total = cb.load(field(cb, ctx, 0), typ=I64), cb.load(field(cb, ctx, 1), typ=I64)
    body(cb, rebuild(template), cb.mul(lo, per), smin(cb, cb.mul(hi, per), total))
    cb.ret(const(I32, 0))

    count = as_i64(count)
    span = b.udiv(b.add(count, c64(SPLIT_CHUNKS - 1)), c64(SPLIT_CHUNKS))
    per = b.mul(b.udiv(b.add(span, c64(align - 1)), c64(align)), c64(align))
    per = b.select(eq(b, per, c64(0)), c64(align), per)
    buf = stack_buffer(b, ctx_type, 1)
    for k, v in enumerate([per, count] + fields):
        b.store(v, field(b, buf, k))
    parallel_for(b, fn, buf, b.udiv(b.add(count, b.sub(per, c64(1))), per), worth)


class _Field:
    """Where a value passed to `split_for` sits in its context struct."""

    def __init__(self, index):
        self.index = index


def elem_ptr(b, base, offset, ty):
    """Pointer to element `offset` of an array of `ty` (a vector type: of its element type)."""
    return b.gep(base, [offset], inbounds=True, source_etype=element_type(ty))


def load(b, base, offset, ty, align=None):
    """Element (ty scalar) or consecutive elements (ty a vector) `offset` of `base`; aligned to
    one element unless `align` says more."""
    return b.load(elem_ptr(b, base, offset, ty), typ=ty, align=align or elem_bytes(ty))


def store(b, value, base, offset, align=None):
    b.store(value, elem_ptr(b, base, offset, value.type), align=align or elem_bytes(value.type))


def stack_buffer(b, ty, count):
    """A 64-byte aligned stack array of `count` elements, allocated in the entry block."""
    fn = b.function
    saved = b.block
    b.position_at_start(fn.entry_basic_block)
    buf = b.alloca(ir.ArrayType(ty, count))
    buf.align = 64
    buf.type = PTR   # opaque pointer, like every other pointer in kernels/
    b.position_at_end(saved)
    return buf


# ---------------------------------------------------------------------------------------------
# vectors


def splat(b, value, lanes):
    """A run-time scalar in every lane of a `<lanes x T>` vector (the scalar itself for 1)."""
    if lanes == 1:
        return value
    vec = ir.VectorType(value.type, lanes)
    v = b.insert_element(ir.Constant(vec, ir.Undefined), value, const(I32, 0))
    return b.shuffle_vector(v, ir.Constant(vec, ir.Undefined),
                            ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def transpose_vectors(b, vectors):
    """The VL x VL transpose of `vectors` (VL vectors of VL lanes: out[k] lane r = vectors[r]
    lane k) by log2(VL) stages of two-input shuffles: the stage of block size h pairs rows r
    and r + h and swaps the upper h-lane block of every 2h lanes of the first with the lower
    one of the second (on AVX2: vshufps / vperm2f128-like shuffles, 3 stages of 8). The
    matmul family's packing and the tiled transpose use it."""
    vl = len(vectors)
    h = 1
    while h < vl:
        lo = [j for g in range(0, vl, 2 * h)
              for j in [*range(g, g + h), *range(vl + g, vl + g + h)]]
        lo_idx = ir.Constant(ir.VectorType(I32, vl), lo)
        hi_idx = ir.Constant(ir.VectorType(I32, vl), [j + h for j in lo])
        out = list(vectors)
        for r in (r for r in range(vl) if not r & h):
            x, y = vectors[r], vectors[r + h]
            out[r], out[r + h] = b.shuffle_vector(x, y, lo_idx), b.shuffle_vector(x, y, hi_idx)
        vectors = out
        h *= 2
    return vectors


def lane_ids(lanes):
    """<0, 1, ..., lanes-1> as i64 lanes (the scalar 0 for one lane)."""
    return c64(0) if lanes == 1 else ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))


def tail_mask(b, start, stop, lanes):
    """Mask <lanes x i1>: lane l is on when start + l < stop (i64 scalars)."""
    return b.icmp_signed("<", b.add(lane_ids(lanes), splat(b, start, lanes)), splat(b, stop, lanes))


def masked_load(b, ptr, mask, passthru):
    """llvm.masked.load of a vector of passthru's type: lanes whose mask bit is off are not
    read (no fault past the end of an array) and take `passthru`."""
    vec = passthru.type
    fn = get_function(b.module, f"llvm.masked.load.{type_suffix(vec)}.p0",
                      ir.FunctionType(vec, [PTR, I32, mask.type, vec]))
    return b.call(fn, [ptr, const(I32, elem_bytes(vec)), mask, passthru])


def masked_store(b, value, ptr, mask):
    """llvm.masked.store: only the lanes whose mask bit is on are written."""
    vec = value.type
    fn = get_function(b.module, f"llvm.masked.store.{type_suffix(vec)}.p0",
                      ir.FunctionType(ir.VoidType(), [vec, PTR, I32, mask.type]))
    b.call(fn, [value, ptr, const(I32, elem_bytes(vec)), mask])


def horizontal(b, values, combine):
    """Fold the lanes of the vectors in `values` (one list per accumulator part, e.g. value and
    index) with `combine(a, b) -> list`, halving the width each step. Returns scalars."""
    while isinstance(values[0].type, ir.VectorType):
        width = values[0].type.count
        if width == 1:
            return [b.extract_element(v, const(I32, 0)) for v in values]
        half = width // 2
        lo_mask = ir.Constant(ir.VectorType(I32, half), list(range(half)))
        hi_mask = ir.Constant(ir.VectorType(I32, half), list(range(half, width)))
        lo = [b.shuffle_vector(v, v, lo_mask) for v in values]
        hi = [b.shuffle_vector(v, v, hi_mask) for v in values]
        values = combine(lo, hi)
    return values


def vector_fold(b, n, lanes, init, body, merge, unroll=4):
    """Fold a contiguous run of n elements: `unroll` vectors of `lanes` per step, then single
    vectors, then scalars. init(lanes) -> accumulator list (may be empty for a map-only pass);
    body(j, lanes, accs) -> accs handles elements j .. j+lanes-1; merge(a, c) -> accs joins
    partial results of disjoint element sets. Returns the scalar accumulators."""
    width = unroll * lanes
    first = init(lanes)
    part = len(first)

    def wide(j, accs):
        out = []
        for u in range(unroll):
            out += body(b.add(j, c64(u * lanes)), lanes, accs[u * part:(u + 1) * part])
        return out

    j, accs = for_range(b, 0, b.sub(n, c64(width - 1)), wide, step=width, carried=first * unroll,
                        rotated=False)
    merged = accs[:part]
    for u in range(1, unroll):
        merged = merge(merged, accs[u * part:(u + 1) * part])
    if lanes > 1:
        j, merged = for_range(b, j, b.sub(n, c64(lanes - 1)), lambda j, accs: body(j, lanes, accs),
                              step=lanes, carried=merged, rotated=False)
        merged = horizontal(b, merged, merge) if merged else []
    _, scalars = for_range(b, j, n, lambda j, accs: body(j, 1, accs), carried=merged, rotated=False)
    return scalars


# ---------------------------------------------------------------------------------------------
# dtype semantics on register values (bool is i1 in registers)


def to_reg(b, value, dtype):
    """Memory form -> register form (bool bytes become i1: any non-zero byte is True)."""
    return b.icmp_unsigned("!=", value, const(value.type, 0)) if dtype == "bool" else value


def to_mem(b, value, dtype):
    """Register form -> memory form (an i1 bool becomes a 0/1 byte)."""
    return b.zext(value, with_element(value.type, I8)) if dtype == "bool" else value


def truth(b, value, dtype):
    """numpy truthiness: non-zero (NaN counts as true)."""
    if dtype == "bool":
        return value
    if is_float(dtype):
        return b.fcmp_unordered("!=", value, const(value.type, 0.0))
    return b.icmp_signed("!=", value, const(value.type, 0))


def cast(b, value, src, dst):
    """numpy `astype` of a scalar or vector register value; float -> int saturates (NaN -> 0)
    through llvm.fptosi.sat, where numpy's result is undefined."""
    if src == dst:
        return value
    ty = with_element(value.type, REG_TYPE[dst])
    if dst == "bool":
        return truth(b, value, src)
    if src == "bool":
        return b.uitofp(value, ty) if is_float(dst) else b.zext(value, ty)
    if is_float(src) and is_float(dst):
        return b.fpext(value, ty) if dst == "float64" else b.fptrunc(value, ty)
    if not is_float(src) and not is_float(dst):
        wider = REG_TYPE[dst].width > REG_TYPE[src].width
        return b.sext(value, ty) if wider else b.trunc(value, ty)
    if not is_float(src):
        return b.sitofp(value, ty)
    sat = get_function(b.module, f"llvm.fptosi.sat.{type_suffix(ty)}.{type_suffix(value.type)}",
                       ir.FunctionType(ty, [value.type]))
    return b.call(sat, [value])


# ---------------------------------------------------------------------------------------------
# the kernel ABI: arguments, validation, layouts


class Args:
    """Field loads from the DLTensor array of one kernel call."""

    def __init__(self, b, args):
        self.b, self.args = b, args

    def field(self, k, field, ty):
        p = self.b.gep(self.args, [const(I64, k), const(I32, field)], inbounds=True,
                       source_etype=DLTENSOR)
        return self.b.load(p, typ=ty)

    def dtype(self, k):
        p = self.b.gep(self.args, [const(I64, k), const(I32, F_DTYPE)], inbounds=True,
                       source_etype=DLTENSOR)
        return [self.b.load(self.b.gep(p, [const(I32, 0), const(I32, j)], inbounds=True,
                                       source_etype=DLTENSOR.elements[F_DTYPE]), typ=t)
                for j, t in enumerate((I8, I8, I16))]

    def index(self, ptr, j):
        return self.b.load(self.b.gep(ptr, [const(I64, j)], inbounds=True, source_etype=I64),
                           typ=I64)


def prologue(b, args_ptr, nargs, sig):
    """Validate every argument; return per-array (data, extents, strides-or-None) lists."""
    check(b, b.icmp_signed("==", nargs, const(I32, len(sig))), ERR_NARGS)
    check(b, b.icmp_unsigned("!=", args_ptr, ir.Constant(PTR, None)), ERR_NULL)
    a = Args(b, args_ptr)
    arrays = []
    for k, (dtype, rank) in enumerate(sig):
        check(b, b.icmp_signed("==", a.field(k, F_NDIM, I32), const(I32, rank)), ERR_NDIM | k << 8)
        _, code, bits = DTYPES[dtype]
        got = a.dtype(k)
        ok = b.and_(b.and_(b.icmp_unsigned("==", got[0], const(I8, code)),
                           b.icmp_unsigned("==", got[1], const(I8, bits))),
                    b.icmp_unsigned("==", got[2], const(I16, 1)))
        check(b, ok, ERR_DTYPE | k << 8)
        shape, strides = a.field(k, F_SHAPE, PTR), a.field(k, F_STRIDES, PTR)
        if rank:
            check(b, b.icmp_unsigned("!=", shape, ir.Constant(PTR, None)), ERR_NULL | k << 8)
        extents = [a.index(shape, j) for j in range(rank)]
        for j, e in enumerate(extents):
            check(b, b.icmp_signed(">=", e, const(I64, 0)), ERR_EXTENT | k << 8 | j << 16)
        arrays.append((a.field(k, F_DATA, PTR), extents, strides))
    return arrays




def load_strides(b, ext, strides_ptr):
    """Element strides; a NULL strides pointer means compact row-major (DLPack)."""
    if not ext:
        return []
    compact, acc = [], c64(1)
    for e in reversed(ext):
        compact.append(acc)
        acc = b.mul(acc, e)
    compact.reverse()
    given = b.icmp_unsigned("!=", strides_ptr, ir.Constant(PTR, None))
    loaded = range(len(ext))
    return if_then(b, given, lambda _: [Args(b, None).index(strides_ptr, j) for j in loaded],
                   carried=compact)


def is_compact(b, ext, strides, empty_ok=True):
    """i1: `strides` (loaded) are compact row-major, ignoring extent-1 dims; with `empty_ok` an
    empty array is compact whatever its strides say (nothing is addressed)."""
    expected, conds = c64(1), []
    for e, s in zip(reversed(ext), reversed(strides)):
        conds.append(b.or_(eq(b, e, 1), eq(b, s, expected)))
        expected = b.mul(expected, e)
    ok = all_of(b, conds)
    return b.or_(eq(b, product(b, ext), 0), ok) if empty_ok else ok


def check_data(b, arrays):
    for k, (data, _, _) in enumerate(arrays):
        check(b, b.icmp_unsigned("!=", data, ir.Constant(PTR, None)), ERR_NULL | k << 8)


def new_function(module, symbol):
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, I32]), name=symbol)
    fn.args[0].name, fn.args[1].name = "args", "nargs"
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))
