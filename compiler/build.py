"""`build(mod)`: the compiler pipeline from an IRModule to a `vm.Executable`."""
from compiler.codegen import compile_module
from compiler.typing import infer_types


def build(mod):
    """Type-check `mod`, lower it to explicit-memory bytecode and compile its kernels."""
    mod = infer_types(mod)
    return compile_module(mod)
