"""Compiler passes: one file per pass, each a function `IRModule -> IRModule`."""
from compiler.passes.fuse_ops import fuse_ops  # noqa: F401
