"""The native tier: each VM function's verified bytecode translated into one LLVM function.

Why a load-time translation of the bytecode (and not code stored in the file, nor a native
interpreter): the bytecode is already verified and its register kinds are known at every pc
(vm/kinds.py), so each instruction becomes a few lines of straight IR with no dispatch at all,
the file format does not change, and the trust model is the kernels' one by construction: the
only native code that runs is what this machine generates from a file it has verified. The IR
is a pure function of the program and the runtime's sources, so the object cache
(kernels/codelib.py) is asked under a digest of those before translating: a second load of the
same program neither translates nor compiles.

Run-time model (one `Ctx` per VirtualMachine, reset by each invoke):
- a register is a `Value` {data, block, dims[R]} (R: the module's highest rank); its dtype and
  rank are static at every pc (the kinds), so they live in the code, not in the value;
- storage is a reference-counted `Block` (64-byte header, then the bytes); a tensor view holds a
  reference to its block; writing a register, KillRegister and leaving a function drop
  references; a block returned to Python is owned by the numpy array that wraps it;
- values that do not own memory (arguments, constants, LoadConsti) have block == NULL and are
  never written: the verifier's filled-register rule guarantees that for every kernel output;
- a call passes its arguments with a reference each (the callee owns them) and receives its
  result with one;
- every basic block charges its instruction count to the step budget on entry (the Python tier
  charges per instruction: the totals agree), a call counts toward max_depth, and calls check
  the native stack against a limit taken from the thread's real stack bounds.
Failures return a non-zero code up the native call chain, releasing every register. The VM
then runs the same invocation again in the Python tier, which raises the typed error with its
message (function, pc, opcode): an invocation has no side effects, so the re-run sees exactly
what the native run saw. A native stack that runs out is not an error: the invocation re-runs
in the Python tier, whose frames are heap objects.
"""
from __future__ import annotations

import collections
import functools
import math
import sys
import threading
import weakref

import cffi
import msgpack
import numpy as np
from llvmlite import ir

from dynvm.kernels.abi import ERR_INTERRUPT, KDL_CPU, KERNEL_STACK_BYTES, ffi
from dynvm.kernels.interrupt import QUIET_ADDRESS, arm, register_arm
from dynvm.vm.bytecode import is_loop_function, registers
from dynvm.vm.dtypes import DTYPES, itemsize
from dynvm.vm.errors import KernelError, NotNative, VMError
from dynvm.vm.values import ADT, Closure, Tensor

I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
DLTENSOR = ir.LiteralStructType([PTR, ir.LiteralStructType([I32, I32]), I32,
                                 ir.LiteralStructType([I8, I8, I16]), PTR, PTR, I64])
BLOCK_HEADER = 64    # bytes before a block's data: refcount, size, tuple field count, padding
INT64_MAX = (1 << 63) - 1
MAX_NATIVE_INSTRUCTIONS = 2048  # per function (BERT-base has 1485): LLVM time grows superlinearly
SPEED_LEVEL = 1      # the code is calls, loads and stores: O1 runs as fast and compiles ~2x faster
COPY_RESULTS_UP_TO = 16384  # result bytes copied into a new array; larger results wrap their block

# native result codes (0 is success); the Python side decides what each means
RC_FAILED = 1        # an instruction failed: the Python tier re-runs the invocation for the error
RC_STACK = 2         # the native stack limit was reached: the Python tier runs the invocation
RC_INTERRUPT = 3     # the interrupt word was set (Ctrl-C): the VM raises KeyboardInterrupt
RC_EDGE = 4          # an edge function declined its arguments (or thread): invoke's general path
RC_RESHAPED = 5      # an edge function's result has another shape than the array made for it
RC_ARENA = 6         # an edge function's import arena was too small: invoke's general path
CTX_FIELDS = ("steps", "depth", "max_depth", "stack_limit", "kernels", "constants", "pool",
              "err_func", "err_pc", "err_code", "interrupt",
              # what an edge function (`dvm_edge_<i>`) reads: the configured limits, the thread
              # the stack limit was taken on, numpy's array type and dtype objects, the result
              "budget", "depth_limit", "thread", "ndarray_type", "descrs", "result",
              # the word an invocation nothing interrupts polls (an edge arms the others)
              "quiet",
              # what `dvm_import` reads and writes (IMPORT_FIELDS)
              "imports")
_CTX = {name: i for i, name in enumerate(CTX_FIELDS)}
_STEPS, _DEPTH, _MAX_DEPTH, _STACK_LIMIT, _ERR_CODE, _INTERRUPT = (_CTX[n] for n in (
    "steps", "depth", "max_depth", "stack_limit", "err_code", "interrupt"))
CTX_TYPE = ir.LiteralStructType([I64, I64, I64, I64, PTR, PTR, PTR, I64, I64, I64, PTR,
                                 I64, I64, I64, I64, PTR, PTR, I64, PTR])

# The native storage pool (int64 words): counters as VirtualMachine.memory_stats names them, the
# cap on free bytes, then one free-list head per size class (vm/memory.py's classes: 64-byte
# granules up to 512 bytes, then four per power of two).
POOL_FIELDS = ("allocations", "bytes_allocated", "pool_hits", "bytes_live", "peak_bytes_live",
               "bytes_free", "max_free_bytes")
POOL_CLASSES = 8 + 4 * 54
POOL_WORDS = len(POOL_FIELDS) + POOL_CLASSES
# block header words (before the data, BLOCK_HEADER bytes in all); B_NEXT links a free block
# into its free list, and a dying block into dvm_release's work list; in a live block it is 0
# except while `dvm_export` marks the nodes it has visited
B_COUNT, B_SIZE, B_FIELDS, B_POOL, B_CLASS, B_NEXT = range(6)

# A Value's type word: what the register holds at run time, read where the register kinds do not
# say (a generic function's values, a closure's arguments, a constructor's fields):
#   bits 0-7 the kind; tensor: bits 8-15 the dtype's index in DTYPES, bits 16-23 the rank;
#   ADT (tuples are constructor 0): bits 8-31 the constructor, bits 32-63 the field count;
#   closure: bits 8-31 the function, bits 32-63 the number of captured values.
T_TENSOR, T_STORAGE, T_ADT, T_CLOSURE = 1, 2, 3, 4
DTYPE_ORDER = tuple(DTYPES)     # dtype codes (type words, the edge's ctx.descrs table)
DTYPE_CODES = {name: i for i, name in enumerate(DTYPE_ORDER)}
MAX_INDEX = 1 << 24     # constructors and functions a type word can name


# What `dvm_import` (an edge function's way to take an ADT or tuple argument) reads and writes:
# the int64 words at ctx.imports (built by `ImportTables`). The arena is where the argument's
# nodes become Values: runs of field Values from the bottom up, the walk's work stack (3 words
# an entry) from the top down.
IMPORT_FIELDS = ("arena", "capacity", "top", "adt_type", "tuple_type", "checks", "ctors",
                 "ctor_count", "ctor_slot", "tag_slot", "fields_slot")
# A check is what a value must be, a run of words in the checks table that starts with its kind:
#   ADT: then the ADT's number; tensor: the dtype code, the rank, the extents (-1: any);
#   tuple: the field count, then each field's check. Check 0 is CHECK_ANY.
CHECK_ANY, CHECK_ADT, CHECK_TENSOR, CHECK_TUPLE = range(4)
# a constructor's row: its name object, its tag object (0 when the tag is not a cached small
# int), arity (-1: any), ADT number, where its field checks start and how many there are
CTOR_WORDS = 6
ARENA_WORDS = 1 << 12           # an arena's first size (grown to fit what the general path saw)
MAX_ARENA_WORDS = 1 << 23       # larger arguments always take the general path


# What `dvm_export` (a result's ADTs and tuples flattened for Python) reads and writes: the
# int64 words of NativeTier's export buffers. The work buffer holds the walk's stack (2 words an
# entry: the Value's address, the next field) and then the blocks it marked, `capacity` of each.
EXPORT_FIELDS = ("records", "capacity", "work", "data", "data_capacity", "data_used")
R_SHARED = 0            # a record's kind for a node exported before: word 0 is its record's index
EXPORT_RECORDS = 1 << 10          # records an export buffer first has room for
MAX_EXPORT_RECORDS = 1 << 22      # results with more nodes take the general export


def tensor_word(dtype, rank) -> int:
    return T_TENSOR | DTYPE_CODES[dtype] << 8 | rank << 16


def adt_word(ctor, count) -> int:
    return T_ADT | ctor << 8 | count << 32


def closure_word(func, count) -> int:
    return T_CLOSURE | func << 8 | count << 32


SUPPORTED = frozenset({"Move", "Ret", "Invoke", "InvokeClosure", "CallKernel", "CallShapeFunc",
                       "AllocStorage", "AllocStorageReg", "AllocTensor", "AllocTensorReg",
                       "AllocADT", "AllocClosure", "GetField", "GetTag", "If", "Goto",
                       "LoadConst", "LoadConsti", "ShapeOf", "ReshapeTensor", "KillRegister",
                       "Fatal", "CallLoop"})
# operands whose register may hold any value: moved, stored, passed, returned, dropped, or
# checked at run time against its type word (GetField's and GetTag's object, a kernel's inputs,
# the closure InvokeClosure calls, If's scalars, ShapeOf's tensor)
_ANY_OPERANDS = {"r", "d"}
_CHECKED_OPERANDS = {("CallKernel", "inputs"), ("CallLoop", "inputs"), ("GetTag", "obj"),
                     ("If", "test"), ("If", "target"), ("ShapeOf", "tensor")}


# ---------------------------------------------------------------------------------------------
# which functions are native


def native_plan(exe, kinds_of) -> dict:
    """function index -> None (native) or the reason it runs in the Python tier.

    `kinds_of(index)` gives the register kinds per pc. A function is native when all its
    instructions are and every function it calls is native."""
    reasons = {}
    callees = {}
    for i, fn in enumerate(exe.functions):
        try:
            callees[i] = _check_function(exe, fn, kinds_of(i))
            reasons[i] = None
        except NotNative as e:
            reasons[i] = str(e)
    changed = True
    while changed:          # a caller of a Python-tier function stays in the Python tier
        changed = False
        for i, calls in callees.items():
            if reasons[i] is None:
                bad = next((c for c in calls if reasons[c] is not None), None)
                if bad is not None:
                    reasons[i] = f"calls {exe.functions[bad].name}, which runs in the Python tier"
                    changed = True
    return reasons


def _check_function(exe, fn, kinds) -> set:
    if len(fn.instructions) > MAX_NATIVE_INSTRUCTIONS:
        raise NotNative(f"{len(fn.instructions)} instructions: above the native tier's "
                        f"{MAX_NATIVE_INSTRUCTIONS} per function (compile time grows faster than size)")
    if len(exe.functions) >= MAX_INDEX or len(exe.constructors) >= MAX_INDEX:
        raise NotNative(f"more than {MAX_INDEX} functions or constructors")
    calls = set()
    for pc, instr in enumerate(fn.instructions):
        if kinds[pc] is None:       # unreachable: translated as a failure, never run
            continue
        name = instr.name
        where = f"pc {pc} ({name})"
        if name not in SUPPORTED:
            raise NotNative(f"{where}: {name} is not in the native tier yet")
        spec = instr.spec
        for k, role in enumerate(spec.roles):
            if role is None or role == "w" or role in _ANY_OPERANDS or \
                    (name, spec.fields[k][0]) in _CHECKED_OPERANDS:
                continue
            regs = instr.args[k] if spec.fields[k][1] == "regs" else [instr.args[k]]
            for r in regs:
                kind = kinds[pc][r]
                if kind.kind not in ("tensor", "storage"):
                    raise NotNative(f"{where}: r{r} holds {kind}, not a tensor or storage")
                if kind.kind == "tensor" and (kind.dtype is None or kind.rank is None):
                    raise NotNative(f"{where}: the dtype or rank of r{r} is not known statically")
        if name == "Ret" and _holds_storage(kinds[pc][instr.src]):
            raise NotNative(f"{where}: returns a storage block")
        if name == "Invoke":
            calls.add(instr.args[0])
        elif name in ("AllocStorageReg", "AllocTensorReg", "ReshapeTensor"):
            k = kinds[pc][instr.shape]
            if (k.dtype, k.rank) != ("int64", 1) or k.dims[0] is None:
                raise NotNative(f"{where}: the length of shape r{instr.shape} is not known statically")
        if name.startswith("AllocStorage") and instr.alignment > BLOCK_HEADER:
            raise NotNative(f"{where}: alignment {instr.alignment} is above {BLOCK_HEADER}")
        if name == "CallShapeFunc":
            why = shape_func_native(exe.shape_funcs[instr.args[0]], _shape_func_sigs(kinds[pc], instr))
            if why is not None:
                raise NotNative(f"{where}: {why}")
    return calls


def _declared_ranks(t) -> list:
    """The ranks of the tensors a declared type names (a return type checked at run time may
    name a rank no register kind has: Values must still hold it)."""
    if t.get("kind") == "tensor":
        return [len(t["shape"])]
    return [r for f in t.get("fields", ()) for r in _declared_ranks(f)] if t.get("kind") == "tuple" else []


def _holds_storage(kind) -> bool:
    return kind.kind == "storage" or any(map(_holds_storage, kind.fields or ()))


def _is_tuple(kind) -> bool:
    return kind.kind == "adt" and kind.name == "tuple"


def _fits(kind, t) -> bool:
    """Whether a register kind statically is the declared type `t` (tensors: dtype and rank;
    tuples field by field); where it is not known to, the value's type word is checked at run
    time."""
    k = t.get("kind")
    if k == "tensor":
        return kind.kind == "tensor" and (kind.dtype, kind.rank) == (t["dtype"], len(t["shape"]))
    if k == "tuple":
        return _is_tuple(kind) and kind.fields is not None and \
            len(kind.fields) == len(t["fields"]) and all(map(_fits, kind.fields, t["fields"]))
    if k == "adt":
        return kind.kind == "adt" and kind.name == t["name"]
    if k == "func":
        return kind.kind == "closure"
    return True


def _shape_func_sigs(kinds, instr) -> tuple:
    """The input signatures of a CallShapeFunc: (dtype, static dims with None where unknown)."""
    return _sigs([kinds[r] for r in instr.args[1]])


def _sigs(input_kinds) -> tuple:
    return tuple((k.dtype, tuple(k.dims) if k.dims is not None else k.rank) for k in input_kinds)


def shape_lengths(entry, input_kinds):
    """The lengths of the shapes a shape function computes at a call site with these input
    kinds (what register_kinds asks), or None when it has no native form there."""
    if any(k.kind != "tensor" or k.dtype is None or k.rank is None for k in input_kinds):
        return None
    try:
        return native_shape_func(entry, _sigs(input_kinds)).lengths
    except KernelError:
        return None


class _Kinds(list):
    """A function's register kinds per pc, and `assumed`: {(pc, register): tensor Kind} the
    values written there are checked against (their type words) as they are written."""

    assumed = {}


def function_kinds(exe) -> list:
    """Every function's register kinds per pc, with the shapes of native shape functions, and
    the kinds assumed (and checked) where a value of unknown kind is written and a kernel
    takes it later."""
    from dynvm.vm.kinds import register_kinds
    out = []
    for i in range(len(exe.functions)):
        kinds = register_kinds(exe, i, shape_lengths)
        assumed = _kernel_demands(exe, exe.functions[i], kinds)
        if assumed:
            kinds = _Kinds(register_kinds(exe, i, shape_lengths, assumed))
            kinds.assumed = assumed
        out.append(kinds)
    return out


def _kernel_demands(exe, fn, kinds) -> dict:
    """{(pc, r): Kind} for each register r written at pc with no static dtype or rank (a match's
    field, a generic call's result) that reaches a kernel input (before it is written again)
    whose signature says its dtype and rank; demands that disagree assume nothing. A value
    that does not fit fails its check where it is written, and the Python tier runs."""
    from dynvm.vm.kinds import tensor
    code = fn.instructions
    demands = {}
    for pc, ins in enumerate(code):
        if pc + 1 >= len(code) or kinds[pc] is None or kinds[pc + 1] is None:
            continue
        for r in registers(ins, "w"):
            k = kinds[pc + 1][r]
            if k.kind in ("tensor", "any") and (k.dtype is None or k.rank is None):
                sigs = _uses_by_kernels(exe, code, pc, r)
                if len(sigs) == 1:
                    demands[(pc, r)] = tensor(*sigs.pop())
    return demands


def _uses_by_kernels(exe, code, start, r) -> set:
    """The (dtype, rank) signatures of the kernel inputs the value written into r at `start`
    reaches."""
    sigs, seen = set(), set()
    work = list(_next_pcs(code, start))
    while work:
        pc = work.pop()
        if pc in seen:
            continue
        seen.add(pc)
        ins = code[pc]
        if ins.name in ("CallKernel", "CallLoop"):
            entry = exe.kernels["kernels"][ins.args[0]]
            sigs.update(tuple(entry["inputs"][k]) for k, x in enumerate(ins.args[1]) if x == r)
        if r in registers(ins, "w", "d"):
            continue
        work.extend(_next_pcs(code, pc))
    return sigs


def _next_pcs(code, pc):
    ins = code[pc]
    nxt = [pc + ins.args[k] for k in ins.spec.offset_fields]
    if ins.spec.falls_through:
        nxt.append(pc + 1)
    return nxt


def shape_func_native(entry, sigs):
    """None when the shape function of `entry` (name, attrs) has a native form for inputs of
    these signatures; else why not."""
    try:
        native_shape_func(entry, sigs)
    except KernelError as e:
        return f"shape function {entry['name']} has no native form here: {e}"
    return None


@functools.lru_cache(maxsize=1024)
def _native_shape_func(name, attrs_key, sigs):
    from dynvm.kernels.shape import native_shape_func_spec   # the tracer: only when needed
    return native_shape_func_spec(name, msgpack.unpackb(attrs_key), sigs)


def native_shape_func(entry, sigs):
    """kernels/shape.py's NativeShapeFunc for a call site (memoised: planning and translation
    ask for the same sites)."""
    return _native_shape_func(entry["name"], msgpack.packb(entry["attrs"]), sigs)


def planned(exe) -> tuple:
    """(register kinds per function, native_plan's reasons) of `exe`: computed once per
    executable, for build's warning, `explain` and the native code alike."""
    with _build_lock:
        if exe._native_plan is None:
            kinds = function_kinds(exe)
            exe._native_plan = kinds, native_plan(exe, kinds.__getitem__)
        return exe._native_plan


def explain(exe) -> str:
    """One line per function: whether it runs in the native tier, and if not, why."""
    reasons = planned(exe)[1]
    lines = []
    for i, fn in enumerate(exe.functions):
        why = reasons[i]
        lines.append(f"{fn.name}: native" if why is None else f"{fn.name}: Python tier ({why})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# translation


def value_type(rank_bound: int):
    """A register: data pointer, owning block (NULL: not owned), extents, type word."""
    return ir.LiteralStructType([PTR, PTR, ir.ArrayType(I64, max(1, rank_bound)), I64])


def value_words(rank_bound: int) -> int:
    """The int64 words of a Value (what the Python edge reads and writes)."""
    return 3 + max(1, rank_bound)


_TYPE = 3       # the type word's field in a Value


def symbol_of(func_index: int) -> str:
    return f"dvm_fn_{func_index}"


def edge_symbol_of(func_index: int) -> str:
    return f"dvm_edge_{func_index}"


def checked_symbol_of(func_index: int) -> str:
    """The entry that checks the arguments' type words first (closure calls, and calls whose
    arguments the register kinds do not prove)."""
    return f"dvm_cfn_{func_index}"


class ModuleTranslator:
    """Builds the LLVM module of an executable's native functions and the runtime helpers
    they share (block allocation and reference counts)."""

    def __init__(self, exe, kinds_of, rank_bound, native, import_tables):
        self.exe, self.kinds_of = exe, kinds_of
        self.import_tables = import_tables
        self.module = ir.Module(name="dynvm_native")
        self.value = value_type(rank_bound)
        self.fnty = ir.FunctionType(I32, [PTR, PTR, PTR])
        self.functions = {}
        self._shape_symbols, self._shape_sites = {}, []
        self.checked = {}
        self.native = native
        self.max_params = max([1] + [len(fn.params) for fn in exe.functions])
        self._helpers()
        self._tables()

    def declare(self, index):
        if index not in self.functions:
            self.functions[index] = ir.Function(self.module, self.fnty, symbol_of(index))
        return self.functions[index]

    def declare_checked(self, index):
        if index not in self.checked:
            self.checked[index] = ir.Function(self.module, self.fnty, checked_symbol_of(index))
        return self.checked[index]

    def _constant_table(self, name, ty, items):
        table = ir.GlobalVariable(self.module, ir.ArrayType(ty, len(items)), name)
        table.initializer = ir.Constant(ir.ArrayType(ty, len(items)), items)
        table.global_constant = True
        table.linkage = "internal"
        return table

    def _tables(self):
        """What closure calls and GetTag look up by index: each function's checked entry (NULL
        for one in the Python tier) and parameter count, each constructor's tag."""
        exe = self.exe
        self.entry_table = self._constant_table("dvm_closure_entries", PTR, [
            self.declare_checked(i) if i in self.native else ir.Constant(PTR, None)
            for i in range(len(exe.functions))])
        self.param_counts = self._constant_table(
            "dvm_param_counts", I64, [len(fn.params) for fn in exe.functions])
        self.tags = self._constant_table("dvm_tags", I64, [c["tag"] for c in exe.constructors] or [0])
        self.tags.align = 8

    def _helpers(self):
        m = self.module
        self.aligned_alloc = ir.Function(m, ir.FunctionType(PTR, [I64, I64]), "aligned_alloc")
        self.free = ir.Function(m, ir.FunctionType(ir.VoidType(), [PTR]), "free")
        self.frameaddress = ir.Function(m, ir.FunctionType(PTR, [I32]), "llvm.frameaddress.p0")
        self.pthread_self = ir.Function(m, ir.FunctionType(I64, []), "pthread_self")
        self.memcpy = ir.Function(m, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I1]),
                                  "llvm.memcpy.p0.p0.i64")
        self.retain = self._retain()
        self.record = self._record()
        self.release = self._release()
        self.alloc = self._alloc()

    def _retain(self):
        f = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]), "dvm_retain")
        f.linkage = "internal"
        b = ir.IRBuilder(f.append_basic_block())
        block = f.args[0]
        with b.if_then(b.icmp_unsigned("!=", block, ir.Constant(PTR, None))):
            rc = b.load(block, typ=I64)
            b.store(b.add(rc, ir.Constant(I64, 1)), block)
        b.ret_void()
        return f

    def _record(self):
        """`dvm_record(ctx, func, pc, code)`: the first failure of an invocation stores its code,
        function and pc in the context."""
        f = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64, I64]), "dvm_record")
        f.linkage = "internal"
        f.attributes.add("noinline")
        f.attributes.add("cold")
        b = ir.IRBuilder(f.append_basic_block())
        ctx, func, pc, code = f.args
        err = ctx_field(b, ctx, "err_code")
        with b.if_then(b.icmp_signed("==", b.load(err, typ=I64), ir.Constant(I64, 0))):
            b.store(code, err)
            b.store(func, ctx_field(b, ctx, "err_func"))
            b.store(pc, ctx_field(b, ctx, "err_pc"))
        b.ret_void()
        return f

    def _release(self):
        """Drop one reference (NULL: nothing); the last one frees the block, after dropping the
        references its fields hold when it is an ADT, a tuple or a closure. Also what a numpy
        array wrapping a returned block calls when it dies. No recursion: the blocks that die
        wait in a work list linked through their B_NEXT words, so releasing a list of any
        length takes no C stack."""
        f = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]), "dvm_release")
        f.attributes.add("noinline")     # called at every register write: keep the code small
        b = ir.IRBuilder(f.append_basic_block())
        null = ir.Constant(PTR, None)
        block = f.args[0]
        work = _alloca(b, PTR, name="work")

        def drop(blk):
            """One reference less; a block that dies joins the work list."""
            with b.if_then(b.icmp_unsigned("!=", blk, null)):
                rc = b.sub(b.load(blk, typ=I64), ir.Constant(I64, 1))
                b.store(rc, blk)
                with b.if_then(b.icmp_signed("==", rc, ir.Constant(I64, 0))):
                    b.store(b.load(work, typ=PTR), _word(b, blk, B_NEXT))
                    b.store(blk, work)

        b.store(null, work)
        drop(block)
        head, body, done = (f.append_basic_block(x) for x in ("head", "body", "done"))
        b.branch(head)
        b.position_at_end(head)
        dead = b.load(work, typ=PTR)
        b.cbranch(b.icmp_unsigned("!=", dead, null), body, done)
        b.position_at_end(body)
        b.store(b.load(_word(b, dead, B_NEXT), typ=PTR), work)
        nfields = b.load(_word(b, dead, B_FIELDS), typ=I64)
        fields = b.gep(dead, [ir.Constant(I64, BLOCK_HEADER)], source_etype=I8)
        with _counted_loop(b, nfields) as k:
            field = b.gep(fields, [k, ir.Constant(I32, 1)], source_etype=self.value)
            drop(b.load(field, typ=PTR))
        self._give_back(b, dead)
        b.branch(head)
        b.position_at_end(done)
        b.ret_void()
        return f

    @functools.cached_property
    def importer(self):
        """`i32 dvm_import(ctx, obj, check, dest)`: the Value of the Python object `obj` (an
        argument, or inside one) into `dest`, when it passes `check` and every check of the
        general path (`boundary.import_arg`) below it; else RC_EDGE (or RC_ARENA when the arena
        is full), and invoke's general path runs, which converts or reports. It takes exactly
        vm.ADT nodes (constructors of this program, by name object and tag, arity and declared
        field types), tuples and numpy arrays as the edge takes tensor arguments (any dtype
        and rank inside ADTs); anything else declines. ADT and tuple nodes become runs of field
        Values in the arena (block NULL: not owned, like an argument tensor); tensors view the
        caller's arrays. The walk is iterative (a work stack at the arena's top), and a cycle
        only fills the arena. Shared nodes are laid out once per path."""
        f = ir.Function(self.module, ir.FunctionType(I32, [PTR, I64, I64, PTR]), "dvm_import")
        f.attributes.add("noinline")
        b = ir.IRBuilder(f.append_basic_block("entry"))
        ctx, root, root_check, root_dest = f.args
        c = lambda v: ir.Constant(I64, v)      # noqa: E731
        words = _value_bytes(self.value) // 8
        rank_bound = words - 3
        imports = b.load(ctx_field(b, ctx, "imports"), typ=PTR)
        field = lambda name: _word(b, imports, IMPORT_FIELDS.index(name))    # noqa: E731
        arena, checks, ctors = (b.load(field(n), typ=PTR) for n in ("arena", "checks", "ctors"))
        ndarray_type = b.load(ctx_field(b, ctx, "ndarray_type"), typ=I64)
        descrs = b.load(ctx_field(b, ctx, "descrs"), typ=PTR)
        top, sp = _alloca(b, I64, name="top"), _alloca(b, I64, name="sp")
        b.store(b.load(field("top"), typ=I64), top)
        b.store(b.load(field("capacity"), typ=I64), sp)
        decline, full = f.append_basic_block("decline"), f.append_basic_block("full")
        _branch_if(b, b.icmp_signed(">", b.load(top, typ=I64), b.sub(b.load(sp, typ=I64), c(3))), full)

        def require(cond):
            _branch_if(b, b.not_(cond), decline)

        def push(dest, obj, check):
            at = b.sub(b.load(sp, typ=I64), c(3))
            b.store(at, sp)
            for k, v in enumerate((b.ptrtoint(dest, I64), obj, check)):
                b.store(v, _word(b, arena, k, at))

        def load(obj, offset, ty):
            return b.load(b.gep(obj, [offset if isinstance(offset, ir.Value) else c(offset)],
                                source_etype=I8), typ=ty)

        def check_word(check, k):
            return b.load(_word(b, checks, k, check), typ=I64)

        def write(dest, data, word):
            b.store(data, _word(b, dest, 0))
            b.store(c(0), _word(b, dest, 1))
            b.store(word, _word(b, dest, words - 1))

        def node(dest, items, n, word, check_of):
            """A run of n field Values for `dest` (items: the objects' pointer array), each
            field pushed with its check."""
            run_top = b.load(top, typ=I64)
            new_top = b.add(run_top, b.mul(n, c(words)))
            _branch_if(b, b.icmp_signed(">", b.add(new_top, b.mul(n, c(3))), b.load(sp, typ=I64)), full)
            b.store(new_top, top)
            run = _word(b, arena, 0, run_top)
            write(dest, b.ptrtoint(run, I64), word)
            for i in range(rank_bound):
                b.store(c(0), _word(b, dest, 2 + i))
            with _counted_loop(b, n) as k:
                item = b.load(b.gep(items, [k], source_etype=I64), typ=I64)
                push(b.gep(run, [b.mul(k, c(words))], source_etype=I64), item, check_of(k))

        push(root_dest, root, root_check)
        head, body = f.append_basic_block("head"), f.append_basic_block("body")
        done = f.append_basic_block("done")
        b.branch(head)
        b.position_at_end(head)
        at = b.load(sp, typ=I64)
        b.cbranch(b.icmp_signed("<", at, b.load(field("capacity"), typ=I64)), body, done)
        b.position_at_end(body)
        dest = b.inttoptr(b.load(_word(b, arena, 0, at), typ=I64), PTR)
        obj = b.inttoptr(b.load(_word(b, arena, 1, at), typ=I64), PTR)
        check = b.load(_word(b, arena, 2, at), typ=I64)
        b.store(b.add(at, c(3)), sp)
        kind = check_word(check, 0)
        is_kind = lambda k: b.icmp_signed("==", kind, c(k))    # noqa: E731
        obj_type = load(obj, ARRAY_TYPE, I64)
        on_array, on_tuple, on_adt, other = (f.append_basic_block(n) for n in ("array", "tuple", "adt", "other"))
        b.cbranch(b.icmp_unsigned("==", obj_type, ndarray_type), on_array, other)
        b.position_at_end(other)
        b.cbranch(b.icmp_unsigned("==", obj_type, b.load(field("tuple_type"), typ=I64)), on_tuple, on_adt)

        # a numpy array: compact, aligned, of a VM dtype (native order), no zero extent
        b.position_at_end(on_array)
        require(b.or_(is_kind(CHECK_ANY), is_kind(CHECK_TENSOR)))
        descr = load(obj, ARRAY_DESCR, I64)
        code = c(-1)
        for i in range(len(DTYPE_ORDER)):
            known = b.load(_word(b, descrs, i), typ=I64)
            code = b.select(b.icmp_unsigned("==", descr, known), c(i), code)
        require(b.icmp_signed(">=", code, c(0)))
        nd = b.sext(load(obj, ARRAY_ND, I32), I64)
        require(b.icmp_signed("<=", nd, c(rank_bound)))
        flags = b.and_(load(obj, ARRAY_FLAGS, I32), ir.Constant(I32, C_CONTIGUOUS_ALIGNED))
        require(b.icmp_signed("==", flags, ir.Constant(I32, C_CONTIGUOUS_ALIGNED)))
        loose = b.not_(is_kind(CHECK_TENSOR))
        require(b.or_(loose, b.and_(b.icmp_signed("==", code, check_word(check, 1)),
                                    b.icmp_signed("==", nd, check_word(check, 2)))))
        dims = load(obj, ARRAY_DIMS, PTR)
        for i in range(rank_bound):
            with b.if_else(b.icmp_signed("<", c(i), nd)) as (inside, beyond):
                with inside:
                    d = b.load(_word(b, dims, i), typ=I64)
                    want = check_word(check, 3 + i)     # the table is padded: always readable
                    require(b.icmp_signed(">", d, c(0)))
                    require(b.or_(loose, b.or_(b.icmp_signed("<", want, c(0)), b.icmp_signed("==", want, d))))
                    b.store(d, _word(b, dest, 2 + i))
                with beyond:
                    b.store(c(0), _word(b, dest, 2 + i))
        write(dest, load(obj, ARRAY_DATA, I64),
              b.or_(c(T_TENSOR), b.or_(b.shl(code, c(8)), b.shl(nd, c(16)))))
        b.branch(head)

        # a tuple: its fields, checked field by field when the check is a tuple's
        b.position_at_end(on_tuple)
        require(b.or_(is_kind(CHECK_ANY), is_kind(CHECK_TUPLE)))
        n = load(obj, TUPLE_SIZE, I64)
        require(b.or_(is_kind(CHECK_ANY), b.icmp_signed("==", n, check_word(check, 1))))
        tuple_check = is_kind(CHECK_TUPLE)
        node(dest, b.gep(obj, [c(TUPLE_ITEMS)], source_etype=I8), n, b.or_(c(T_ADT), b.shl(n, c(32))),
             lambda k: b.load(_word(b, checks, 0, b.select(tuple_check, b.add(check, b.add(k, c(2))),
                                                          c(0))), typ=I64))
        b.branch(head)

        # a vm.ADT: a constructor of this program, by name object, tag object and arity
        b.position_at_end(on_adt)
        require(b.icmp_unsigned("==", obj_type, b.load(field("adt_type"), typ=I64)))
        require(b.or_(is_kind(CHECK_ANY), is_kind(CHECK_ADT)))
        slot = lambda name: load(obj, b.load(field(name), typ=I64), I64)    # noqa: E731
        name, tag = slot("ctor_slot"), slot("tag_slot")
        fields = b.inttoptr(slot("fields_slot"), PTR)
        require(b.icmp_unsigned("==", load(fields, ARRAY_TYPE, I64), b.load(field("tuple_type"), typ=I64)))
        n = load(fields, TUPLE_SIZE, I64)
        found = _alloca(b, I64, name="found")
        b.store(c(-1), found)
        with _counted_loop(b, b.load(field("ctor_count"), typ=I64)) as k:
            same = b.icmp_unsigned("==", b.load(_word(b, ctors, 0, b.mul(k, c(CTOR_WORDS))), typ=I64), name)
            b.store(b.select(same, k, b.load(found, typ=I64)), found)
        ctor = b.load(found, typ=I64)
        require(b.icmp_signed(">=", ctor, c(0)))
        row = _word(b, ctors, 0, b.mul(ctor, c(CTOR_WORDS)))
        require(b.icmp_unsigned("==", b.load(_word(b, row, 1), typ=I64), tag))
        arity = b.load(_word(b, row, 2), typ=I64)
        require(b.or_(b.icmp_signed("<", arity, c(0)), b.icmp_signed("==", arity, n)))
        require(b.or_(is_kind(CHECK_ANY), b.icmp_signed("==", b.load(_word(b, row, 3), typ=I64),
                                                         check_word(check, 1))))
        first, declared = b.load(_word(b, row, 4), typ=I64), b.load(_word(b, row, 5), typ=I64)
        node(dest, b.gep(fields, [c(TUPLE_ITEMS)], source_etype=I8), n,
             b.or_(c(T_ADT), b.or_(b.shl(ctor, c(8)), b.shl(n, c(32)))),
             lambda k: b.select(b.icmp_signed("<", k, declared),
                                b.load(_word(b, checks, 0, b.add(first, b.select(
                                    b.icmp_signed("<", k, declared), k, c(0)))), typ=I64),
                                c(CHECK_ANY)))
        b.branch(head)

        b.position_at_end(done)
        b.store(b.load(top, typ=I64), field("top"))
        b.ret(ir.Constant(I32, 0))
        b.position_at_end(decline)
        b.ret(ir.Constant(I32, RC_EDGE))
        b.position_at_end(full)
        b.ret(ir.Constant(I32, RC_ARENA))
        return f

    @functools.cached_property
    def exporter(self):
        """`i64 dvm_export(io, root)`: the ADT or tuple Value `root` flattened for Python, which
        builds the result's objects in one pass over it (`NativeTier._flat_export`): one record
        per node in post-order (a node's fields before it), each `words` int64 long (EXPORT_FIELDS
        says where the buffers are). A tensor's record is its Value with the data word an offset
        into the data buffer its bytes were copied to (16-byte aligned), or, for a large tensor
        in a block of its own, the Value itself (its block is wrapped, not copied). An ADT's or
        tuple's record is its type word; a node met again is a R_SHARED record naming the first
        one's record, so shared nodes stay shared. Returns the record count; -1 when the result
        holds what this walk does not export (a closure, a storage, a node of an argument, a
        cycle: the general export then runs), -2 when the records or the work stack are full.
        Copies that do not fit the data buffer are skipped; `data_used` says how much it needs.
        Visited nodes are marked in their block's B_NEXT word (0 in every live block) and
        unmarked before it returns."""
        f = ir.Function(self.module, ir.FunctionType(I64, [PTR, PTR]), "dvm_export")
        f.attributes.add("noinline")
        b = ir.IRBuilder(f.append_basic_block("entry"))
        io, root = f.args
        c = lambda v: ir.Constant(I64, v)      # noqa: E731
        words = _value_bytes(self.value) // 8
        field = lambda name: _word(b, io, EXPORT_FIELDS.index(name))    # noqa: E731
        records, work, data = (b.load(field(n), typ=PTR) for n in ("records", "work", "data"))
        capacity, data_capacity = (b.load(field(n), typ=I64) for n in ("capacity", "data_capacity"))
        marks = _word(b, work, 0, b.mul(capacity, c(2)))    # the marked blocks, after the stack
        sizes = self._constant_table("dvm_itemsizes", I64, [c(itemsize(n)) for n in DTYPE_ORDER])
        n, sp, marked, used, result = (_alloca(b, I64, name=x) for x in ("n", "sp", "marked", "used", "result"))
        for slot, v in ((n, c(0)), (sp, c(1)), (marked, c(0)), (used, c(0))):
            b.store(v, slot)
        b.store(b.ptrtoint(root, I64), _word(b, work, 0))
        b.store(c(0), _word(b, work, 1))
        head, body, finish, decline, full, clear = (f.append_basic_block(x) for x in (
            "head", "body", "finish", "decline", "full", "clear"))
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(b.icmp_signed(">", b.load(sp, typ=I64), c(0)), body, finish)

        b.position_at_end(body)
        top = b.sub(b.load(sp, typ=I64), c(1))
        value = b.inttoptr(b.load(_word(b, work, 0, b.mul(top, c(2))), typ=I64), PTR)
        cursor_at = _word(b, work, 1, b.mul(top, c(2)))
        word = b.load(_word(b, value, words - 1), typ=I64)
        data_word, block = (b.load(_word(b, value, k), typ=I64) for k in (0, 1))
        kind = b.and_(word, c(0xFF))
        on_tensor, on_adt = f.append_basic_block("tensor"), f.append_basic_block("adt")
        switch = b.switch(kind, decline)
        switch.add_case(c(T_TENSOR), on_tensor)
        switch.add_case(c(T_ADT), on_adt)

        def emit(first, second, dims_from, type_word):
            """Append a record (full: the `full` exit) and pop the node."""
            at = b.load(n, typ=I64)
            _branch_if(b, b.icmp_signed(">=", at, capacity), full)
            record = _word(b, records, 0, b.mul(at, c(words)))
            for k, v in enumerate((first, second)):
                b.store(v, _word(b, record, k))
            for k in range(2, words - 1):
                b.store(c(0) if dims_from is None else b.load(_word(b, dims_from, k), typ=I64),
                        _word(b, record, k))
            b.store(type_word, _word(b, record, words - 1))
            b.store(b.add(at, c(1)), n)
            b.store(top, sp)
            return at

        # a tensor: copied into the data buffer, or a large one of a block named by its Value
        b.position_at_end(on_tensor)
        rank = b.and_(b.lshr(word, c(16)), c(0xFF))
        count = c(1)
        for k in range(words - 3):
            dim = b.load(_word(b, value, 2 + k), typ=I64)
            count = b.mul(count, b.select(b.icmp_signed("<", c(k), rank), dim, c(1)))
        size = b.load(b.gep(sizes, [c(0), b.and_(b.lshr(word, c(8)), c(0xFF))],
                            source_etype=sizes.value_type), typ=I64)
        nbytes = b.mul(count, size)
        wrap = b.and_(b.icmp_unsigned("!=", block, c(0)), b.icmp_signed(">", nbytes, c(COPY_RESULTS_UP_TO)))
        offset = b.and_(b.add(b.load(used, typ=I64), c(15)), c(-16))
        with b.if_then(b.not_(wrap)):
            end = b.add(offset, nbytes)
            with b.if_then(b.icmp_signed("<=", end, data_capacity)):
                b.call(self.memcpy, [b.gep(data, [offset], source_etype=I8),
                                     b.inttoptr(data_word, PTR), nbytes, ir.Constant(I1, 0)])
            b.store(end, used)
        emit(b.select(wrap, data_word, offset), b.select(wrap, block, c(0)), value, word)
        b.branch(head)

        # an ADT or tuple: marked on the way down, its fields pushed one by one, then its record
        b.position_at_end(on_adt)
        fields = b.lshr(word, c(32))
        cursor = b.load(cursor_at, typ=I64)
        mark_at = b.gep(b.inttoptr(block, PTR), [c(B_NEXT)], source_etype=I64)
        first_visit = b.and_(b.icmp_signed("==", cursor, c(0)), b.icmp_signed(">", fields, c(0)))
        visit, descend = f.append_basic_block("visit"), f.append_basic_block("descend")
        b.cbranch(first_visit, visit, descend)
        b.position_at_end(visit)
        _branch_if(b, b.icmp_unsigned("==", block, c(0)), decline)    # a node of an argument
        mark = b.load(mark_at, typ=I64)
        _branch_if(b, b.icmp_signed("<", mark, c(0)), decline)        # a cycle
        seen, fresh = f.append_basic_block("seen"), f.append_basic_block("fresh")
        b.cbranch(b.icmp_signed(">", mark, c(0)), seen, fresh)
        b.position_at_end(seen)
        emit(b.sub(mark, c(1)), c(0), None, c(R_SHARED))
        b.branch(head)
        b.position_at_end(fresh)
        at = b.load(marked, typ=I64)
        _branch_if(b, b.icmp_signed(">=", at, capacity), full)
        b.store(block, _word(b, marks, 0, at))
        b.store(b.add(at, c(1)), marked)
        b.store(c(-1), mark_at)
        b.branch(descend)
        b.position_at_end(descend)
        push, close = f.append_basic_block("push"), f.append_basic_block("close")
        b.cbranch(b.icmp_signed("<", cursor, fields), push, close)
        b.position_at_end(push)
        b.store(b.add(cursor, c(1)), cursor_at)
        depth = b.load(sp, typ=I64)
        _branch_if(b, b.icmp_signed(">=", depth, capacity), full)
        child = b.gep(b.inttoptr(data_word, PTR), [b.mul(cursor, c(words))], source_etype=I64)
        b.store(b.ptrtoint(child, I64), _word(b, work, 0, b.mul(depth, c(2))))
        b.store(c(0), _word(b, work, 1, b.mul(depth, c(2))))
        b.store(b.add(depth, c(1)), sp)
        b.branch(head)
        b.position_at_end(close)
        at = emit(c(0), c(0), None, word)
        with b.if_then(b.icmp_signed(">", fields, c(0))):
            b.store(b.add(at, c(1)), mark_at)
        b.branch(head)

        b.position_at_end(finish)
        b.store(b.load(used, typ=I64), field("data_used"))
        b.store(b.load(n, typ=I64), result)
        b.branch(clear)
        for exit_block, code in ((decline, -1), (full, -2)):
            b.position_at_end(exit_block)
            b.store(c(code), result)
            b.branch(clear)
        b.position_at_end(clear)
        with _counted_loop(b, b.load(marked, typ=I64)) as k:
            marked_block = b.inttoptr(b.load(_word(b, marks, 0, k), typ=I64), PTR)
            b.store(c(0), _word(b, marked_block, B_NEXT))
        b.ret(b.load(result, typ=I64))
        return f

    def _give_back(self, b, block):
        """A dead block goes to its pool's free list, or to the OS beyond the pool's cap."""
        pool = b.inttoptr(b.load(_word(b, block, B_POOL), typ=I64), PTR)
        cls = b.load(_word(b, block, B_CLASS), typ=I64)
        _bump(b, pool, "bytes_live", b.neg(cls))
        free = b.load(_word(b, pool, POOL_FIELDS.index("bytes_free")), typ=I64)
        room = b.icmp_signed("<=", b.add(free, cls),
                             b.load(_word(b, pool, POOL_FIELDS.index("max_free_bytes")), typ=I64))
        with b.if_else(room) as (keep, drop):
            with keep:
                _, index = _size_class(b, cls)
                head = _word(b, pool, len(POOL_FIELDS), index)
                b.store(b.load(head, typ=PTR), _word(b, block, B_NEXT))
                b.store(block, head)
                _bump(b, pool, "bytes_free", cls)
            with drop:
                b.call(self.free, [block])

    def _alloc(self):
        """`dvm_alloc(pool, size)`: a block for `size` bytes (data 64-byte aligned after the
        header), refcount 1, from the pool's free list of its size class when it has one; NULL
        when the size is out of range or memory is exhausted."""
        f = ir.Function(self.module, ir.FunctionType(PTR, [PTR, I64]), "dvm_alloc")
        f.linkage = "internal"
        b = ir.IRBuilder(f.append_basic_block())
        pool, size = f.args
        null = ir.Constant(PTR, None)
        fail, ok = f.append_basic_block("fail"), f.append_basic_block("ok")
        b.cbranch(b.icmp_unsigned("<=", size, ir.Constant(I64, 1 << 62)), ok, fail)
        b.position_at_end(fail)
        b.ret(null)
        b.position_at_end(ok)
        cls, index = _size_class(b, size)
        head = _word(b, pool, len(POOL_FIELDS), index)
        free = b.load(head, typ=PTR)
        reuse, fresh, done = (f.append_basic_block(x) for x in ("reuse", "fresh", "done"))
        b.cbranch(b.icmp_unsigned("!=", free, null), reuse, fresh)
        b.position_at_end(reuse)
        b.store(b.load(_word(b, free, B_NEXT), typ=PTR), head)
        _bump(b, pool, "pool_hits", ir.Constant(I64, 1))
        _bump(b, pool, "bytes_free", b.neg(cls))
        b.branch(done)
        b.position_at_end(fresh)
        new = b.call(self.aligned_alloc, [ir.Constant(I64, BLOCK_HEADER),
                                          b.add(cls, ir.Constant(I64, BLOCK_HEADER))])
        with b.if_then(b.icmp_unsigned("==", new, null)):
            b.ret(null)
        _bump(b, pool, "allocations", ir.Constant(I64, 1))
        _bump(b, pool, "bytes_allocated", cls)
        fresh_end = b.block
        b.branch(done)
        b.position_at_end(done)
        block = b.phi(PTR)
        block.add_incoming(free, reuse)
        block.add_incoming(new, fresh_end)
        live = _bump(b, pool, "bytes_live", cls)
        peak = _word(b, pool, POOL_FIELDS.index("peak_bytes_live"))
        b.store(b.select(b.icmp_signed(">", live, b.load(peak, typ=I64)), live, b.load(peak, typ=I64)), peak)
        for k, v in ((B_COUNT, ir.Constant(I64, 1)), (B_SIZE, size), (B_FIELDS, ir.Constant(I64, 0)),
                     (B_POOL, b.ptrtoint(pool, I64)), (B_CLASS, cls), (B_NEXT, ir.Constant(I64, 0))):
            b.store(v, _word(b, block, k))
        b.ret(block)
        return f

    def translate(self, index):
        FunctionTranslator(self, index).emit()
        self._checked_entry(index)

    def _checked_entry(self, index):
        """`dvm_cfn_<i>`: check each argument's type word against its declared parameter type
        (tuples field by field), then enter `dvm_fn_<i>`; a mismatch drops the arguments'
        references and fails (the Python tier runs the invocation)."""
        fn = self.exe.functions[index]
        f = self.declare_checked(index)
        b = ir.IRBuilder(f.append_basic_block("entry"))
        ctx, args, result = f.args
        fail = f.append_basic_block("fail")
        for k, t in enumerate(fn.param_types):
            arg = b.gep(args, [ir.Constant(I64, k)], source_etype=self.value)
            self.check_type(b, arg, t, lambda cond: _branch_if(b, cond, fail))
        b.ret(b.call(self.declare(index), [ctx, args, result]))
        b.position_at_end(fail)
        for k in range(len(fn.params)):
            arg = b.gep(args, [ir.Constant(I64, k), ir.Constant(I32, 1)], source_etype=self.value)
            b.call(self.release, [b.load(arg, typ=PTR)])
        b.call(self.record, [ctx, ir.Constant(I64, index), ir.Constant(I64, 0), ir.Constant(I64, RC_FAILED)])
        b.ret(ir.Constant(I32, RC_FAILED))

    def check_type(self, b, value, t, fail_if):
        """Emit the run-time check that the Value at `value` is of declared type `t`: its type
        word (tensors: dtype and rank, then the static extents; ADTs: a constructor of the ADT;
        tuples: the field count, then each field). `fail_if(cond)` leaves when cond holds."""
        kind = t.get("kind")
        word = b.load(b.gep(value, [ir.Constant(I32, 0), ir.Constant(I32, _TYPE)],
                            source_etype=self.value), typ=I64)
        if kind == "tensor":
            fail_if(b.icmp_unsigned("!=", word, ir.Constant(I64, tensor_word(t["dtype"], len(t["shape"])))))
            for i, d in enumerate(t["shape"]):
                if d is not None:
                    dim = b.load(b.gep(value, [ir.Constant(I32, 0), ir.Constant(I32, 2), ir.Constant(I32, i)],
                                       source_etype=self.value), typ=I64)
                    fail_if(b.icmp_signed("!=", dim, ir.Constant(I64, d)))
        elif kind == "tuple":
            fail_if(b.icmp_unsigned("!=", word, ir.Constant(I64, adt_word(0, len(t["fields"])))))
            data = b.load(b.gep(value, [ir.Constant(I32, 0), ir.Constant(I32, 0)], source_etype=self.value),
                          typ=PTR)
            for i, f in enumerate(t["fields"]):
                self.check_type(b, b.gep(data, [ir.Constant(I64, i)], source_etype=self.value), f, fail_if)
        elif kind == "adt":
            fail_if(b.icmp_unsigned("!=", b.and_(word, ir.Constant(I64, 0xFF)), ir.Constant(I64, T_ADT)))
            ctor = b.and_(b.lshr(word, ir.Constant(I64, 8)), ir.Constant(I64, MAX_INDEX - 1))
            ok = ir.Constant(I1, 0)
            for c, entry in enumerate(self.exe.constructors):
                if entry["adt"] == t["name"]:
                    ok = b.or_(ok, b.icmp_unsigned("==", ctor, ir.Constant(I64, c)))
            fail_if(b.not_(ok))
        elif kind == "func":
            fail_if(b.icmp_unsigned("!=", b.and_(word, ir.Constant(I64, 0xFF)), ir.Constant(I64, T_CLOSURE)))

    def shape_function(self, site):
        """The module's function for a native shape function (one per distinct shape function
        and input signature, however many call sites share it)."""
        symbol = self._shape_symbols.get(id(site))
        if symbol is None:
            from dynvm.kernels.shape import emit_kernel     # the shape-function tracer only
            symbol = self._shape_symbols[id(site)] = f"dvm_sf_{len(self._shape_symbols)}"
            self._shape_sites.append(site)      # keeps id(site) unique while the module is built
            emit_kernel(self.module, symbol, site.spec, site.inputs, site.outputs)
        return self.module.globals[symbol]

    def translate_edge(self, index, arms):
        EdgeTranslator(self, index, arms).emit()


def _loop_heads(fn) -> set:
    """Targets of backward jumps."""
    heads = set()
    for pc, instr in enumerate(fn.instructions):
        heads.update(pc + instr.args[k] for k in instr.spec.offset_fields if instr.args[k] <= 0)
    return heads


def _leaders(fn) -> list:
    """Start pcs of the basic blocks, in order."""
    starts = {0}
    for pc, instr in enumerate(fn.instructions):
        offsets = instr.spec.offset_fields
        for k in offsets:
            starts.add(pc + instr.args[k])
        if offsets or instr.spec.has("terminator"):
            starts.add(pc + 1)
    return sorted(s for s in starts if s < len(fn.instructions))


class FunctionTranslator:
    """One VM function -> `i32 dvm_fn_<i>(Ctx *ctx, Value *args, Value *result)`."""

    def __init__(self, mt, index):
        self.mt, self.index = mt, index
        self.fn = mt.exe.functions[index]
        self.kinds = mt.kinds_of(index)
        self.llfn = mt.declare(index)
        self.b = None

    # -- structure

    def emit(self):
        fn, llfn = self.fn, self.llfn
        entry = llfn.append_basic_block("entry")
        self.b = b = ir.IRBuilder(entry)
        self.ctx, args, result = llfn.args
        self.regs = [_alloca(b, self.mt.value, name=f"r{r}") for r in range(fn.register_count)]
        for reg in self.regs:
            b.store(ir.Constant(self.mt.value, None), reg)
        for r, t in enumerate(fn.param_types):
            b.store(b.load(b.gep(args, [ir.Constant(I64, r)], source_etype=self.mt.value),
                           typ=self.mt.value), self.regs[r])
            if t["kind"] == "tensor":       # the Python edge writes no type word for tensors
                b.store(ir.Constant(I64, tensor_word(t["dtype"], len(t["shape"]))), self._field(r, _TYPE))
        self.result = result
        self.unwind = llfn.append_basic_block("unwind")
        self._failures = {}     # (pc, code) -> the block recording that failure
        self._scratch_slots = {}
        self.pc = 0
        starts = _leaders(fn)
        self.blocks = {pc: llfn.append_basic_block(f"pc{pc}") for pc in starts}
        self._enter()
        b.branch(self.blocks[0])
        ends = starts[1:] + [len(fn.instructions)]
        loop_heads = _loop_heads(fn)
        one_step = is_loop_function(fn.instructions)    # a loop function's body is one step
        for start, end in zip(starts, ends):
            b.position_at_end(self.blocks[start])
            self._charge_steps(1 if one_step else end - start, start)
            if start in loop_heads:
                self._poll_interrupt()
            for pc in range(start, end):
                self.pc = pc
                if self.kinds[pc] is None:      # unreachable (no path from the entry)
                    self._fail(RC_FAILED)
                    break
                getattr(self, "_op_" + fn.instructions[pc].name)(*fn.instructions[pc].args)
                for r in registers(fn.instructions[pc], "w"):
                    assumed = getattr(self.kinds, "assumed", {}).get((pc, r))
                    if assumed is not None:
                        self.mt.check_type(b, self.regs[r], {"kind": "tensor", "dtype": assumed.dtype,
                                                             "shape": [None] * assumed.rank},
                                           lambda cond: self._fail_if(cond, RC_FAILED))
            if not b.block.is_terminated:
                b.branch(self.blocks[end])
        self._emit_unwind()

    def _ctx_field(self, name):
        return ctx_field(self.b, self.ctx, name)

    def _enter(self):
        """Depth and native-stack checks; the stack check makes deep recursion a re-run in the
        Python tier instead of a crash."""
        b = self.b
        depth_ptr = self._ctx_field("depth")
        depth = b.add(b.load(depth_ptr, typ=I64), ir.Constant(I64, 1))
        b.store(depth, depth_ptr)
        too_deep = b.icmp_signed(">", depth, b.load(self._ctx_field("max_depth"), typ=I64))
        self._fail_if(too_deep, RC_FAILED)
        frame = b.ptrtoint(b.call(self.mt.frameaddress, [ir.Constant(I32, 0)]), I64)
        low = b.icmp_unsigned("<", frame, b.load(self._ctx_field("stack_limit"), typ=I64))
        self._fail_if(low, RC_STACK)
        self._poll_interrupt()

    def _poll_interrupt(self):
        """Stop when the interrupt word is set (kernels/interrupt.py: Ctrl-C in the main thread);
        polled at every call and at every loop head, so any loop stops within microseconds."""
        b = self.b
        word = b.load_atomic(b.load(self._ctx_field("interrupt"), typ=PTR), "monotonic", 4, typ=I32)
        self._fail_if(b.icmp_signed("!=", word, ir.Constant(I32, 0)), RC_INTERRUPT)

    def _charge_steps(self, count, pc):
        b = self.b
        ptr = self._ctx_field("steps")
        left = b.sub(b.load(ptr, typ=I64), ir.Constant(I64, count))
        b.store(left, ptr)
        self.pc = pc
        self._fail_if(b.icmp_signed("<", left, ir.Constant(I64, 0)), RC_FAILED)

    def _scratch(self, purpose, ty, count=None):
        """Stack space that lives only during one instruction (a call's argument block), shared
        by every instruction of the function that needs the same: one alloca per function, not
        per call site (thousands of allocas slow LLVM's code generation down)."""
        key = (purpose, str(ty), count)
        slot = self._scratch_slots.get(key)
        if slot is None:
            slot = self._scratch_slots[key] = _alloca(self.b, ty, count, name=purpose)
        return slot

    def _fail_if(self, cond, code):
        """Leave through the unwind path with `code`, recording function and pc, when `cond`."""
        b = self.b
        cont = self.llfn.append_basic_block("cont")
        b.cbranch(cond, self._failure(code), cont)
        b.position_at_end(cont)

    def _fail(self, code):
        self.b.branch(self._failure(code))

    def _failure(self, code):
        """The block that records a failure `code` at this pc and unwinds: one per pc and code.
        Each is its own small block (no phi merging thousands of failure sites: LLVM's time on
        such a phi grows with the square of the function's size)."""
        block = self._failures.get((self.pc, code))
        if block is None:
            block = self._failures[self.pc, code] = self.llfn.append_basic_block("fail")
            saved = self.b.block
            self.b.position_at_end(block)
            self.b.call(self.mt.record, [self.ctx, ir.Constant(I64, self.index),
                                         ir.Constant(I64, self.pc), ir.Constant(I64, code)])
            self.b.branch(self.unwind)
            self.b.position_at_end(saved)
        return block

    def _emit_unwind(self):
        """`unwind`: drop every register's reference and return the invocation's failure code
        (the first one recorded: every failure unwinds at once, callers included)."""
        b = self.b
        b.position_at_end(self.unwind)
        self._release_all()
        self._leave()
        b.ret(b.trunc(b.load(self._ctx_field("err_code"), typ=I64), I32))

    def _release_all(self):
        for r in range(len(self.regs)):
            self._release(r)

    def _leave(self):
        b = self.b
        depth_ptr = self._ctx_field("depth")
        b.store(b.sub(b.load(depth_ptr, typ=I64), ir.Constant(I64, 1)), depth_ptr)

    # -- register access

    def _field(self, r, k):
        return self.b.gep(self.regs[r], [ir.Constant(I32, 0), ir.Constant(I32, k)],
                          source_etype=self.mt.value)

    def _data(self, r):
        return self.b.load(self._field(r, 0), typ=PTR)

    def _block(self, r):
        return self.b.load(self._field(r, 1), typ=PTR)

    def _dims_ptr(self, r):
        return self._field(r, 2)

    def _dim(self, r, i):
        b = self.b
        return b.load(b.gep(self._dims_ptr(r), [ir.Constant(I32, 0), ir.Constant(I32, i)],
                            source_etype=self.mt.value.elements[2]), typ=I64)

    def _set_dim(self, r, i, value):
        b = self.b
        b.store(value, b.gep(self._dims_ptr(r), [ir.Constant(I32, 0), ir.Constant(I32, i)],
                             source_etype=self.mt.value.elements[2]))

    def _release(self, r):
        self.b.call(self.mt.release, [self._block(r)])

    def _set(self, r, data, block, dims, word):
        """Define register r (dropping its old value's reference) with type word `word`:
        `block`'s reference moves into the register."""
        self._release(r)
        b = self.b
        b.store(data, self._field(r, 0))
        b.store(block, self._field(r, 1))
        for i, d in enumerate(dims):
            self._set_dim(r, i, d)
        b.store(word if isinstance(word, ir.Value) else ir.Constant(I64, word), self._field(r, _TYPE))

    def _set_tensor(self, r, data, block, dims, dtype):
        self._set(r, data, block, dims, tensor_word(dtype, len(dims)))

    def _type_word(self, r):
        return self.b.load(self._field(r, _TYPE), typ=I64)

    def _check_type(self, r, t):
        """Fail unless register r holds a value of declared type `t`, unless its kind says so
        statically."""
        if not _fits(self._kind(r), t):
            self.mt.check_type(self.b, self.regs[r], t, lambda cond: self._fail_if(cond, RC_FAILED))

    def _check_word_kind(self, r, kind_code):
        """Fail unless register r's type word has kind `kind_code` (T_ADT, T_CLOSURE); the word."""
        b = self.b
        word = self._type_word(r)
        self._fail_if(b.icmp_unsigned("!=", b.and_(word, ir.Constant(I64, 0xFF)),
                                      ir.Constant(I64, kind_code)), RC_FAILED)
        return word

    def _kind(self, r):
        return self.kinds[self.pc][r]

    def _rank(self, r):
        return self._kind(r).rank

    def _dims(self, r):
        return [self._dim(r, i) for i in range(self._rank(r))]

    def _nbytes(self, dims, dtype):
        """Bytes of a tensor, or a failure when the product overflows int64."""
        b = self.b
        total = ir.Constant(I64, itemsize(dtype))
        for d in dims:
            if isinstance(d, ir.Constant) and isinstance(total, ir.Constant):   # static: fold
                product = total.constant * d.constant
                if product > INT64_MAX:
                    self._fail(RC_FAILED)
                    b.position_at_end(self.llfn.append_basic_block("unreachable"))
                    product = 0
                total = ir.Constant(I64, product)
                continue
            self._fail_if(b.icmp_signed("<", d, ir.Constant(I64, 0)), RC_FAILED)
            pair = b.smul_with_overflow(total, d)
            self._fail_if(b.extract_value(pair, 1), RC_FAILED)
            total = b.extract_value(pair, 0)
        return total

    def _new_block(self, size):
        pool = self.b.load(self._ctx_field("pool"), typ=PTR)
        block = self.b.call(self.mt.alloc, [pool, size])
        self._fail_if(self.b.icmp_unsigned("==", block, ir.Constant(PTR, None)), RC_FAILED)
        return block

    def _block_data(self, block):
        return self.b.gep(block, [ir.Constant(I64, BLOCK_HEADER)], source_etype=I8)

    def _shape_values(self, r):
        """The values of shape register r (int64, 1-d, length static), each checked >= 0."""
        b = self.b
        n = self._kind(r).dims[0]
        self._fail_if(b.icmp_signed("!=", self._dim(r, 0), ir.Constant(I64, n)), RC_FAILED)
        data = self._data(r)
        values = [b.load(b.gep(data, [ir.Constant(I64, i)], source_etype=I64), typ=I64)
                  for i in range(n)]
        for v in values:
            self._fail_if(b.icmp_signed("<", v, ir.Constant(I64, 0)), RC_FAILED)
        return values

    # -- opcodes (the table's order)

    def _retained(self, ptr):
        """The Value at `ptr` with one more reference to its block."""
        value = self.b.load(ptr, typ=self.mt.value)
        self.b.call(self.mt.retain, [self.b.extract_value(value, 1)])
        return value

    def _assign(self, dst, value):
        """Register dst := a Value that carries a reference of its own (the old one dropped)."""
        self._release(dst)
        self.b.store(value, self.regs[dst])

    def _op_Move(self, dst, src):
        self._assign(dst, self._retained(self.regs[src]))

    def _op_Ret(self, src):
        self._check_type(src, self.fn.ret_type)
        b = self.b
        b.store(b.load(self.regs[src], typ=self.mt.value), self.result)
        b.store(ir.Constant(PTR, None), self._field(src, 1))     # the reference moves out
        self._release_all()
        self._leave()
        b.ret(ir.Constant(I32, 0))

    def _op_Invoke(self, func, args, dst):
        """A direct call; through the callee's checked entry when the register kinds do not
        prove the arguments fit its parameters."""
        b = self.b
        argv = self._scratch("argv", self.mt.value, len(args) or 1)
        for k, r in enumerate(args):
            b.store(self._retained(self.regs[r]), b.gep(argv, [ir.Constant(I64, k)],
                                                          source_etype=self.mt.value))
        proven = all(map(_fits, (self._kind(r) for r in args), self.mt.exe.functions[func].param_types))
        callee = self.mt.declare(func) if proven else self.mt.declare_checked(func)
        self._call_function(callee, argv, dst)

    def _call_function(self, callee, argv, dst):
        """R[dst] := callee(argv) (a function pointer of type fnty, or a declared function);
        a failure unwinds with the callee's code."""
        b = self.b
        out = self._scratch("out", self.mt.value)
        b.store(ir.Constant(self.mt.value, None), out)
        rc = b.call(callee, [self.ctx, argv, out])
        cont = self.llfn.append_basic_block("cont")
        b.cbranch(b.icmp_signed("!=", rc, ir.Constant(I32, 0)), self.unwind, cont)    # recorded
        b.position_at_end(cont)
        self._assign(dst, b.load(out, typ=self.mt.value))

    def _call(self, fn, regs_in, regs_out, sigs):
        """Call a kernel-ABI function (a declared one, or a pointer loaded with its type) with
        registers as its DLTensor arguments."""
        b = self.b
        n = len(sigs)
        tensors = self._scratch("tensors", DLTENSOR, n or 1)
        for k, (r, (dtype, rank)) in enumerate(zip(list(regs_in) + list(regs_out), sigs)):
            _, code, bits = DTYPES[dtype]
            t = b.gep(tensors, [ir.Constant(I64, k)], source_etype=DLTENSOR)
            data, dims = r if isinstance(r, tuple) else (self._data(r), self._dims_ptr(r))
            value = ir.Constant(DLTENSOR, [None, [KDL_CPU, 0], rank, [code, bits, 1], None, None, 0])
            value = b.insert_value(b.insert_value(value, data, 0), dims, 4)
            b.store(value, t)
        return b.call(fn, [tensors, ir.Constant(I32, n)])

    def _kernel_fn(self, kernel):
        """Kernel `kernel`'s dispatcher, from the context's table (its address is per process)."""
        b = self.b
        table = b.load(self._ctx_field("kernels"), typ=PTR)
        return b.load(b.gep(table, [ir.Constant(I64, kernel)], source_etype=PTR),
                      typ=_KERNEL_FNTY.as_pointer())

    def _check_inputs(self, inputs, sigs):
        """Kernel inputs whose dtype or rank the kinds do not know: checked against the
        kernel's signature (the kernel checks the extents)."""
        for r, (dtype, rank) in zip(inputs, sigs):
            self._check_type(r, {"kind": "tensor", "dtype": dtype, "shape": [None] * rank})

    def _op_CallKernel(self, kernel, inputs, outputs):
        b = self.b
        k = self.mt.exe.loaded_kernels()[kernel]
        self._check_inputs(inputs, k.inputs)
        rc = self._call(self._kernel_fn(kernel), inputs, outputs, k.inputs + k.outputs)
        self._fail_if(b.icmp_signed("!=", rc, ir.Constant(I32, 0)), RC_FAILED)

    def _op_CallLoop(self, kernel, inputs, outputs):
        """A loop kernel (kernels/loop.py) with what the VM supplies: the step budget (the
        iterations the steps left allow), the interrupt word and the counters; charged as the
        bytecode loop it replaces (its spec's `fixed - 1 + n * per_iteration`, the function's
        one step already charged)."""
        b = self.b
        k = self.mt.exe.loaded_kernels()[kernel]
        self._check_inputs(inputs, k.inputs)
        fixed, per_iteration = k.attrs["steps"]
        steps = self._ctx_field("steps")
        left = b.sub(b.load(steps, typ=I64), ir.Constant(I64, fixed - 1))
        self._fail_if(b.icmp_signed("<", left, ir.Constant(I64, 0)), RC_FAILED)
        budget = self._scratch("budget", I64)
        b.store(b.sdiv(left, ir.Constant(I64, per_iteration)), budget)
        counters = self._scratch("counters", I64, 2)
        b.store(ir.Constant(I64, 0), counters)
        b.store(ir.Constant(I64, -1), _word(b, counters, 1))
        two = self._scratch("two", I64)
        b.store(ir.Constant(I64, 2), two)
        word = b.load(self._ctx_field("interrupt"), typ=PTR)
        rc = self._call(self._kernel_fn(kernel), list(inputs) + [(budget, two), (word, two)],   # 0-d: extents unread
                        list(outputs) + [(counters, two)], k.inputs + k.outputs)
        iterations = b.load(counters, typ=I64)
        b.store(b.sub(left, b.mul(iterations, ir.Constant(I64, per_iteration))), steps)
        interrupted = b.icmp_signed("==", b.and_(rc, ir.Constant(I32, 0xFF)), ir.Constant(I32, ERR_INTERRUPT))
        self._fail_if(interrupted, RC_INTERRUPT)
        self._fail_if(b.icmp_signed("!=", rc, ir.Constant(I32, 0)), RC_FAILED)

    def _op_CallShapeFunc(self, shape_func, inputs, outputs):
        """The call site's native shape function (emitted into this module, kernel ABI), its
        outputs allocated with the lengths tracing found."""
        site = native_shape_func(self.mt.exe.shape_funcs[shape_func],
                                 _shape_func_sigs(self.kinds[self.pc], self.mt.exe.functions[self.index]
                                                  .instructions[self.pc]))
        for r, n in zip(outputs, site.lengths):
            block = self._new_block(ir.Constant(I64, 8 * n))
            self._set_tensor(r, self._block_data(block), block, [ir.Constant(I64, n)], "int64")
        callee = self.mt.shape_function(site)
        rc = self._call(callee, inputs, outputs, [tuple(sig) for sig in site.inputs + site.outputs])
        self._fail_if(self.b.icmp_signed("!=", rc, ir.Constant(I32, 0)), RC_FAILED)

    def _op_AllocStorage(self, size, alignment, dtype, dst):
        block = self._new_block(ir.Constant(I64, size))
        self._set(dst, self._block_data(block), block, [], T_STORAGE)

    def _op_AllocStorageReg(self, shape, alignment, dtype, dst):
        size = self._nbytes(self._shape_values(shape), dtype)
        block = self._new_block(size)
        self._set(dst, self._block_data(block), block, [], T_STORAGE)

    def _view(self, storage, offset, dims, dtype, dst):
        """A tensor of `dims` at byte `offset` of storage register `storage`, checked to fit
        (a bad static offset fails whenever it is reached, as in the Python tier)."""
        b = self.b
        if offset < 0 or offset % itemsize(dtype) or offset > INT64_MAX // 2:
            self._fail(RC_FAILED)
            b.position_at_end(self.llfn.append_basic_block("unreachable"))
        nbytes = self._nbytes(dims, dtype)
        block = self._block(storage)
        size = b.load(_word(b, block, B_SIZE), typ=I64)
        room = b.sub(size, ir.Constant(I64, offset))
        self._fail_if(b.icmp_signed("<", room, ir.Constant(I64, 0)), RC_FAILED)
        self._fail_if(b.icmp_signed(">", nbytes, room), RC_FAILED)
        b.call(self.mt.retain, [block])
        data = b.gep(self._data(storage), [ir.Constant(I64, offset)], source_etype=I8)
        self._set_tensor(dst, data, block, dims, dtype)

    def _op_AllocTensor(self, storage, offset, shape, dtype, dst):
        self._view(storage, offset, [ir.Constant(I64, d) for d in shape], dtype, dst)

    def _op_AllocTensorReg(self, storage, offset, shape, dtype, dst):
        self._view(storage, offset, self._shape_values(shape), dtype, dst)

    def _fields_block(self, regs):
        """(data, block) of a new block holding the Values of `regs`, each with a reference
        (B_FIELDS says how many: releasing the block drops them); NULLs when there are none."""
        if not regs:
            return ir.Constant(PTR, None), ir.Constant(PTR, None)
        b = self.b
        vt = self.mt.value
        block = self._new_block(ir.Constant(I64, len(regs) * _value_bytes(vt)))
        b.store(ir.Constant(I64, len(regs)), _word(b, block, B_FIELDS))
        data = self._block_data(block)
        for k, r in enumerate(regs):
            b.store(self._retained(self.regs[r]), b.gep(data, [ir.Constant(I64, k)], source_etype=vt))
        return data, block

    def _op_AllocADT(self, ctor, fields, dst):
        """A tuple or a constructor's value: a block of its fields' Values (none for a nullary
        constructor), the constructor and field count in the type word. Fields the constructor
        declares a type for are checked (GetField's kinds rely on them)."""
        for r, t in zip(fields, self.mt.exe.constructors[ctor].get("fields", ())):
            self._check_type(r, t)
        data, block = self._fields_block(fields)
        self._set(dst, data, block, [], adt_word(ctor, len(fields)))

    def _op_AllocClosure(self, func, captured, dst):
        data, block = self._fields_block(captured)
        self._set(dst, data, block, [], closure_word(func, len(captured)))

    def _op_GetField(self, obj, index, dst):
        b = self.b
        kind = self._kind(obj)
        if kind.kind != "adt" or kind.fields is None or index >= len(kind.fields):
            count = b.lshr(self._check_word_kind(obj, T_ADT), ir.Constant(I64, 32))
            self._fail_if(b.icmp_unsigned(">=", ir.Constant(I64, index), count), RC_FAILED)
        field = b.gep(self._data(obj), [ir.Constant(I64, index)], source_etype=self.mt.value)
        self._assign(dst, self._retained(field))

    def _op_GetTag(self, obj, dst):
        """A 0-d int64 viewing the constructor's entry of the tag table."""
        b = self.b
        word = self._check_word_kind(obj, T_ADT) if self._kind(obj).kind != "adt" else self._type_word(obj)
        ctor = b.and_(b.lshr(word, ir.Constant(I64, 8)), ir.Constant(I64, MAX_INDEX - 1))
        tag = b.gep(self.mt.tags, [ir.Constant(I64, 0), ctor], source_etype=self.mt.tags.value_type)
        self._set_tensor(dst, tag, ir.Constant(PTR, None), [], "int64")

    def _op_InvokeClosure(self, closure, args, dst):
        """Call the closure's function (its checked entry, from the table) with its captured
        Values then `args`; a closure of a Python-tier function fails (the Python tier runs)."""
        b = self.b
        vt = self.mt.value
        word = self._check_word_kind(closure, T_CLOSURE)
        func = b.and_(b.lshr(word, ir.Constant(I64, 8)), ir.Constant(I64, MAX_INDEX - 1))
        captured = b.lshr(word, ir.Constant(I64, 32))
        count = b.load(b.gep(self.mt.param_counts, [ir.Constant(I64, 0), func],
                             source_etype=self.mt.param_counts.value_type), typ=I64)
        self._fail_if(b.icmp_unsigned("!=", b.add(captured, ir.Constant(I64, len(args))), count), RC_FAILED)
        entry = b.load(b.gep(self.mt.entry_table, [ir.Constant(I64, 0), func],
                             source_etype=self.mt.entry_table.value_type), typ=self.mt.fnty.as_pointer())
        self._fail_if(b.icmp_unsigned("==", b.ptrtoint(entry, I64), ir.Constant(I64, 0)), RC_FAILED)
        argv = _alloca(b, vt, self.mt.max_params)
        data = self._data(closure)
        with _counted_loop(b, captured) as k:
            b.store(self._retained(b.gep(data, [k], source_etype=vt)), b.gep(argv, [k], source_etype=vt))
        for j, r in enumerate(args):
            b.store(self._retained(self.regs[r]),
                    b.gep(argv, [b.add(captured, ir.Constant(I64, j))], source_etype=vt))
        self._call_function(entry, argv, dst)

    def _op_If(self, test, target, then_off, else_off):
        b = self.b
        equal = b.icmp_signed("==", self._scalar(test), self._scalar(target))
        b.cbranch(equal, self.blocks[self.pc + then_off], self.blocks[self.pc + else_off])

    def _scalar(self, r):
        """int(R[r]) of a one-element tensor (a failure when it has another size)."""
        b = self.b
        kind = self._kind(r)
        if kind.kind != "tensor" or kind.dtype not in _MEM or kind.rank is None:
            return self._dynamic_scalar(r)
        count = ir.Constant(I64, 1)
        for d in self._dims(r):
            count = b.mul(count, d)
        self._fail_if(b.icmp_signed("!=", count, ir.Constant(I64, 1)), RC_FAILED)
        return self._int_of(self._data(r), kind.dtype)

    def _dynamic_scalar(self, r):
        """int(R[r]) of a 0-d tensor whose dtype only its type word says (a closure's result):
        one conversion per dtype; another kind or rank fails."""
        b = self.b
        word = self._type_word(r)
        self._fail_if(b.icmp_unsigned("!=", b.and_(word, ir.Constant(I64, 0xFF00FF)),
                                      ir.Constant(I64, T_TENSOR)), RC_FAILED)
        code = b.and_(b.lshr(word, ir.Constant(I64, 8)), ir.Constant(I64, 0xFF))
        other = self.llfn.append_basic_block("other_dtype")
        done = self.llfn.append_basic_block("scalar")
        data = self._data(r)
        switch = b.switch(code, other)
        results = []
        for dtype in _MEM:
            case = self.llfn.append_basic_block(dtype)
            switch.add_case(ir.Constant(I64, DTYPE_CODES[dtype]), case)
            b.position_at_end(case)
            results.append((self._int_of(data, dtype), b.block))
            b.branch(done)
        b.position_at_end(other)
        self._fail(RC_FAILED)
        b.position_at_end(done)
        value = b.phi(I64)
        for v, block in results:
            value.add_incoming(v, block)
        return value

    def _int_of(self, data, dtype):
        """int() of the element of `dtype` at `data` (NaN, inf or beyond int64 fail)."""
        b = self.b
        value = b.load(data, typ=_MEM[dtype])
        if dtype.startswith("float"):
            ok = b.fcmp_ordered("<", b.call(self.mt.module.declare_intrinsic("llvm.fabs", [value.type]),
                                            [value]), ir.Constant(value.type, 9.2e18))
            self._fail_if(b.not_(ok), RC_FAILED)        # NaN, inf or beyond int64: Python raises
            return b.fptosi(value, I64)
        if dtype == "bool":
            return b.zext(b.icmp_unsigned("!=", value, ir.Constant(I8, 0)), I64)
        return value if dtype == "int64" else b.sext(value, I64)

    def _op_Goto(self, off):
        self.b.branch(self.blocks[self.pc + off])

    def _op_LoadConst(self, const, dst):
        b = self.b
        table = b.load(self._ctx_field("constants"), typ=PTR)
        data = b.load(b.gep(table, [ir.Constant(I64, const)], source_etype=PTR), typ=PTR)
        shape = self.mt.exe.constants[const].shape
        self._set_tensor(dst, data, ir.Constant(PTR, None), [ir.Constant(I64, d) for d in shape],
                         self.mt.exe.constants[const].dtype.name)

    def _op_LoadConsti(self, value, dst):
        g = ir.GlobalVariable(self.mt.module, I64, f"dvm_i{self.index}_{self.pc}")
        g.initializer = ir.Constant(I64, value)
        g.global_constant = True
        g.linkage = "internal"
        g.align = 8
        self._set_tensor(dst, self.b.bitcast(g, PTR), ir.Constant(PTR, None), [], "int64")

    def _op_ShapeOf(self, tensor, dst):
        b = self.b
        kind = self._kind(tensor)
        if kind.kind != "tensor" or kind.rank is None:
            return self._dynamic_shape_of(tensor, dst)
        dims = self._dims(tensor)
        block = self._new_block(ir.Constant(I64, 8 * len(dims)))
        data = self._block_data(block)
        for i, d in enumerate(dims):
            b.store(d, b.gep(data, [ir.Constant(I64, i)], source_etype=I64))
        self._set_tensor(dst, data, block, [ir.Constant(I64, len(dims))], "int64")

    def _dynamic_shape_of(self, tensor, dst):
        """ShapeOf of a value whose rank is known only at run time (a match's field, a generic
        call's result): the rank from its type word, which must say tensor."""
        b = self.b
        word = self._check_word_kind(tensor, T_TENSOR)
        rank = b.and_(b.lshr(word, ir.Constant(I64, 16)), ir.Constant(I64, 0xFF))
        block = self._new_block(b.mul(rank, ir.Constant(I64, 8)))
        data = self._block_data(block)
        dims = self._dims_ptr(tensor)
        with _counted_loop(b, rank) as i:
            d = b.load(b.gep(dims, [ir.Constant(I64, 0), i], source_etype=self.mt.value.elements[2]), typ=I64)
            b.store(d, b.gep(data, [i], source_etype=I64))
        self._set_tensor(dst, data, block, [rank], "int64")

    def _op_ReshapeTensor(self, tensor, shape, dst):
        b = self.b
        old = ir.Constant(I64, 1)
        for d in self._dims(tensor):
            old = b.mul(old, d)
        new_dims = self._shape_values(shape)
        new = ir.Constant(I64, 1)
        for d in new_dims:
            new = b.mul(new, d)
        self._fail_if(b.icmp_signed("!=", old, new), RC_FAILED)
        block = self._block(tensor)
        b.call(self.mt.retain, [block])
        self._set_tensor(dst, self._data(tensor), block, new_dims, self._kind(tensor).dtype)

    def _op_KillRegister(self, reg):
        """Drop the value; the type word says "nothing" (a later read checks it)."""
        self._release(reg)
        self.b.store(ir.Constant(PTR, None), self._field(reg, 1))
        self.b.store(ir.Constant(I64, 0), self._field(reg, _TYPE))

    def _op_Fatal(self, message):
        self._fail(RC_FAILED)


def _value_bytes(value_type) -> int:
    return 24 + 8 * value_type.elements[2].count


def _branch_if(b, cond, target):
    """Branch to `target` when cond holds; go on in a new block otherwise."""
    cont = b.function.append_basic_block("ok")
    b.cbranch(cond, target, cont)
    b.position_at_end(cont)


_MEM = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I8}
_KERNEL_FNTY = ir.FunctionType(I32, [PTR, I32])


def ctx_field(b, ctx, name):
    """Pointer to the context's field `name` (CTX_FIELDS)."""
    return b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, _CTX[name])], source_etype=CTX_TYPE)


def _word(b, base, k, index=None):
    """Pointer to int64 word k (+ index) of `base`."""
    offset = ir.Constant(I64, k) if index is None else b.add(ir.Constant(I64, k), index)
    return b.gep(base, [offset], source_etype=I64)


def _bump(b, pool, field, delta):
    """pool[field] += delta; the new value."""
    ptr = _word(b, pool, POOL_FIELDS.index(field))
    value = b.add(b.load(ptr, typ=I64), delta)
    b.store(value, ptr)
    return value


def _store_word(b, pool, field, value):
    b.store(value, _word(b, pool, POOL_FIELDS.index(field)))


def _size_class(b, n):
    """(block size, free-list index) of a request of n >= 0 bytes, as vm/memory.py's
    size_class: 64-byte granules up to 512 bytes, then four classes per power of two."""
    c = lambda v: ir.Constant(I64, v)      # noqa: E731
    ctlz = b.module.globals.get("llvm.ctlz.i64") or \
        ir.Function(b.module, ir.FunctionType(I64, [I64, I1]), "llvm.ctlz.i64")
    m = b.select(b.icmp_unsigned("<", n, c(1)), c(1), n)
    bits = b.sub(c(64), b.call(ctlz, [b.sub(m, c(1)), ir.Constant(I1, 0)]))   # bit_length(m-1)
    shift = b.select(b.icmp_signed("<", bits, c(9)), c(6), b.sub(bits, c(3)))
    step = b.shl(c(1), shift)
    size = b.mul(b.udiv(b.add(m, b.sub(step, c(1))), step), step)
    small = b.icmp_unsigned("<=", size, c(512))
    k = b.udiv(size, step)                              # 5..8 above 512 bytes
    big = b.add(c(8), b.add(b.mul(b.sub(bits, c(10)), c(4)), b.sub(k, c(5))))
    # a size that rounds up to the next power of two belongs to that power's last class
    index = b.select(small, b.sub(b.udiv(size, c(64)), c(1)), big)
    return size, index


class _counted_loop:
    """`with _counted_loop(b, n) as k:` emits a loop running its body for k in [0, n)."""

    def __init__(self, b, n):
        self.b, self.n = b, n

    def __enter__(self):
        b = self.b
        fn = b.function
        self.head, self.body, self.done = (fn.append_basic_block(x) for x in ("head", "body", "done"))
        start = b.block
        b.branch(self.head)
        b.position_at_end(self.head)
        self.k = b.phi(I64)
        self.k.add_incoming(ir.Constant(I64, 0), start)
        b.cbranch(b.icmp_signed("<", self.k, self.n), self.body, self.done)
        b.position_at_end(self.body)
        return self.k

    def __exit__(self, *exc):
        b = self.b
        self.k.add_incoming(b.add(self.k, ir.Constant(I64, 1)), b.block)
        b.branch(self.head)
        b.position_at_end(self.done)


def _alloca(b, ty, count=None, name=""):
    """Stack space for `ty` (or `count` of them) as an opaque pointer, like every pointer here;
    allocated in the entry block so that a loop does not grow the stack."""
    saved = b.block
    entry = b.function.entry_basic_block
    if entry.instructions:
        b.position_before(entry.instructions[0])
    else:
        b.position_at_end(entry)
    slot = b.alloca(ty, size=None if count is None else ir.Constant(I64, count), name=name)
    slot.type = PTR
    b.position_at_end(saved)
    return slot


# numpy's array object as edge functions read it (PyArrayObject_fields: unchanged since numpy
# 1.7 and checked against live arrays before any edge is used, `numpy_layout_ok`): byte offsets
ARRAY_TYPE, ARRAY_DATA, ARRAY_ND, ARRAY_DIMS, ARRAY_DESCR, ARRAY_FLAGS = 8, 16, 24, 32, 56, 64
TUPLE_SIZE, TUPLE_ITEMS = 16, 24    # CPython's tuple object: ob_size, then the item pointers
SCALAR_VALUE = 16                   # a numpy scalar's value, after the object header
C_CONTIGUOUS_ALIGNED = 0x0101       # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED


def copied_out(t) -> bool:
    """Whether an edge function copies a result of type `t` into arrays made in advance: a
    tensor, or a tuple of tensors (most models' several outputs)."""
    return t["kind"] == "tensor" or (t["kind"] == "tuple" and bool(t["fields"]) and
                                     all(f["kind"] == "tensor" for f in t["fields"]))


class EdgeTranslator:
    """`i32 dvm_edge_<i>(Ctx *ctx, i64 out, i64 args)`: invoke's way into function i with no
    Python work per argument.

    `args` is the address of invoke's argument tuple (`id(args)`); the edge takes it only with
    as many items as parameters, and each tensor only when it is exactly a
    numpy array with the parameter's dtype object (native byte order), rank and static dims,
    C-contiguous and aligned, with no zero extent: the arrays invoke's general path takes as
    they are. ADT and tuple arguments go through `dvm_import` (the same rule for the arrays
    inside, and every check of the general path). Anything else, and a thread other than the one the context's stack limit was
    taken on, returns RC_EDGE: invoke then takes the general path, which checks, converts or
    reports. The edge resets the context (steps, depth, error) from its configured limits and
    calls the function. `out`, when not 0, is a fresh numpy array of the result's expected
    shape (the static one, or the last result's): a result of that shape is copied into it and
    released (one crossing for the whole invoke); otherwise (RC_RESHAPED, or out == 0) the
    result stays in ctx.result for the caller to export."""

    def __init__(self, mt, index, arms):
        self.mt, self.index, self.arms = mt, index, arms
        self.fn = mt.exe.functions[index]
        self.llfn = ir.Function(mt.module, ir.FunctionType(I32, [PTR, I64, I64]), edge_symbol_of(index))
        self.b = ir.IRBuilder(self.llfn.append_basic_block("entry"))
        self.decline = self.llfn.append_basic_block("decline")

    def emit(self):
        b, mt = self.b, self.mt
        ctx, out, items = self.llfn.args
        nparams = len(self.fn.params)
        args = _alloca(b, mt.value, max(1, nparams))
        self._require(b.icmp_unsigned("==", b.call(mt.pthread_self, []), self._ctx(ctx, "thread")))
        items = b.inttoptr(items, PTR)
        self._require(b.icmp_signed("==", self._load(items, TUPLE_SIZE, I64), ir.Constant(I64, nparams)))
        if not all(t["kind"] == "tensor" for t in self.fn.param_types):
            imports = b.load(ctx_field(b, ctx, "imports"), typ=PTR)
            b.store(ir.Constant(I64, 0), _word(b, imports, IMPORT_FIELDS.index("top")))
        for k, t in enumerate(self.fn.param_types):
            obj = self._load(items, TUPLE_ITEMS + 8 * k, PTR)
            dest = b.gep(args, [ir.Constant(I64, k)], source_etype=mt.value)
            if t["kind"] == "tensor":
                b.store(self._argument(ctx, obj, t), dest)
                continue
            rc = b.call(mt.importer, [ctx, b.ptrtoint(obj, I64), ir.Constant(I64, mt.import_tables.params[self.index][k]), dest])
            with b.if_then(b.icmp_signed("!=", rc, ir.Constant(I32, 0))):
                b.ret(rc)
        for field, value in (("steps", self._ctx(ctx, "budget")), ("depth", ir.Constant(I64, 0)),
                             ("max_depth", self._ctx(ctx, "depth_limit")),
                             ("err_code", ir.Constant(I64, 0))):
            b.store(value, ctx_field(b, ctx, field))
        if self.arms:       # a function that may loop polls the interrupt word, armed
            arm = mt.module.globals.get("dynvm_arm") or ir.Function(
                mt.module, ir.FunctionType(I64, [I64]), "dynvm_arm")
            b.store(b.inttoptr(b.call(arm, [self._ctx(ctx, "quiet")]), PTR), ctx_field(b, ctx, "interrupt"))
        result = b.load(ctx_field(b, ctx, "result"), typ=PTR)
        rc = b.call(mt.declare(self.index), [ctx, args, result])
        with b.if_then(b.icmp_signed("!=", rc, ir.Constant(I32, 0))):
            b.ret(rc)
        t = self.fn.ret_type
        if copied_out(t):
            with b.if_then(b.icmp_unsigned("!=", out, ir.Constant(I64, 0))):
                self._copy_out(b.inttoptr(out, PTR), b.load(result, typ=mt.value), t)
        b.ret(ir.Constant(I32, 0))
        b.position_at_end(self.decline)
        b.ret(ir.Constant(I32, RC_EDGE))

    def _copy_out(self, out, value, t):
        """The result Value into `out` (an array for a tensor result, a tuple of arrays for a
        tuple of tensors) when every array has its tensor's shape: then the result's reference
        is dropped; else return RC_RESHAPED with the result left in ctx.result. Every shape is
        checked before anything is copied."""
        b, mt = self.b, self.mt
        reshaped = self.llfn.append_basic_block("reshaped")
        if t["kind"] == "tensor":
            pairs = [(out, value, t)]
        else:
            run = b.extract_value(value, 0)
            pairs = [(self._load(out, TUPLE_ITEMS + 8 * k, PTR),
                      b.load(b.gep(run, [ir.Constant(I64, k)], source_etype=mt.value), typ=mt.value), f)
                     for k, f in enumerate(t["fields"])]
        sizes = [self._same_shape(array, v, f, reshaped) for array, v, f in pairs]
        for (array, v, _), nbytes in zip(pairs, sizes):
            b.call(mt.memcpy, [self._load(array, ARRAY_DATA, PTR), b.extract_value(v, 0), nbytes,
                               ir.Constant(I1, 0)])
        b.call(mt.release, [b.extract_value(value, 1)])
        saved = b.block
        b.position_at_end(reshaped)
        b.ret(ir.Constant(I32, RC_RESHAPED))
        b.position_at_end(saved)

    def _same_shape(self, array, value, t, reshaped):
        """The byte size of tensor `value` of type `t`, after a branch to `reshaped` unless
        `array` has its extents."""
        b = self.b
        dims = self._load(array, ARRAY_DIMS, PTR)
        nbytes = ir.Constant(I64, itemsize(t["dtype"]))
        for i in range(len(t["shape"])):
            d = b.load(b.gep(dims, [ir.Constant(I64, i)], source_etype=I64), typ=I64)
            same = b.append_basic_block("same")
            b.cbranch(b.icmp_signed("==", d, b.extract_value(value, [2, i])), same, reshaped)
            b.position_at_end(same)
            nbytes = b.mul(nbytes, d)
        return nbytes

    def _argument(self, ctx, obj, t):
        """The Value of argument object `obj` for a parameter of type `t`, or a decline."""
        return self._array_argument(ctx, obj, t) if t["shape"] else self._scalar_argument(ctx, obj, t)

    def _array_argument(self, ctx, obj, t):
        """The Value of numpy array `obj` for tensor type `t`, or a decline."""
        b = self.b
        self._require(b.icmp_unsigned("==", self._load(obj, ARRAY_TYPE, I64),
                                      self._ctx(ctx, "ndarray_type")))
        descrs = b.load(ctx_field(b, ctx, "descrs"), typ=PTR)
        descr = b.load(b.gep(descrs, [ir.Constant(I64, DTYPE_ORDER.index(t["dtype"]))],
                             source_etype=I64), typ=I64)
        self._require(b.icmp_unsigned("==", self._load(obj, ARRAY_DESCR, I64), descr))
        shape = t["shape"]
        self._require(b.icmp_signed("==", self._load(obj, ARRAY_ND, I32), ir.Constant(I32, len(shape))))
        flags = b.and_(self._load(obj, ARRAY_FLAGS, I32), ir.Constant(I32, C_CONTIGUOUS_ALIGNED))
        self._require(b.icmp_signed("==", flags, ir.Constant(I32, C_CONTIGUOUS_ALIGNED)))
        dims = self._load(obj, ARRAY_DIMS, PTR)
        value = b.insert_value(ir.Constant(self.mt.value, None), self._load(obj, ARRAY_DATA, PTR), 0)
        for i, want in enumerate(shape):
            d = b.load(b.gep(dims, [ir.Constant(I64, i)], source_etype=I64), typ=I64)
            if want is None:
                self._require(b.icmp_signed(">", d, ir.Constant(I64, 0)))
            else:
                self._require(b.icmp_signed("==", d, ir.Constant(I64, want)))
                self._require(ir.Constant(I1, want > 0))
            value = b.insert_value(value, d, [2, i])
        return value

    def _scalar_argument(self, ctx, obj, t):
        """A 0-d parameter also takes exactly a numpy scalar of its dtype (np.float32(0.5)):
        its value, inside the immutable scalar object, is the data (what the general path
        would copy into a 0-d array)."""
        b = self.b
        code = DTYPE_ORDER.index(t["dtype"])
        scalar_type = b.load(b.gep(b.load(ctx_field(b, ctx, "descrs"), typ=PTR),
                                   [ir.Constant(I64, len(DTYPE_ORDER) + code)], source_etype=I64), typ=I64)
        is_scalar = b.icmp_unsigned("==", self._load(obj, ARRAY_TYPE, I64), scalar_type)
        scalar_data = b.gep(obj, [ir.Constant(I64, SCALAR_VALUE)], source_etype=I8)
        with b.if_else(is_scalar) as (scalar, array):
            with scalar:
                from_scalar = b.block
            with array:
                data = b.extract_value(self._array_argument(ctx, obj, t), 0)
                from_array = b.block
        value = b.phi(PTR)
        value.add_incoming(scalar_data, from_scalar)
        value.add_incoming(data, from_array)
        return b.insert_value(ir.Constant(self.mt.value, None), value, 0)

    def _require(self, cond):
        ok = self.llfn.append_basic_block("ok")
        self.b.cbranch(cond, ok, self.decline)
        self.b.position_at_end(ok)

    def _load(self, base, offset, ty):
        return self.b.load(self.b.gep(base, [ir.Constant(I64, offset)], source_etype=I8), typ=ty)

    def _ctx(self, ctx, name):
        return self.b.load(ctx_field(self.b, ctx, name), typ=I64)


class ImportTables:
    """The checks and constructor rows `dvm_import` reads for one executable (IMPORT_FIELDS):
    what `boundary.import_arg` checks, as tables. `params[i]` are function i's parameters'
    check numbers (constants in its edge function)."""

    def __init__(self, exe, rank_bound):
        self.words = [CHECK_ANY]
        self._ids = {}
        self._adts = {}
        for c in exe.constructors:
            self._adts.setdefault(c["adt"], len(self._adts))
        by_name = {c["name"]: i for i, c in enumerate(exe.constructors)}   # invoke's lookup
        self.names = [sys.intern(c["name"]) for c in exe.constructors]    # compared by identity
        self.rows = []
        for i, c in enumerate(exe.constructors):
            fields = [self.check(d) for d in c.get("fields", ())]
            first = len(self.words)
            self.words += fields
            tag = c["tag"]
            self.rows += [id(self.names[i]) if by_name[c["name"]] == i else 0,
                          id(tag) if -5 <= tag <= 256 else 0,   # CPython's cached small ints
                          -1 if c["arity"] is None else c["arity"], self._adts[c["adt"]],
                          first, len(fields)]
        self.params = [[self.check(t) for t in fn.param_types] for fn in exe.functions]
        self.words += [0] * (3 + rank_bound)    # a tensor check's extents read past a shorter one

    def check(self, desc) -> int:
        """The number of the check for type descriptor `desc` (added on first use)."""
        kind = desc["kind"]
        if kind == "tensor":
            words = [CHECK_TENSOR, DTYPE_CODES[desc["dtype"]], len(desc["shape"]),
                     *(-1 if d is None else d for d in desc["shape"])]
        elif kind == "adt":
            words = [CHECK_ADT, self._adts.get(desc["name"], -1)]
        elif kind == "tuple":
            fields = [self.check(f) for f in desc["fields"]]
            words = [CHECK_TUPLE, len(fields), *fields]
        else:
            return 0
        key = tuple(words)
        if key not in self._ids:
            self._ids[key] = len(self.words)
            self.words += words
        return self._ids[key]


def numpy_scalars_ok() -> bool:
    """Whether numpy scalars (np.float32(x), ...) hold their value SCALAR_VALUE bytes into the
    object (checked on live scalars of every dtype)."""
    for name in DTYPE_ORDER:
        dtype = DTYPES[name][0]
        value = dtype.type(1)
        if ffi.buffer(ffi.cast("char *", id(value) + SCALAR_VALUE), dtype.itemsize)[:] != \
                np.ones((), dtype).tobytes():
            return False
    return True


def adt_slots():
    """The byte offsets of a vm.ADT's constructor, tag and fields slots (found on a live
    object), or None when the layout is not the one `dvm_import` reads."""
    if not numpy_layout_ok():
        return None
    probe = ADT("dvm_probe", 7, (None,))
    words = ffi.cast("int64_t *", id(probe))
    if words[ARRAY_TYPE // 8] != id(ADT):
        return None
    scan = [words[k] for k in range(2, 2 + len(ADT.__slots__))]
    wanted = [id(probe.constructor), id(probe.tag), id(probe.fields)]
    if sorted(scan) != sorted(wanted):
        return None
    return tuple(8 * (2 + scan.index(w)) for w in wanted)


def numpy_layout_ok() -> bool:
    """Whether numpy's array objects and CPython's tuples have the layout edge functions read
    (checked on live objects: a contiguous array, a strided view, a tuple); when not, invoke
    always takes its general path."""
    if sys.implementation.name != "cpython" or sys.byteorder != "little":
        return False
    base = np.empty((2, 3), np.float32)
    for a, flags in ((base, C_CONTIGUOUS_ALIGNED), (base[:, :2], 0x0100)):
        words = ffi.cast("int64_t *", id(a))
        dims = ffi.cast("int64_t *", words[ARRAY_DIMS // 8])
        if (words[ARRAY_TYPE // 8], words[ARRAY_DATA // 8], words[ARRAY_DESCR // 8]) != \
                (id(np.ndarray), a.__array_interface__["data"][0], id(a.dtype)) or \
                ffi.cast("int32_t *", id(a))[ARRAY_ND // 4] != 2 or (dims[0], dims[1]) != a.shape or \
                ffi.cast("int32_t *", id(a))[ARRAY_FLAGS // 4] & C_CONTIGUOUS_ALIGNED != flags:
            return False
    items = (base, None)
    words = ffi.cast("int64_t *", id(items))
    if (words[TUPLE_SIZE // 8], words[TUPLE_ITEMS // 8], words[TUPLE_ITEMS // 8 + 1]) != (2, id(base), id(None)):
        return False
    return all(np.empty(1, DTYPES[name][0]).dtype is DTYPES[name][0] for name in DTYPE_ORDER)


# ---------------------------------------------------------------------------------------------
# run time


_libc = cffi.FFI()
_libc.cdef("""
unsigned long pthread_self(void);
int pthread_getattr_np(unsigned long thread, void *attr);
int pthread_attr_getstack(const void *attr, void **stackaddr, size_t *stacksize);
int pthread_attr_destroy(void *attr);
void free(void *ptr);
""")
_LIBC = _libc.dlopen(None)
# bytes of the thread's stack below the deepest native frame: a kernel's frame (it may be
# called from that frame), and 256 KiB for Python and libc
_STACK_MARGIN = KERNEL_STACK_BYTES + 256 * 1024
_STACK_ROOM = 256 * 1024        # a stack with less room than this for native frames gets none
_threads = threading.local()


def stack_limit() -> int:
    """The lowest address native frames may reach in this thread (its stack's low end plus a
    margin); the highest address the ctx word holds when the bounds cannot be read or leave no
    room for native frames, so that every native call defers to the Python tier instead of
    risking the stack."""
    limit = getattr(_threads, "stack_limit", None)
    if limit is None:
        limit = (1 << 63) - 1
        try:
            lib = _LIBC
            attr = _libc.new("char[256]")      # pthread_attr_t is at most 64 bytes on Linux
            if lib.pthread_getattr_np(lib.pthread_self(), attr) == 0:
                low, size = _libc.new("void **"), _libc.new("size_t *")
                if lib.pthread_attr_getstack(attr, low, size) == 0 and size[0] > _STACK_MARGIN + _STACK_ROOM:
                    limit = int(_libc.cast("uintptr_t", low[0])) + _STACK_MARGIN
                lib.pthread_attr_destroy(attr)
        except (OSError, AttributeError):
            pass
        _threads.stack_limit = limit
    return limit


_orphans = threading.Lock()


def _returned(tier_ref, queue, block):
    """A returned array wrapping `block` died (on any thread): queue the reference for the pool's
    owner; when the tier is gone, drop it here (the pool went with the tier)."""
    if tier_ref() is not None:
        queue.append(block)
        return
    with _orphans:
        header = ffi.cast("int64_t *", block)
        header[B_COUNT] -= 1
        if header[B_COUNT] == 0:
            _LIBC.free(header)


def raise_interrupt(exe, func, pc):
    """The KeyboardInterrupt of a native run the interrupt word stopped (Python's own SIGINT
    handler, when it raises, gets to raise first)."""
    from dynvm.kernels.interrupt import let_signal_handlers_run
    let_signal_handlers_run()
    raise KeyboardInterrupt(f"native tier interrupted in {exe.functions[func].name} at pc {pc}")


class NativeCode:
    """The native functions of one executable on this host: translated and compiled once (the
    object cache makes a second load cheap) and shared by every VirtualMachine of it.

    `reasons[i]` is None for a native function, else why function i runs in the Python tier.
    """

    def __init__(self, exe, kinds, reasons):
        kinds_of = kinds.__getitem__
        self.reasons = reasons
        self.ctor_index = {c["name"]: i for i, c in enumerate(exe.constructors)}
        native = sorted(i for i, r in self.reasons.items() if r is None)
        self.addresses, self.edges, self.exporter = {}, {}, None
        self.rank_bound = 1
        if not native:
            return
        from dynvm.kernels import codelib     # lazily: a program without native code never JITs
        self.rank_bound = max([1] + [k.rank for i in native for state in kinds_of(i) if state
                                     for k in state if k.kind == "tensor" and k.rank is not None]
                              + [r for i in native for t in [exe.functions[i].ret_type] + list(
                                  exe.functions[i].param_types) for r in _declared_ranks(t)])
        entries = [i for i in native if _enterable(exe.functions[i])]
        exports = any(exe.functions[i].ret_type["kind"] != "tensor" for i in native)
        self.import_tables = ImportTables(exe, self.rank_bound)
        host = codelib.host_target()
        key = codelib.source_key(_program_source(exe, native, self.rank_bound), host, SPEED_LEVEL)
        self.may_loop = _may_loop(exe, native)
        obj = codelib.cached_object(key)
        if obj is None:
            mt = ModuleTranslator(exe, kinds_of, self.rank_bound, set(native), self.import_tables)
            for i in native:
                mt.translate(i)
            for i in entries:
                mt.translate_edge(i, arms=i in self.may_loop)
            if exports:
                mt.exporter     # noqa: B018 - emitted on first use
            obj = codelib.compile_ir(str(mt.module), host, speed_level=SPEED_LEVEL, key=key)
        if self.may_loop.intersection(entries):
            register_arm()      # the edges of those functions call it
        self._library = codelib.CodeLibrary("", obj, host)      # built for this host: no re-JIT
        self.addresses = {i: self._library.address(symbol_of(i)) for i in native}
        self.edges = {i: self._library.address(edge_symbol_of(i)) for i in entries}
        self.release = ffi.cast("void (*)(void *)", self._library.address("dvm_release"))
        self.exporter = ffi.cast("int64_t (*)(int64_t *, int64_t *)",
                                 self._library.address("dvm_export")) if exports else None


def _program_source(exe, native, rank_bound) -> bytes:
    """Everything the native module of `exe` is generated from: the functions' code and
    signatures, the kernels' and shape functions' signatures and attributes, the constants'
    types, which functions are native, and the translator itself (the runtime's sources).
    Equal sources translate to equal IR, so the object cache can be asked before translating."""
    program = [
        [[fn.name, fn.params, fn.param_types, fn.ret_type, fn.register_count,
          [[ins.name, ins.args] for ins in fn.instructions]] for fn in exe.functions],
        [[k.name, k.inputs, k.outputs, k.attrs] for k in exe.loaded_kernels()],
        exe.shape_funcs, [[c.dtype.str, c.shape] for c in exe.constants], exe.constructors,
        native, rank_bound]
    return _translator_digest() + msgpack.packb(program)


@functools.lru_cache(maxsize=1)
def _translator_digest() -> bytes:
    """A digest of the sources translation runs (the runtime packages: the VM, the kernels and
    the shape functions the tracer reads)."""
    import hashlib
    import pathlib
    from dynvm import kernels, shape_funcs, vm
    digest = hashlib.sha256()
    for package in (vm, kernels, shape_funcs):
        for path in sorted(pathlib.Path(package.__path__[0]).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.digest()


def _copied_shapes(shapes, dtypes):
    """`shapes` when results of them are copied into new arrays (each small enough), else None."""
    small = all(math.prod(s) * d.itemsize <= COPY_RESULTS_UP_TO for s, d in zip(shapes, dtypes))
    return shapes if small else None


def _enterable(fn) -> bool:
    """Whether invoke can enter native function `fn` through an edge function (its parameters
    are tensors, tuples and ADTs; closures and type variables take the general path)."""
    return all(t["kind"] in ("tensor", "tuple", "adt") for t in fn.param_types)


def _may_loop(exe, native) -> set:
    """The native functions that jump backwards or call (recursion): the ones that poll the
    interrupt word for long, so an invocation entering them arms it."""
    return {i for i in native if _loop_heads(exe.functions[i]) or any(
        ins.spec.has("calls") or ins.spec.has("loop") for ins in exe.functions[i].instructions)}


_build_lock = threading.RLock()     # planned() inside native_code()
_DESCRS = None      # the ctx.descrs table (dtype objects, then numpy scalar types, DTYPE_ORDER), once made


def _descrs_address() -> int:
    """The address of the dtype-object table edge functions compare arguments against; a table
    of zeros (no argument matches: invoke always takes its general path) when numpy's array
    layout is not the one edge functions read."""
    global _DESCRS
    if _DESCRS is None:
        ok = numpy_layout_ok()
        scalars = ok and numpy_scalars_ok()
        _DESCRS = ffi.new("int64_t[]", [id(DTYPES[n][0]) if ok else 0 for n in DTYPE_ORDER]
                          + [id(DTYPES[n][0].type) if scalars else 0 for n in DTYPE_ORDER])
    return int(ffi.cast("intptr_t", _DESCRS))


class _Remaining:
    """The steps the last native run left (`operator.length_hint` of it), read from the
    context only when asked."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __length_hint__(self):
        return max(0, self.ctx[_STEPS])


def native_code(exe) -> NativeCode:
    """The executable's NativeCode, built on first use."""
    with _build_lock:
        code = exe._native_code
        if code is None:
            code = exe._native_code = NativeCode(exe, *planned(exe))
        return code


class NativeTier:
    """One VirtualMachine's side of the native tier: its context, tables and buffers."""

    def __init__(self, exe, code: NativeCode, constants):
        self.exe, self.code = exe, code
        # functions invoke can enter (the ones with edge functions also without Python work)
        self.entries = {i: ffi.cast("int32_t (*)(int64_t *, int64_t *, int64_t *)", a)
                        for i, a in code.addresses.items()}
        # the ones with a parameter that is not a tensor: their arguments go through _import
        self._imports = {i for i in self.entries
                         if any(t["kind"] != "tensor" for t in exe.functions[i].param_types)}
        if not code.addresses:
            return
        self.words = value_words(code.rank_bound)
        self.rank_bound = code.rank_bound
        self._release = code.release
        self.pool = ffi.new("int64_t[]", POOL_WORDS)
        self._returned = collections.deque()
        self._on_return = functools.partial(_returned, weakref.ref(self), self._returned)
        self.pool[POOL_FIELDS.index("max_free_bytes")] = 1 << 30
        self._kernels = ffi.new("uintptr_t[]", [k.address for k in exe.loaded_kernels()] or [0])
        self._constants = ffi.new("uintptr_t[]", [t.address for t in constants] or [0])
        self.ctx = ffi.new("int64_t[]", len(CTX_FIELDS))
        for name, table in (("kernels", self._kernels), ("constants", self._constants),
                            ("pool", self.pool)):
            self.ctx[_CTX[name]] = int(ffi.cast("intptr_t", table))
        most = max([len(exe.functions[i].params) for i in self.entries] or [1])
        self._args = ffi.new("int64_t[]", max(1, most) * self.words)
        self._result = ffi.new("int64_t[]", self.words)
        self._import_tables(code.import_tables)
        self._export_io = ffi.new("int64_t[]", len(EXPORT_FIELDS))
        self._fit_export(EXPORT_RECORDS)
        self._data_hint = 0
        self._ctor_names = [(c["name"], c["tag"]) for c in exe.constructors]
        for name, word in (("ndarray_type", id(np.ndarray)), ("descrs", _descrs_address()),
                           ("result", int(ffi.cast("intptr_t", self._result))), ("quiet", QUIET_ADDRESS),
                           ("imports", int(ffi.cast("intptr_t", self.imports)))):
            self.ctx[_CTX[name]] = word
        self.remaining = _Remaining(self.ctx)
        self.steps = self.budget = 0
        self.last_rc = 0
        # the Python-tier depth of the last call the native stack could not take: the Python
        # frames of that call's recursion call deeper ones in the Python tier too (retrying
        # each natively would cost the native stack's depth per frame), until a call at that
        # depth or above (a new invocation) tries again
        self._stack_short = None
        self.fallbacks = 0      # invocations re-run in the Python tier for want of native stack

    def _import_tables(self, tables):
        """ctx.imports: the tables `dvm_import` reads (no ADT type when the object layouts are
        not the ones it reads: every ADT argument then takes the general path) and an arena."""
        slots = adt_slots()
        self._checks = ffi.new("int64_t[]", tables.words)
        self._ctor_rows = ffi.new("int64_t[]", tables.rows)
        self.imports = ffi.new("int64_t[]", len(IMPORT_FIELDS))
        for name, word in (("adt_type", id(ADT) if slots else 0),
                           ("tuple_type", id(tuple) if slots else 0),
                           ("checks", int(ffi.cast("intptr_t", self._checks))),
                           ("ctors", int(ffi.cast("intptr_t", self._ctor_rows))),
                           ("ctor_count", len(tables.rows) // CTOR_WORDS),
                           *zip(("ctor_slot", "tag_slot", "fields_slot"), slots or (0, 0, 0))):
            self.imports[IMPORT_FIELDS.index(name)] = word
        self._fit_arena(ARENA_WORDS)

    def _fit_arena(self, words):
        """An import arena of at least `words` (a power of two up to MAX_ARENA_WORDS)."""
        words = 1 << max(0, words - 1).bit_length()
        if words > MAX_ARENA_WORDS or words <= self.imports[IMPORT_FIELDS.index("capacity")]:
            return
        self._arena = ffi.new("int64_t[]", words)
        self.imports[IMPORT_FIELDS.index("arena")] = int(ffi.cast("intptr_t", self._arena))
        self.imports[IMPORT_FIELDS.index("capacity")] = words

    def _fit_export(self, records):
        """Export buffers with room for `records` records (and as many stack entries and
        marked blocks)."""
        self._records = ffi.new("int64_t[]", records * self.words)
        self._record_rows = np.frombuffer(ffi.buffer(self._records), np.int64).reshape(records, self.words)
        self._work = ffi.new("int64_t[]", 3 * records)
        for name, word in (("records", int(ffi.cast("intptr_t", self._records))), ("capacity", records),
                           ("work", int(ffi.cast("intptr_t", self._work)))):
            self._export_io[EXPORT_FIELDS.index(name)] = word

    def failure(self) -> tuple:
        """(function index, pc) of the instruction the last failed native run stopped at."""
        return self.ctx[_CTX["err_func"]], self.ctx[_CTX["err_pc"]]

    def memory_stats(self) -> dict:
        """The native pool's counters (the names of VirtualMachine.memory_stats)."""
        self._take_returned()
        return {name: int(self.pool[i]) for i, name in enumerate(POOL_FIELDS[:-1])}

    def reset_memory_stats(self) -> None:
        pool = self.pool
        for name in ("allocations", "bytes_allocated", "pool_hits"):
            pool[POOL_FIELDS.index(name)] = 0
        pool[POOL_FIELDS.index("peak_bytes_live")] = pool[POOL_FIELDS.index("bytes_live")]

    def release_memory(self) -> None:
        """Free blocks back to the OS."""
        self._take_returned()
        self._free_pooled()

    def _free_pooled(self):
        """Every block of the free lists back to the OS (in Python: no native code runs, so
        `__del__` may use it too)."""
        pool, heads = self.pool, len(POOL_FIELDS)
        for k in range(POOL_CLASSES):
            block = ffi.cast("int64_t *", pool[heads + k])
            while block != ffi.NULL:
                following = ffi.cast("int64_t *", block[B_NEXT])
                _LIBC.free(block)
                block = following
            pool[heads + k] = 0
        pool[POOL_FIELDS.index("bytes_free")] = 0

    def _take_returned(self):
        """Drop the references of returned arrays that died (their destructors, which may run
        on any thread, only queue the block: the pool is touched by its owner alone)."""
        returned, release = self._returned, self._release
        while returned:
            release(returned.popleft())

    def __del__(self):
        """Free the pool's blocks without running native code: during interpreter shutdown or
        a garbage cycle the JIT-compiled code may already be gone. Blocks still referenced are
        held by arrays, and those keep this tier alive, so only free and queued blocks remain."""
        if getattr(self, "pool", None) is None:
            return
        while self._returned:
            block = ffi.cast("int64_t *", self._returned.popleft())
            block[B_COUNT] -= 1
            if block[B_COUNT] == 0:
                _LIBC.free(block)
        self._free_pooled()

    def configure(self, max_steps, max_depth):
        """The limits every later run starts from (the VM's max_steps and max_depth)."""
        self.budget = INT64_MAX if max_steps is None else max(0, min(max_steps, INT64_MAX))
        self.ctx[_CTX["budget"]] = self.budget
        self.ctx[_CTX["depth_limit"]] = max(1, min(max_depth, INT64_MAX))

    def run(self, index, tensors, budget=None, depth=0):
        """Run native function `index` on argument Tensors; the result as invoke returns it
        (numpy arrays, tuples of them), or None when the call must run in the Python tier
        (`last_rc`: RC_FAILED, a failure the Python tier reports; RC_STACK, a native stack too
        small for the call depth). A call from the Python tier passes the steps it has left and
        its depth; the steps left afterwards are `remaining`."""
        if self._returned:
            self._take_returned()
        short = self._stack_short
        if short is not None:
            if depth > short:   # deeper than a call the native stack already could not take
                self.last_rc = RC_STACK
                return None
            self._stack_short = None
        args, words, ctx = self._args, self.words, self.ctx
        ctx[_STEPS] = self.budget if budget is None else budget
        ctx[_DEPTH], ctx[_MAX_DEPTH] = depth, ctx[_CTX["depth_limit"]]
        ctx[_STACK_LIMIT], ctx[_CTX["thread"]], ctx[_ERR_CODE] = stack_limit(), threading.get_ident(), 0
        self._arm(index)
        if index in self._imports:
            imported = self._import(tensors)     # noqa: F841 - the arguments' memory, held
            if imported is None:
                return self._decline(index)
        else:
            base = 0
            for t in tensors:
                args[base] = t.address
                args[base + 1] = 0
                shape = t.meta[1]
                if shape:
                    args[base + 2:base + 2 + len(shape)] = shape
                base += words
        rc = self.last_rc = self.entries[index](ctx, args, self._result)
        if rc == RC_STACK:
            self._stack_short = depth
        return None if rc else self._take_result(index)

    def _decline(self, index):
        """None, as a failed run: a value crossing the edge has no native form (the Python
        tier runs the invocation)."""
        self.last_rc = RC_FAILED
        self.ctx[_CTX["err_func"]], self.ctx[_CTX["err_pc"]] = index, 0
        return None

    def _arm(self, index):
        self.ctx[_INTERRUPT] = arm(QUIET_ADDRESS) if index in self.code.may_loop else QUIET_ADDRESS

    def _take_result(self, index):
        result = self._result
        try:
            if result[self.words - 1] & 0xFF != T_TENSOR and self.code.exporter is not None:
                flat = self._flat_export(result)
                if flat is not None:
                    return flat
            return self._export(result, index)
        except _NoNativeForm:       # a storage block in the result: the Python tier returns it
            return self._decline(index)
        finally:
            self._release(_cast(_VOID_PTR, result[1]))

    def edge(self, index):
        """invoke's fast path into native function `index`: `enter(args)` runs it on the
        argument objects through its edge function and returns the result, or None when the
        edge declined or the run failed (invoke's general path then runs the invocation); None
        for a function without an edge (a parameter that is not a tensor)."""
        if index not in self.code.edges:
            return None
        fn = self.exe.functions[index]
        entry = ffi.cast("int32_t (*)(int64_t *, int64_t, int64_t)", self.code.edges[index])
        ctx = self.ctx
        t = fn.ret_type
        tensor = t["kind"] == "tensor"
        fields = ([t] if tensor else t["fields"]) if copied_out(t) else None
        dtypes = [DTYPES[f["dtype"]][0] for f in fields] if fields else None
        # the shapes the next result's tensors are expected to have: the static ones, else the
        # last result's; None (no array made in advance) for other results and results too
        # large to copy
        expected = [_copied_shapes([tuple(f["shape"]) for f in fields], dtypes)
                    if fields and all(None not in f["shape"] for f in fields) else None]

        def enter(args):
            if self._returned:
                self._take_returned()
            shapes = expected[0]
            if shapes is not None:
                out = np.empty(shapes[0], dtypes[0]) if tensor else tuple(map(np.empty, shapes, dtypes))
                rc = entry(ctx, id(out), id(args))
                if not rc:
                    return out
            else:
                rc = entry(ctx, 0, id(args))
            if rc == 0 or rc == RC_RESHAPED:
                result = self._take_result(index)
                if fields is not None:
                    expected[0] = _copied_shapes([a.shape for a in ((result,) if tensor else result)], dtypes)
                return result
            if rc == RC_INTERRUPT:
                self.last_rc = rc
                raise_interrupt(self.exe, *self.failure())
            return None
        return enter

    def _import(self, values):
        """Write the checked Python values of an invocation's arguments into the argument
        Values. ADTs, tuples and closures become Values over one int64 buffer of this
        invocation (block NULL: not owned, like an argument tensor; each node's fields are a
        run of Values in it), tensors view the caller's memory. Returns the buffer (the caller
        keeps it alive while the invocation runs), or None when a value has no native form (a
        rank above the module's, a Storage): then the Python tier runs the invocation."""
        words, bound = self.words, self.rank_bound
        out = []                # the buffer's words: the argument Values, then the field runs
        pointers = []           # positions of data words holding an offset into the buffer
        pending = []            # (position of a Value's data word, node) whose run is not laid out
        runs = {}               # id(node) -> the word offset of its run (shared nodes once)

        def value(v):
            """Append v's Value; nodes get their run later (their data word is patched)."""
            at = len(out)
            if type(v) is Tensor or isinstance(v, Tensor):
                dtype, shape = v.meta
                if len(shape) > bound:
                    raise _NoNativeForm
                out.extend((v.address, 0, *shape, *[0] * (bound - len(shape)), tensor_word(dtype, len(shape))))
                return
            if isinstance(v, tuple):
                fields, word = v, adt_word(0, len(v))
            elif isinstance(v, ADT):
                fields, word = v.fields, adt_word(self.code.ctor_index[v.constructor], len(v.fields))
            elif isinstance(v, Closure):
                fields, word = v.captured, closure_word(v.func_index, len(v.captured))
            else:
                raise _NoNativeForm
            out.extend((0, 0, *[0] * bound, word))
            if fields:
                pending.append((at, fields))

        try:
            for v in values:
                value(v)
            while pending:
                at, fields = pending.pop()
                run = runs.get(id(fields))
                if run is None:
                    run = runs[id(fields)] = len(out)
                    for f in fields:
                        value(f)
                out[at] = run
                pointers.append(at)
        except _NoNativeForm:
            return None
        # room for the same argument in the edge's arena next time (its work stack included)
        self._fit_arena(2 * len(out) + 3 * len(values))
        buffer = np.array(out, np.int64)
        base = buffer.__array_interface__["data"][0]
        if pointers:
            buffer[pointers] = buffer[pointers] * 8 + base
        n = len(values) * words
        ffi.memmove(self._args, ffi.cast("int64_t *", base), n * 8)
        return buffer

    def _export(self, value, index):
        """A result Value (int64 words) as what invoke returns, read from its type words (the
        general export: `_flat_export` builds most ADT and tuple results faster):
        arrays the caller owns, tuples, vm.ADT and vm.Closure objects (a closure's captured
        tensors as VM Tensors, as the Python tier returns them). Iterative: a long list is
        fine; a node shared in the result is exported once. Each node's run of field Values
        is read in one `ffi.unpack` (a list of ints), not word by word."""
        words, exe = self.words, self.exe
        unpack, built, opened = ffi.unpack, {}, set()

        def leaf(v, in_closure):
            word = v[-1]
            if word & 0xFF != T_TENSOR:
                raise _NoNativeForm
            a = self._export_tensor(v[0], v[1], DTYPE_ORDER[(word >> 8) & 0xFF], tuple(v[2:2 + ((word >> 16) & 0xFF)]))
            return Tensor.from_array(a) if in_closure else a

        root = unpack(value, words)
        if root[-1] & 0xFF == T_TENSOR:
            return leaf(root, False)
        # an explicit stack of (Value words, inside a closure, its field Values once read)
        stack = [(root, False, None)]
        while stack:
            v, in_closure, fields = stack.pop()
            key = (v[0], v[-1])
            if key in built:
                continue
            word = v[-1]
            kind = word & 0xFF
            if fields is None:
                count = word >> 32
                run = unpack(_cast(_INT64_PTR, v[0]), count * words) if count else ()
                fields = [run[k:k + words] for k in range(0, len(run), words)]
                composite = [f for f in fields if f[-1] & 0xFF in (T_ADT, T_CLOSURE)]
                if composite:
                    if key in opened:
                        raise VMError("the result contains itself (a cycle through closure fields)")
                    opened.add(key)
                    inner = in_closure or kind == T_CLOSURE
                    stack.append((v, in_closure, fields))
                    stack.extend((f, inner, None) for f in composite)
                    continue
            inner = in_closure or kind == T_CLOSURE
            items = [built[f[0], f[-1]] if f[-1] & 0xFF in (T_ADT, T_CLOSURE) else leaf(f, inner)
                     for f in fields]
            index = (word >> 8) & (MAX_INDEX - 1)
            if kind == T_CLOSURE:
                obj = Closure(index, items)
            elif index == 0:
                obj = tuple(items)
            else:
                c = exe.constructors[index]
                obj = ADT(c["name"], c["tag"], items)
            built[key] = obj
        return built[root[0], root[-1]]

    def _flat_export(self, value):
        """The result's objects built from `dvm_export`'s records (see there), or None when the
        general export must run. The small tensors become arrays over one new buffer their
        bytes were copied to; its size is the last result's, and a walk is redone with the
        size needed when that was too small, or with more records when they were too few."""
        io = self._export_io
        while True:
            size = max(self._data_hint, 16)
            data = ffi.new("char[]", size)
            io[_X_DATA], io[_X_DATA_CAPACITY] = int(_cast(_INTPTR, data)), size
            n = self.code.exporter(io, value)
            if n == -1:
                return None
            if n == -2:
                records = 4 * io[_X_CAPACITY]
                if records > MAX_EXPORT_RECORDS:
                    return None
                self._fit_export(records)
                continue
            self._data_hint = io[_X_DATA_USED]
            if self._data_hint <= size:
                return self._rebuild(self._record_rows[:n].tolist(), ffi.buffer(data))

    def _rebuild(self, rows, data):
        """The objects of `dvm_export`'s records, in one pass (a node's fields precede it)."""
        stack, built, names, dtypes, frombuffer = [], {}, self._ctor_names, _DTYPE_OBJECTS, np.frombuffer
        push = stack.append
        for i, r in enumerate(rows):
            word = r[-1]
            kind = word & 0xFF
            if kind == T_TENSOR:
                rank = (word >> 16) & 0xFF
                if r[1]:
                    push(self._export_tensor(r[0], r[1], DTYPE_ORDER[(word >> 8) & 0xFF], tuple(r[2:2 + rank])))
                elif rank == 1:
                    push(frombuffer(data, dtypes[(word >> 8) & 0xFF], r[2], r[0]))
                else:
                    dims = r[2:2 + rank]
                    push(frombuffer(data, dtypes[(word >> 8) & 0xFF], math.prod(dims), r[0]).reshape(dims))
            elif kind == R_SHARED:
                push(built[r[0]])
            else:
                count, ctor = word >> 32, (word >> 8) & (MAX_INDEX - 1)
                if count:
                    items = stack[-count:]
                    del stack[-count:]
                else:
                    items = ()
                obj = built[i] = tuple(items) if ctor == 0 else ADT(*names[ctor], items)
                push(obj)
        return stack[0]

    def _export_tensor(self, data, block, dtype_name, dims):
        """One tensor of a result: small ones are copied; large ones wrap their block (with a
        reference of their own, dropped when the array dies); memory the invocation does not
        own (a constant, an argument) is always copied."""
        dtype = DTYPES[dtype_name][0]
        if block and math.prod(dims) * dtype.itemsize > COPY_RESULTS_UP_TO:
            header = ffi.cast("int64_t *", block)
            header[B_COUNT] += 1
            owner = ffi.gc(ffi.cast("char *", block), self._on_return)
            buf = ffi.buffer(owner, BLOCK_HEADER + header[B_SIZE])
            return np.frombuffer(buf, dtype, math.prod(dims), data - block).reshape(dims)
        out = np.empty(dims, dtype)
        ffi.memmove(out, _cast(_CHAR_PTR, data), out.nbytes)
        return out


_DTYPE_OBJECTS = tuple(DTYPES[n][0] for n in DTYPE_ORDER)
_cast = ffi._backend.cast     # cffi's cast with the type resolved once (ffi.cast parses it per call)
_INT64_PTR, _CHAR_PTR, _VOID_PTR, _INTPTR = (ffi.typeof(t) for t in ("int64_t *", "char *", "void *", "intptr_t"))
_X_DATA, _X_DATA_CAPACITY, _X_CAPACITY, _X_DATA_USED = (
    EXPORT_FIELDS.index(n) for n in ("data", "data_capacity", "capacity", "data_used"))


class _NoNativeForm(Exception):
    """An argument value the native tier cannot represent."""
