"""`build(mod)`: the compiler pipeline from an IRModule to a `vm.Executable`."""
import warnings

from dynvm.compiler.codegen import compile_module
from dynvm.compiler.passes import fuse_ops, lambda_lift, prepack_dense
from dynvm.compiler.typing import infer_types
from dynvm.vm.errors import PerformanceWarning


def build(mod, fuse: bool = True, memory_plan: bool = True, native_loops: bool = True,
          prepack: bool = True):
    """Type-check `mod`, pack dense's constant weights, fuse ops, lower it to explicit-memory
    bytecode with static memory planning, and compile its kernels: the result is a
    `vm.Executable`. Loops of straight-line kernel calls become native loop kernels.
    `fuse`/`memory_plan`/`native_loops` switch those off (tests and benchmarks compare both
    ways); `prepack=False` keeps dense's constant weights as they are (packed, they are
    read in the build machine's strip width, on any machine). A PerformanceWarning names every function that will run in the Python tier and
    every loop that stays bytecode, with the reasons."""
    mod = lambda_lift(infer_types(mod))
    if prepack:
        mod = prepack_dense(mod)
    if fuse:
        mod = fuse_ops(mod)
    slower = {}
    exe = compile_module(mod, memory_plan, native_loops, slower)
    warn_slower_paths(exe, slower)
    return exe


def warn_slower_paths(exe, slower: dict):
    """One PerformanceWarning naming every function that runs in the Python tier and every loop
    that stays bytecode, with the reasons (`exe.explain()` lists every function; the warning
    can be silenced by its category)."""
    from dynvm.vm.native import planned     # lazily: it imports llvmlite
    lines = [f"{name}: {why}" for name, why in slower.items()]
    reasons = planned(exe)[1]
    lines += [f"{fn.name}: runs in the Python tier ({reasons[i]})"
              for i, fn in enumerate(exe.functions) if reasons[i] is not None]
    if lines:
        warnings.warn("some of this program runs on a slower path:\n  " + "\n  ".join(lines),
                      PerformanceWarning, stacklevel=3)
