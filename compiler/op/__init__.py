"""Primitive operators. `op.add(x, y)`, `op.arange(start, stop, step)`, ... are generated from the
registry (`compiler/op/registry.py`); each family module registers its ops on import."""
from dynvm.compiler.op.registry import OPS, REQUIRED, OpDef, get_op, make_call, register  # noqa: F401
from dynvm.compiler.op import elementwise, transform, reduce, nn, dynamic, vision, window, update, rnn  # noqa: F401,E402  (registers)
from dynvm.compiler.op.registry import constructor as _constructor


def __getattr__(name):
    if name in OPS:
        return _constructor(name)
    raise AttributeError(f"module 'compiler.op' has no op {name!r}")


def __dir__():
    """The ops callable as `op.<name>` (internal ops such as `dyn.full`, reached through
    `op.full`, are not attributes) and the registry's functions."""
    return sorted([name for name in OPS if name.isidentifier()] + ["OpDef", "get_op", "make_call", "register"])
