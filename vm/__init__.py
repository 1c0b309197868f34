"""dynvm runtime: executables, the virtual machine and its run-time values.

The runtime is the bottom layer: it never imports the compiler, so it can ship alone.
"""
from dynvm.vm.errors import (DynVMError, ExecutableFormatError, InvokeArgumentError, IRParseError,  # noqa: F401
                       KernelError, ShapeError, StaticRuntimeError, TypeInferenceError, VMError,
                       VMMemoryError, VMRecursionError, VMStepLimitError)
from dynvm.vm.bytecode import OPCODES, Instruction, Opcode  # noqa: F401
from dynvm.vm.values import ADT, Closure, Storage  # noqa: F401
from dynvm.vm.executable import VERSION as __version__  # noqa: F401
from dynvm.vm.executable import Executable, VMFunction, empty_kernels_section  # noqa: F401
from dynvm.vm.machine import VirtualMachine  # noqa: F401
from dynvm.vm.static_runtime import StaticRuntime  # noqa: F401

__all__ = [
    "VirtualMachine", "StaticRuntime", "Executable", "VMFunction", "Instruction", "Opcode", "OPCODES",
    "ADT", "Closure", "Storage", "empty_kernels_section",
    "DynVMError", "TypeInferenceError", "IRParseError", "ShapeError", "ExecutableFormatError",
    "KernelError", "InvokeArgumentError", "StaticRuntimeError", "VMError", "VMRecursionError",
    "VMMemoryError", "VMStepLimitError",
]
