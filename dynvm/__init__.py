"""dynvm: a compiler and register virtual machine for dynamic neural-network models on the CPU.

    import dynvm
    from dynvm import ir, op
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    exe = dynvm.build(ir.IRModule.from_expr(ir.Function([x], op.exp(x))))
    out = dynvm.VirtualMachine(exe).invoke("main", numpy_array)

Subpackages: `dynvm.compiler` (IR, operators, passes, code generation), `dynvm.vm` (the
executable format and the runtime; it never imports the compiler), `dynvm.kernels` (native
kernels), `dynvm.shape_funcs` (run-time shape functions), `dynvm.models` (the example models,
each with a numpy reference), `dynvm.bench` (`dynvm bench` and the benchmarks' measuring
harness), `dynvm.ray` (score Ray Datasets and serve with Ray Serve; needs the `ray` extra). Importing `dynvm` loads only the runtime; `dynvm.ir`, `dynvm.op` and `dynvm.build`
load the compiler on first use, so a program that only loads and runs executables never imports
the code generator.
"""
from dynvm.vm import (ADT, Closure, Executable, StaticRuntime, VirtualMachine,  # noqa: F401
                      __version__)
from dynvm.vm.errors import (DynVMError, ExecutableFormatError, InvokeArgumentError,  # noqa: F401
                             IRParseError, KernelError, PerformanceWarning, ShapeError,
                             StaticRuntimeError, TypeInferenceError, VMError, VMMemoryError,
                             VMRecursionError,
                             VMStepLimitError)

_COMPILER_NAMES = ("ir", "op", "build")


def __getattr__(name):
    """`dynvm.ir`, `dynvm.op`, `dynvm.build`: the compiler, imported when first asked for."""
    if name in _COMPILER_NAMES:
        from dynvm import compiler
        return getattr(compiler, name)
    raise AttributeError(f"module 'dynvm' has no attribute {name!r}")

__all__ = [
    "ir", "op", "build", "VirtualMachine", "StaticRuntime", "Executable", "ADT", "Closure",
    "__version__", "DynVMError", "TypeInferenceError", "IRParseError", "ShapeError",
    "ExecutableFormatError", "KernelError", "InvokeArgumentError", "StaticRuntimeError", "VMError",
    "VMMemoryError", "VMRecursionError", "VMStepLimitError", "PerformanceWarning",
]
