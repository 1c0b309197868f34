"""Small builders for hand-made executables used by the tests in tests/vm/."""
import numpy as np

from dynvm.vm import Executable, Instruction, VMFunction


def tensor(*shape, dtype="float32"):
    """A tensor type descriptor; None in `shape` is an Any dimension."""
    return {"kind": "tensor", "shape": list(shape), "dtype": dtype}


SCALAR_I64 = tensor(dtype="int64")
FUNC = {"kind": "func"}
ANY = {"kind": "any"}

NAT_CTORS = [
    {"name": "tuple", "tag": 0, "arity": None, "adt": "tuple"},
    {"name": "Z", "tag": 0, "arity": 0, "adt": "Nat"},
    {"name": "S", "tag": 1, "arity": 1, "adt": "Nat"},
]
NAT = {"kind": "adt", "name": "Nat"}


def fn(name, params, code, registers=None, param_types=None, ret_type=None):
    """A VMFunction from `params` (names) and `code` (tuples: opcode name, operands...); by
    default each parameter is a float32 vector and the result may be anything."""
    instructions = [Instruction(*c) for c in code]
    return VMFunction(name, list(params), param_types or [tensor(None) for _ in params],
                      ret_type or ANY, registers if registers is not None else 8, instructions)


def exe(*functions, constants=(), constructors=None, shape_funcs=(), kernels=None):
    return Executable(list(functions), [np.asarray(c) for c in constants], constructors,
                      kernels=kernels, shape_funcs=shape_funcs)


def nat(n):
    """The Peano number n as a vm.ADT: S(S(...Z))."""
    from dynvm.vm import ADT
    value = ADT("Z", 0)
    for _ in range(n):
        value = ADT("S", 1, (value,))
    return value


def nat_value(value):
    n = 0
    while value.constructor == "S":
        value, n = value.fields[0], n + 1
    return n
