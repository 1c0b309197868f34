"""Conversions between IR types and what the executable stores about them."""
from dynvm.vm.errors import CompileError

from dynvm.compiler.ir.types import FuncType, TensorType, TupleType, TypeCall, TypeVar, is_any


def type_desc(t) -> dict:
    """The msgpack-able descriptor of an IR type (checked by `VirtualMachine.invoke`)."""
    if isinstance(t, TensorType):
        return {"kind": "tensor", "shape": [None if is_any(d) else d for d in t.shape],
                "dtype": t.dtype}
    if isinstance(t, TupleType):
        return {"kind": "tuple", "fields": [type_desc(f) for f in t.fields]}
    if isinstance(t, TypeCall):
        return {"kind": "adt", "name": t.name}
    if isinstance(t, FuncType):
        return {"kind": "func"}
    if isinstance(t, TypeVar):
        return {"kind": "any"}
    raise CompileError(f"type {t} cannot cross the VM boundary")


def tensor_leaves(t) -> list[TensorType]:
    """The tensor types of a (possibly nested tuple) type, in order."""
    if isinstance(t, TensorType):
        return [t]
    if isinstance(t, TupleType):
        return [leaf for f in t.fields for leaf in tensor_leaves(f)]
    raise CompileError(f"a kernel argument must be a tensor or a tuple of tensors, got {t}")
