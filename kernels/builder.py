"""KernelBuilder: collects the kernels of one executable into one LLVM module.

The compiler adds kernels while lowering; `finish()` compiles the module once and returns the
msgpack-able kernels section (see the contract in DESIGN.md / runtime.py for its layout).
"""
import json
import re

from llvmlite import ir

from kernels import codelib
from kernels.elementwise import emit_elementwise, expr_dtype
from vm.dtypes import DTYPES
from vm.errors import KernelError


def _signature(specs, what):
    """Normalise [(dtype, rank)...] to [[dtype, rank]...], rejecting bad entries."""
    out = []
    for spec in specs:
        if not isinstance(spec, (list, tuple)) or len(spec) != 2:
            raise KernelError(f"{what}: expected (dtype, rank), got {spec!r}")
        dtype, rank = spec
        if dtype not in DTYPES:
            raise KernelError(f"{what}: unsupported dtype {dtype!r}")
        if type(rank) is not int or rank < 0:
            raise KernelError(f"{what}: rank must be a non-negative int, got {rank!r}")
        out.append([dtype, rank])
    return out


def _plain(value):
    """Lists instead of tuples, so specs compare equal to their msgpack round-trip."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class KernelBuilder:
    """Accumulates kernels; identical specs (ignoring the name) share one index."""

    def __init__(self):
        self._module = ir.Module(name="dynvm_kernels")
        self._target = codelib.host_target()
        self._module.triple = self._target["triple"]
        self._kernels = []
        self._index = {}
        self._section = None

    def add_elementwise(self, name, expr, inputs, output) -> int:
        """A fused elementwise kernel computing `expr` (see elementwise.py) -> kernel index."""
        self._check_open()
        expr = _plain(expr)
        inputs = _signature(inputs, f"kernel {name} inputs")
        (out,) = _signature([output], f"kernel {name} output")
        result = expr_dtype(expr, [dt for dt, _ in inputs])
        if result != out[0]:
            raise KernelError(f"kernel {name}: expression gives {result}, output is {out[0]}")
        if any(rank > out[1] for _, rank in inputs):
            raise KernelError(f"kernel {name}: an input has a higher rank than the output")
        key = ("elementwise", json.dumps([expr, inputs, out]))
        if key in self._index:
            return self._index[key]
        index = len(self._kernels)
        base = f"dynvm_k{index}_{re.sub(r'[^A-Za-z0-9_]', '_', str(name))[:48]}"
        variants = emit_elementwise(self._module, base, expr, inputs, out)
        return self._add(key, {"name": str(name), "kind": "compiled", "op": "elementwise",
                               "attrs": {"expr": expr}, "inputs": inputs, "outputs": [out],
                               "variants": variants})

    def add_extern(self, name, op, attrs, inputs, outputs) -> int:
        """A kernel run by the numpy function kernels.extern.EXTERN_KERNELS[op] -> index."""
        self._check_open()
        if not isinstance(op, str):
            raise KernelError(f"kernel {name}: extern op must be a str, got {op!r}")
        if not isinstance(attrs, dict):
            raise KernelError(f"kernel {name}: attrs must be a dict, got {type(attrs).__name__}")
        attrs = _plain(attrs)
        inputs = _signature(inputs, f"kernel {name} inputs")
        outputs = _signature(outputs, f"kernel {name} outputs")
        key = ("extern", json.dumps([op, attrs, inputs, outputs], sort_keys=True))
        if key in self._index:
            return self._index[key]
        return self._add(key, {"name": str(name), "kind": "extern", "op": op, "attrs": attrs,
                               "inputs": inputs, "outputs": outputs,
                               "variants": [{"name": "extern", "symbol": ""}]})

    def _add(self, key, entry):
        index = len(self._kernels)
        self._kernels.append(entry)
        self._index[key] = index
        return index

    def _check_open(self):
        if self._section is not None:
            raise KernelError("KernelBuilder.finish() was already called")

    def finish(self) -> dict:
        """Compile the module once (nothing to compile if every kernel is extern)."""
        if self._section is None:
            compiled = any(k["kind"] == "compiled" for k in self._kernels)
            llvm_ir = str(self._module) if compiled else ""
            obj = codelib.compile_ir(llvm_ir, self._target) if compiled else b""
            self._section = {"target": dict(self._target), "llvm_ir": llvm_ir, "object": obj,
                             "kernels": self._kernels}
        return self._section
