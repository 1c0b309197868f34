"""The "loop" kernel family: a whole loop of kernel calls as one native function.

The compiler (compiler/codegen/native_loop.py) turns a self-tail-recursive function whose
iterations are straight-line calls of compiled kernels over static shapes into one kernel of
this family, run by the VM's `CallLoop`. Per iteration the VM would have dispatched a few dozen
instructions; here an iteration is the kernel calls themselves plus a few memcpys.

Signature: inputs = the loop's tensor inputs, then the step budget (int64 0-d, < 0: none)
and the interrupt word (int32 0-d, read every iteration: nonzero stops the loop with
ERR_INTERRUPT; kernels/interrupt.py);
outputs = the results, then the workspace (int64[words]: every intermediate and the loop state
live in it at fixed offsets) and the counters (int64[2]: iterations run, and the index of the
inner call that failed, -1 if none).

spec:
  slots     [[dtype, shape, kind, ref]...]: the tensors of one iteration. kind "input": argument
            `ref` (shape may hold None for dims only known at run time: the incoming descriptor
            is used as it is); "scratch": `ref` is a byte offset in the workspace; "view": the
            data of slot `ref` seen with another static shape (a reshape); "output": result
            `ref` itself (None dims allowed, the descriptor used as it is): the state of an
            in-place update, whose inner calls write into it;
  header    [[symbol, [slot...]]...]: kernel calls (dispatchers of this module) that compute
            the condition, run at the top of every iteration;
  cond      the bool 0-d slot; the loop continues while it differs from `exit_when`;
  body      [[symbol, [slot...]]...]: the calls of one iteration;
  carried   [[input, state slot, next slot, stage slot]...]: the loop state: the state slot
            (scratch) is loaded from the input before the first iteration and replaced by the
            next slot's value after every iteration, as a parallel assignment: a next value
            that is (a view of) another state, a swap, is first copied to its stage slot
            (-1: none). An "output" state slot is updated in place: its next slot is itself,
            no stage; the input is copied into the output once, before the first iteration
            (same extents, both compact);
  results   [slot...]: what the outputs receive when the loop exits (an "output" slot of
            this result already holds it);
  workspace its size in bytes;
  steps     [fixed, per_iteration]: the function as bytecode runs fixed + n * per_iteration
            instructions for n iterations; the VM charges max_steps that (the kernel only
            sees the iterations the steps left allow).
Descriptors of the inner calls are built once before the loop: every slot has a fixed address.
A failing inner call returns its own error code (the counters name the call).
"""
from __future__ import annotations

import math

from llvmlite import ir

from dynvm.kernels.abi import ERR_INTERRUPT, ERR_LAYOUT, ERR_SHAPE, ERR_STEPS
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol
from dynvm.kernels.llvm_util import (DLTENSOR, F_DATA, F_DTYPE, F_NDIM, F_SHAPE, F_STRIDES, I1, I8,
                                     I32, I64, PTR, check, check_data, const, get_function,
                                     new_function, prologue)
from dynvm.vm.dtypes import DTYPES, itemsize
from dynvm.vm.errors import KernelError

SLOT_KINDS = ("input", "scratch", "view", "output")
WORD = 8    # the workspace is int64[words]


def slot_bytes(slot) -> int:
    dtype, shape, _, _ = slot
    return math.prod(shape) * itemsize(dtype)


def root_slot(slots, s) -> int:
    """The slot whose memory slot `s` is (views share their source's data)."""
    while slots[s][2] == "view":
        s = slots[s][3]
    return s


# ---------------------------------------------------------------------------------------------
# build-time validation


def check_spec(spec, inputs, outputs):
    """Every index in range, every slot consistent with the signature and the workspace."""
    try:
        _check(spec, inputs, outputs)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise KernelError(f"malformed loop spec: {type(e).__name__}: {e}") from None


def _check(spec, inputs, outputs):
    slots, n_in = spec["slots"], len(inputs) - 2
    if inputs[-2:] != [["int64", 0], ["int32", 0]] or outputs[-2:] != [["int64", 1], ["int64", 1]]:
        raise KernelError("loop kernel: the last inputs are the budget (int64, 0-d) and the "
                          "interrupt word (int32, 0-d), the last two outputs the workspace and "
                          "the counters (int64, 1-d)")
    if len(spec["results"]) != len(outputs) - 2:
        raise KernelError("loop kernel: one result slot per output")
    input_refs, output_refs = set(), set()
    for s, (dtype, shape, kind, ref) in enumerate(slots):
        if kind not in SLOT_KINDS or dtype not in DTYPES:
            raise KernelError(f"loop slot {s}: bad kind {kind!r} or dtype {dtype!r}")
        if kind in ("input", "output"):
            n, sig, refs = (n_in, inputs, input_refs) if kind == "input" else \
                (len(outputs) - 2, outputs, output_refs)
            if not 0 <= ref < n or sig[ref] != [dtype, len(shape)] or ref in refs:
                raise KernelError(f"loop slot {s}: {kind} {ref} does not match the signature "
                                  "or has another slot")
            refs.add(ref)
            continue
        if any(type(d) is not int or d < 0 for d in shape):
            raise KernelError(f"loop slot {s}: a {kind} slot needs a static shape, got {shape}")
        if kind == "scratch" and not (ref >= 0 and ref % 64 == 0
                                      and ref + slot_bytes(slots[s]) <= spec["workspace"]):
            raise KernelError(f"loop slot {s}: offset {ref} outside the workspace or unaligned")
        if kind == "view" and not (0 <= ref < s and slots[ref][2] in ("scratch", "view")
                                   and slot_bytes(slots[ref]) == slot_bytes(slots[s])):
            raise KernelError(f"loop slot {s}: bad view of slot {ref}")
    for symbol, args in spec["header"] + spec["body"]:
        if not isinstance(symbol, str) or not all(0 <= a < len(slots) for a in args):
            raise KernelError(f"loop call {symbol!r}: slot out of range")
    refs = [spec["cond"], *spec["results"]] + [x for _, *c in spec["carried"] for x in c if x != -1]
    if not all(type(x) is int and 0 <= x < len(slots) for x in refs) or \
            not all(0 <= k < n_in for k, *_ in spec["carried"]):
        raise KernelError("loop spec: a slot or input index out of range")
    if slots[spec["cond"]][:2] != ["bool", []]:
        raise KernelError("loop condition must be a bool 0-d slot")
    states = {state for _, state, _, _ in spec["carried"]}
    for k, state, nxt, stage in spec["carried"]:
        if slots[state][2] == "output":
            if nxt != state or stage != -1 or [slots[state][0], len(slots[state][1])] != inputs[k]:
                raise KernelError(f"loop state slot {state}: an in-place state is its own next "
                                  f"value, without a stage, and matches input {k}")
            continue
        nxt_root = root_slot(slots, nxt)
        kind_of = {slots[state][2], slots[stage][2] if stage >= 0 else "scratch"}
        same = slots[state][:2] == slots[nxt][:2] == (slots[stage][:2] if stage >= 0 else slots[nxt][:2])
        if kind_of != {"scratch"} or not same or [slots[state][0], len(slots[state][1])] != inputs[k]:
            raise KernelError(f"loop state slot {state}: does not match input {k} / next {nxt}")
        if (nxt_root in states) != (stage >= 0):
            raise KernelError(f"loop state slot {state}: a next value that is a state needs a stage slot")
    for j, s in enumerate(spec["results"]):
        if slots[s][2] == "input" or slots[s][2] == "output" and slots[s][3] != j or \
                [slots[s][0], len(slots[s][1])] != outputs[j]:
            raise KernelError(f"loop result {j}: slot {s} does not match the output")
    steps = spec["steps"]
    if not (isinstance(steps, list) and len(steps) == 2 and all(type(x) is int and 1 <= x < 1 << 32 for x in steps)):
        raise KernelError(f"loop spec: steps must be [fixed, per_iteration], two positive ints, got {steps!r}")
    if spec["workspace"] % WORD:
        raise KernelError("loop workspace size must be a multiple of 8 bytes")


# ---------------------------------------------------------------------------------------------
# code generation


def emit(module, symbol, spec, inputs, outputs):
    sig = [tuple(s) for s in inputs + outputs]
    _LoopEmitter(module, variant_symbol(symbol, "native"), spec, sig, len(inputs)).run()
    return emit_dispatcher(module, symbol, sig, [("native", None)])


class _LoopEmitter:
    def __init__(self, module, name, spec, sig, n_in):
        self.module, self.name, self.spec, self.sig, self.n_in = module, name, spec, sig, n_in
        self.fn, self.b = new_function(module, name)
        self.slots = spec["slots"]
        n_out = len(spec["results"])
        self.budget_arg, self.interrupt_arg = n_in - 2, n_in - 1
        self.ws_arg, self.counters_arg = n_in + n_out, n_in + n_out + 1

    def run(self):
        b = self.b
        self.arrays = prologue(b, *self.fn.args, self.sig)
        check_data(b, self.arrays)
        self.check_shapes()
        self.data = self.slot_data()
        self.calls = {id(c): self.descriptors(k, c) for k, c in enumerate(self.spec["header"] + self.spec["body"])}
        for k, state, _, _ in self.spec["carried"]:
            if self.slots[state][2] == "output":
                self.copy_run_time(self.data[state], self.arrays[k], self.slots[state][0])
            else:
                self.copy(self.data[state], self.arrays[k][0], self.slots[state])
        budget = b.load(self.arrays[self.budget_arg][0], typ=I64)
        counters = self.arrays[self.counters_arg][0]
        self.counters = counters, b.gep(counters, [const(I64, 1)], source_etype=I64)
        b.store(const(I64, -1), self.counters[1])
        self.loop(budget)

    # -- checks ------------------------------------------------------------------------------
    def check_shapes(self):
        """Static extents of every argument the spec knows; compact layouts where the loop
        copies whole tensors (state inputs, inputs used as next values, outputs): a copy of
        a strided (or broadcast, stride 0) argument would read past its memory."""
        b, spec = self.b, self.spec
        known = {self.budget_arg: [], self.interrupt_arg: [], self.ws_arg: [spec["workspace"] // WORD], self.counters_arg: [2]}
        for dtype, shape, kind, ref in self.slots:
            if kind == "input":
                known.setdefault(ref, shape)
            elif kind == "output":
                known[self.n_in + ref] = shape
        for k, state, _, _ in spec["carried"]:
            known[k] = self.slots[state][1]
            if self.slots[state][2] == "output":        # copied in whole: the same extents
                out = self.arrays[self.n_in + self.slots[state][3]][1]
                for d, (got, want) in enumerate(zip(self.arrays[k][1], out)):
                    check(b, b.icmp_signed("==", got, want), ERR_SHAPE | k << 8 | d << 16)
        for j, s in enumerate(spec["results"]):
            known.setdefault(self.n_in + j, self.slots[s][1])
        for k, shape in known.items():
            for d, want in enumerate(shape):
                if want is not None:
                    got = self.arrays[k][1][d]
                    check(b, b.icmp_signed("==", got, const(I64, want)), ERR_SHAPE | k << 8 | d << 16)
        copied = [k for k, _, _, _ in spec["carried"]] + [self.n_in + j for j in range(len(spec["results"]))]
        copied += [self.slots[nxt][3] for _, _, nxt, _ in spec["carried"]   # an input as a next value
                   if self.slots[nxt][2] == "input"]
        for k in dict.fromkeys(copied):
            self.check_compact(k, known[k])

    def check_compact(self, k, shape):
        """NULL strides, or the compact row-major ones (extent-1 dims may have any stride)."""
        b = self.b
        strides = self.arrays[k][2]
        if not shape:
            return
        given = self.fn.append_basic_block("strides.given")
        done = self.fn.append_basic_block("strides.ok")
        b.cbranch(b.icmp_unsigned("==", strides, ir.Constant(PTR, None)), done, given)
        b.position_at_end(given)
        expected = const(I64, 1)
        for d in reversed(range(len(shape))):     # dims the spec leaves open: run-time extents
            extent = const(I64, shape[d]) if shape[d] is not None else self.arrays[k][1][d]
            got = b.load(b.gep(strides, [const(I64, d)], source_etype=I64), typ=I64)
            ok = b.or_(b.icmp_signed("<=", extent, const(I64, 1)), b.icmp_signed("==", got, expected))
            check(b, ok, ERR_LAYOUT | k << 8 | d << 16)
            expected = b.mul(expected, extent)
        b.branch(done)
        b.position_at_end(done)

    # -- slots and descriptors ---------------------------------------------------------------
    def slot_data(self):
        ws = self.arrays[self.ws_arg][0]
        data = []
        for dtype, shape, kind, ref in self.slots:
            if kind in ("input", "output"):
                data.append(self.arrays[ref if kind == "input" else self.n_in + ref][0])
            elif kind == "scratch":
                data.append(self.b.gep(ws, [const(I64, ref)], source_etype=I8))
            else:
                data.append(data[ref])
        return data

    def shape_global(self, s):
        """The extents of slot s as a constant int64 array (one per slot)."""
        name = f"{self.name}.shape{s}"
        g = self.module.globals.get(name)
        if g is None:
            shape = self.slots[s][1]
            ty = ir.ArrayType(I64, max(1, len(shape)))
            g = ir.GlobalVariable(self.module, ty, name=name)
            g.global_constant = True
            g.linkage = "internal"
            g.initializer = ir.Constant(ty, list(shape) or [0])
            g.type = PTR   # opaque, like every pointer in kernels/
        return g

    def descriptors(self, index, call):
        """The DLTensor array of one inner call, filled once (the addresses never change)."""
        b = self.b
        _, args = call
        with b.goto_entry_block():
            array = b.alloca(ir.ArrayType(DLTENSOR, max(1, len(args))), name=f"call{index}.args")
        array.type = PTR   # opaque, like every pointer in kernels/
        for j, s in enumerate(args):
            dtype, shape, kind, ref = self.slots[s]
            slot_ptr = b.gep(array, [const(I64, j)], inbounds=True, source_etype=DLTENSOR)
            if kind in ("input", "output"):
                arg = ref if kind == "input" else self.n_in + ref
                incoming = b.gep(self.fn.args[0], [const(I64, arg)], inbounds=True, source_etype=DLTENSOR)
                b.store(b.load(incoming, typ=DLTENSOR), slot_ptr)
                continue
            _, code, bits = DTYPES[dtype]
            fields = [(F_DATA, self.data[s]), (F_NDIM, const(I32, len(shape))),
                      (F_SHAPE, self.shape_global(s)), (F_STRIDES, ir.Constant(PTR, None)),
                      (6, const(I64, 0))]
            for field, value in fields:
                b.store(value, b.gep(slot_ptr, [const(I32, 0), const(I32, field)], inbounds=True,
                                     source_etype=DLTENSOR))
            device = b.gep(slot_ptr, [const(I32, 0), const(I32, 1)], inbounds=True, source_etype=DLTENSOR)
            b.store(ir.Constant(DLTENSOR.elements[1], [1, 0]), device)
            dtype_ptr = b.gep(slot_ptr, [const(I32, 0), const(I32, F_DTYPE)], inbounds=True,
                              source_etype=DLTENSOR)
            b.store(ir.Constant(DLTENSOR.elements[F_DTYPE], [code, bits, 1]), dtype_ptr)
        return array, len(args)

    # -- the loop ----------------------------------------------------------------------------
    def loop(self, budget):
        b, fn, spec = self.b, self.fn, self.spec
        entry = b.block
        head = fn.append_basic_block("iteration")
        body = fn.append_basic_block("body")
        exit_ = fn.append_basic_block("exit")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name="i")
        i.add_incoming(const(I64, 0), entry)
        self.run_calls(spec["header"], 0, i)
        cond = b.load(self.data[spec["cond"]], typ=I8)
        stop = b.icmp_unsigned("==", b.icmp_unsigned("!=", cond, const(I8, 0)),
                               const(I1, int(bool(spec["exit_when"]))))
        b.cbranch(stop, exit_, body)
        b.position_at_end(body)
        over = b.and_(b.icmp_signed(">=", budget, const(I64, 0)), b.icmp_signed(">=", i, budget))
        self.fail_if(over, i, const(I32, ERR_STEPS))
        # atomic (relaxed): the optimizer may not assume the word stays what it read last
        word = b.load_atomic(self.arrays[self.interrupt_arg][0], "monotonic", 4, typ=I32)
        self.fail_if(b.icmp_signed("!=", word, const(I32, 0)), i, const(I32, ERR_INTERRUPT))
        self.run_calls(spec["body"], len(spec["header"]), i)
        self.step_state()
        nxt = b.add(i, const(I64, 1), flags=["nsw"])
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(exit_)
        b.store(i, self.counters[0])
        for j, s in enumerate(spec["results"]):
            if self.slots[s][2] != "output":
                self.copy(self.arrays[self.n_in + j][0], self.data[s], self.slots[s])
        b.ret(const(I32, 0))

    def run_calls(self, calls, first_index, i):
        b = self.b
        fnty = ir.FunctionType(I32, [PTR, I32])
        for k, call in enumerate(calls):
            args, nargs = self.calls[id(call)]
            rc = b.call(get_function(self.module, call[0], fnty), [args, const(I32, nargs)])
            self.fail_if(b.icmp_signed("!=", rc, const(I32, 0)), i, rc, failed=first_index + k)

    def fail_if(self, cond, i, rc, failed=None):
        """Return `rc` when `cond` holds, with the iterations run (and the index of the failed
        inner call, if one failed) in the counters."""
        b = self.b
        fail = self.fn.append_basic_block("fail")
        cont = self.fn.append_basic_block("cont")
        b.cbranch(cond, fail, cont)
        b.position_at_end(fail)
        b.store(i, self.counters[0])
        if failed is not None:
            b.store(const(I64, failed), self.counters[1])
        b.ret(rc)
        b.position_at_end(cont)

    def step_state(self):
        """state := next for every carried value, as a parallel assignment (swaps go through
        their stage slots first)."""
        carried = [c for c in self.spec["carried"] if self.slots[c[1]][2] != "output"]
        for _, state, nxt, stage in carried:
            if stage >= 0:
                self.copy(self.data[stage], self.data[nxt], self.slots[state])
        for _, state, nxt, stage in carried:
            self.copy(self.data[state], self.data[stage if stage >= 0 else nxt], self.slots[state])

    def copy_run_time(self, dst, array, dtype):
        """Copy a whole compact argument (extents read at run time) to `dst`."""
        _, extents, _ = array
        size = const(I64, itemsize(dtype))
        for e in extents:
            size = self.b.mul(size, e)
        memcpy = get_function(self.module, "llvm.memcpy.p0.p0.i64",
                              ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I1]))
        self.b.call(memcpy, [dst, array[0], size, const(I1, 0)])

    def copy(self, dst, src, slot):
        size = slot_bytes(slot)
        if size:
            memcpy = get_function(self.module, "llvm.memcpy.p0.p0.i64",
                                  ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I1]))
            self.b.call(memcpy, [dst, src, const(I64, size), const(I1, 0)])


def inner_calls(spec):
    """(symbol, number of arguments) of every inner call (checked by the builder)."""
    return [(symbol, len(args)) for symbol, args in spec["header"] + spec["body"]]


register(Family("loop", check_spec, emit, inner_calls))
