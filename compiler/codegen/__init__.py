"""Lowering of typed IR to register-VM bytecode (explicit allocation, kernels, shape functions)."""
from dynvm.compiler.codegen.module_compiler import compile_module  # noqa: F401
