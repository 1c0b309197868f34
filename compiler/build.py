"""`build(mod)`: the compiler pipeline from an IRModule to a `vm.Executable`."""
from dynvm.compiler.codegen import compile_module
from dynvm.compiler.passes import fuse_ops, lambda_lift
from dynvm.compiler.typing import infer_types


def build(mod, fuse: bool = True, memory_plan: bool = True, native_loops: bool = True):
    """Type-check `mod`, fuse ops, lower it to explicit-memory bytecode with static memory
    planning, and compile its kernels. Loops of straight-line kernel calls become native loop
    kernels (compiler/codegen/native_loop.py). `fuse`/`memory_plan`/`native_loops` switch those
    off (tests and benchmarks compare both ways)."""
    mod = lambda_lift(infer_types(mod))
    if fuse:
        mod = fuse_ops(mod)
    return compile_module(mod, memory_plan, native_loops)
