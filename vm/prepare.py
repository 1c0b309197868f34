"""Instruction preparation: each instruction becomes a (handler, operands) pair, once per VM.

`PREPARERS` maps every opcode to its preparer, `preparer(vm, ins, views_arena) -> (handler,
operands)`. Most opcodes need nothing (`_plain`: the handler `vm._op_<Name>` with the
instruction's operands in table order). The others do per-site work once, so the handler does
less per run, and describe the handler's operands as a named record (the namedtuples below;
the handler gets it as an exact tuple and unpacks it in field order):

- AllocStorage(Reg): the size class (or a size -> class memo); a bad request becomes Fatal,
  which raises when (if ever) it runs;
- AllocTensor(Reg): the (dtype, shape) object and byte size, or the last one made;
- CallKernel / CallLoop: the kernel's `abi.CallSite` (descriptors filled once);
- CallShapeFunc: the shape function specialised to its attrs, memoised when it reads only
  shapes.

After preparation, `fuse_allocations` merges an allocation with the view that takes all of it
(one handler for two instructions). A profiling VM skips fusion (every instruction is counted)
and wraps each handler with its profile's timer (see vm/profiler.py).
"""
import functools
import math
from collections import namedtuple

import numpy as np

from dynvm.vm.bytecode import OPCODES, Opcode, registers
from dynvm.vm.dtypes import itemsize
from dynvm.vm.errors import ExecutableFormatError, VMError
from dynvm.vm.memory import class_for
from dynvm.vm.values import Tensor, check_storage_request

# named operand records of the prepared opcodes
StorageOps = namedtuple("StorageOps", "size alignment dtype dst size_class")
StorageRegOps = namedtuple("StorageRegOps", "shape alignment dtype dst element_size classes")
TensorOps = namedtuple("TensorOps", "storage offset meta nbytes dst arena")
TensorRegOps = namedtuple("TensorRegOps", "storage offset shape dtype dst element_size last")
ReshapeOps = namedtuple("ReshapeOps", "tensor shape dst last")
KernelOps = namedtuple("KernelOps", "site args kernel fn")
LoopOps = namedtuple("LoopOps", "site inputs outputs kernel calls budget counters")
ShapeFuncOps = namedtuple("ShapeFuncOps", "fn attrs wants_arrays inputs outputs index")
FastShapeFuncOps = namedtuple("FastShapeFuncOps", "fast inputs outputs index last seen")
StorageTensorOps = namedtuple("StorageTensorOps", "storage meta dst")        # fused pair
StorageTensorRegOps = namedtuple("StorageTensorRegOps", "storage tensor")    # fused pair


def prepare_function(vm, fn, fuse: bool = True) -> list:
    """The prepared code of one function: a list of (handler, operands), one per pc (with
    `fuse`, allocation pairs fused: see fuse_allocations)."""
    arena = arena_views(fn)
    profile = vm._profile
    code = []
    for pc, ins in enumerate(fn.instructions):
        handler, operands = PREPARERS[ins.op](vm, ins, pc in arena)
        if profile is not None:
            handler = profile.timed(ins.name, handler)
        code.append((handler, operands))
    if profile is None and fuse:
        code = fuse_allocations(vm, code)
    return [(handler, _exact(operands)) for handler, operands in code]


def _exact(record):
    """A named record (and the records in it) as an exact tuple: CPython specialises the
    unpacking of exact tuples only, and handlers unpack their operands in field order."""
    if type(record) is tuple or not isinstance(record, tuple):
        return record
    return tuple(_exact(field) for field in record)


def handler_label(handler) -> str:
    """A prepared handler's name without `_op_` (profiling timers keep the handler's name)."""
    name = handler.__name__
    return name[4:] if name.startswith("_op_") else name


# ---------------------------------------------------------------- preparers

def _plain(vm, ins, views_arena):
    return getattr(vm, "_op_" + ins.name), ins.args


def _alloc_storage(vm, ins, views_arena):
    size, alignment, dtype, dst = ins.args
    try:
        check_storage_request(size, alignment)
    except VMError as e:
        return vm._op_Fatal, (str(e),)
    return vm._op_AllocStorage, StorageOps(size, alignment, dtype, dst, class_for(size, alignment))


def _alloc_storage_reg(vm, ins, views_arena):
    shape, alignment, dtype, dst = ins.args
    try:
        check_storage_request(0, alignment)
    except VMError as e:
        return vm._op_Fatal, (str(e),)
    return vm._op_AllocStorageReg, StorageRegOps(shape, alignment, dtype, dst, itemsize(dtype), {})


def _alloc_tensor(vm, ins, views_arena):
    """`views_arena`: the storage is viewed by several AllocTensors (a planned arena)."""
    storage, offset, shape, dtype, dst = ins.args
    nbytes = math.prod(shape) * itemsize(dtype)
    return vm._op_AllocTensor, TensorOps(storage, offset, (dtype, tuple(shape)), nbytes, dst, views_arena)


def _alloc_tensor_reg(vm, ins, views_arena):
    # `last`: the last (dtype, shape) made here: an unchanged shape reuses the same object, so
    # the kernel call sites that get the tensor see it unchanged
    storage, offset, shape, dtype, dst = ins.args
    return vm._op_AllocTensorReg, TensorRegOps(storage, offset, shape, dtype, dst, itemsize(dtype),
                                               [(dtype, None)])


def _reshape_tensor(vm, ins, views_arena):
    tensor, shape, dst = ins.args
    return vm._op_ReshapeTensor, ReshapeOps(tensor, shape, dst, [None])


def _call_kernel(vm, ins, views_arena):
    k, inputs, outputs = ins.args
    kernel = vm.kernels[k]
    site = kernel.call_site()
    fn = site.fn if vm._profile is None else vm._profile.kernel_timer(kernel, site.fn)
    return vm._op_CallKernel, KernelOps(site, inputs + outputs, kernel, fn)


def _call_loop(vm, ins, views_arena):
    k, inputs, outputs = ins.args
    kernel = vm.kernels[k]
    budget = Tensor.from_array(np.zeros((), np.int64))
    counters = Tensor.from_array(np.zeros(2, np.int64))
    return vm._op_CallLoop, LoopOps(kernel.call_site(), inputs, outputs, kernel,
                                    loop_calls(kernel, vm.kernels), budget, counters)


def _call_shape_func(vm, ins, views_arena):
    """A function with a `check_attrs` hook that accepts its attrs runs only the shape
    computation on the input Tensors (`last`: the ShapeTensor made last per output, reused
    while unchanged; they are immutable, so sharing one across invocations is safe). One that
    reads only shapes is memoised on its inputs' (dtype, shape) objects (`seen`)."""
    index, inputs, outputs = ins.args
    fn, attrs, wants_arrays, fast, shapes_only = vm.shape_funcs[index]
    if vm._profile is not None:
        name = vm.exe.shape_funcs[index]["name"]
        fn = vm._profile.shape_func_counter(name, fn)
        fast = fast and vm._profile.shape_func_counter(name, fast)
    if fast is None:
        return vm._op_CallShapeFunc, ShapeFuncOps(fn, attrs, wants_arrays, inputs, outputs, index)
    ops = FastShapeFuncOps(fast, inputs, outputs, index, [None] * len(outputs), [None])
    return (vm._op_CallShapeFunc_memo if shapes_only else vm._op_CallShapeFunc_prepared), ops


PREPARERS = {op: _plain for op in Opcode}
PREPARERS.update({
    Opcode.AllocStorage: _alloc_storage,
    Opcode.AllocStorageReg: _alloc_storage_reg,
    Opcode.AllocTensor: _alloc_tensor,
    Opcode.AllocTensorReg: _alloc_tensor_reg,
    Opcode.ReshapeTensor: _reshape_tensor,
    Opcode.CallKernel: _call_kernel,
    Opcode.CallLoop: _call_loop,
    Opcode.CallShapeFunc: _call_shape_func,
})


# ---------------------------------------------------------------- fusion

def fuse_allocations(vm, code):
    """Peephole: an allocation of a storage immediately viewed whole by the next instruction
    (offset 0, same shape) runs as one handler that does both and skips the next pc. The
    second instruction stays in place (a jump to it still runs it alone), and both
    registers are written in the original order."""
    out = list(code)
    for pc in range(len(code) - 1):
        (_, a1), (_, a2) = code[pc], code[pc + 1]
        if type(a1) is StorageOps and type(a2) is TensorOps:
            if a2.storage == a1.dst and a2.offset == 0 and not a2.arena and a2.nbytes <= a1.size:
                out[pc] = vm._op_AllocStorageTensor, StorageTensorOps(a1, a2.meta, a2.dst)
        elif type(a1) is StorageRegOps and type(a2) is TensorRegOps:
            if a2.storage == a1.dst and a2.offset == 0 and a2.shape == a1.shape \
                    and a1.shape != a1.dst and a1.element_size == a2.element_size:
                out[pc] = vm._op_AllocStorageTensorReg, StorageTensorRegOps(a1, a2)
    return out


def arena_views(fn) -> frozenset:
    """pcs of the AllocTensor instructions that view a storage which two or more AllocTensors
    view (a planned arena). Followed per definition of the storage register, since register
    allocation reuses registers."""
    views: dict[int, list] = {}     # storage register -> AllocTensor pcs since its definition
    groups = []
    for pc, ins in enumerate(fn.instructions):
        if ins.op == Opcode.AllocTensor:
            views.setdefault(ins.args[0], []).append(pc)
        for r in registers(ins, "w"):
            if r in views:
                groups.append(views.pop(r))
    groups.extend(views.values())
    return frozenset(pc for group in groups if len(group) > 1 for pc in group)


# ---------------------------------------------------------------- at load

def lookup_shape_funcs(exe) -> list:
    """Per shape-function entry: (fn, attrs, wants_arrays, fast or None, reads only shapes)."""
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
            fast = specialized(sf.fn, s["attrs"]) or functools.partial(_call_with, sf.fn, s["attrs"])
        out.append((sf.fn, s["attrs"], wants_arrays, fast, sf.mode != "data_dependent"))
    return out


def _call_with(fn, attrs, inputs):
    return fn(inputs, attrs)


def specialized(fn, attrs):
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


def loop_calls(kernel, kernels) -> list:
    """The inner kernels a loop kernel calls, in call order (named in its error reports)."""
    inner = {k.symbol: k for k in kernels if k.kind == "compiled"}
    try:
        return [inner[symbol] for symbol, _ in kernel.attrs["header"] + kernel.attrs["body"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ExecutableFormatError(f"loop kernel {kernel.name}: bad call list ({type(e).__name__}: "
                                    f"{e})") from None


assert set(PREPARERS) == set(Opcode) and len(OPCODES) == len(Opcode)
