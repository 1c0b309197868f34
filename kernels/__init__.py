"""Native kernels: LLVM IR generation (build time) and loading/calling (run time).

Build time:  kb = KernelBuilder(); i = kb.add_elementwise(...); section = kb.finish()
Run time:    ks = load_kernels(section); ks[i](inputs, outputs)
`kernels/` never imports `compiler/`; only codelib.py touches llvmlite.binding.
"""
from kernels.builder import KernelBuilder
from kernels.runtime import Kernel, load_kernels

# kernel families: importing a module registers its family (kernels/family.py), one line each
import kernels.elementwise  # noqa: E402,F401
import kernels.matmul  # noqa: E402,F401
import kernels.conv2d  # noqa: E402,F401
import kernels.transform  # noqa: E402,F401
import kernels.dynamic  # noqa: E402,F401
import kernels.reduce  # noqa: E402,F401
import kernels.softmax  # noqa: E402,F401
import kernels.sort  # noqa: E402,F401
import kernels.vision  # noqa: E402,F401
import kernels.loop  # noqa: E402,F401

__all__ = ["KernelBuilder", "Kernel", "load_kernels"]
