"""The virtual machine: frames, registers and the dispatch loop.

Read `_run` first: it is the whole machine, like Lua's `luaV_execute`. Each function's code is
pre-translated once into a list of `(handler, operands)` pairs; a handler is a short method
`_op_<Name>(regs, operands, pc) -> next pc`. Handlers that switch frames (Invoke, InvokeClosure,
Ret) return `_SWITCH` and the loop reloads the top frame. Calls never recurse in Python: the frame
stack is an explicit list, so deep bytecode recursion is bounded only by `max_depth`.
"""
import itertools
import math
import time
from collections import Counter, defaultdict

import numpy as np

from vm.bytecode import OPCODES
from vm.dtypes import dtype_name, itemsize, np_dtype
from vm.errors import (DynVMError, InvokeArgumentError, ShapeError, VMError, VMRecursionError,
                       VMStepLimitError)
from vm.values import ADT, Closure, Storage, rebuild

_SWITCH = -1  # a handler's "the current frame changed" result


def _make_small_ints():
    """Shared read-only 0-d int64 tensors for the integers GetTag and LoadConsti produce most
    (tags, loop bounds): saves an allocation per instruction. `_export` copies read-only arrays,
    so callers still own what they get."""
    table = {}
    for i in range(-1, 257):
        a = np.array(i, np.int64)
        a.setflags(write=False)
        table[i] = a
    return table


_SMALL_INTS = _make_small_ints()


def _int_scalar(value):
    a = _SMALL_INTS.get(value)
    return a if a is not None else np.array(value, np.int64)


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
        self._profile = {"opcodes": Counter(), "kernels": defaultdict(lambda: {"calls": 0, "seconds": 0.0})} \
            if profile else None
        handlers = [getattr(self, "_op_" + spec.name) for spec in OPCODES]
        if profile:
            handlers = [self._counting(spec.name, h) for spec, h in zip(OPCODES, handlers)]
        self._code = [[(handlers[ins.op], ins.args) for ins in fn.instructions] for fn in exe.functions]
        self._index = {fn.name: i for i, fn in enumerate(exe.functions)}
        self._stack = []
        self._result = None

    @staticmethod
    def _lookup_shape_funcs(exe):
        if not exe.shape_funcs:
            return []
        import shape_funcs  # lazily, see executable._verify_shape_funcs
        return [(shape_funcs.lookup(s["name"]).fn, s["attrs"]) for s in exe.shape_funcs]

    # ------------------------------------------------------------ public API

    def invoke(self, name: str, *args):
        """Run function `name` on numpy arrays / tuples / ADTs / closures and return its result.

        Arguments are checked against the declared parameter types before anything runs.
        Returned arrays belong to the caller: no later invocation writes into them.
        """
        index = self._index.get(name)
        if index is None:
            raise VMError(f"no function named {name!r}; functions: {', '.join(self._index)}")
        fn = self.exe.functions[index]
        if len(args) != len(fn.params):
            raise InvokeArgumentError(
                f"{name} takes {len(fn.params)} arguments ({', '.join(fn.params)}), got {len(args)}")
        values = [self._import_arg(a, t, f"{name}: parameter {p!r}")
                  for a, t, p in zip(args, fn.param_types, fn.params)]
        return _export(self._run(index, values))

    def profile(self) -> dict:
        """Instruction counts per opcode and calls/seconds per kernel (needs profile=True)."""
        if self._profile is None:
            raise VMError("profiling is off; create the VirtualMachine with profile=True")
        return {"opcodes": dict(self._profile["opcodes"]),
                "kernels": {k: dict(v) for k, v in self._profile["kernels"].items()}}

    # ------------------------------------------------------------ the machine

    def _run(self, func_index, args):
        self._stack = [self._new_frame(func_index, args, None)]
        try:
            return self._dispatch()
        finally:
            self._stack, self._result = [], None  # drop registers of finished or abandoned frames

    def _dispatch(self):
        """The machine: fetch (handler, operands) at pc, run it, follow frame switches."""
        frame = self._stack[-1]
        code, regs, pc = frame.code, frame.regs, frame.pc
        steps = range(self.max_steps) if self.max_steps is not None else itertools.repeat(None)
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
        k, inputs, outputs = a
        self.kernels[k]([regs[r] for r in inputs], [regs[r] for r in outputs])
        return pc + 1

    def _op_CallShapeFunc(self, regs, a, pc):
        self._call_shape_func(regs, *a)
        return pc + 1

    def _op_AllocStorage(self, regs, a, pc):
        size, alignment, dtype, dst = a
        regs[dst] = Storage(size, alignment, dtype)
        return pc + 1

    def _op_AllocStorageReg(self, regs, a, pc):
        shape, alignment, dtype, dst = a
        regs[dst] = Storage(math.prod(_shape_tuple(regs[shape])) * itemsize(dtype), alignment, dtype)
        return pc + 1

    def _op_AllocTensor(self, regs, a, pc):
        storage, offset, shape, dtype, dst = a
        regs[dst] = _storage(regs[storage]).view(offset, shape, dtype)
        return pc + 1

    def _op_AllocTensorReg(self, regs, a, pc):
        storage, offset, shape, dtype, dst = a
        regs[dst] = _storage(regs[storage]).view(offset, _shape_tuple(regs[shape]), dtype)
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
        regs[a[1]] = self.exe.constants[a[0]]
        return pc + 1

    def _op_LoadConsti(self, regs, a, pc):
        regs[a[1]] = _int_scalar(a[0])
        return pc + 1

    def _op_ShapeOf(self, regs, a, pc):
        regs[a[1]] = np.array(_tensor(regs[a[0]], a[0]).shape, np.int64)
        return pc + 1

    def _op_ReshapeTensor(self, regs, a, pc):
        tensor, shape, dst = a
        regs[dst] = _reshape(_tensor(regs[tensor], tensor), _shape_tuple(regs[shape]))
        return pc + 1

    def _op_KillRegister(self, regs, a, pc):
        regs[a[0]] = None
        return pc + 1

    def _op_Fatal(self, regs, a, pc):
        raise VMError(a[0])

    # ------------------------------------------------------------ long handlers

    def _call_shape_func(self, regs, index, inputs, outputs):
        """Run shape function `index` and store one 1-D int64 shape tensor per output."""
        fn, attrs = self.shape_funcs[index]
        shapes = fn([regs[r] for r in inputs], attrs)
        if len(shapes) != len(outputs):
            raise VMError(f"shape function {self.exe.shape_funcs[index]['name']!r} returned "
                          f"{len(shapes)} shapes for {len(outputs)} outputs")
        for r, shape in zip(outputs, shapes):
            regs[r] = np.array(shape, np.int64).reshape(-1)

    def _counting(self, name, handler):
        """A profiling wrapper: counts the opcode, and times kernel calls."""
        counts = self._profile["opcodes"]
        if name != "CallKernel":
            def counted(regs, a, pc):
                counts[name] += 1
                return handler(regs, a, pc)
            return counted
        kernel_stats = self._profile["kernels"]

        def timed(regs, a, pc):
            counts[name] += 1
            t0 = time.perf_counter()
            result = handler(regs, a, pc)
            stats = kernel_stats[self.exe.kernels["kernels"][a[0]]["name"]]
            stats["calls"] += 1
            stats["seconds"] += time.perf_counter() - t0
            return result
        return timed

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
        if not isinstance(value, ADT):
            raise InvokeArgumentError(f"{where}: expected a vm.ADT of type {adt_name}, got {_kind(value)}")
        ctor = next((c for c in self.exe.constructors if c["name"] == value.constructor), None)
        if ctor is None or ctor["adt"] != adt_name or ctor["tag"] != value.tag:
            raise InvokeArgumentError(
                f"{where}: expected a {adt_name} value, got constructor {value.constructor!r} tag {value.tag}")
        return ADT(value.constructor, value.tag, rebuild(value.fields, _import_leaf))


# ---------------------------------------------------------------- value helpers

def _kind(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _tensor(value, reg):
    if not isinstance(value, np.ndarray):
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
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ShapeError(f"a shape must be a 1-D integer tensor, got {_kind(arr)}")
    shape = tuple(arr.tolist())
    if any(d < 0 for d in shape):
        raise ShapeError(f"a shape cannot have negative dimensions: {list(shape)}")
    return shape


def _reshape(tensor, shape):
    """A zero-copy view of `tensor` with `shape` (assigning .shape refuses to copy)."""
    if math.prod(shape) != tensor.size:
        raise ShapeError(f"cannot reshape a tensor of shape {tensor.shape} ({tensor.size} elements) "
                         f"to {list(shape)} ({math.prod(shape)} elements)")
    view = tensor.view()
    view.shape = shape
    return view


def _import_tensor(value, desc, where):
    want_dtype, want_shape = desc["dtype"], desc["shape"]
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
    return value if value.flags.c_contiguous else np.asarray(value, order="C")


def _import_leaf(value):
    """ADT fields carry no declared types: any array-like becomes a contiguous supported array."""
    if isinstance(value, (Closure, Storage)):
        return value
    arr = np.asarray(value)
    try:
        dtype_name(arr.dtype)
    except DynVMError as e:
        raise InvokeArgumentError(f"ADT field: {e}") from None
    return np.asarray(arr, order="C")


def _export(value):
    """Turn a run-time value into what `invoke` returns. Read-only arrays (constants) are copied
    so that the caller owns, and may write, every array it gets."""
    if isinstance(value, np.ndarray):
        return value if value.flags.writeable else value.copy()
    if isinstance(value, (tuple, ADT)):
        return rebuild(value, _export)
    return value
