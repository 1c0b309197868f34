"""The virtual machine: frames, registers, the dispatch loop and the instruction handlers.

Read `_dispatch` first: it is the whole machine, like Lua's `luaV_execute`. Each function's code
is prepared once (vm/prepare.py: one preparer per opcode) into a list of `(handler, operands)`
pairs; a handler is a short method `_op_<Name>(regs, operands, pc) -> next pc`. Handlers that
switch frames (Invoke, InvokeClosure, Ret) return `_SWITCH` and the loop reloads the top frame.
Calls never recurse in Python: the frame stack is an explicit list, so deep bytecode recursion
is bounded only by `max_depth`.

Tensors in registers are `vm.values.Tensor`s (address + dtype/shape), so a kernel call never asks
numpy for an address. A CallKernel's operands hold an `abi.CallSite` (DLTensor descriptors filled
once): a call binds its arguments (vm/boundary.py `bind`: data addresses, and extents when an
argument's dtype/shape object changed) and calls the native dispatcher, which validates the rest
and returns an error code the VM turns into a typed error. Invoke arguments come in and results
go out through vm/boundary.py as well; profiling is the profile's timers around the handlers and
kernel entry points (vm/profiler.py), set up at preparation.

Storage comes from the VM's `vm.memory.StoragePool`: blocks recycled by size class across
invocations, each returning to the pool only when nothing (register, tensor, returned array)
can reach it any more; `memory_stats()` reports the pool's counters.
"""
import itertools
import math
import operator
import os
import sys
import time
import warnings

import numpy as np

from dynvm.vm.boundary import bind, export, fast_tensor, import_arg, kind_of, tensor_spec
from dynvm.vm.bytecode import is_loop_function
from dynvm.vm.errors import (DynVMError, InvokeArgumentError, PerformanceWarning, ShapeError, VMError,
                             VMMemoryError, VMRecursionError, VMStepLimitError)
from dynvm.vm.executable import Executable
from dynvm.vm.memory import StoragePool, class_for
from dynvm.vm.prepare import handler_label, lookup_shape_funcs, prepare_function
from dynvm.vm.profiler import Profile
from dynvm.vm.values import (_EMPTY_ADDRESS, ADT, Closure, ShapeTensor, Storage, Tensor, _address,
                             cache_aligned, checked_dims, int64_at, int64s_at)

_SWITCH = -1  # a handler's "the current frame changed" result
_make_shape = ShapeTensor.make
# Frames are heap objects (a Frame and its register list, ~250 bytes for a small function), so
# the default depth only stops runaway recursion: prelude map/foldr over 10^5-element lists fit.
DEFAULT_MAX_DEPTH = 250_000
_NO_STEPS = itertools.repeat(None, 0)   # the step counter before the first invocation


def _make_small_ints():
    """Shared read-only 0-d int64 tensors for the integers GetTag and LoadConsti produce most
    (tags, loop bounds): saves an allocation per instruction. `boundary.export` copies read-only arrays,
    so callers still own what they get."""
    table = {}
    for i in range(-1, 257):
        a = np.array(i, np.int64)
        a.setflags(write=False)
        table[i] = Tensor.from_array(a)
    return table


_SMALL_INTS = _make_small_ints()


def _int_scalar(value):
    a = _SMALL_INTS.get(value)
    return a if a is not None else Tensor.from_array(np.array(value, np.int64))


class Frame:
    """One activation: which function, its code and registers, where to resume, where the result goes."""

    __slots__ = ("func_index", "code", "regs", "pc", "ret_dst")

    def __init__(self, func_index, code, regs, ret_dst):
        self.func_index, self.code, self.regs, self.pc, self.ret_dst = func_index, code, regs, 0, ret_dst


class VirtualMachine:
    """Runs the functions of an Executable (or of the .dvm file at a path). Several VMs may
    share one Executable.

    Options: `tier` "native" (the default: every function the native tier covers runs as
    native code, the rest in the Python tier; `exe.explain()` says which) or "python" (the
    reference interpreter for everything; same results, errors and step counts);
    `max_steps` bounds the bytecode instructions one invocation executes (VMStepLimitError);
    `max_depth` bounds call nesting (VMRecursionError); `max_memory_bytes` bounds the bytes of
    storage live at once (VMMemoryError; runs the Python tier); `profile=True` times every
    opcode and kernel (`profile()`; runs the Python tier). `max_steps` and `max_depth` may be
    changed between invocations.

    A VM holds per-invocation state (frames, registers, prepared kernel descriptors, its storage
    pool), so one VM runs one invocation at a time: use one VM per thread (they may share the
    Executable and its loaded kernels). Calling `invoke` while another thread is inside it
    raises a VMError instead of corrupting that invocation.

    `threads`: how many threads each kernel may run on (default: the cores this process may
    use); 1 runs every kernel on the invoking thread alone. Results do not depend on it. The
    count belongs to the invoking OS thread: `invoke` sets it there.
    """

    def __init__(self, exe, max_depth: int = DEFAULT_MAX_DEPTH, max_steps=None, profile: bool = False,
                 tier: str = "native", max_memory_bytes=None, threads=None):
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
        check_threads(threads)
        if isinstance(exe, (str, os.PathLike)):
            exe = Executable.load(exe)
        elif not isinstance(exe, Executable):
            raise TypeError(f"VirtualMachine takes an Executable or the path of a .dvm file, got "
                            f"a {type(exe).__name__}")
        if not exe._verified:
            exe.verify()
        self.exe = exe
        self._native = None
        self.max_depth = max_depth
        self.max_steps = max_steps
        self.kernels = exe.loaded_kernels()
        self._threads = kernel_threads(threads) if self.kernels else None
        self.shape_funcs = lookup_shape_funcs(exe)
        self._constants = [Tensor.from_array(cache_aligned(c)) for c in exe.constants]
        self._ctors = {c["name"]: c for c in exe.constructors}
        self._profile = Profile() if profile else None
        self._pool = StoragePool(max_live_bytes=max_memory_bytes)
        self._code = [self._loop_block(fn) or prepare_function(self, fn) for fn in exe.functions]
        self._param_specs = [[tensor_spec(t) for t in fn.param_types] for fn in exe.functions]
        self._index = {fn.name: i for i, fn in enumerate(exe.functions)}
        # what invoke needs per function, looked up once: index, parameter count, the
        # fast_tensor specs (None for non-tensor parameters), register count, code, and the
        # (dtype, shape) object made last for each parameter: an argument of the same shape as
        # last time reuses it, so kernel call sites see an unchanged layout (no re-describe)
        self._plans = {fn.name: (i, len(fn.params), tuple(self._param_specs[i]), fn.register_count,
                                 self._code[i], [(None, None)] * len(fn.params))
                       for i, fn in enumerate(exe.functions)}
        self._stack = []
        self._result = None
        self._views = {}          # AllocTensor operands id -> (storage, view), per invocation
        # the step counter of the last invocation: one item per instruction it may still run
        # (an iterator counts for free in `for`); `steps` is what it consumed
        self._steps, self._step_limit = _NO_STEPS, 0
        # the right to run an invocation (one at a time): taken with list.pop and given back
        # with append, each atomic (and about 5x cheaper than a Lock's acquire and release)
        self._token = [True]
        self.tier = tier
        # the native tier's pool has no cap yet: a memory limit runs the Python tier
        self._native = _native_tier(exe, self._constants) \
            if tier == "native" and not profile and max_memory_bytes is None else None
        self._edges = {}        # function name -> the native fast path's `enter(args)`
        if self._native is not None:
            self._native.configure(max_steps, max_depth)
            self._edges = {exe.functions[i].name: self._native.edge(i) for i in self._native.entries}

    @property
    def threads(self) -> int:
        """The threads each kernel of an invocation may run on (1 for a program without kernels)."""
        return self._threads[1] if self._threads is not None else 1

    @property
    def max_steps(self):
        """The most bytecode instructions one invocation may execute (None: no limit); exceeding
        it raises VMStepLimitError."""
        return self._max_steps

    @max_steps.setter
    def max_steps(self, value):
        self._max_steps = value
        if self._native is not None:
            self._native.configure(value, self._max_depth)

    @property
    def max_depth(self):
        """The deepest call nesting one invocation may reach; deeper raises VMRecursionError."""
        return self._max_depth

    @max_depth.setter
    def max_depth(self, value):
        self._max_depth = value
        if self._native is not None:
            self._native.configure(self._max_steps, value)

    # ------------------------------------------------------------ public API

    def invoke(self, name: str, *args):
        """Run function `name` on its arguments and return its result.

        A tensor parameter takes a numpy array (C-contiguous, aligned, native byte order and
        of the declared dtype and static dims: used as it is, the fastest way in; other
        layouts are copied), or a Python number or (nested) list converted by the declared
        dtype; tuple parameters take tuples, ADT parameters `vm.ADT` values (`vm.convert`
        builds lists and trees), function parameters closures. Everything is checked against
        the declared types before anything runs (InvokeArgumentError). Results come back as
        numpy arrays, tuples and ADTs; returned arrays belong to the caller: no later
        invocation writes into them, and none is an argument's memory.
        """
        try:
            self._token.pop()
        except IndexError:
            raise VMError("this VirtualMachine is running an invocation in another thread; a VM "
                          "runs one invocation at a time: create one VirtualMachine per thread "
                          "(they can share the Executable)") from None
        try:
            if self._threads is not None:
                self._threads[0](self._threads[1])
            enter = self._edges.get(name)
            if enter is not None:
                result = enter(args)
                if result is not None:
                    self._step_limit, self._steps = self._native.budget, self._native.remaining
                    return result
            return self._invoke(name, args)
        except MemoryError:     # numpy outside the machine (a result's copy, ...): typed
            raise VMMemoryError(f"out of memory in {name}") from None
        finally:
            self._token.append(True)

    def _invoke(self, name, args):
        plan = self._plans.get(name)
        if plan is None:
            raise VMError(f"no function named {name!r}; functions: {', '.join(self._index)}")
        index, nparams, specs, nregs, code, metas = plan
        if len(args) == nparams:
            regs = [None] * nregs
            i = 0
            for a in args:      # boundary.fast_tensor, inlined: the common argument costs no calls
                spec = specs[i]
                if spec is None or type(a) is not np.ndarray:
                    break
                dt, dname, rank, static, fixed = spec
                if a.dtype is not dt and a.dtype != dt:
                    break
                shape = a.shape
                if static is not None:
                    if shape != static:
                        break
                else:
                    if len(shape) != rank:
                        break
                    for k, d in fixed:
                        if shape[k] != d:
                            break
                    else:
                        k = -1
                    if k >= 0:
                        break
                flags = a.flags
                if not (flags.c_contiguous and flags.aligned):
                    break
                meta = metas[i]
                if meta[1] != shape:
                    meta = metas[i] = (dname, shape)
                regs[i] = Tensor(_address(a) if a.size else _EMPTY_ADDRESS, meta, a, 0, a)
                i += 1
            else:
                return export(self._run_frame(Frame(index, code, regs, None)))
        self._steps, self._step_limit = _NO_STEPS, 0
        fn = self.exe.functions[index]
        if len(args) != len(fn.params):
            raise InvokeArgumentError(
                f"{name} takes {len(fn.params)} arguments ({', '.join(fn.params)}), got {len(args)}")
        values = []
        for a, spec, t, p in zip(args, self._param_specs[index], fn.param_types, fn.params):
            v = fast_tensor(a, spec) if spec is not None and type(a) is np.ndarray else None
            values.append(v if v is not None else
                          import_arg(a, t, f"{name}: parameter {p!r}", self._ctors, len(self.exe.functions)))
        return export(self._run(index, values))

    @property
    def steps(self) -> int:
        """The bytecode instructions the last invocation executed (0 before the first, or when
        its arguments were rejected). A native loop counts what the same loop executes as
        bytecode, so the count does not depend on `build(..., native_loops=...)`; `max_steps`
        bounds this number."""
        return self._step_limit - operator.length_hint(self._steps)

    def prepared_code(self, name: str) -> list:
        """How each instruction of function `name` runs after preparation, one label per pc:
        the opcode's name, or the specialised handler preparation chose for it (e.g.
        `CallShapeFunc_memo`, a shape function memoised on its input shapes, or
        `AllocStorageTensor`, an allocation fused with the view of all of it)."""
        index = self._index.get(name)
        if index is None:
            raise VMError(f"no function named {name!r}; functions: {', '.join(self._index)}")
        return [handler_label(handler) for handler, _ in self._code[index]]

    def memory_stats(self) -> dict:
        """Storage allocator counters since the VM was made or `reset_memory_stats` last ran:
        allocations (new blocks from numpy/the OS), bytes_allocated (their size), pool_hits
        (requests served by a recycled block), peak_bytes_live and bytes_live (bytes in blocks
        handed out and not yet returned: blocks held by live results count), bytes_free (bytes
        waiting in the pool). The native tier has a pool of its own (the same size classes):
        its counters are added in, the peaks taken as the larger."""
        stats = self._pool.stats()
        if self._native is not None:
            for name, value in self._native.memory_stats().items():
                stats[name] = max(stats[name], value) if name == "peak_bytes_live" else stats[name] + value
        return stats

    def reset_memory_stats(self) -> None:
        """Zero the allocation counters; the peak restarts from the bytes live now."""
        self._pool.reset_stats()
        if self._native is not None:
            self._native.reset_memory_stats()

    def release_memory(self) -> None:
        """Return the pools' free blocks to the OS (blocks still in use are unaffected)."""
        self._pool.release()
        if self._native is not None:
            self._native.release_memory()

    def profile(self) -> Profile:
        """Counts and times per opcode and per kernel variant, a Chrome trace of the kernel
        calls (`.save_chrome_trace(path)`) and a readable table (`str(...)`); profile=True only."""
        if self._profile is None:
            raise VMError("profiling is off; create the VirtualMachine with profile=True")
        return self._profile

    # ------------------------------------------------------------ the machine

    def _run(self, func_index, args):
        return self._run_frame(self._new_frame(func_index, args, None))

    def _run_frame(self, frame):
        native = self._native
        if native is not None and frame.func_index in native.entries:
            return self._run_native(native, frame)
        return self._run_python(frame)

    def _run_native(self, native, frame):
        """The frame's function in native code; a native failure runs the invocation again in
        the Python tier, which raises the typed error (an invocation has no side effects)."""
        nparams = len(self.exe.functions[frame.func_index].params)
        result = native.run(frame.func_index, frame.regs[:nparams])
        self._step_limit, self._steps = native.budget, native.remaining
        if result is not None:
            return result
        from dynvm.vm.native import RC_FAILED, RC_INTERRUPT, raise_interrupt
        failed = native.last_rc
        func, pc = native.failure()
        if failed == RC_INTERRUPT:
            raise_interrupt(self.exe, func, pc)
        result = self._run_python(frame)    # raises the typed error of a real failure
        # it did not raise: the native code stopped where the Python tier goes on (a native
        # stack too small for the depth, or a native shape function's int64 overflow in a
        # value Python never uses): the answer is the Python tier's, and that is a slow path
        native.fallbacks += 1
        if native.fallbacks == 1:
            why = "a check the Python tier passes" if failed == RC_FAILED else "native stack exhausted"
            warnings.warn(f"{self.exe.functions[func].name}: native code stopped at pc {pc} ({why}); "
                          "the invocation ran in the Python tier (slower; later ones like it warn "
                          "no more)", PerformanceWarning, stacklevel=4)
        return result

    def _run_python(self, frame):
        self._stack = [frame]
        try:
            return self._dispatch()
        finally:
            self._stack, self._result = [], None  # drop registers of finished or abandoned frames
            self._views.clear()

    def _dispatch(self):
        """The machine: fetch (handler, operands) at pc, run it, follow frame switches."""
        frame = self._stack[-1]
        code, regs, pc = frame.code, frame.regs, frame.pc
        # one item per instruction allowed: handlers that stand for more instructions (fused
        # pairs, CallLoop) take the extra ones with next() (StopIteration: out of steps)
        limit = self._step_limit = sys.maxsize if self.max_steps is None else min(self.max_steps, sys.maxsize)
        steps = self._steps = itertools.repeat(None, limit)
        try:
            while True:
                for _ in steps:
                    handler, operands = code[pc]
                    pc = handler(regs, operands, pc)
                    if pc < 0:  # _SWITCH: a call or a return changed the top frame
                        if not self._stack:
                            return self._result
                        frame = self._stack[-1]
                        code, regs, pc = frame.code, frame.regs, frame.pc
                        if steps is not self._steps:    # a native loop charged its steps
                            break
                else:
                    break
                steps = self._steps
        except DynVMError as e:
            self._locate(e, pc)
            raise
        except StopIteration:
            pass
        except MemoryError:
            raise self._locate(VMMemoryError("out of memory (the system refused an allocation)"), pc) from None
        except Exception as e:  # noqa: BLE001 - a bad value kind in verified bytecode is a VMError
            raise self._locate(VMError(f"{type(e).__name__}: {e}"), pc) from e
        raise self._locate(VMStepLimitError(
            f"step limit of {self.max_steps} instructions exceeded (infinite loop?)"), pc)

    def _locate(self, error, pc):
        """Add `in <function> at pc <n>` to an error's message (once)."""
        if not self._stack or getattr(error, "_dynvm_located", False):
            return error
        fn = self.exe.functions[self._stack[-1].func_index]
        instr = fn.instructions[pc] if 0 <= pc < len(fn.instructions) else None
        where = f"in {fn.name} at pc {pc}" + (f" ({instr.name})" if instr else "")
        error.args = (f"{error.args[0] if error.args else ''} [{where}]",) + error.args[1:]
        error._dynvm_located = True
        return error

    def _loop_block(self, fn):
        """The prepared code of a native loop function (straight-line code around one CallLoop,
        ending in Ret: what compiler/codegen/native_loop.py emits), else None. Its body runs as
        one handler, so as one step: the CallLoop charges the rest, as many steps as the
        function executes as a bytecode loop (the counts its kernel spec records), which may
        be fewer than the instructions around it."""
        if not is_loop_function(fn.instructions):
            return None
        code = prepare_function(self, fn, fuse=False)
        return [(self._op_LoopBlock, (tuple(code),))] + code[1:]

    def _new_frame(self, func_index, args, ret_dst):
        regs = [None] * self.exe.functions[func_index].register_count
        regs[:len(args)] = args
        return Frame(func_index, self._code[func_index], regs, ret_dst)

    def _call(self, func_index, args, ret_dst, pc):
        """Push a frame for `func_index`; the caller resumes at pc + 1."""
        if len(self._stack) >= self.max_depth:
            raise VMRecursionError(
                f"call depth exceeded max_depth={self.max_depth} calling "
                f"{self.exe.functions[func_index].name!r}")
        self._stack[-1].pc = pc + 1
        native = self._native
        if native is not None and func_index in native.entries and self._call_native(native, func_index, args, ret_dst):
            return _SWITCH
        self._stack.append(self._new_frame(func_index, args, ret_dst))
        return _SWITCH

    def _call_native(self, native, func_index, args, ret_dst) -> bool:
        """A call from the Python tier into a native function: run it natively with the steps
        and depth left, and write its result into the caller's register. False: it stopped
        (a failure or too little native stack) and the call runs in the Python tier instead,
        which raises the typed error (a call has no side effects: the re-run sees the same)."""
        result = native.run(func_index, args, operator.length_hint(self._steps), len(self._stack))
        if result is None:
            from dynvm.vm.native import RC_INTERRUPT, raise_interrupt
            if native.last_rc == RC_INTERRUPT:
                raise_interrupt(self.exe, *native.failure())
            return False
        fn = self.exe.functions[func_index]
        self._steps = itertools.repeat(None, operator.length_hint(native.remaining))
        self._stack[-1].regs[ret_dst] = import_arg(result, fn.ret_type, f"{fn.name}: result",
                                                   self._ctors, len(self.exe.functions))
        return True

    # ------------------------------------------------------------ handlers, in table order

    def _op_Move(self, regs, a, pc):
        dst, src = a
        regs[dst] = regs[src]
        return pc + 1

    def _op_Ret(self, regs, a, pc):
        (src,) = a
        value = regs[src]
        done = self._stack.pop()
        if self._stack:
            self._stack[-1].regs[done.ret_dst] = value
        else:
            self._result = value
        return _SWITCH

    def _op_Invoke(self, regs, a, pc):
        func, args, dst = a
        return self._call(func, [regs[r] for r in args], dst, pc)

    def _op_InvokeClosure(self, regs, a, pc):
        closure, args, dst = a
        c = regs[closure]
        if not isinstance(c, Closure):
            raise VMError(f"InvokeClosure: r{closure} holds {kind_of(c)}, not a closure")
        callee = self.exe.functions[c.func_index]
        values = list(c.captured) + [regs[r] for r in args]
        if len(values) != len(callee.params):
            raise VMError(f"closure of {callee.name!r} takes {len(callee.params) - len(c.captured)}"
                          f" arguments, got {len(args)}")
        return self._call(c.func_index, values, dst, pc)

    def _op_CallKernel(self, regs, a, pc):
        site, argregs, kernel, fn = a
        bind(site, kernel, regs, argregs)
        rc = fn(site.tensors, site.nargs)
        if rc:
            raise _kernel_error(kernel, rc, [regs[r] for r in argregs])
        return pc + 1

    def _op_CallShapeFunc(self, regs, a, pc):
        """Run a shape function and store one 1-D int64 shape tensor per output."""
        fn, attrs, wants_arrays, inputs, outputs, index = a
        args = _tensor_args(regs, inputs)
        shapes = fn([t.array for t in args] if wants_arrays else args, attrs)
        if len(shapes) != len(outputs):
            raise VMError(f"shape function {self.exe.shape_funcs[index]['name']!r} returned "
                          f"{len(shapes)} shapes for {len(outputs)} outputs")
        for r, shape in zip(outputs, shapes):
            dims = checked_dims(shape)
            regs[r] = ShapeTensor.make(dims) if dims is not None else \
                Tensor.of(np.array(shape, np.int64).reshape(-1), "int64")
        return pc + 1

    def _op_CallShapeFunc_prepared(self, regs, a, pc):
        """CallShapeFunc of a function specialized to its attrs at load (prepare.specialized)."""
        fast, inputs, outputs, index, last, _ = a
        args = _tensor_args(regs, inputs)
        shapes = fast(args)
        if len(shapes) != len(outputs):
            raise VMError(f"shape function {self.exe.shape_funcs[index]['name']!r} returned "
                          f"{len(shapes)} shapes for {len(outputs)} outputs")
        k = 0
        for shape in shapes:
            t = last[k]
            if t is None or t.dims != shape:    # equal to checked dims: the same values
                dims = checked_dims(shape)
                if dims is None:
                    regs[outputs[k]] = Tensor.of(np.array(shape, np.int64).reshape(-1), "int64")
                    k += 1
                    continue
                t = last[k] = _make_shape(dims)
            regs[outputs[k]] = t
            k += 1
        return pc + 1

    def _op_CallShapeFunc_memo(self, regs, a, pc):
        """A shape function that reads only input shapes, called with the very (dtype, shape)
        objects as last time (AllocTensorReg and invoke reuse them while shapes stay the same)
        returns what it returned then: the outputs of the last call are reused, no call."""
        _, inputs, outputs, _, last, seen = a
        metas = seen[0]
        if metas is not None:
            k = 0
            for r in inputs:
                if getattr(regs[r], "meta", None) is not metas[k]:
                    break
                k += 1
            else:
                k = 0
                for r in outputs:
                    regs[r] = last[k]
                    k += 1
                return pc + 1
        pc = self._op_CallShapeFunc_prepared(regs, a, pc)
        reusable = all(regs[r] is t for r, t in zip(outputs, last))
        seen[0] = tuple(regs[r].meta for r in inputs) if reusable else None
        return pc

    def _op_AllocStorage(self, regs, a, pc):
        size, alignment, dtype, dst, size_class = a
        regs[dst] = self._pool.lease(size_class, size, alignment, dtype)
        return pc + 1

    def _op_AllocStorageReg(self, regs, a, pc):
        shape, alignment, dtype, dst, element_size, classes = a
        value = regs[shape]
        size = math.prod(value.dims if type(value) is ShapeTensor else _shape_tuple(value)) * element_size
        cls = classes.get(size)
        if cls is None:
            if len(classes) > 64:
                classes.clear()
            cls = classes[size] = class_for(size, alignment)
        regs[dst] = self._pool.lease(cls, size, alignment, dtype)
        return pc + 1

    def _op_AllocStorageTensor(self, regs, a, pc):
        """AllocStorage + AllocTensor viewing it whole from offset 0 (fused at preparation,
        which checked that the view fits)."""
        (size, alignment, dtype, sdst, size_class), meta, dst = a   # StorageTensorOps
        next(self._steps)                   # the second instruction's step
        s = regs[sdst] = self._pool.lease(size_class, size, alignment, dtype)
        regs[dst] = Tensor(s.address, meta, s._buf, s._start)
        return pc + 2

    def _op_AllocStorageTensorReg(self, regs, a, pc):
        """AllocStorageReg + AllocTensorReg of the same shape register at offset 0 (fused at
        preparation): the tensor is exactly the block, so it needs no bounds check."""
        sa, ta = a                          # StorageRegOps, TensorRegOps
        next(self._steps)                   # the second instruction's step
        shape, alignment, dtype, sdst, element_size, classes = sa
        value = regs[shape]
        if type(value) is not ShapeTensor:  # a general shape tensor: the two handlers
            return self._op_AllocTensorReg(regs, ta, self._op_AllocStorageReg(regs, sa, pc))
        dims = value.dims
        size = math.prod(dims) * element_size
        cls = classes.get(size)
        if cls is None:
            if len(classes) > 64:
                classes.clear()
            cls = classes[size] = class_for(size, alignment)
        s = regs[sdst] = self._pool.lease(cls, size, alignment, dtype)
        _, _, _, tensor_dtype, dst, _, last = ta
        meta = last[0]
        if meta[1] != dims:
            meta = last[0] = (tensor_dtype, dims)
        regs[dst] = Tensor(s.address, meta, s._buf, s._start)
        return pc + 2

    def _op_AllocTensor(self, regs, a, pc):
        """A static-shape view of a storage. In a loop the same instruction views the same
        planned arena every iteration: the view made last time is reused (views are immutable,
        so this is the same value; the cache is dropped when the invocation ends). Views of
        blocks of their own are not cached: that would keep the block from the pool."""
        storage, offset, meta, nbytes, dst, arena = a
        s = regs[storage]
        if not arena:            # a block of its own: no cache, so KillRegister can free it
            regs[dst] = _storage(s).tensor(offset, meta, nbytes)
            return pc + 1
        seen = self._views.get(id(a))
        if seen is not None and seen[0] is s:
            regs[dst] = seen[1]
        else:
            regs[dst] = t = _storage(s).tensor(offset, meta, nbytes)
            self._views[id(a)] = (s, t)
        return pc + 1

    def _op_AllocTensorReg(self, regs, a, pc):
        storage, offset, shape, dtype, dst, element_size, last = a
        value = regs[shape]
        shape = value.dims if type(value) is ShapeTensor else _shape_tuple(value)
        meta = last[0]
        if meta[1] != shape:
            meta = last[0] = (dtype, shape)
        s = regs[storage]
        if type(s) is not Storage:
            _storage(s)
        regs[dst] = s.tensor(offset, meta, math.prod(shape) * element_size)
        return pc + 1

    def _op_AllocADT(self, regs, a, pc):
        ctor, fields, dst = a
        values = tuple(regs[r] for r in fields)
        if ctor == 0:
            regs[dst] = values
        else:
            c = self.exe.constructors[ctor]
            regs[dst] = ADT(c["name"], c["tag"], values)
        return pc + 1

    def _op_AllocClosure(self, regs, a, pc):
        func, captured, dst = a
        regs[dst] = Closure(func, [regs[r] for r in captured])
        return pc + 1

    def _op_GetField(self, regs, a, pc):
        obj, index, dst = a
        regs[dst] = _fields(regs[obj], obj)[index]
        return pc + 1

    def _op_GetTag(self, regs, a, pc):
        obj, dst = a
        value = regs[obj]
        if isinstance(value, ADT):
            regs[dst] = _int_scalar(value.tag)
        elif isinstance(value, tuple):
            regs[dst] = _SMALL_INTS[0]
        else:
            raise VMError(f"GetTag: r{obj} holds {kind_of(value)}, not an ADT value")
        return pc + 1

    def _op_If(self, regs, a, pc):
        test, target, then_off, else_off = a
        return pc + (then_off if int(regs[test]) == int(regs[target]) else else_off)

    def _op_Goto(self, regs, a, pc):
        (off,) = a
        return pc + off

    def _op_LoadConst(self, regs, a, pc):
        const, dst = a
        regs[dst] = self._constants[const]
        return pc + 1

    def _op_LoadConsti(self, regs, a, pc):
        value, dst = a
        regs[dst] = _int_scalar(value)
        return pc + 1

    def _op_ShapeOf(self, regs, a, pc):
        tensor, dst = a
        regs[dst] = ShapeTensor.make(_tensor(regs[tensor], tensor).meta[1])
        return pc + 1

    def _op_ReshapeTensor(self, regs, a, pc):
        tensor, shape, dst, last = a
        view = regs[dst] = _reshape(_tensor(regs[tensor], tensor), _shape_tuple(regs[shape]))
        if view.meta == last[0]:    # as AllocTensorReg: an unchanged (dtype, shape) object
            view.meta = last[0]
        else:
            last[0] = view.meta
        return pc + 1

    def _op_KillRegister(self, regs, a, pc):
        (reg,) = a
        regs[reg] = None
        return pc + 1

    def _op_Fatal(self, regs, a, pc):
        (message,) = a
        raise VMError(message)

    def _op_LoopBlock(self, regs, a, pc):
        """A native loop function's whole body (see _loop_block)."""
        (code,) = a
        try:
            while pc >= 0:
                handler, operands = code[pc]
                pc = handler(regs, operands, pc)
        except DynVMError as e:
            raise self._locate(e, pc)
        return pc

    def _op_CallLoop(self, regs, a, pc):
        """A whole loop in one native call (kernels/loop.py), charged as the bytecode loop
        function it replaces: fixed + n * per_iteration steps for n iterations, this
        instruction's own step included. The kernel's budget is the iterations the steps left
        allow; the charge replaces the step counter (the dispatch loop picks it up at the next
        frame switch: the Ret that ends a native loop function)."""
        site, inputs, outputs, kernel, calls, budget, counters = a
        fixed, per_iteration = kernel.attrs["steps"]
        left = operator.length_hint(self._steps) - (fixed - 1)
        if left < 0:
            self._steps = _NO_STEPS
            raise VMStepLimitError(f"step limit of {self.max_steps} instructions exceeded in native "
                                   f"loop {kernel.name} before its first iteration")
        budget.base[()] = left // per_iteration
        counters.base[:] = (0, -1)      # what an argument the kernel rejects leaves there
        values = [regs[r] for r in inputs] + [budget, _interrupt_word()] + \
            [regs[r] for r in outputs] + [counters]
        bind(site, kernel, values, range(len(values)), f"CallLoop {kernel.name}", "argument ")
        start = time.perf_counter()
        rc = site.fn(site.tensors, site.nargs)
        seconds = time.perf_counter() - start
        iterations, failed = (int(v) for v in counters.base)
        self._steps = itertools.repeat(None, max(0, left - iterations * per_iteration))
        if rc:
            raise self._loop_error(kernel, calls, rc, iterations, failed, [t.shape for t in values])
        if self._profile is not None:
            self._profile.record_loop(kernel.name, start, seconds, iterations)
        return pc + 1

    def _loop_error(self, kernel, calls, rc, iterations, failed, shapes):
        from dynvm.kernels.abi import ERR_INTERRUPT, ERR_STEPS   # lazily: a program without kernels never loads cffi
        if (rc & 0xFF) == ERR_INTERRUPT:
            from dynvm.kernels.interrupt import let_signal_handlers_run
            let_signal_handlers_run()       # Python's SIGINT handler raises KeyboardInterrupt here
            return KeyboardInterrupt(f"native loop {kernel.name} interrupted after {iterations} iterations")
        if (rc & 0xFF) == ERR_STEPS:
            self._steps = _NO_STEPS     # the bytecode loop would stop at the limit
            return VMStepLimitError(f"step limit of {self.max_steps} instructions exceeded in native "
                                    f"loop {kernel.name} after {iterations} iterations (infinite loop?)")
        if 0 <= failed < len(calls):
            inner = calls[failed].native_error(rc, [])
            inner.args = (f"native loop {kernel.name}, iteration {iterations}: {inner.args[0]}",)
            return inner
        return kernel.native_error(rc, shapes)


# ---------------------------------------------------------------- Ctrl-C in native loops

_WORD_TENSORS = {}      # id(word array) -> its Tensor (the arrays live as long as the process)
def check_threads(threads):
    """A runtime's `threads` argument: an int >= 1, or None for the cores (ValueError)."""
    if threads is not None and (type(threads) is not int or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")


def kernel_threads(threads):
    """(setter, count): what a runtime (the VM's `invoke`, the static runtime's `run`) calls
    to give its thread's kernels `threads` threads (None: the cores this process may use)."""
    from dynvm.kernels import pool      # lazily, as the kernels themselves
    return pool.use_threads, pool.default_threads() if threads is None else threads


_ARMED_WORD = []        # kernels.interrupt.armed_word, once imported


def _kernel_error(kernel, rc, values):
    """A failed kernel call's error. For a shape error, the op's own shape function is asked
    first: when it rejects the inputs, its message (in the op's terms: "nms: scores has 3 rows
    but boxes has 5") is the error, not the kernel's return code."""
    error = kernel.native_error(rc, [v.shape for v in values])
    if not isinstance(error, ShapeError):
        return error
    from dynvm import shape_funcs      # lazily, as for CallShapeFunc
    inputs, op = values[:len(kernel.inputs)], kernel.attrs.get("op", kernel.op)
    for name in (f"{op}.upper_bound", op):
        try:
            sf = shape_funcs.lookup(name)
            sf.fn([v.array for v in inputs] if sf.mode == "data_dependent" else inputs, kernel.attrs)
        except ShapeError as plain:
            return plain
        except Exception:   # noqa: BLE001 - no such function, or one that cannot say more
            continue
    return error


def _interrupt_word() -> Tensor:
    """The interrupt word a native loop in this thread polls (kernels/interrupt.py), cleared,
    with the SIGINT handler that sets it installed when this is the main thread."""
    if not _ARMED_WORD:     # imported lazily, as the kernels themselves
        from dynvm.kernels.interrupt import armed_word
        _ARMED_WORD.append(armed_word)
    word = _ARMED_WORD[0]()
    t = _WORD_TENSORS.get(id(word))
    if t is None:
        t = _WORD_TENSORS[id(word)] = Tensor.from_array(word)
    return t


# ---------------------------------------------------------------- value helpers

TIERS = ("native", "python")


def _native_tier(exe, constants):
    """The VM's native tier, or None when no function of `exe` is native."""
    from dynvm.vm.native import NativeTier, native_code   # lazily: it imports llvmlite
    code = native_code(exe)
    return NativeTier(exe, code, constants) if code.addresses else None


def _tensor_args(regs, inputs):
    """The tensors in registers `inputs` (a shape function's arguments); VMError otherwise."""
    args = [regs[r] for r in inputs]
    for t in args:
        if not isinstance(t, Tensor):
            for t, r in zip(args, inputs):
                _tensor(t, r)  # raises for the first non-tensor
    return args


def _tensor(value, reg) -> Tensor:
    if not isinstance(value, Tensor):
        raise VMError(f"r{reg} holds {kind_of(value)}, expected a tensor")
    return value


def _storage(value):
    if not isinstance(value, Storage):
        raise VMError(f"expected a Storage, got {kind_of(value)}")
    return value


def _fields(value, reg):
    if isinstance(value, tuple):
        return value
    if isinstance(value, ADT):
        return value.fields
    raise VMError(f"GetField: r{reg} holds {kind_of(value)}, not a tuple or ADT value")


def _shape_tuple(value) -> tuple:
    """A shape tensor (1-D integers) as a tuple of non-negative ints."""
    if type(value) is ShapeTensor:
        return value.dims
    if type(value) is Tensor and value.meta[0] == "int64" and len(value.meta[1]) == 1:
        # e.g. written by a kernel (an upper-bound op's true shape): read straight from memory
        shape = (int64_at(value.address),) if value.meta[1][0] == 1 else \
            tuple(int64s_at(value.address, value.meta[1][0]))
        if shape and min(shape) < 0:
            raise ShapeError(f"a shape cannot have negative dimensions: {list(shape)}")
        return shape
    arr = value.array if isinstance(value, Tensor) else np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ShapeError(f"a shape must be a 1-D integer tensor, got {kind_of(arr)}")
    shape = tuple(arr.tolist())
    if any(d < 0 for d in shape):
        raise ShapeError(f"a shape cannot have negative dimensions: {list(shape)}")
    return shape


def _reshape(tensor, shape):
    """A zero-copy tensor with `shape` (Tensors are always compact, so any shape of the same
    element count is a valid view)."""
    if math.prod(shape) != tensor.size:
        raise ShapeError(f"cannot reshape a tensor of shape {tensor.shape} ({tensor.size} elements) "
                         f"to {list(shape)} ({math.prod(shape)} elements)")
    return tensor.reshaped(shape)

