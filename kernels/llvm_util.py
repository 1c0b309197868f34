"""Shared LLVM IR building blocks for every kernel family (llvmlite.ir).

The kernel ABI seen from inside: `int32_t f(DLTensor *args, int32_t nargs)`; a prologue validates
every argument (count, rank, dtype, NULL pointers, extents) and returns an error code
`kind | arg << 8 | dim << 16` instead of touching memory it was not promised.
"""
from llvmlite import ir

from dynvm.vm.dtypes import DTYPES
from dynvm.kernels.abi import (ERR_ALLOC, ERR_BROADCAST, ERR_DTYPE, ERR_EMPTY,  # noqa: F401
                                ERR_EXTENT, ERR_LAYOUT, ERR_NARGS, ERR_NDIM, ERR_NULL,
                                ERR_SHAPE, ERR_STEPS, ERR_VALUE, ERROR_KINDS)


I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
DLTENSOR = ir.LiteralStructType([PTR, ir.LiteralStructType([I32, I32]), I32,
                                 ir.LiteralStructType([I8, I8, I16]), PTR, PTR, I64])
F_DATA, F_NDIM, F_DTYPE, F_SHAPE, F_STRIDES = 0, 2, 3, 4, 5

REG_TYPE = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I1}
MEM_TYPE = dict(REG_TYPE, bool=I8)



def const(ty, value):
    return ir.Constant(ty, value)


def intrinsic(module, name, ty):
    return module.declare_intrinsic(name, [ty])


def get_function(module, name, fnty):
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name=name)


def check(b, ok, code):
    """Continue when `ok` (i1) holds, else return `code` from the function."""
    fn = b.function
    fail = fn.append_basic_block("fail")
    cont = fn.append_basic_block("ok")
    b.cbranch(ok, cont, fail)
    b.position_at_end(fail)
    b.ret(const(I32, code))
    b.position_at_end(cont)


def loop(b, count, body):
    """for i in range(count): body(i) — `count` must be >= 1 (checked by the caller)."""
    fn = b.function
    pre = b.block
    loop = fn.append_basic_block("loop")
    after = fn.append_basic_block("after")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64, name="i")
    i.add_incoming(const(I64, 0), pre)
    body(i)
    nxt = b.add(i, const(I64, 1), name="i.next", flags=["nuw", "nsw"])
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, count), loop, after)
    b.position_at_end(after)



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



def element_count(b, extents):
    n = const(I64, 1)
    for e in extents:
        n = b.mul(n, e)
    return n


def load_strides(b, ext, strides_ptr):
    """Element strides; a NULL strides pointer means compact row-major (DLPack)."""
    compact, acc = [], const(I64, 1)
    for e in reversed(ext):
        compact.append(acc)
        acc = b.mul(acc, e)
    compact.reverse()
    if not ext:
        return []
    fn = b.function
    given, null, join = (fn.append_basic_block(n) for n in ("strides.given", "strides.null", "strides"))
    b.cbranch(b.icmp_unsigned("==", strides_ptr, ir.Constant(PTR, None)), null, given)
    b.position_at_end(given)
    loaded = [Args(b, None).index(strides_ptr, j) for j in range(len(ext))]
    b.branch(join)
    b.position_at_end(null)
    b.branch(join)
    b.position_at_end(join)
    out = []
    for s, c in zip(loaded, compact):
        phi = b.phi(I64)
        phi.add_incoming(s, given)
        phi.add_incoming(c, null)
        out.append(phi)
    return out


def check_data(b, arrays):
    for k, (data, _, _) in enumerate(arrays):
        check(b, b.icmp_unsigned("!=", data, ir.Constant(PTR, None)), ERR_NULL | k << 8)



def new_function(module, symbol):
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, I32]), name=symbol)
    fn.args[0].name, fn.args[1].name = "args", "nargs"
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))



def return_zero_if(b, cond):
    """Return 0 (success, nothing to do) when `cond` holds."""
    fn = b.function
    done, cont = fn.append_basic_block("empty"), fn.append_basic_block("nonempty")
    b.cbranch(cond, done, cont)
    b.position_at_end(done)
    b.ret(const(I32, 0))
    b.position_at_end(cont)


