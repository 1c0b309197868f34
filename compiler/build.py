"""`build(mod)`: the compiler pipeline from an IRModule to a `vm.Executable`."""
from compiler.codegen import compile_module
from compiler.passes import fuse_ops
from compiler.typing import infer_types


def build(mod, fuse: bool = True):
    """Type-check `mod`, fuse ops (unless `fuse=False`), lower it to explicit-memory bytecode
    and compile its kernels."""
    mod = infer_types(mod)
    if fuse:
        mod = fuse_ops(mod)
    return compile_module(mod)
