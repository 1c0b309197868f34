"""dynvm's compiler: IR, operators, type inference, passes and bytecode generation."""
from compiler import ir, op  # noqa: F401
from compiler.build import build  # noqa: F401
