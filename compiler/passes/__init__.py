"""Compiler passes: one file per pass, each a function `IRModule -> IRModule`."""
from dynvm.compiler.passes.fuse_ops import fuse_ops  # noqa: F401
from dynvm.compiler.passes.lambda_lift import lambda_lift  # noqa: F401
from dynvm.compiler.passes.prepack_dense import prepack_dense  # noqa: F401
