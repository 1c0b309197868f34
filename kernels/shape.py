"""The "shape_func" family: a registered shape function compiled for one call site.

There is no second copy of any shape function here. The functions of shape_funcs/ are written
against a small integer interface (shape_funcs/common.py); this module runs them once with
*symbolic* dims, `Sym` values whose operators emit LLVM IR, and the result is a kernel with the
kernel ABI (`int32_t f(DLTensor *args, int32_t nargs)`, kernels/abi.py):

- args: the op's input tensors (as the VM passes them to the Python function), then one int64
  1-D output tensor per result shape (an upper-bound function has two: the bound and the
  storage); output k has exactly as many elements as result k has dims;
- returns 0 after writing every result dim, or an error code, writing nothing: ERR_SHAPE when
  a check of the function fails (where the Python function raises ShapeError), ERR_ARITH when
  a dim computation overflows int64, divides by zero or casts a float out of range (where
  Python computes with unbounded ints, or raises ZeroDivisionError / OverflowError), ERR_ALLOC
  when the scratch of unique's or nms's count is unavailable (nms passes its kernel's codes
  through), and ERR_NULL, ERR_NDIM, ERR_DTYPE, ERR_EXTENT for arguments that break the
  signature.
  The caller's contract: on any non-zero code, run the Python function on the same inputs; it
  raises the error (same class, same message: one definition) or, for ERR_ARITH, may return
  shapes Python computes exactly.

Specialisation: a call site fixes the attrs, the input dtypes and ranks, and optionally static
extents (the checked types' known dims; None for Any). Ranks and attrs are Python values while
tracing, so loops over dims unroll; static extents are checked on entry (ERR_SHAPE) and then
fold as constants. Value-dependent control flow must go through the interface: a symbolic
value in a Python `if` raises TraceError while tracing, and that call site is not native
(`NotNative`, with the reason and the line).

API for the native tier: `native_shape_func_spec(name, attrs, input_sigs)` returns a
`NativeShapeFunc` (the family's spec, the kernel signature and the lengths of the result
shapes); `.add_to(kernel_builder, name)` adds it like any kernel, so the trust model applies
unchanged (a file's shape-function kernels are rebuilt from their specs, never loaded as they
are; the generator fingerprint covers shape_funcs/ too). `NATIVE_UNSUPPORTED` lists the
registered shape functions that have no native form at all, with the reason.
"""
from __future__ import annotations

import hashlib
import json
import traceback
from typing import NamedTuple

from llvmlite import ir

from dynvm.kernels.abi import ERR_ALLOC, ERR_ARITH, ERR_NULL, ERR_SHAPE, MAX_RANK
from dynvm.kernels.family import Family, emit_dispatcher, get_family, register, variant_symbol
from dynvm.kernels.llvm_util import (DLTENSOR, F32, F64, I1, I8, I16, I32, I64, MEM_TYPE, PTR,
                                     c64, check, check_equal, const, for_nest, get_function, load,
                                     load_strides, new_function, prologue, smax, stack_buffer,
                                     store, truth)
from dynvm.kernels.sort import SORT_DTYPES, Emitter
from dynvm.shape_funcs import SHAPE_FUNCS
from dynvm.shape_funcs.common import Symbolic, TracedInput, TraceError
from dynvm.vm.dtypes import DTYPES
from dynvm.vm.errors import KernelError, NotNative, ShapeError

FAMILY = "shape_func"
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1

# Registered shape functions with no native form, and why (the native tier calls the Python
# function for these; every other one compiles, call site by call site). Today: none.
NATIVE_UNSUPPORTED: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# symbolic values


def _operator(int_op, float_op):
    """A binary operator of Sym and its reflected form: int_op(sym, x, y) on i64 IR values
    (None: not for ints), float_op the IRBuilder method for f64 (None: not for floats)."""
    return (lambda self, o: self._arith(o, False, int_op, float_op),
            lambda self, o: self._arith(o, True, int_op, float_op))


def _comparison(op):
    return lambda self, o: self._compare(o, op)


class Sym(Symbolic):
    """A run-time value while tracing: an i64 ("int"), an f64 ("float": float32 values are
    held widened, as Python holds them) or an i1 ("bool"), emitted with builder `b`."""

    __slots__ = ("b", "v", "kind")

    def __init__(self, b, v, kind):
        self.b, self.v, self.kind = b, v, kind

    def _as(self, x, kind):
        return _lift(self.b, x, kind)

    def _new(self, v, kind):
        return Sym(self.b, v, kind)

    # -- arithmetic (ints: Python's exact results, or ERR_ARITH)
    def _overflowing(self, name, x, y):
        b = self.b
        fn = get_function(b.module, f"llvm.{name}.with.overflow.i64",
                          ir.FunctionType(ir.LiteralStructType([I64, I1]), [I64, I64]))
        r = b.call(fn, [x, y])
        check(b, b.not_(b.extract_value(r, 1)), ERR_ARITH)
        return b.extract_value(r, 0)

    def _arith(self, other, swap, int_op, float_op):
        kind = _number_kind(self, other)
        x, y = self._as(self, kind), self._as(other, kind)
        if swap:
            x, y = y, x
        if kind == "float":
            if float_op is None:
                raise TraceError("floor division or modulo of a float")
            return self._new(getattr(self.b, float_op)(x, y), "float")
        if int_op is None:
            raise TraceError("true division of ints")
        return self._new(int_op(self, x, y), "int")

    __add__, __radd__ = _operator(lambda s, x, y: s._overflowing("sadd", x, y), "fadd")
    __sub__, __rsub__ = _operator(lambda s, x, y: s._overflowing("ssub", x, y), "fsub")
    __mul__, __rmul__ = _operator(lambda s, x, y: s._overflowing("smul", x, y), "fmul")
    __truediv__, __rtruediv__ = _operator(None, "fdiv")
    __floordiv__, __rfloordiv__ = _operator(lambda s, x, y: s._divmod(x, y)[0], None)
    __mod__, __rmod__ = _operator(lambda s, x, y: s._divmod(x, y)[1], None)

    def __neg__(self):
        return 0 - self

    def _divmod(self, x, y):
        """Python's floor division and modulo (the remainder takes the divisor's sign):
        LLVM's sdiv truncates, so a non-zero remainder whose sign differs from the divisor's
        moves the quotient down by one and the remainder up by the divisor. Division by zero
        and INT64_MIN // -1 are ERR_ARITH."""
        b = self.b
        check(b, b.icmp_signed("!=", y, c64(0)), ERR_ARITH)
        check(b, b.not_(b.and_(b.icmp_signed("==", x, c64(I64_MIN)),
                               b.icmp_signed("==", y, c64(-1)))), ERR_ARITH)
        q, r = b.sdiv(x, y), b.srem(x, y)
        signs_differ = b.icmp_signed("<", b.xor(r, y), c64(0))
        adjust = b.and_(b.icmp_signed("!=", r, c64(0)), signs_differ)
        return (b.sub(q, b.zext(adjust, I64)),
                b.add(r, b.select(adjust, y, c64(0))))

    # -- comparisons and conditions
    def _compare(self, other, op):
        kind = _number_kind(self, other)
        x, y = self._as(self, kind), self._as(other, kind)
        if kind == "float":   # Python: comparisons with NaN are False, except !=
            v = (self.b.fcmp_unordered if op == "!=" else self.b.fcmp_ordered)(op, x, y)
        else:
            v = self.b.icmp_signed(op, x, y)
        return self._new(v, "bool")

    __eq__, __ne__ = _comparison("=="), _comparison("!=")
    __lt__, __le__, __gt__, __ge__ = (_comparison(op) for op in ("<", "<=", ">", ">="))
    __hash__ = None

    def _logic(self, other, op):
        return self._new(op(self._as(self, "bool"), self._as(other, "bool")), "bool")

    def __and__(self, o):
        return self._logic(o, self.b.and_)

    def __or__(self, o):
        return self._logic(o, self.b.or_)

    __rand__, __ror__ = __and__, __or__

    def not_(self):
        return self._new(self.b.not_(self._as(self, "bool")), "bool")

    def fails(self):
        """The interface's `fails`: return ERR_SHAPE unless this condition holds."""
        check(self.b, self._as(self, "bool"), ERR_SHAPE)
        return False

    def select(self, a, b):
        kind = _kind(a, b)
        return self._new(self.b.select(self._as(self, "bool"), self._as(a, kind),
                                       self._as(b, kind)), kind)

    # -- floats (arange)
    def is_finite(self):
        if self.kind != "float":
            return True
        fabs = get_function(self.b.module, "llvm.fabs.f64", ir.FunctionType(F64, [F64]))
        v = self.b.call(fabs, [self.v])
        return self._new(self.b.fcmp_ordered("<", v, const(F64, float("inf"))), "bool")

    def ceil(self):
        """math.ceil: ERR_ARITH where Python raises (NaN, infinities) or the int exceeds int64."""
        b = self.b
        fn = get_function(b.module, "llvm.ceil.f64", ir.FunctionType(F64, [F64]))
        c = b.call(fn, [self._as(self, "float")])
        return self._new(self._float_to_int(c, 64), "int")

    def _float_to_int(self, v, bits):
        """Truncate f64 `v` to a `bits`-bit signed int (as i64): ERR_ARITH out of range or NaN
        (numpy's cast is undefined there)."""
        b = self.b
        lo, hi = const(F64, -float(1 << (bits - 1))), const(F64, float(1 << (bits - 1)))
        check(b, b.and_(b.fcmp_ordered(">=", v, lo), b.fcmp_ordered("<", v, hi)), ERR_ARITH)
        return b.fptosi(v, I64)

    def cast(self, src: str, dst: str):
        """numpy's astype of a scalar from dtype `src` to `dst`, as Python's `.item()` holds
        it: floats widened to f64 (float32 rounded first), ints in i64, bool as 0/1."""
        b = self.b
        if src == dst:
            return self
        if dst in ("float32", "float64"):
            if self.kind == "float":
                v = self.v if dst == "float64" else b.fpext(b.fptrunc(self.v, F32), F64)
            else:
                i = self._as(self, "int")
                v = b.sitofp(i, F64) if dst == "float64" else b.fpext(b.sitofp(i, F32), F64)
            return self._new(v, "float")
        if dst == "bool":
            kind = "float" if self.kind == "float" else "int"
            return self._new(b.zext(truth(b, self._as(self, kind),
                                          "float64" if kind == "float" else "int64"), I64), "int")
        bits = 32 if dst == "int32" else 64
        if self.kind == "float":
            return self._new(self._float_to_int(self.v, bits), "int")
        v = self._as(self, "int")
        if bits == 32:   # wraps like numpy
            v = b.sext(b.trunc(v, I32), I64)
        return self._new(v, "int")


def _lift(b, x, kind):
    """The IR value of a Python or symbolic value as `kind` (bools widen to 0 / 1, ints to
    floats); a constant beyond int64 has no native form."""
    if isinstance(x, Sym):
        if x.kind == kind:
            return x.v
        if x.kind == "bool" and kind == "int":
            return b.zext(x.v, I64)
        if x.kind in ("bool", "int") and kind == "float":
            return b.sitofp(_lift(b, x, "int"), F64)
        raise TraceError(f"a symbolic {x.kind} is used as a {kind}")
    if isinstance(x, bool) or type(x) is int:
        if kind == "bool":
            if isinstance(x, bool):
                return const(I1, int(x))
            raise TraceError(f"the int {x} is used as a condition")
        if kind == "float":
            return const(F64, float(x))
        if not I64_MIN <= x <= I64_MAX:
            raise NotNative(f"the constant {x} does not fit in int64")
        return c64(int(x))
    if isinstance(x, float) and kind == "float":
        return const(F64, x)
    raise TraceError(f"{type(x).__name__} value {x!r} in a shape computation")


def _kind(*values):
    """The common kind of Python and symbolic values: float if any is, bool if all are."""
    kinds = {x.kind if isinstance(x, Sym) else "float" if isinstance(x, float) else
             "bool" if isinstance(x, bool) else "int" for x in values}
    return "float" if "float" in kinds else "bool" if kinds == {"bool"} else "int"


def _number_kind(*values):
    """Arithmetic and comparisons: bools count as 0 / 1."""
    kind = _kind(*values)
    return "int" if kind == "bool" else kind


# ---------------------------------------------------------------------------------------------
# traced inputs


class TracedTensor(TracedInput):
    """An input tensor while tracing: dtype and rank static; `shape` holds the static extents
    as ints and the others as symbolic ints. Element reads are typed loads (int32 / int64 /
    bool as ints, float32 / float64 as floats) through the DLTensor's strides."""

    __slots__ = ("b", "dtype", "shape", "ndim", "_data", "_extents", "_strides_ptr", "_strides")

    def __init__(self, b, dtype, shape, data, extents, strides_ptr):
        self.b, self.dtype, self.shape, self.ndim = b, dtype, tuple(shape), len(shape)
        self._data, self._extents, self._strides_ptr = data, extents, strides_ptr
        self._strides = None

    def _layout(self):
        """Element strides (loaded once, where first needed: every later read is dominated by
        that point, since the traced code is straight-line apart from loops that produce no
        value read afterwards) and a non-NULL data pointer."""
        if self._strides is None:
            b = self.b
            check(b, b.icmp_unsigned("!=", self._data, ir.Constant(PTR, None)), ERR_NULL)
            self._strides = load_strides(b, self._extents, self._strides_ptr)
        return self._strides

    def _load(self, offset):
        b = self.b
        v = load(b, self._data, offset, MEM_TYPE[self.dtype])
        if self.dtype in ("float32", "float64"):
            return Sym(b, v if self.dtype == "float64" else b.fpext(v, F64), "float")
        if self.dtype == "bool":
            return Sym(b, b.zext(truth(b, v, "int64"), I64), "int")
        return Sym(b, v if self.dtype == "int64" else b.sext(v, I64), "int")

    def vector(self) -> tuple:
        """The elements of a 1-D tensor, whose length must be static."""
        n = self.shape[0]
        if isinstance(n, Sym):
            raise NotNative("a shape vector input needs a static length (pass it in the "
                            "input signature)")
        (stride,) = self._layout()
        return tuple(self._load(self.b.mul(c64(i), stride)) for i in range(n))

    def scalar(self):
        """The first element (the caller checked there is exactly one)."""
        self._layout()
        return self._load(c64(0))

    def count_nonzero(self):
        """np.count_nonzero: a loop over every element (NaN counts as non-zero)."""
        b = self.b
        strides = self._layout()
        ext = [c64(d) if isinstance(d, int) else d.v for d in self.shape]

        def body(offsets, values):
            v = load(b, self._data, offsets[0], MEM_TYPE[self.dtype])
            nonzero = truth(b, v, "int64" if self.dtype == "bool" else self.dtype)
            return [b.add(values[0], b.zext(nonzero, I64))]
        (count,) = for_nest(b, [(e, [s]) for e, s in zip(ext, strides)], [c64(0)], body,
                            carried=[c64(0)])
        return Sym(b, count, "int")

    def count_distinct(self):
        """len(np.unique(x)) of a 1-D tensor: a hash set of the values, about 9n..36n bytes of
        scratch (ERR_ALLOC when calloc fails)."""
        if self.dtype not in SORT_DTYPES:
            raise NotNative(f"counting distinct {self.dtype} values (sortable dtypes: "
                            f"{', '.join(SORT_DTYPES)})")
        b = self.b
        (stride,) = self._layout()
        n = c64(self.shape[0]) if isinstance(self.shape[0], int) else self.shape[0].v
        count = b.call(_count_distinct_function(b.module, self.dtype), [self._data, stride, n])
        check(b, b.icmp_signed(">=", count, c64(0)), ERR_ALLOC)
        return Sym(b, count, "int")


    def upper_bound_count(self, family, spec, others, bound, dtype):
        """The true length of the 1-D result of an upper-bound kernel of `family` for `spec`,
        run on (self, *others) into scratch of `bound` elements of `dtype`: how a
        data-dependent shape function counts with the op's own kernel (nms). The kernel is
        emitted into this module under a name derived from its spec; its failure codes pass
        through (the caller then runs the Python function)."""
        b = self.b
        inputs = [self] + list(others)
        sig = [(t.dtype, t.ndim) for t in inputs] + [(dtype, 1), ("int64", 1)]
        symbol = "dynvm.shape.kernel." + hashlib.sha256(
            json.dumps([family, spec, sig], sort_keys=True).encode()).hexdigest()[:16]
        if symbol not in b.module.globals:
            ins, outs = [list(x) for x in sig[:-2]], [list(x) for x in sig[-2:]]
            kernels = get_family(family)
            try:
                kernels.check(spec, ins, outs)
            except KernelError as e:
                raise NotNative(f"no {family} kernel for this call site: {e}") from None
            kernels.emit(b.module, symbol, spec, ins, outs)
        bound = _lift(b, bound, "int")
        malloc = get_function(b.module, "malloc", ir.FunctionType(PTR, [I64]))
        item = DTYPES[dtype][2] // 8
        scratch = b.call(malloc, [b.mul(smax(b, bound, c64(1)), c64(item))])
        check(b, b.icmp_unsigned("!=", scratch, ir.Constant(PTR, None)), ERR_ALLOC)
        count = stack_buffer(b, I64, 1)
        args = stack_buffer(b, DLTENSOR, len(sig))
        for t in inputs:
            t._layout()                   # non-NULL data
        null = ir.Constant(PTR, None)
        arrays = [(t._data, t._extents, t._strides_ptr) for t in inputs]
        arrays += [(scratch, [bound], null), (count, [c64(1)], null)]
        for k, ((data, extents, strides), (dt, rank)) in enumerate(zip(arrays, sig)):
            shape = stack_buffer(b, I64, max(rank, 1))
            for j, e in enumerate(extents):
                b.store(e, b.gep(shape, [c64(j)], inbounds=True, source_etype=I64))
            _, code, bits = DTYPES[dt]
            fields = [(0, data), (2, const(I32, rank)), (4, shape), (5, strides),
                      (6, c64(0))]
            for f, value in fields:
                b.store(value, b.gep(args, [c64(k), const(I32, f)], inbounds=True,
                                     source_etype=DLTENSOR))
            for f, (j, value) in ((1, (0, const(I32, 1))), (1, (1, const(I32, 0))),
                                  (3, (0, const(I8, code))), (3, (1, const(I8, bits))),
                                  (3, (2, const(I16, 1)))):
                b.store(value, b.gep(args, [c64(k), const(I32, f), const(I32, j)],
                                     inbounds=True, source_etype=DLTENSOR))
        kernel = b.module.globals[symbol]
        rc = b.call(kernel, [args, const(I32, len(sig))])
        b.call(get_function(b.module, "free", ir.FunctionType(ir.VoidType(), [PTR])), [scratch])
        fn = b.function
        fail, ok = fn.append_basic_block("kernel.fail"), fn.append_basic_block("kernel.ok")
        b.cbranch(b.icmp_signed("==", rc, const(I32, 0)), ok, fail)
        b.position_at_end(fail)
        b.ret(rc)
        b.position_at_end(ok)
        return Sym(b, b.load(count, typ=I64), "int")


def _count_distinct_function(module, dtype):
    """i64 count(ptr data, i64 stride, i64 n): the number of distinct values of data[0:n) as
    np.unique counts them (every NaN is one value, -0.0 equals 0.0), or -1 when the scratch
    memory is unavailable. One pass inserting each value's canonical bits into an open-addressing
    hash set (a power-of-two table of at least 2n slots, linear probing): O(n) expected."""
    name = f"dynvm.shape.count_distinct.{dtype}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    e = Emitter(module, name, ir.FunctionType(I64, [PTR, I64, I64]), internal=True)
    data, stride, n = e.fn.args
    b = e.b
    with e.if_(b.icmp_signed(">", n, c64(1 << 40))):     # no table that big: let Python count
        b.ret(c64(-1))
    ctlz = get_function(module, "llvm.ctlz.i64", ir.FunctionType(I64, [I64, I1]))
    bits = b.sub(c64(64), b.call(ctlz, [b.sub(b.mul(n, c64(2)), c64(1)), const(I1, 0)]))
    slots = b.shl(c64(1), bits)                           # 2n <= slots < 4n (1 when n is 0)
    calloc = get_function(module, "calloc", ir.FunctionType(PTR, [I64, I64]))
    keys = b.call(calloc, [slots, c64(9)])               # i64 keys, then one byte per slot: used
    with e.if_(b.icmp_unsigned("==", keys, ir.Constant(PTR, None))):
        b.ret(c64(-1))
    used = b.gep(keys, [b.mul(slots, c64(8))], inbounds=True, source_etype=I8)
    mask, shift = b.sub(slots, c64(1)), b.sub(c64(64), bits)
    found, slot = e.var(I64, c64(0)), e.var(I64)

    def insert(i):
        key = _canonical_bits(b, dtype, e.load(dtype, data, b.mul(i, stride)))
        hashed = b.lshr(b.mul(key, c64(0x9E3779B97F4A7C15 - (1 << 64))), shift)
        e.set(slot, b.and_(hashed, mask))

        def taken_by_other():
            at = e.get(slot)
            taken = b.icmp_unsigned("!=", e.load("bool", used, at), const(I8, 0))
            return b.and_(taken, b.icmp_unsigned("!=", e.load("int64", keys, at), key))
        e.while_(taken_by_other, lambda: e.set(slot, b.and_(b.add(e.get(slot), c64(1)), mask)))
        at = e.get(slot)
        with e.if_(b.icmp_unsigned("==", e.load("bool", used, at), const(I8, 0))):
            e.store("bool", const(I8, 1), used, at)
            e.store("int64", key, keys, at)
            e.set(found, b.add(e.get(found), c64(1)))
    e.for_range(c64(0), n, insert)
    b.call(get_function(module, "free", ir.FunctionType(ir.VoidType(), [PTR])), [keys])
    b.ret(e.get(found))
    return e.finish()


def _canonical_bits(b, dtype, value):
    """An i64 equal for two values exactly when np.unique counts them as one: floats with
    -0.0 as 0.0 and every NaN as one NaN, then their bits; ints sign-extended."""
    if dtype == "int32":
        return b.sext(value, I64)
    if dtype == "int64":
        return value
    zero, nan = const(value.type, 0.0), const(value.type, float("nan"))
    value = b.select(b.fcmp_ordered("==", value, zero), zero, value)
    value = b.select(b.fcmp_unordered("uno", value, value), nan, value)
    if value.type == F32:
        return b.zext(b.bitcast(value, I32), I64)
    return b.bitcast(value, I64)


# ---------------------------------------------------------------------------------------------
# tracing, the family


def _trace(b, spec, inputs, arrays) -> list:
    """Run the shape function on traced inputs; its result shapes (ints and Syms). Raises
    NotNative when the call site has no native form."""
    name, attrs = spec["shape_func"], spec["attrs"]
    traced = []
    for k, ((dtype, _), dims, (data, extents, strides)) in enumerate(zip(inputs, spec["dims"],
                                                                           arrays)):
        shape = []
        for j, (d, e) in enumerate(zip(dims, extents)):
            if d is None:
                shape.append(Sym(b, e, "int"))
            else:
                check_equal(b, e, d, k, j)
                shape.append(d)
        traced.append(TracedTensor(b, dtype, shape, data, extents, strides))
    try:
        shapes = SHAPE_FUNCS[name].fn(traced, attrs)
    except NotNative:
        raise
    except ShapeError as e:
        raise NotNative(f"{name}: fails for every input of this signature ({e})") from None
    except TraceError as e:
        raise NotNative(f"{name}: value-dependent control flow at {_where(e)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - bad attrs: the Python function raises the same
        raise NotNative(f"{name}: raises {type(e).__name__} while tracing at {_where(e)}: "
                        f"{e}") from None
    for shape in shapes:
        for d in shape:
            if isinstance(d, Sym) and d.kind != "int" or not isinstance(d, (int, Sym)):
                raise NotNative(f"{name}: a result dim is not an int ({d!r})")
            _lift(b, d, "int")    # a constant dim beyond int64 has no native form
    return shapes


def _where(error) -> str:
    """function and line of the innermost shape-function frame of an error raised while tracing."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "shape_funcs" in f.filename and f.name != "_concrete"]
    return f"{frames[-1].name} line {frames[-1].lineno}" if frames else "?"


def _check_spec(spec, inputs):
    if not isinstance(spec, dict) or set(spec) != {"shape_func", "attrs", "dims"}:
        raise KernelError(f"shape_func spec must have keys shape_func, attrs, dims; got {spec!r}")
    name, attrs, dims = spec["shape_func"], spec["attrs"], spec["dims"]
    if name not in SHAPE_FUNCS:
        raise KernelError(f"no shape function {name!r}")
    if name in NATIVE_UNSUPPORTED:
        raise NotNative(f"{name}: {NATIVE_UNSUPPORTED[name]}")
    if not isinstance(attrs, dict):
        raise KernelError(f"shape_func attrs must be a dict, got {attrs!r}")
    if not isinstance(dims, list) or len(dims) != len(inputs) or any(
            not isinstance(d, list) or len(d) != rank for d, (_, rank) in zip(dims, inputs)):
        raise KernelError(f"shape_func dims {dims!r} do not match the input ranks")
    for d in (d for ds in dims for d in ds):
        if d is not None and (type(d) is not int or not 0 <= d <= I64_MAX):
            raise KernelError(f"shape_func static extent {d!r} is not an int in [0, 2**63)")


def _dry_run(spec, inputs) -> list:
    """The result shapes of a trace into a scratch module (validates the call site)."""
    module = ir.Module(name="dynvm_shape_probe")
    fn, b = new_function(module, "probe")
    return _trace(b, spec, inputs, prologue(b, *fn.args, inputs))


def check_kernel(spec, inputs, outputs):
    _check_spec(spec, inputs)
    lengths = [len(s) for s in _dry_run(spec, inputs)]
    if outputs != [["int64", 1]] * len(lengths):
        raise KernelError(f"{spec['shape_func']}: outputs must be {len(lengths)} int64 1-D "
                          f"tensors (one per result shape), got {outputs}")


def emit_kernel(module, symbol, spec, inputs, outputs):
    """One variant, `generic`: the traced function, then the result dims stored."""
    sig = inputs + outputs
    fn, b = new_function(module, variant_symbol(symbol, "generic"))
    arrays = prologue(b, *fn.args, sig)
    shapes = _trace(b, spec, inputs, arrays[:len(inputs)])
    stores = []
    for k, shape in enumerate(shapes):    # every check first: nothing is written on failure
        arg = len(inputs) + k
        data, (extent,), strides_ptr = arrays[arg]
        check_equal(b, extent, len(shape), arg, 0)
        if shape:
            check(b, b.icmp_unsigned("!=", data, ir.Constant(PTR, None)), ERR_NULL | arg << 8)
            (stride,) = load_strides(b, [extent], strides_ptr)
            stores += [(_lift(b, d, "int"), data, b.mul(c64(j), stride))
                       for j, d in enumerate(shape)]
    for value, data, offset in stores:
        store(b, value, data, offset)
    b.ret(const(I32, 0))
    return emit_dispatcher(module, symbol, sig, [("generic", None)])


register(Family(FAMILY, check_kernel, emit_kernel))


# ---------------------------------------------------------------------------------------------
# the API of the native tier


class NativeShapeFunc(NamedTuple):
    """A shape function compiled for one call site: `family`, `spec`, `inputs`, `outputs` are
    what KernelBuilder.add_compiled takes; `lengths[k]` is the number of dims of result k (the
    element count of output k)."""

    family: str
    spec: dict
    inputs: list
    outputs: list
    lengths: list

    def add_to(self, builder, name: str) -> int:
        """Add the kernel to a KernelBuilder; its index there."""
        return builder.add_compiled(name, self.family, self.spec, self.inputs, self.outputs)


def native_shape_func_spec(name: str, attrs: dict, input_sigs) -> NativeShapeFunc:
    """The native form of shape function `name` at a call site with `attrs` and inputs
    `input_sigs`: [(dtype, dims)...], dims a list of static extents (None where only the run
    time knows it), or an int rank when no extent is static. Raises NotNative (a KernelError)
    with the reason when the call site has none: the function is in NATIVE_UNSUPPORTED, its
    control flow depends on a run-time value here, a shape vector input has no static length,
    or it fails (or raises) whatever the input."""
    from dynvm.kernels.builder import _plain
    inputs, dims = [], []
    for dtype, d in input_sigs:
        d = [None] * d if type(d) is int else [None if e is None else int(e) for e in d]
        if dtype not in DTYPES or len(d) > MAX_RANK:
            raise KernelError(f"{name}: bad input signature {(dtype, d)!r}")
        inputs.append([dtype, len(d)])
        dims.append(d)
    spec = {"shape_func": name, "attrs": _plain(dict(attrs)), "dims": dims}
    _check_spec(spec, inputs)
    lengths = [len(s) for s in _dry_run(spec, inputs)]
    return NativeShapeFunc(FAMILY, spec, inputs, [["int64", 1] for _ in lengths], lengths)
