"""The static runtime: a graph executor for functions whose shapes are all known when built.

`StaticRuntime(exe, "main")` runs the function's straight-line bytecode once, symbolically,
when it is built: every AllocStorage becomes one block allocated now (the memory planner's arena
and the blocks of escaping tensors), every AllocTensor a fixed view, LoadConst / ShapeOf /
ReshapeTensor / AllocADT / GetField / Move are resolved to the values they would produce, and
every CallKernel becomes a prepared call: the kernel's function pointer and a DLTensor array
whose data addresses and extents never change again. What is left to do per run is

    copy the arguments into the input buffers
    for fn, args, nargs, _ in calls: rc = fn(args, nargs)   (a typed error if rc != 0)
    copy the results out

It is the baseline the VM is measured against (docs/design.md, "Static runtime"): same executable,
same kernels, same memory plan, no interpreter. Anything a fixed kernel list over fixed memory
cannot express is rejected when the runtime is built, with a `StaticRuntimeError` naming the
parameter dimension or the instruction: Any dims, control flow, calls, run-time shapes.
"""
import numpy as np

from dynvm.vm.boundary import bind, import_tensor
from dynvm.vm.bytecode import OPCODES
from dynvm.vm.dtypes import np_dtype
from dynvm.vm.errors import InvokeArgumentError, KernelError, StaticRuntimeError, VMError
from dynvm.vm.machine import check_threads, kernel_threads
from dynvm.vm.profiler import Profile
from dynvm.vm.values import ADT, Storage, Tensor, cache_aligned, rebuild

_HINT = "StaticRuntime runs straight-line code over static shapes only; use VirtualMachine"


class StaticRuntime:
    """Runs one static function of an Executable as a flat list of prepared kernel calls.

    `run(*args)` takes what `VirtualMachine.invoke` takes for that function (numpy arrays or
    array-likes of the declared dtypes and shapes) and returns the same values; returned arrays
    are copies that no later run touches. profile=True records every kernel call like the VM's
    profiler (`profile()`).

    `threads`: how many threads each kernel may run on, as in `VirtualMachine` (default: the
    cores this process may use; 1: every kernel on the calling thread alone). Results do not
    depend on it. The count belongs to the calling OS thread: `run` sets it there.
    """

    def __init__(self, exe, name: str = "main", profile: bool = False, threads=None):
        check_threads(threads)
        if not exe._verified:
            exe.verify()
        names = [f.name for f in exe.functions]
        if name not in names:
            raise StaticRuntimeError(f"no function named {name!r}; functions: {', '.join(names)}")
        self.exe, self.name = exe, name
        self.function = fn = exe.functions[names.index(name)]
        _check_params(fn)
        _check_code(fn)
        self._profile = Profile() if profile else None
        self._threads = kernel_threads(threads)
        self._plan(exe, fn)

    # ------------------------------------------------------------ public API

    def run(self, *args):
        """Copy `args` into the input buffers, run every kernel, return copies of the results."""
        if len(args) != len(self._inputs):
            fn = self.function
            raise InvokeArgumentError(f"{self.name} takes {len(fn.params)} arguments "
                                      f"({', '.join(fn.params)}), got {len(args)}")
        for a, (buf, dt, shape, desc, where) in zip(args, self._inputs):
            if type(a) is not np.ndarray or a.shape != shape or a.dtype != dt:
                a = import_tensor(a, desc, where).array  # converts, or raises the VM's error
            buf[...] = a
        self._threads[0](self._threads[1])
        for fn, tensors, nargs, i in self._calls:
            rc = fn(tensors, nargs)
            if rc:
                raise self._native_error(i, rc)
        return self._export()

    __call__ = run

    def profile(self) -> Profile:
        """Kernel calls and times of every run so far (profile=True only)."""
        if self._profile is None:
            raise VMError("profiling is off; create the StaticRuntime with profile=True")
        return self._profile

    @property
    def threads(self) -> int:
        """The threads each kernel of a run may run on."""
        return self._threads[1]

    @property
    def kernel_calls(self) -> int:
        """How many kernel calls one run makes."""
        return len(self._calls)

    def __repr__(self):
        return (f"<StaticRuntime {self.name}: {len(self._calls)} kernel calls, "
                f"{self.storage_bytes} bytes of storage>")

    # ------------------------------------------------------------ planning

    def _plan(self, exe, fn):
        """Execute the code symbolically: allocate, resolve values, prepare the kernel calls."""
        kernels = exe.loaded_kernels()
        constants = [Tensor.from_array(cache_aligned(c)) for c in exe.constants]
        regs = [None] * fn.register_count
        known = {}  # id -> tensor whose contents are known now (constants, shapes); the
                    # references keep the ids from being reused by later tensors
        self._inputs, self._calls, self._sites, self._storages = [], [], [], []
        for r, (p, desc) in enumerate(zip(fn.params, fn.param_types)):
            shape, dtype = tuple(desc["shape"]), desc["dtype"]
            buf = self._storage(shape, dtype).view(0, shape, dtype)
            regs[r] = Tensor.from_array(buf)
            self._inputs.append((buf, np_dtype(dtype), shape, desc, f"{self.name}: parameter {p!r}"))
        result = None
        for pc, ins in enumerate(fn.instructions):
            op, a = OPCODES[ins.op].name, ins.args
            where = f"{self.name}: instruction {pc} ({op})"
            if op == "Ret":
                result = regs[a[0]]
                break
            if op == "Move":
                regs[a[0]] = regs[a[1]]
            elif op == "CallKernel":
                self._prepare_call(kernels[a[0]], regs, a[1], a[2], pc)
            elif op == "AllocStorage":
                size, alignment, dtype, dst = a
                regs[dst] = self._storage_block(size, alignment, dtype)
            elif op == "AllocTensor":
                storage, offset, shape, dtype, dst = a
                block = regs[storage]
                if not isinstance(block, Storage):
                    raise VMError(f"{where}: r{storage} holds {_kind(block)}, not a Storage")
                regs[dst] = Tensor.from_array(block.view(offset, tuple(shape), dtype))
            elif op == "AllocADT":
                ctor, fields, dst = a
                values = tuple(regs[r] for r in fields)
                c = exe.constructors[ctor]
                regs[dst] = values if ctor == 0 else ADT(c["name"], c["tag"], values)
            elif op == "GetField":
                obj = regs[a[0]]
                if not isinstance(obj, (tuple, ADT)):
                    raise VMError(f"{where}: r{a[0]} holds {_kind(obj)}, not a tuple or ADT value")
                regs[a[2]] = (obj if isinstance(obj, tuple) else obj.fields)[a[1]]
            elif op == "GetTag":
                obj = regs[a[0]]
                if not isinstance(obj, (tuple, ADT)):
                    raise VMError(f"{where}: r{a[0]} holds {_kind(obj)}, not an ADT value")
                regs[a[1]] = _known(np.array(obj.tag if isinstance(obj, ADT) else 0, np.int64), known)
            elif op == "LoadConst":
                regs[a[1]] = constants[a[0]]
                known[id(constants[a[0]])] = constants[a[0]]
            elif op == "LoadConsti":
                regs[a[1]] = _known(np.array(a[0], np.int64), known)
            elif op == "ShapeOf":
                shape = _tensor(regs[a[0]], a[0], where).shape
                regs[a[1]] = _known(np.array(shape, np.int64), known)
            elif op == "ReshapeTensor":
                regs[a[2]] = _reshape(_tensor(regs[a[0]], a[0], where), regs[a[1]], a[1], known, where)
            elif op == "KillRegister":
                regs[a[0]] = None
            else:  # _check_code rejected everything else
                raise AssertionError(op)
        if result is None:
            raise StaticRuntimeError(f"{self.name}: the code never returns")
        self._export = _exporter(result, f"{self.name}: the result")
        self._constants = constants  # keep every address the calls hold alive
        self.storage_bytes = sum(s.size for s in self._storages)

    def _storage_block(self, size, alignment, dtype):
        block = Storage(size, alignment, dtype)
        self._storages.append(block)
        return block

    def _storage(self, shape, dtype):
        return self._storage_block(int(np.prod(shape, dtype=np.int64)) * np_dtype(dtype).itemsize,
                                   64, dtype)

    def _prepare_call(self, kernel, regs, inputs, outputs, pc):
        """One entry of the call list: fn(args, nargs) with every descriptor filled now."""
        what = f"{self.name}: instruction {pc} (CallKernel {kernel.name})"
        n_in = len(inputs)
        if n_in != len(kernel.inputs) or len(outputs) != len(kernel.outputs):
            raise KernelError(f"{what}: kernel takes {len(kernel.inputs)} inputs and "
                              f"{len(kernel.outputs)} outputs, got {n_in} and {len(outputs)}")
        site = kernel.call_site()       # it owns the descriptor memory: kept in _sites
        bind(site, kernel, regs, inputs + outputs, what)
        fn = site.fn
        if self._profile is not None:
            fn = self._profile.timed("CallKernel", self._profile.kernel_timer(kernel, fn))
        self._calls.append((fn, site.tensors, site.nargs, len(self._calls)))
        self._sites.append((kernel, [regs[r].shape for r in inputs + outputs], pc, site))

    # ------------------------------------------------------------ running

    def _native_error(self, i, rc):
        kernel, shapes, pc, _ = self._sites[i]
        error = kernel.native_error(rc, shapes)
        error.args = (f"{error.args[0]} [in {self.name} at pc {pc} (CallKernel)]",) + error.args[1:]
        return error


# ---------------------------------------------------------------- checks made before planning

def _check_params(fn):
    for p, desc in zip(fn.params, fn.param_types):
        kind = desc.get("kind")
        if kind != "tensor":
            raise StaticRuntimeError(f"{fn.name}: parameter {p} is a {kind} value, not a tensor; "
                                     f"{_HINT}")
        for axis, d in enumerate(desc["shape"]):
            if d is None:
                raise StaticRuntimeError(f"{fn.name}: parameter {p} dim {axis} is Any; {_HINT}")


def _check_code(fn):
    """Reject the first opcode the table says the static runtime cannot run (its `not_static`
    reason), up to the first terminator (code after it is never reached)."""
    for pc, ins in enumerate(fn.instructions):
        spec = ins.spec
        if spec.not_static:
            raise StaticRuntimeError(f"{fn.name}: instruction {pc} ({spec.name}) {spec.not_static}; {_HINT}")
        if spec.has("terminator"):
            return


# ---------------------------------------------------------------- value helpers

def _kind(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {value.shape}"
    return "nothing" if value is None else f"a {type(value).__name__}"


def _tensor(value, reg, where) -> Tensor:
    if not isinstance(value, Tensor):
        raise VMError(f"{where}: r{reg} holds {_kind(value)}, expected a tensor")
    return value


def _known(array, known) -> Tensor:
    """A tensor whose contents are fixed now (a shape, a tag, an immediate)."""
    array.setflags(write=False)
    t = Tensor.from_array(array)
    known[id(t)] = t
    return t


def _reshape(tensor, shape_value, reg, known, where) -> Tensor:
    """ReshapeTensor resolved now: its shape must be a value known at build time."""
    if not isinstance(shape_value, Tensor) or id(shape_value) not in known:
        raise StaticRuntimeError(f"{where} takes its shape from r{reg}, which is computed at run "
                                 f"time (a data-dependent shape); {_HINT}")
    shape = shape_value.array
    if shape.ndim != 1 or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise StaticRuntimeError(f"{where}: r{reg} is not a shape: {shape!r}")
    shape = tuple(shape.tolist())
    if int(np.prod(shape, dtype=np.int64)) != tensor.size:
        raise StaticRuntimeError(f"{where}: cannot reshape a tensor of shape {tensor.shape} "
                                 f"({tensor.size} elements) to {list(shape)}")
    view = tensor.reshaped(shape)
    if id(tensor) in known:
        known[id(view)] = view
    return view


def _exporter(value, where):
    """A function returning a fresh copy of the result (its arrays live in reused storage)."""
    if isinstance(value, Tensor):
        return value.array.copy
    if isinstance(value, tuple) and all(isinstance(v, Tensor) for v in value):
        arrays = [v.array for v in value]
        return lambda: tuple([a.copy() for a in arrays])

    def leaf(v):
        if not isinstance(v, Tensor):
            raise StaticRuntimeError(f"{where} holds {_kind(v)}; a static result holds tensors only")
        return v.array.copy()
    rebuild(value, leaf)  # reject unsupported leaves now, not at the first run
    return lambda: rebuild(value, leaf)
