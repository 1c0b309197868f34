"""Native kernels: LLVM IR generation (build time) and loading/calling (run time).

Build time:  kb = KernelBuilder(); i = kb.add_elementwise(...); section = kb.finish()
Run time:    ks = load_kernels(section); ks[i](inputs, outputs)
`kernels/` never imports `compiler/`; only codelib.py touches llvmlite.binding.
"""
from kernels.builder import KernelBuilder
from kernels.runtime import Kernel, load_kernels

__all__ = ["KernelBuilder", "Kernel", "load_kernels"]
