"""The one exception hierarchy of dynvm, shared by the compiler, the kernels and the VM.

It lives in `vm/` because the runtime is the bottom layer: the compiler may import the VM,
never the other way round.
"""


class DynVMError(Exception):
    """Base class of every error dynvm raises on purpose."""


class PerformanceWarning(UserWarning):
    """dynvm took a slow path the caller may not expect (e.g. a file's kernels rebuilt at load);
    `warnings.simplefilter("error", dynvm.PerformanceWarning)` turns it into an exception."""


class TypeInferenceError(DynVMError):
    """A program is ill-typed (rank, dtype or shape mismatch found at compile time)."""


class IRParseError(DynVMError):
    """The text format could not be parsed."""


class ShapeError(DynVMError, ValueError):
    """Run-time shapes do not fit (broadcast mismatch, bad reshape, shape-function failure)."""


class ExecutableFormatError(DynVMError):
    """An executable file or object is corrupt, truncated, from a newer version or invalid."""


class KernelError(DynVMError):
    """A native kernel rejected its arguments or failed to compile/load."""


class NotNative(KernelError):
    """Why something has no native form: a function (it runs in the Python tier), a loop (it
    runs as bytecode, not as one loop kernel), a shape function's call site (the Python shape
    function runs). Caught where the choice is made; the message reaches the user as the
    reason `Executable.explain` and the PerformanceWarning give."""


class InvokeArgumentError(DynVMError, TypeError):
    """An argument to `VirtualMachine.invoke` does not match the parameter's declared type."""


class VMError(DynVMError):
    """A failure while running bytecode (Fatal instruction, bad value kind, ...)."""


class VMRecursionError(VMError):
    """The call depth exceeded `max_depth`."""


class VMStepLimitError(VMError):
    """The number of executed instructions exceeded `max_steps`."""


class VMMemoryError(VMError):
    """An allocation would exceed `max_memory_bytes`, or the system could not provide it."""


class StaticRuntimeError(DynVMError):
    """`vm.StaticRuntime` cannot run a function: an Any dimension, control flow, a call, a
    run-time shape or another construct a fixed kernel list over fixed memory cannot express."""


class CompileError(DynVMError):
    """The compiler cannot lower a (well-typed) program, e.g. a construct not supported yet."""
