"""Native kernels: LLVM IR generation (build time) and loading/calling (run time).

Build time:  kb = KernelBuilder(); i = kb.add_elementwise(...); section = kb.finish()
Run time:    ks = load_kernels(section); ks[i](inputs, outputs)
`kernels/` never imports `compiler/`; only codelib.py touches llvmlite.binding.
"""
from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels.runtime import Kernel, load_kernels

# kernel families: importing a module registers its family (kernels/family.py), one line each
import dynvm.kernels.elementwise  # noqa: E402,F401
import dynvm.kernels.matmul  # noqa: E402,F401
import dynvm.kernels.conv2d  # noqa: E402,F401
import dynvm.kernels.transform  # noqa: E402,F401
import dynvm.kernels.dynamic  # noqa: E402,F401
import dynvm.kernels.reduce  # noqa: E402,F401
import dynvm.kernels.softmax  # noqa: E402,F401
import dynvm.kernels.sort  # noqa: E402,F401
import dynvm.kernels.vision  # noqa: E402,F401
import dynvm.kernels.loop  # noqa: E402,F401

__all__ = ["KernelBuilder", "Kernel", "load_kernels"]
