"""Native kernels: LLVM IR generation (build time) and loading/calling (run time).

Build time:  kb = KernelBuilder(); i = kb.add_elementwise(...); section = kb.finish()
             (dynvm.kernels.builder; the families in kernels/<family>.py emit the IR)
Run time:    ks = load_kernels(section); ks[i](inputs, outputs)   (dynvm.kernels.runtime)
Importing this package loads only the run-time side: a program is loaded and run without the
code generator (the builder and the families are imported when a kernel is built).
`kernels/` never imports `compiler/`; only codelib.py touches llvmlite.binding.
"""
from dynvm.kernels.runtime import Kernel, load_kernels

__all__ = ["Kernel", "load_kernels"]
