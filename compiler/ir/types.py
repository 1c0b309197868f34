"""IR types: tensors whose dims are ints or `Any`, tuples, functions and ADT type calls."""
from __future__ import annotations

from dataclasses import dataclass

from dynvm.vm.dtypes import check_dtype
from dynvm.vm.errors import DynVMError


class Any:
    """A dimension known only at run time. All `Any` instances compare equal."""

    __slots__ = ()

    def __eq__(self, other):
        return isinstance(other, Any)

    def __hash__(self):
        return hash("dynvm.Any")

    def __repr__(self):
        return "?"


def is_any(dim) -> bool:
    return isinstance(dim, Any)


class Type:
    """Base class of IR types (immutable, structurally compared)."""


@dataclass(frozen=True)
class TensorType(Type):
    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        shape = tuple(self.shape)
        for dim in shape:
            if not (is_any(dim) or (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0)):
                raise DynVMError(f"tensor dims must be ints >= 0 or ir.Any(), got {dim!r}")
        object.__setattr__(self, "shape", shape)
        check_dtype(self.dtype)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return not any(is_any(d) for d in self.shape)

    def __str__(self):
        dims = ", ".join("?" if is_any(d) else str(d) for d in self.shape)
        if len(self.shape) == 1:
            dims += ","
        return f"Tensor[({dims}), {self.dtype}]"


@dataclass(frozen=True)
class TupleType(Type):
    fields: tuple

    def __post_init__(self):
        object.__setattr__(self, "fields", tuple(self.fields))

    def __str__(self):
        inner = ", ".join(str(f) for f in self.fields)
        if len(self.fields) == 1:
            inner += ","
        return f"({inner})"


@dataclass(frozen=True)
class FuncType(Type):
    arg_types: tuple
    ret_type: Type

    def __post_init__(self):
        object.__setattr__(self, "arg_types", tuple(self.arg_types))

    def __str__(self):
        return f"fn ({', '.join(str(a) for a in self.arg_types)}) -> {self.ret_type}"


@dataclass(frozen=True)
class TypeVar(Type):
    name: str

    def __str__(self):
        return self.name


@dataclass(frozen=True)
class TypeCall(Type):
    """An ADT type applied to type arguments, e.g. `List[Tensor[(?,), float32]]`."""

    name: str
    args: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "args", tuple(self.args))

    def __str__(self):
        if not self.args:
            return self.name
        return f"{self.name}[{', '.join(str(a) for a in self.args)}]"


def scalar_type(dtype: str) -> TensorType:
    return TensorType((), dtype)
