"""dynvm's compiler: IR, operators, type inference, passes and bytecode generation."""
from dynvm.compiler import ir, op  # noqa: F401
from dynvm.compiler.build import build  # noqa: F401
