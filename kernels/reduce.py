"""The "reduce" kernel family: sum, mean, max, min, argmax over any static axis set.

Spec: {"op": "sum"|"mean"|"max"|"min"|"argmax", "axis": None|int|[int], "keepdims": bool,
"exclude": bool} (the op's attrs); one input (x), one output. Ranks are static, so the reduced
axes are normalised at build time; extents are read at run time.

Semantics (tests/numpy_reference.py is the oracle):
- sum accumulates in the input dtype (integers wrap, like np.sum(dtype=int32)); the sum of
  nothing is 0.
- mean accumulates in float64 and divides by the element count; float results of nothing are
  NaN; integer results truncate toward zero (saturating), and an integer mean of nothing is the
  error ERR_EMPTY (the runtime raises ShapeError).
- max/min propagate NaN; argmax gives the row-major flat index, within the reduced axes, of the
  first maximum, or of the first NaN if there is one (numpy). max/min/argmax of nothing with a
  non-empty output is ERR_EMPTY.
- the output extents must be exactly the reduced shape (ERR_SHAPE otherwise).

Variants (each validates its own arguments; `S__<variant>` can be called directly):
- "inner" (last axis reduced): the trailing run of reduced axes is one contiguous row, reduced
  with U native vectors of accumulators and a horizontal combine; other reduced axes loop outside
  it. Needs compact arrays (ERR_LAYOUT otherwise).
- "outer" (last axis kept): the trailing run of kept axes is contiguous in input and output;
  chunks of U vectors of it are accumulated in registers across all reduced positions, then
  stored. Needs compact arrays.
- "generic": scalar loop nest over the real strides of both arrays (any layout, any extents).
The dispatcher takes the vector variant when the arrays are compact and its contiguous extent is
at least one vector, else "generic". Consecutive axes of the same kind (kept/reduced) are merged
into one loop at build time, so e.g. axes (1, 2) of a rank-4 tensor run as a 3-level nest.
"""
from llvmlite import ir

from dynvm.kernels import llvm_math as lm
from dynvm.kernels.abi import ERR_EMPTY, ERR_LAYOUT, ERR_NULL, ERR_SHAPE
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol
from dynvm.kernels.llvm_util import (F32, F64, I32, I64, PTR, REG_TYPE, cast, check, const,
                                     element_type, for_nest, for_range, is_compact, lane_ids, load,
                                     load_strides, new_function, parallel_work, product, prologue,
                                     return_zero_if, splat, split_for, store, vector_fold,
                                     vector_type, with_element)
from dynvm.shape_funcs.reduce import reduced_axes
from dynvm.vm.errors import DynVMError, KernelError

OPS = ("sum", "mean", "max", "min", "argmax")
UNROLL = 4  # vector accumulators per loop iteration (hides the add/compare latency)
TOP_TESTED = {"rotated": False}   # the loop shape these kernels are tuned with (for_range)


def compact_flag(b, ext, strides_ptr):
    """i1: the array's strides are compact row-major (NULL strides are; extent-1 dims and empty
    arrays are ignored)."""
    return is_compact(b, ext, load_strides(b, ext, strides_ptr))


# ---------------------------------------------------------------------------------------------
# the reduction operators, on scalars and vectors alike


def _is_float(ty):
    return element_type(ty) in (F32, F64)


class Reducer:
    """How one op accumulates: acc is a list of values ([value] or [value, index])."""

    def __init__(self, op, in_dtype, out_dtype):
        self.op, self.in_dtype, self.out_dtype = op, in_dtype, out_dtype
        self.elem = REG_TYPE[in_dtype]
        self.acc_elem = F64 if op == "mean" else self.elem

    def init(self, lanes):
        ty = vector_type(self.acc_elem, lanes)
        if self.op in ("sum", "mean"):
            return [const(ty, 0.0 if _is_float(ty) else 0)]
        if _is_float(ty):
            v = const(ty, float("-inf") if self.op in ("max", "argmax") else float("inf"))
        else:
            bits = self.acc_elem.width
            v = const(ty, -(1 << (bits - 1)) if self.op in ("max", "argmax") else (1 << (bits - 1)) - 1)
        return [v] + ([const(vector_type(I64, lanes), 0)] if self.op == "argmax" else [])

    def convert(self, b, x):
        if self.op != "mean":
            return x
        ty = with_element(x.type, F64)
        if self.elem == F64:
            return x
        return b.fpext(x, ty) if self.elem == F32 else b.sitofp(x, ty)

    def step(self, b, acc, x, index):
        """Fold element(s) `x` (already converted) at flat reduced index `index` (increasing)."""
        op = self.op
        if op in ("sum", "mean"):
            return [b.fadd(acc[0], x) if _is_float(x.type) else b.add(acc[0], x)]
        better = self._better(b, x, acc[0])
        if op == "argmax":
            return [b.select(better, x, acc[0]), b.select(better, index, acc[1])]
        return [b.select(better, x, acc[0])]

    def _better(self, b, x, a):
        """x replaces a seen earlier: strictly larger (smaller for min), or the first NaN."""
        cmp = "<" if self.op == "min" else ">"
        if not _is_float(x.type):
            return b.icmp_signed(cmp, x, a)
        if self.op == "argmax":
            first_nan = b.and_(b.fcmp_unordered("uno", x, x), b.fcmp_ordered("ord", a, a))
            return b.or_(b.fcmp_ordered(cmp, x, a), first_nan)
        return b.or_(b.fcmp_ordered(cmp, x, a), b.fcmp_unordered("uno", x, x))

    def combine(self, b, a, c):
        """Merge two partial results over disjoint index sets (any order)."""
        if self.op != "argmax":
            return self.step(b, a, c[0], None)
        (va, ia), (vc, ic) = a, c
        better = self._better(b, vc, va)
        earlier = b.icmp_signed("<", ic, ia)
        if _is_float(va.type):
            same = b.or_(b.fcmp_ordered("==", vc, va),
                         b.and_(b.fcmp_unordered("uno", va, va), b.fcmp_unordered("uno", vc, vc)))
        else:
            same = b.icmp_signed("==", vc, va)
        take = b.or_(better, b.and_(same, earlier))
        return [b.select(take, vc, va), b.select(take, ic, ia)]

    def finish(self, b, acc, count):
        """The value to store: mean divides by `count` (i64 scalar) and converts."""
        if self.op == "argmax":
            return acc[1]
        if self.op != "mean":
            return acc[0]
        value = acc[0]
        lanes = value.type.count if isinstance(value.type, ir.VectorType) else 1
        mean = b.fdiv(value, splat(b, b.sitofp(count, F64), lanes))
        return cast(b, mean, "float64", self.out_dtype)


# ---------------------------------------------------------------------------------------------
# build-time layout


class Layout:
    """Static facts of one kernel: rank, reduced axes, output axis of each kept axis, groups."""

    def __init__(self, spec, rank):
        self.rank = rank
        self.axes = reduced_axes(spec["op"], rank, spec)
        self.keepdims = bool(spec.get("keepdims", False))
        self.kept = [a for a in range(rank) if a not in self.axes]
        self.out_rank = rank if self.keepdims else len(self.kept)
        self.out_axis = {a: (a if self.keepdims else j) for j, a in enumerate(self.kept)}
        self.groups = []  # [(reduced?, [axes])] of consecutive axes of one kind
        for a in range(rank):
            red = a in self.axes
            if self.groups and self.groups[-1][0] == red:
                self.groups[-1][1].append(a)
            else:
                self.groups.append((red, [a]))

    @property
    def last_reduced(self):
        return bool(self.rank) and (self.rank - 1) in self.axes


def check_spec(spec, inputs, outputs):
    """Build-time validation: op, attrs and signature (one numeric input, matching output)."""
    op = spec.get("op")
    if op not in OPS:
        raise KernelError(f"reduce: unknown op {op!r}; known: {OPS}")
    if len(inputs) != 1 or len(outputs) != 1:
        raise KernelError(f"{op}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}")
    (dtype, rank), (out_dtype, out_rank) = inputs[0], outputs[0]
    if dtype not in ("float32", "float64", "int32", "int64"):
        raise KernelError(f"{op}: unsupported input dtype {dtype}")
    want = "int64" if op == "argmax" else dtype
    if out_dtype != want:
        raise KernelError(f"{op}: output dtype must be {want}, got {out_dtype}")
    try:
        layout = Layout(spec, rank)
    except DynVMError as e:
        raise KernelError(f"{op}: bad axes: {e}") from None
    if out_rank != layout.out_rank:
        raise KernelError(f"{op}: output rank must be {layout.out_rank}, got {out_rank}")
    parallel_work(spec, "reduce", op)


# ---------------------------------------------------------------------------------------------
# shared run-time checks


def _checked_start(module, symbol, spec, sig, layout):
    """Variant prologue: argument checks, output extents, empty cases. Returns
    (builder, (x_data, x_ext, x_strides), (y_data, y_ext, y_strides), count)."""
    fn, b = new_function(module, symbol)
    (x, y) = prologue(b, *fn.args, sig)
    x_ext, y_ext = x[1], y[1]
    for a in range(layout.rank):
        if a in layout.axes:
            if layout.keepdims:
                check(b, b.icmp_signed("==", y_ext[a], const(I64, 1)), ERR_SHAPE | 1 << 8 | a << 16)
        else:
            j = layout.out_axis[a]
            check(b, b.icmp_signed("==", y_ext[j], x_ext[a]), ERR_SHAPE | 1 << 8 | j << 16)
    out_size = product(b, y_ext)
    return_zero_if(b, b.icmp_signed("==", out_size, const(I64, 0)))
    count = product(b, [x_ext[a] for a in layout.axes])
    if spec["op"] in ("max", "min", "argmax") or (spec["op"] == "mean" and sig[1][0] in ("int32", "int64")):
        check(b, b.icmp_signed("!=", count, const(I64, 0)), ERR_EMPTY)
    check(b, b.icmp_unsigned("!=", y[0], ir.Constant(PTR, None)), ERR_NULL | 1 << 8)
    has_input = b.icmp_signed("!=", count, const(I64, 0))
    x_null = b.icmp_unsigned("==", x[0], ir.Constant(PTR, None))
    check(b, b.not_(b.and_(has_input, x_null)), ERR_NULL)
    return b, x, y, count


def _store_out(b, reducer, value, y_data, offset):
    store(b, value, y_data, offset)


# ---------------------------------------------------------------------------------------------
# variants


def _emit_generic(module, symbol, spec, sig, layout):
    """Scalar nest over the real strides: kept axes outside, reduced axes inside."""
    reducer = Reducer(spec["op"], sig[0][0], sig[1][0])
    b, x, y, count = _checked_start(module, symbol, spec, sig, layout)
    xs = load_strides(b, x[1], x[2])
    ys = load_strides(b, y[1], y[2])
    kept = [(x[1][a], [xs[a], ys[layout.out_axis[a]]]) for a in layout.kept]
    later = const(I64, 1)
    flat = {}
    for a in reversed(layout.axes):
        flat[a] = later
        later = b.mul(later, x[1][a])
    reduced = [(x[1][a], [xs[a], flat[a]]) for a in layout.axes]
    elem = reducer.elem

    def per_output(offs, _):
        x_off, y_off = offs

        def leaf(roffs, acc):
            value = b.load(b.gep(x[0], [roffs[0]], source_etype=elem), typ=elem)
            return reducer.step(b, acc, reducer.convert(b, value), roffs[1])

        acc = for_nest(b, reduced, [x_off, const(I64, 0)], leaf, carried=reducer.init(1),
                       **TOP_TESTED)
        _store_out(b, reducer, reducer.finish(b, acc, count), y[0], y_off)
        return []

    for_nest(b, kept, [const(I64, 0), const(I64, 0)], per_output, carried=[], **TOP_TESTED)
    b.ret(const(I32, 0))


def _group_dims(b, layout, x_ext):
    """Compact strides per group: (extent, input stride, output stride or flat multiplier)."""
    extents = [product(b, [x_ext[a] for a in axes]) for _, axes in layout.groups]
    in_stride, out_stride, flat = [None] * len(extents), [None] * len(extents), [None] * len(extents)
    acc_in, acc_out, acc_flat = const(I64, 1), const(I64, 1), const(I64, 1)
    for g in reversed(range(len(extents))):
        in_stride[g] = acc_in
        acc_in = b.mul(acc_in, extents[g])
        if layout.groups[g][0]:
            flat[g] = acc_flat
            acc_flat = b.mul(acc_flat, extents[g])
        else:
            out_stride[g] = acc_out
            acc_out = b.mul(acc_out, extents[g])
    return extents, in_stride, out_stride, flat


def _check_compact(b, x, y):
    ok = b.and_(compact_flag(b, x[1], x[2]), compact_flag(b, y[1], y[2]))
    check(b, ok, ERR_LAYOUT)


def _emit_inner(module, symbol, spec, sig, layout):
    """Kept groups outside; reduced groups inside, the last one a contiguous vectorised row."""
    reducer = Reducer(spec["op"], sig[0][0], sig[1][0])
    b, x, y, count = _checked_start(module, symbol, spec, sig, layout)
    _check_compact(b, x, y)
    extents, in_stride, out_stride, flat = _group_dims(b, layout, x[1])
    groups = list(range(len(extents)))
    kept = [(extents[g], [in_stride[g], out_stride[g]]) for g in groups if not layout.groups[g][0]]
    red_groups = [g for g in groups if layout.groups[g][0]]
    outer_red = [(extents[g], [in_stride[g], flat[g]]) for g in red_groups[:-1]]
    n = extents[red_groups[-1]]

    def outputs(b, values, kept_nest):
        x_data, y_data, outer_red, n, count = values

        def per_output(offs, _):
            x_off, y_off = offs

            def leaf(roffs, acc):
                row = _reduce_row(b, reducer, x_data, roffs[0], n, roffs[1])
                return reducer.combine(b, acc, row)

            acc = for_nest(b, outer_red, [x_off, const(I64, 0)], leaf, carried=reducer.init(1),
                           **TOP_TESTED)
            _store_out(b, reducer, reducer.finish(b, acc, count), y_data, y_off)
            return []
        kept_nest(per_output)

    _split_kept(b, spec, x, kept, [x[0], y[0], outer_red, n, count], outputs)
    b.ret(const(I32, 0))


def _split_kept(b, spec, x, kept, values, outputs):
    """outputs(b', values', nest) over every kept position, `nest(per_output)` walking them:
    the outermost kept group is cut into chunks for the kernel threads (from the family's
    PARALLEL_WORK input elements), each output reduced wholly by one chunk."""
    def nest_of(b, kept, lo, hi):
        def nest(per_output):
            if not kept:
                per_output([const(I64, 0), const(I64, 0)], [])
                return

            def first(i):
                start = [b.mul(i, kept[0][1][0]), b.mul(i, kept[0][1][1])]
                for_nest(b, kept[1:], start, per_output, carried=[], **TOP_TESTED)
            for_range(b, lo, hi, first, **TOP_TESTED)
        return nest

    if not kept:
        outputs(b, values, nest_of(b, kept, None, None))
        return
    split_for(b, [values, kept], kept[0][0],
              lambda b, v, lo, hi: outputs(b, v[0], nest_of(b, v[1], lo, hi)), _worth(b, spec, x))


def _worth(b, spec, x):
    size = product(b, x[1])
    return b.icmp_unsigned(">=", size, const(I64, parallel_work(spec, "reduce", spec["op"])))


def _reduce_row(b, reducer, data, start, n, flat_base):
    """Reduce data[start : start+n] (contiguous) to a scalar acc; indices flat_base + j."""
    elem = reducer.elem

    def body(j, lanes, acc):
        v = reducer.convert(b, load(b, data, b.add(start, j), vector_type(elem, lanes)))
        idx = None
        if reducer.op == "argmax":
            idx = b.add(splat(b, b.add(flat_base, j), lanes), lane_ids(lanes))
        return reducer.step(b, acc, v, idx)

    return vector_fold(b, n, lm.vector_lanes(elem), reducer.init, body,
                       lambda a, c: reducer.combine(b, a, c), unroll=UNROLL)


def _emit_outer(module, symbol, spec, sig, layout):
    """Kept groups but the last outside; the last kept group (contiguous in x and y) in chunks of
    vectors kept in registers while all reduced groups are folded in."""
    reducer = Reducer(spec["op"], sig[0][0], sig[1][0])
    b, x, y, count = _checked_start(module, symbol, spec, sig, layout)
    _check_compact(b, x, y)
    extents, in_stride, out_stride, flat = _group_dims(b, layout, x[1])
    groups = list(range(len(extents)))
    outer_kept = [(extents[g], [in_stride[g], out_stride[g]]) for g in groups[:-1]
                  if not layout.groups[g][0]]
    reduced = [(extents[g], [in_stride[g], flat[g]]) for g in groups if layout.groups[g][0]]
    m = extents[-1]
    lanes = lm.vector_lanes(reducer.elem)

    def columns(b, values, c_lo, c_hi):
        """Output columns [c_lo, c_hi) of every row (of the outer kept groups)."""
        x_data, y_data, reduced, count = values

        def per_row(offs, _):
            x_off, y_off = offs
            c = c_lo
            for width, vecs in ((UNROLL * lanes, UNROLL), (lanes, 1), (1, 1)):
                vl = width // vecs
                c, _ = for_range(b, c, b.sub(c_hi, const(I64, width - 1)),
                                 lambda c, _, vl=vl, vecs=vecs: _outer_chunk(
                                     b, reducer, x_data, y_data, reduced, x_off, y_off, c, vl,
                                     vecs, count),
                                 step=width, carried=[], **TOP_TESTED)
            return []
        return per_row

    values = [x[0], y[0], reduced, count]
    if outer_kept:      # rows to the threads
        _split_kept(b, spec, x, outer_kept, [values, m], lambda b, v, nest: nest(
            columns(b, v[0], const(I64, 0), v[1])))
    else:               # one row: its columns to the threads, in whole unrolled chunks
        split_for(b, values, m, lambda b, v, lo, hi: columns(b, v, lo, hi)(
            [const(I64, 0), const(I64, 0)], []), _worth(b, spec, x), align=UNROLL * lanes)
    b.ret(const(I32, 0))


def _outer_chunk(b, reducer, x_data, y_data, reduced, x_off, y_off, c, lanes, vecs, count):
    """y[y_off + c : + lanes*vecs] = reduce over all reduced positions of the x rows."""
    elem = reducer.elem
    part = len(reducer.init(1))

    def leaf(roffs, accs):
        base = b.add(b.add(x_off, roffs[0]), c)
        idx = splat(b, roffs[1], lanes) if reducer.op == "argmax" else None
        out = []
        for u in range(vecs):
            at = b.add(base, const(I64, u * lanes))
            v = reducer.convert(b, load(b, x_data, at, vector_type(elem, lanes)))
            out += reducer.step(b, accs[u * part:(u + 1) * part], v, idx)
        return out

    accs = for_nest(b, reduced, [const(I64, 0), const(I64, 0)], leaf,
                    carried=reducer.init(lanes) * vecs, **TOP_TESTED)
    for u in range(vecs):
        value = reducer.finish(b, accs[u * part:(u + 1) * part], count)
        store(b, value, y_data, b.add(b.add(y_off, c), const(I64, u * lanes)))
    return []


# ---------------------------------------------------------------------------------------------
# family entry points


def variants_of(layout):
    """The vector variant that fits the static axis structure (if any) and the fallback."""
    if layout.rank == 0:
        return ["generic"]
    return ["inner" if layout.last_reduced else "outer", "generic"]


def emit(module, symbol, spec, inputs, outputs):
    sig = [tuple(inputs[0]), tuple(outputs[0])]
    layout = Layout(spec, sig[0][1])
    emitters = {"inner": _emit_inner, "outer": _emit_outer, "generic": _emit_generic}
    names = variants_of(layout)
    for name in names:
        emitters[name](module, variant_symbol(symbol, name), spec, sig, layout)
    if len(names) == 1:
        return emit_dispatcher(module, symbol, sig, [("generic", None)])
    lanes = lm.vector_lanes(REG_TYPE[sig[0][0]])
    trailing = layout.groups[-1][1]

    def vector_fits(b, arrays):
        (x, y) = arrays
        run = product(b, [x[1][a] for a in trailing])
        ok = b.and_(compact_flag(b, x[1], x[2]), compact_flag(b, y[1], y[2]))
        return b.and_(ok, b.icmp_signed(">=", run, const(I64, lanes)))

    return emit_dispatcher(module, symbol, sig, [(names[0], vector_fits), ("generic", None)])


FAMILY = register(Family("reduce", check_spec, emit))
