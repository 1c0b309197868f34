"""The virtual machine: frames, registers and the dispatch loop.

Read `_run` first: it is the whole machine, like Lua's `luaV_execute`. Each function's code is
pre-translated once into a list of `(handler, operands)` pairs; a handler is a short method
`_op_<Name>(regs, operands, pc) -> next pc`. Handlers that switch frames (Invoke, InvokeClosure,
Ret) return `_SWITCH` and the loop reloads the top frame. Calls never recurse in Python: the frame
stack is an explicit list, so deep bytecode recursion is bounded only by `max_depth`.

Tensors in registers are `vm.values.Tensor`s (address + dtype/shape), so a kernel call never asks
numpy for an address. Translation prepares each instruction's operands once: AllocTensor gets
its (dtype, shape) object and byte size, CallKernel of a compiled kernel gets an
`abi.CallSite` (DLTensor descriptors filled once), so a call writes only data addresses (and
extents when an argument's dtype/shape object changed) and calls the native dispatcher, which
validates the rest and returns an error code the VM turns into a typed error.

Storage comes from the VM's `vm.memory.StoragePool`: blocks recycled by size class across
invocations, each returning to the pool only when nothing (register, tensor, returned array)
can reach it any more; `memory_stats()` reports the pool's counters.
"""
import functools
import itertools
import math
import operator
import time

import numpy as np

from dynvm.vm.bytecode import OPCODES
from dynvm.vm.dtypes import dtype_name, itemsize, np_dtype
from dynvm.vm.errors import (DynVMError, ExecutableFormatError, InvokeArgumentError, KernelError,
                       ShapeError, VMError,
                       VMRecursionError, VMStepLimitError)
from dynvm.vm.memory import StoragePool, class_for
from dynvm.vm.profiler import Profile
from dynvm.vm.values import (_EMPTY_ADDRESS, ADT, Closure, ShapeTensor, Storage, Tensor, _address,
                       cache_aligned, check_storage_request, checked_dims, int64_at, int64s_at,
                       rebuild)

_SWITCH = -1  # a handler's "the current frame changed" result
_make_shape = ShapeTensor.make
_I64_MAX = (1 << 63) - 1
_FOREVER = itertools.repeat(None)  # the step counter without a limit (shared: it never ends)


def _make_small_ints():
    """Shared read-only 0-d int64 tensors for the integers GetTag and LoadConsti produce most
    (tags, loop bounds): saves an allocation per instruction. `_export` copies read-only arrays,
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
    """Runs the functions of an Executable. Several VMs may share one Executable."""

    def __init__(self, exe, max_depth: int = 1000, max_steps=None, profile: bool = False):
        if not exe._verified:
            exe.verify()
        self.exe = exe
        self.max_depth = max_depth
        self.max_steps = max_steps
        self.kernels = exe.loaded_kernels()
        self.shape_funcs = self._lookup_shape_funcs(exe)
        self._constants = [Tensor.from_array(cache_aligned(c)) for c in exe.constants]
        self._ctors = {c["name"]: c for c in exe.constructors}
        self._profile = Profile() if profile else None
        self._pool = StoragePool()
        self._code = [self._translate_function(fn) for fn in exe.functions]
        self._param_specs = [[_tensor_spec(t) for t in fn.param_types] for fn in exe.functions]
        self._index = {fn.name: i for i, fn in enumerate(exe.functions)}
        # what invoke needs per function, looked up once: index, parameter count, the
        # _fast_tensor specs (None for non-tensor parameters), register count, code, and the
        # (dtype, shape) object made last for each parameter: an argument of the same shape as
        # last time reuses it, so kernel call sites see an unchanged layout (no re-describe)
        self._plans = {fn.name: (i, len(fn.params), tuple(self._param_specs[i]), fn.register_count,
                                 self._code[i], [(None, None)] * len(fn.params))
                       for i, fn in enumerate(exe.functions)}
        self._stack = []
        self._result = None
        self._views = {}          # AllocTensor operands id -> (storage, view), per invocation

    @staticmethod
    def _lookup_shape_funcs(exe):
        if not exe.shape_funcs:
            return []
        from dynvm import shape_funcs  # lazily, see executable._verify_shape_funcs
        out = []
        for s in exe.shape_funcs:
            sf = shape_funcs.lookup(s["name"])
            # data-independent and upper-bound functions only read .shape/.ndim: they get the
            # Tensors as they are; data-dependent ones read values from numpy views
            wants_arrays = sf.mode == "data_dependent" and not sf.tensor_inputs
            fast = None
            if not wants_arrays:   # specialised to its attrs, or simply bound to them
                fast = _prepared(sf.fn, s["attrs"]) or functools.partial(_call_with, sf.fn, s["attrs"])
            out.append((sf.fn, s["attrs"], wants_arrays, fast, sf.mode != "data_dependent"))
        return out

    def _translate_function(self, fn):
        arena_views = _arena_views(fn)
        code = [self._translate(ins, pc in arena_views) for pc, ins in enumerate(fn.instructions)]
        return code if self._profile is not None else self._fuse_allocations(code)

    def _fuse_allocations(self, code):
        """Peephole: an allocation of a storage immediately viewed whole by the next instruction
        (offset 0, same shape) runs as one handler that does both and skips the next pc. The
        second instruction stays in place (a jump to it still runs it alone), and both
        registers are written in the original order."""
        cls = type(self)
        out = list(code)
        for pc in range(len(code) - 1):
            (h1, a1), (h2, a2) = code[pc], code[pc + 1]
            f1, f2 = getattr(h1, "__func__", None), getattr(h2, "__func__", None)
            if f1 is cls._op_AllocStorage and f2 is cls._op_AllocTensor:
                size, _, _, sdst, _ = a1
                storage, offset, meta, nbytes, dst, arena = a2
                if storage == sdst and offset == 0 and not arena and nbytes <= size:
                    out[pc] = self._op_AllocStorageTensor, (a1, meta, dst)
            elif f1 is cls._op_AllocStorageReg and f2 is cls._op_AllocTensorReg:
                shape, _, _, sdst, element_size, _ = a1
                storage, offset, shape2, _, _, element_size2, _ = a2
                if storage == sdst and offset == 0 and shape2 == shape and shape != sdst \
                        and element_size == element_size2:
                    out[pc] = self._op_AllocStorageTensorReg, (a1, a2)
        return out

    def _translate(self, ins, views_arena=False):
        """(handler, operands) of one instruction, with per-site preparation done now.
        `views_arena`: an AllocTensor on a storage that several tensors view."""
        name = OPCODES[ins.op].name
        handler, args = getattr(self, "_op_" + name), ins.args
        if name in ("AllocStorage", "AllocStorageReg"):
            try:
                check_storage_request(args[0] if name == "AllocStorage" else 0, args[1])
            except VMError as e:
                handler, args = self._op_Fatal, (str(e),)  # raises when (if ever) it runs
            else:
                if name == "AllocStorage":
                    args = args + (class_for(args[0], args[1]),)  # its size class, once
                else:
                    args = args + (itemsize(args[2]), {})  # element size; size -> size class
        elif name == "AllocTensor":
            storage, offset, shape, dtype, dst = args
            meta = (dtype, tuple(shape))
            args = (storage, offset, meta, math.prod(shape) * itemsize(dtype), dst, views_arena)
        elif name == "AllocTensorReg":
            storage, offset, shape, dtype, dst = args
            # element size, and the last (dtype, shape) made here: an unchanged shape reuses
            # the same meta object, so the kernel call sites that get the tensor see it unchanged
            args = (storage, offset, shape, dtype, dst, itemsize(dtype), [(dtype, None)])
        elif name == "ReshapeTensor":
            args = args + ([None],)     # the last (dtype, shape) object made here
        elif name == "CallShapeFunc":
            fn, attrs, wants_arrays, fast, shapes_only = self.shape_funcs[args[0]]
            if fast is not None:
                # attrs were checked once (the function's check_attrs hook): a call runs only
                # the shape computation on the input Tensors
                # (last ShapeTensor made per output: an unchanged shape reuses it; they are
                # immutable, so sharing one across invocations is safe)
                args = (fast, args[1], args[2], args[0], [None] * len(args[2]))
                handler = self._op_CallShapeFunc_prepared
                if shapes_only:
                    handler, args = self._op_CallShapeFunc_memo, args + ([None],)
            else:
                args = (fn, attrs, wants_arrays, args[1], args[2], args[0])
        elif name == "CallLoop":
            k, inputs, outputs = args
            kernel = self.kernels[k]
            calls = _loop_calls(kernel, self.kernels)
            budget = Tensor.from_array(np.zeros((), np.int64))
            counters = Tensor.from_array(np.zeros(2, np.int64))
            return self._op_CallLoop, (kernel.call_site(), inputs, outputs, kernel, calls, budget, counters)
        elif name == "CallKernel":
            k, inputs, outputs = args
            kernel = self.kernels[k]
            args = (kernel.call_site(), inputs + outputs, kernel)
            if self._profile is not None:
                return self._op_CallKernel_profiled, args  # times itself
        if self._profile is not None:
            handler = self._timed(name, handler)
        return handler, args

    # ------------------------------------------------------------ public API

    def invoke(self, name: str, *args):
        """Run function `name` on numpy arrays / tuples / ADTs / closures and return its result.

        Arguments are checked against the declared parameter types before anything runs.
        Returned arrays belong to the caller: no later invocation writes into them.
        """
        plan = self._plans.get(name)
        if plan is None:
            raise VMError(f"no function named {name!r}; functions: {', '.join(self._index)}")
        index, nparams, specs, nregs, code, metas = plan
        if len(args) == nparams:
            regs = [None] * nregs
            i = 0
            for a in args:      # _fast_tensor, inlined: the common argument costs no calls
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
                return _export(self._run_frame(Frame(index, code, regs, None)))
        fn = self.exe.functions[index]
        if len(args) != len(fn.params):
            raise InvokeArgumentError(
                f"{name} takes {len(fn.params)} arguments ({', '.join(fn.params)}), got {len(args)}")
        values = []
        for a, spec, t, p in zip(args, self._param_specs[index], fn.param_types, fn.params):
            v = _fast_tensor(a, spec) if spec is not None and type(a) is np.ndarray else None
            values.append(v if v is not None else self._import_arg(a, t, f"{name}: parameter {p!r}"))
        return _export(self._run(index, values))

    def memory_stats(self) -> dict:
        """Storage allocator counters since the VM was made or `reset_memory_stats` last ran:
        allocations (new blocks from numpy/the OS), bytes_allocated (their size), pool_hits
        (requests served by a recycled block), peak_bytes_live and bytes_live (bytes in blocks
        handed out and not yet returned: blocks held by live results count), bytes_free (bytes
        waiting in the pool)."""
        return self._pool.stats()

    def reset_memory_stats(self) -> None:
        """Zero the allocation counters; the peak restarts from the bytes live now."""
        self._pool.reset_stats()

    def release_memory(self) -> None:
        """Return the pool's free blocks to the OS (blocks still in use are unaffected)."""
        self._pool.release()

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
        # an iterator (not a range) so that CallLoop can take its iterations from the same count
        steps = self._steps = iter(range(self.max_steps)) if self.max_steps is not None else _FOREVER
        try:
            for _ in steps:
                handler, operands = code[pc]
                pc = handler(regs, operands, pc)
                if pc < 0:  # _SWITCH: a call or a return changed the top frame
                    if not self._stack:
                        return self._result
                    frame = self._stack[-1]
                    code, regs, pc = frame.code, frame.regs, frame.pc
        except DynVMError as e:
            self._locate(e, pc)
            raise
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
        self._stack.append(self._new_frame(func_index, args, ret_dst))
        return _SWITCH

    # ------------------------------------------------------------ handlers, in table order

    def _op_Move(self, regs, a, pc):
        regs[a[0]] = regs[a[1]]
        return pc + 1

    def _op_Ret(self, regs, a, pc):
        value = regs[a[0]]
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
            raise VMError(f"InvokeClosure: r{closure} holds {_kind(c)}, not a closure")
        callee = self.exe.functions[c.func_index]
        values = list(c.captured) + [regs[r] for r in args]
        if len(values) != len(callee.params):
            raise VMError(f"closure of {callee.name!r} takes {len(callee.params) - len(c.captured)}"
                          f" arguments, got {len(args)}")
        return self._call(c.func_index, values, dst, pc)

    def _op_CallKernel(self, regs, a, pc):
        site, argregs, kernel = a
        items, layouts = site.items, site.layouts
        k = 0
        for r in argregs:
            t = regs[r]
            try:
                if t.meta is not layouts[k]:
                    _describe_arg(site, kernel, k, t)
            except AttributeError:
                raise VMError(f"CallKernel {kernel.name}: r{r} holds {_kind(t)}, expected a tensor") from None
            items[k].data = t.address
            k += 1
        rc = site.fn(site.tensors, site.nargs)
        if rc:
            raise kernel.native_error(rc, [regs[r].shape for r in argregs])
        return pc + 1

    def _op_CallShapeFunc(self, regs, a, pc):
        """Run a shape function and store one 1-D int64 shape tensor per output."""
        fn, attrs, wants_arrays, inputs, outputs, index = a
        args = [regs[r] for r in inputs]
        for t in args:
            if not isinstance(t, Tensor):
                for t, r in zip(args, inputs):
                    _tensor(t, r)  # raises for the first non-tensor
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
        """CallShapeFunc of a function specialized to its attrs at load (see `_prepared`)."""
        fast, inputs, outputs, index, last = a
        args = [regs[r] for r in inputs]
        for t in args:
            if not isinstance(t, Tensor):
                for t, r in zip(args, inputs):
                    _tensor(t, r)  # raises for the first non-tensor
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
        inputs, outputs, last, seen = a[1], a[2], a[4], a[5]
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
        pc = self._op_CallShapeFunc_prepared(regs, a[:5], pc)
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
        """AllocStorage + AllocTensor viewing it whole from offset 0 (fused at translation,
        which checked that the view fits)."""
        (size, alignment, dtype, sdst, size_class), meta, dst = a
        s = regs[sdst] = self._pool.lease(size_class, size, alignment, dtype)
        regs[dst] = Tensor(s.address, meta, s._buf, s._start)
        return pc + 2

    def _op_AllocStorageTensorReg(self, regs, a, pc):
        """AllocStorageReg + AllocTensorReg of the same shape register at offset 0 (fused at
        translation): the tensor is exactly the block, so it needs no bounds check."""
        sa, ta = a
        value = regs[sa[0]]
        if type(value) is not ShapeTensor:  # a general shape tensor: the two handlers
            return self._op_AllocTensorReg(regs, ta, self._op_AllocStorageReg(regs, sa, pc))
        _, alignment, dtype, sdst, element_size, classes = sa
        dims = value.dims
        size = math.prod(dims) * element_size
        cls = classes.get(size)
        if cls is None:
            if len(classes) > 64:
                classes.clear()
            cls = classes[size] = class_for(size, alignment)
        s = regs[sdst] = self._pool.lease(cls, size, alignment, dtype)
        last = ta[6]
        meta = last[0]
        if meta[1] != dims:
            meta = last[0] = (ta[3], dims)
        regs[ta[4]] = Tensor(s.address, meta, s._buf, s._start)
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
            raise VMError(f"GetTag: r{obj} holds {_kind(value)}, not an ADT value")
        return pc + 1

    def _op_If(self, regs, a, pc):
        test, target, then_off, else_off = a
        return pc + (then_off if int(regs[test]) == int(regs[target]) else else_off)

    def _op_Goto(self, regs, a, pc):
        return pc + a[0]

    def _op_LoadConst(self, regs, a, pc):
        regs[a[1]] = self._constants[a[0]]
        return pc + 1

    def _op_LoadConsti(self, regs, a, pc):
        regs[a[1]] = _int_scalar(a[0])
        return pc + 1

    def _op_ShapeOf(self, regs, a, pc):
        regs[a[1]] = ShapeTensor.make(_tensor(regs[a[0]], a[0]).meta[1])
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
        regs[a[0]] = None
        return pc + 1

    def _op_Fatal(self, regs, a, pc):
        raise VMError(a[0])

    def _op_CallLoop(self, regs, a, pc):
        """A whole loop in one native call (kernels/loop.py). Each iteration counts as one step
        toward max_steps: the kernel gets the steps left as its budget."""
        site, inputs, outputs, kernel, calls, budget, counters = a
        limited = self.max_steps is not None
        budget.base[()] = _steps_left(self._steps) if limited else -1
        counters.base[:] = (0, -1)      # what an argument the kernel rejects leaves there
        values = [regs[r] for r in inputs] + [budget] + [regs[r] for r in outputs] + [counters]
        items, layouts = site.items, site.layouts
        for k, t in enumerate(values):
            if not isinstance(t, Tensor):
                raise VMError(f"CallLoop {kernel.name}: argument {k} is {_kind(t)}, expected a tensor")
            if t.meta is not layouts[k]:
                _describe_arg(site, kernel, k, t)
            items[k].data = t.address
        start = time.perf_counter()
        rc = site.fn(site.tensors, site.nargs)
        seconds = time.perf_counter() - start
        iterations, failed = (int(v) for v in counters.base)
        if limited and iterations:
            next(itertools.islice(self._steps, iterations - 1, None), None)
        if rc:
            raise self._loop_error(kernel, calls, rc, iterations, failed, [t.shape for t in values])
        if self._profile is not None:
            self._profile.record_loop(kernel.name, start, seconds, iterations)
        return pc + 1

    def _loop_error(self, kernel, calls, rc, iterations, failed, shapes):
        from dynvm.kernels.abi import ERR_STEPS   # lazily: a program without kernels never loads cffi
        if (rc & 0xFF) == ERR_STEPS:
            return VMStepLimitError(f"step limit of {self.max_steps} instructions exceeded in native "
                                    f"loop {kernel.name} after {iterations} iterations (infinite loop?)")
        if 0 <= failed < len(calls):
            inner = calls[failed].native_error(rc, [])
            inner.args = (f"native loop {kernel.name}, iteration {iterations}: {inner.args[0]}",)
            return inner
        return kernel.native_error(rc, shapes)

    # ------------------------------------------------------------ long handlers

    def _timed(self, name, handler):
        """A profiling wrapper: counts the opcode and adds the handler's time."""
        counts, seconds, clock = self._profile.opcodes, self._profile.opcode_seconds, time.perf_counter

        def timed(regs, a, pc):
            t0 = clock()
            try:
                return handler(regs, a, pc)
            finally:
                seconds[name] += clock() - t0
                counts[name] += 1
        return timed

    def _op_CallKernel_profiled(self, regs, a, pc):
        """_op_CallKernel timing itself: handler time and the native call's own time (the
        profiler's bookkeeping after the call is not counted as VM time)."""
        clock = time.perf_counter
        start = clock()
        site, argregs, kernel = a
        items, layouts = site.items, site.layouts
        for k, r in enumerate(argregs):
            t = regs[r]
            if not isinstance(t, Tensor):
                raise VMError(f"CallKernel {kernel.name}: r{r} holds {_kind(t)}, expected a tensor")
            if t.meta is not layouts[k]:
                _describe_arg(site, kernel, k, t)
            items[k].data = t.address
        t0 = clock()
        rc = site.fn(site.tensors, site.nargs)
        t1 = clock()
        if rc:
            raise kernel.native_error(rc, [regs[r].shape for r in argregs])
        profile = self._profile
        profile.opcode_seconds["CallKernel"] += clock() - start
        profile.opcodes["CallKernel"] += 1
        profile.record_kernel(kernel.name, kernel.last_variant, t0, t1 - t0)
        return pc + 1

    # ------------------------------------------------------------ arguments

    def _import_arg(self, value, desc, where):
        """Check one argument against its type descriptor and convert it to a run-time value."""
        kind = desc["kind"]
        if kind == "tensor":
            return _import_tensor(value, desc, where)
        if kind == "tuple":
            fields = desc["fields"]
            if not isinstance(value, tuple) or len(value) != len(fields):
                raise InvokeArgumentError(f"{where}: expected a tuple of {len(fields)} values, got {_kind(value)}")
            return tuple(self._import_arg(v, d, f"{where}[{i}]") for i, (v, d) in enumerate(zip(value, fields)))
        if kind == "adt":
            return self._import_adt(value, desc["name"], where)
        if kind == "any":
            return rebuild(value, _import_leaf)
        if not isinstance(value, Closure) or not 0 <= value.func_index < len(self.exe.functions):
            raise InvokeArgumentError(f"{where}: expected a vm.Closure from this executable, got {_kind(value)}")
        return value

    def _import_adt(self, value, adt_name, where):
        """An ADT argument, checked all the way down (iteratively: long lists are fine): every
        node's constructor exists with its tag and arity, and a field declared as an ADT or a
        tensor holds one of that type (fields typed by a type parameter are not checked).
        Without this, a match could read a node of another type as the constructor with the
        same tag."""
        if not isinstance(value, ADT):
            raise InvokeArgumentError(f"{where}: expected a vm.ADT of type {adt_name}, got {_kind(value)}")
        ctors = self._ctors
        ctor = ctors.get(value.constructor)
        if ctor is None or ctor["adt"] != adt_name:
            raise InvokeArgumentError(
                f"{where}: expected a {adt_name} value, got constructor {value.constructor!r} tag {value.tag}")

        def checked(node, fields):
            c = ctors.get(node.constructor)
            if c is None or c["tag"] != node.tag or c["arity"] not in (None, len(fields)):
                raise InvokeArgumentError(f"{where}: constructor {node.constructor!r} tag {node.tag} with "
                                          f"{len(fields)} fields is not a constructor of this program")
            for i, (field, desc) in enumerate(zip(fields, c.get("fields", ()))):
                if not _fits(field, desc, ctors):
                    raise InvokeArgumentError(f"{where}: field {i} of a {node.constructor} must be "
                                              f"{_describe(desc)}, got {_kind(field)}")
            return ADT(node.constructor, node.tag, fields)
        return rebuild(value, _import_leaf, make_adt=checked)


# ---------------------------------------------------------------- value helpers

def _describe_arg(site, kernel, k, t):
    """Slow path of a kernel call: argument k's (dtype, shape) object is new at this call site.
    Check dtype and rank against the kernel's signature and write its extents."""
    if t.meta == site.layouts[k]:
        site.layouts[k] = t.meta  # equal dtype and shape: the descriptor is already right
        return
    dtype, shape = t.meta
    n_in = len(kernel.inputs)
    what = f"input {k}" if k < n_in else f"output {k - n_in}"
    if dtype != site.dtypes[k]:
        raise KernelError(f"kernel {kernel.name}: {what} has dtype {dtype}, expected {site.dtypes[k]}")
    if len(shape) != site.ranks[k]:
        raise KernelError(f"kernel {kernel.name}: {what} has rank {len(shape)}, expected {site.ranks[k]}")
    site.set_shape(k, shape)
    site.layouts[k] = t.meta


def _arena_views(fn) -> frozenset:
    """pcs of the AllocTensor instructions that view a storage which two or more AllocTensors
    view (a planned arena). Followed per definition of the storage register, since register
    allocation reuses registers."""
    views: dict[int, list] = {}     # storage register -> AllocTensor pcs since its definition
    groups = []
    for pc, ins in enumerate(fn.instructions):
        spec = OPCODES[ins.op]
        if spec.name == "AllocTensor":
            views.setdefault(ins.args[0], []).append(pc)
        if spec.fields and spec.fields[-1][0] == "dst" and ins.args[-1] in views:
            groups.append(views.pop(ins.args[-1]))
    groups.extend(views.values())
    return frozenset(pc for group in groups if len(group) > 1 for pc in group)


def _kind(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {value.shape}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _tensor(value, reg) -> Tensor:
    if not isinstance(value, Tensor):
        raise VMError(f"r{reg} holds {_kind(value)}, expected a tensor")
    return value


def _storage(value):
    if not isinstance(value, Storage):
        raise VMError(f"expected a Storage, got {_kind(value)}")
    return value


def _fields(value, reg):
    if isinstance(value, tuple):
        return value
    if isinstance(value, ADT):
        return value.fields
    raise VMError(f"GetField: r{reg} holds {_kind(value)}, not a tuple or ADT value")


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
        raise ShapeError(f"a shape must be a 1-D integer tensor, got {_kind(arr)}")
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


def _steps_left(steps) -> int:
    """What remains of the step counter (a range iterator), capped to int64."""
    try:
        return min(operator.length_hint(steps), _I64_MAX)
    except OverflowError:        # more than sys.maxsize steps left
        return _I64_MAX


def _loop_calls(kernel, kernels) -> list:
    """The inner kernels a loop kernel calls, in call order (named in its error reports)."""
    inner = {k.symbol: k for k in kernels if k.kind == "compiled"}
    try:
        return [inner[symbol] for symbol, _ in kernel.attrs["header"] + kernel.attrs["body"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ExecutableFormatError(f"loop kernel {kernel.name}: bad call list ({type(e).__name__}: "
                                    f"{e})") from None


def _call_with(fn, attrs, inputs):
    return fn(inputs, attrs)


def _prepared(fn, attrs):
    """`fn` specialized to `attrs` through its optional `check_attrs(attrs)` hook, which
    validates the attrs once and returns `fast(inputs) -> shapes`; None (the general path,
    which reports bad attrs as typed errors when it runs) without a hook or when the attrs
    fail the check."""
    hook = getattr(fn, "check_attrs", None)
    if hook is None:
        return None
    try:
        return hook(attrs)
    except Exception:  # noqa: BLE001 - bad attrs: the general path raises when (if ever) it runs
        return None


def _tensor_spec(desc):
    """What `_fast_tensor` checks for a tensor parameter (None for other kinds)."""
    if desc.get("kind") != "tensor":
        return None
    shape = desc["shape"]
    static = tuple(shape) if None not in shape else None
    fixed = [(i, d) for i, d in enumerate(shape) if d is not None]
    return np_dtype(desc["dtype"]), desc["dtype"], len(shape), static, fixed


def _fast_tensor(a, spec):
    """The common case of an argument: a compact aligned array of the declared dtype and shape
    becomes a Tensor with no copy; None means "take the general path" (which also reports)."""
    dt, name, rank, static, fixed = spec
    if a.dtype is not dt and a.dtype != dt:
        return None
    shape = a.shape
    if static is not None:
        if shape != static:
            return None
    else:
        if len(shape) != rank:
            return None
        for i, d in fixed:
            if shape[i] != d:
                return None
    flags = a.flags
    if not (flags.c_contiguous and flags.aligned):
        return None
    return Tensor.of(a, name)


def _import_tensor(value, desc, where):
    want_dtype, want_shape = desc["dtype"], desc["shape"]
    if type(value) is np.ndarray and _DTYPE_NAMES.get(value.dtype) == want_dtype \
            and value.flags.c_contiguous and value.flags.aligned and value.ndim == len(want_shape) \
            and all(w is None or w == h for w, h in zip(want_shape, value.shape)):
        return Tensor.from_array(value)  # the common case, checked in one go
    if not isinstance(value, np.ndarray):
        try:
            value = np.from_dlpack(value) if hasattr(value, "__dlpack__") else np.asarray(value)
        except Exception as e:  # noqa: BLE001 - anything numpy cannot convert
            raise InvokeArgumentError(f"{where}: cannot convert {_kind(value)} to a tensor ({e})") from None
    expected = f"{want_dtype}[{', '.join('?' if d is None else str(d) for d in want_shape)}]"
    got = f"{value.dtype}{list(value.shape)}"
    if value.dtype != np_dtype(want_dtype):
        raise InvokeArgumentError(f"{where}: expected dtype {want_dtype} ({expected}), got {got}")
    if value.ndim != len(want_shape):
        raise InvokeArgumentError(f"{where}: expected rank {len(want_shape)} ({expected}), got {got}")
    for axis, (want, have) in enumerate(zip(want_shape, value.shape)):
        if want is not None and want != have:
            raise InvokeArgumentError(f"{where}: expected dim {axis} = {want} ({expected}), got {got}")
    return _as_tensor(value)


_DTYPE_NAMES = {np_dtype(name): name for name in ("float32", "float64", "int32", "int64", "bool")}


def _as_tensor(a: np.ndarray) -> Tensor:
    """The VM's Tensor for an array: kernels need compact, aligned, native-order memory."""
    if not (a.flags.c_contiguous and a.flags.aligned) or not a.dtype.isnative:
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
    return Tensor.from_array(a)


def _fits(value, desc, ctors) -> bool:
    """Whether an imported ADT field fits its declared type (its own fields were checked when
    it was built; type parameters and function types are not checked)."""
    kind = desc["kind"]
    if kind == "adt":
        c = ctors.get(value.constructor) if isinstance(value, ADT) else None
        return c is not None and c["adt"] == desc["name"]
    if kind == "tensor":
        return isinstance(value, Tensor) and value.dtype == desc["dtype"] and \
            len(value.shape) == len(desc["shape"]) and \
            all(d is None or d == n for d, n in zip(desc["shape"], value.shape))
    if kind == "tuple":
        return isinstance(value, tuple) and len(value) == len(desc["fields"]) and \
            all(_fits(v, d, ctors) for v, d in zip(value, desc["fields"]))
    return True


def _describe(desc) -> str:
    if desc["kind"] == "adt":
        return f"a {desc['name']}"
    if desc["kind"] == "tensor":
        dims = ", ".join("?" if d is None else str(d) for d in desc["shape"])
        return f"a {desc['dtype']} tensor of shape ({dims})"
    return f"a {desc['kind']}"


def _import_leaf(value):
    """ADT fields carry no declared types: any array-like becomes a contiguous supported array."""
    if isinstance(value, (Closure, Storage, Tensor)):
        return value
    arr = np.asarray(value)
    try:
        dtype_name(arr.dtype)
    except DynVMError as e:
        raise InvokeArgumentError(f"ADT field: {e}") from None
    return _as_tensor(arr)


def _export(value):
    """Turn a run-time value into what `invoke` returns. Read-only arrays (constants) are copied
    so that the caller owns, and may write, every array it gets."""
    if type(value) is Tensor:       # the common result: a plain tensor
        a = value._array
        if a is None:
            a = value.array
        return a if a.flags.writeable else a.copy()
    if isinstance(value, Tensor):
        value = value.array
        return value if value.flags.writeable else value.copy()
    if isinstance(value, (tuple, ADT)):
        return rebuild(value, _export)
    return value
