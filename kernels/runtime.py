"""Run-time side of the kernels section: validate it, load native code, call kernels.

Section layout (msgpack-able, produced by KernelBuilder.finish()):
    {"target": {"triple": str, "cpu": str, "features": str}, "llvm_ir": str, "object": bytes,
     "kernels": [{"name": str, "kind": "compiled" | "extern", "op": str, "attrs": dict,
                  "inputs": [[dtype, rank]...], "outputs": [[dtype, rank]...],
                  "variants": [{"name": str, "symbol": str}...]}...]}
"""
import numpy as np

from kernels import abi, codelib
from kernels.llvm_util import ERR_BROADCAST, ERROR_KINDS
from vm.dtypes import DTYPES
from vm.errors import DynVMError, ExecutableFormatError, KernelError, ShapeError


class Kernel:
    """One callable kernel: checks arguments against its signature, then runs a variant."""

    def __init__(self, entry, functions=None, extern_fn=None, library=None):
        self.name = entry["name"]
        self.kind = entry["kind"]
        self.op = entry["op"]
        self.attrs = entry["attrs"]
        self.inputs = [tuple(s) for s in entry["inputs"]]
        self.outputs = [tuple(s) for s in entry["outputs"]]
        self.variants = [v["name"] for v in entry["variants"]]
        self.last_variant = None
        self._functions = functions or {}  # variant name -> cffi function pointer
        self._extern_fn = extern_fn
        self._library = library  # keeps the machine code alive
        sig = self.inputs + self.outputs
        self._np_dtypes = [DTYPES[dt][0] for dt, _ in sig]
        self._ranks = [rank for _, rank in sig]
        self._codes = [abi.dtype_code(dt) for dt, _ in sig]
        self._packer = abi.ArgPacker(self._codes, self._ranks)

    def __repr__(self):
        return f"<Kernel {self.name} {self.kind}:{self.op} variants={self.variants}>"

    def __call__(self, inputs, outputs):
        """Run the kernel, writing `outputs` in place."""
        arrays = self._check(inputs, outputs)
        if self.kind == "extern":
            self._call_extern(list(inputs), list(outputs))
            return
        variant = self._select(arrays)
        tensors, keep = self._packer.pack(arrays)
        rc = self._functions[variant](tensors, len(arrays))
        del keep
        if rc:
            raise self._native_error(rc, arrays)
        self.last_variant = variant

    def _check(self, inputs, outputs):
        """Count, type, dtype, rank, alignment and writability of every array."""
        if len(inputs) != len(self.inputs) or len(outputs) != len(self.outputs):
            raise KernelError(f"kernel {self.name}: expected {len(self.inputs)} inputs and "
                              f"{len(self.outputs)} outputs, got {len(inputs)} and {len(outputs)}")
        arrays = [*inputs, *outputs]
        n_in = len(inputs)
        for k, a in enumerate(arrays):
            what = f"input {k}" if k < n_in else f"output {k - n_in}"
            if not isinstance(a, np.ndarray):
                raise KernelError(f"kernel {self.name}: {what} is a {type(a).__name__}, "
                                  "not a numpy array")
            if a.dtype is not self._np_dtypes[k] and a.dtype != self._np_dtypes[k]:
                raise KernelError(f"kernel {self.name}: {what} has dtype {a.dtype}, "
                                  f"expected {self._np_dtypes[k]}")
            if a.ndim != self._ranks[k]:
                raise KernelError(f"kernel {self.name}: {what} has rank {a.ndim}, "
                                  f"expected {self._ranks[k]}")
            if not a.flags.aligned:
                raise KernelError(f"kernel {self.name}: {what} is not aligned")
            if k >= n_in and not a.flags.writeable:
                raise KernelError(f"kernel {self.name}: {what} is read-only")
        return arrays

    def _select(self, arrays):
        """Elementwise: the flat "contiguous" loop when every array is compact and no input
        is broadcast; otherwise "strided"."""
        functions = self._functions
        if "contiguous" in functions:
            size = arrays[-1].size
            if all(a.size == size and a.flags.c_contiguous for a in arrays):
                return "contiguous"
        if "strided" in functions:
            return "strided"
        return self.variants[0]

    def _call_extern(self, inputs, outputs):
        try:
            self._extern_fn(inputs, outputs, self.attrs)
        except DynVMError:
            raise
        except Exception as e:
            raise KernelError(f"extern kernel {self.name} ({self.op}) failed: {e}") from e
        self.last_variant = "extern"

    def _native_error(self, rc, arrays):
        kind, arg, dim = rc & 0xFF, (rc >> 8) & 0xFF, rc >> 16
        n_in = len(self.inputs)
        what = f"input {arg}" if arg < n_in else f"output {arg - n_in}"
        if kind == ERR_BROADCAST and arg < len(arrays):
            return ShapeError(f"kernel {self.name}: {what} of shape {arrays[arg].shape} does not "
                              f"broadcast to the output shape {arrays[-1].shape} (dim {dim})")
        reason = ERROR_KINDS.get(kind, "unknown error")
        return KernelError(f"kernel {self.name}: native code returned {rc} ({reason}, {what})")


# ---------------------------------------------------------------------------------------------
# section validation and loading


def _fail(msg):
    raise ExecutableFormatError(f"kernels section: {msg}")


def _expect(value, types, what):
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
        _fail(f"{what} has type {type(value).__name__}")
    return value


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _check_signature(specs, what):
    _expect(specs, list, what)
    for spec in specs:
        _expect(spec, (list, tuple), what + " entry")
        if len(spec) != 2 or spec[0] not in DTYPES or type(spec[1]) is not int or spec[1] < 0:
            _fail(f"{what} entry {spec!r} is not [dtype, rank]")


def _check_entry(i, entry):
    _expect(entry, dict, f"kernel {i}")
    for key, types in (("name", str), ("kind", str), ("op", str), ("attrs", dict),
                       ("inputs", list), ("outputs", list), ("variants", list)):
        if key not in entry:
            _fail(f"kernel {i} lacks {key!r}")
        _expect(entry[key], types, f"kernel {i} field {key!r}")
    if entry["kind"] not in ("compiled", "extern"):
        _fail(f"kernel {i} has unknown kind {entry['kind']!r}")
    _check_signature(entry["inputs"], f"kernel {i} inputs")
    _check_signature(entry["outputs"], f"kernel {i} outputs")
    for v in entry["variants"]:
        _expect(v, dict, f"kernel {i} variant")
        if not isinstance(v.get("name"), str) or not isinstance(v.get("symbol"), str):
            _fail(f"kernel {i} variant {v!r} lacks a str name and symbol")
    if entry["kind"] == "compiled" and not entry["variants"]:
        _fail(f"kernel {i} ({entry['name']}) has no variants")


def validate_section(section):
    """Raise ExecutableFormatError unless `section` has the documented structure."""
    _expect(section, dict, "section")
    for key, types in (("target", dict), ("llvm_ir", str), ("object", (bytes, bytearray)),
                       ("kernels", list)):
        if key not in section:
            _fail(f"missing {key!r}")
        _expect(section[key], types, key)
    for key in ("triple", "cpu", "features"):
        _expect(section["target"].get(key), str, f"target {key}")
    for i, entry in enumerate(section["kernels"]):
        _check_entry(i, entry)


def _extern_table():
    try:
        from kernels.extern import EXTERN_KERNELS
    except ImportError as e:
        _fail(f"extern kernels are unavailable ({e})")
    return EXTERN_KERNELS


def load_kernels(section) -> list:
    """Kernel objects for a section: same target loads the object code with no LLVM compile,
    another target re-JITs from the stored LLVM IR."""
    validate_section(section)
    entries = section["kernels"]
    library = None
    if any(e["kind"] == "compiled" for e in entries):
        library = codelib.CodeLibrary(section["llvm_ir"], bytes(section["object"]),
                                      section["target"])
    externs = _extern_table() if any(e["kind"] == "extern" for e in entries) else None
    return [_make_kernel(e, library, externs) for e in entries]


def _make_kernel(entry, library, externs):
    if entry["kind"] == "extern":
        fn = externs.get(entry["op"])
        if fn is None:
            _fail(f"unknown extern kernel {entry['op']!r} (kernel {entry['name']})")
        return Kernel(entry, extern_fn=fn)
    functions = {}
    for v in entry["variants"]:
        address = library.address(v["symbol"])
        if not address:
            _fail(f"kernel {entry['name']} variant {v['name']}: symbol {v['symbol']!r} not found")
        functions[v["name"]] = abi.kernel_function(address)
    return Kernel(entry, functions=functions, library=library)
