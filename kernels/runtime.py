"""Run-time side of the kernels section: validate it, load native code, call kernels.

Section layout (msgpack-able, produced by KernelBuilder.finish()):
    {"target": {"triple": str, "cpu": str, "features": str},
     "llvm_ir": [[str...]...], "object": [bytes...],  # per compilation unit: the texts of
                                                       # its modules (linked) and its object
     "kernels": [{"name": str, "kind": "compiled", "op": str, "attrs": dict,
                  "inputs": [[dtype, rank]...], "outputs": [[dtype, rank]...],
                  "symbol": str,            # the native dispatcher S
                  "variants": [{"name": str, "symbol": str}...]}...]}
"op" is the kernel family's name and "attrs" the family's spec. Calls go through the dispatcher
S, which records the index of the variant it ran in the global `S__variant` (abi.py's native
layout); `Kernel.last_variant` reads it. Loading needs no code generator: this module imports
neither the builder nor any kernel family.
"""
import numpy as np

from dynvm.kernels import abi, codelib, provenance
from dynvm.kernels.abi import ERR_BROADCAST, ERR_SHAPE, ERROR_KINDS, variant_global
from dynvm.vm.dtypes import DTYPES
from dynvm.vm.errors import ExecutableFormatError, KernelError, ShapeError


class KernelShapeError(ShapeError, KernelError):
    """ERR_SHAPE from native code: operand/output extents that do not fit the op. A ShapeError,
    and still a KernelError for callers that catch every kernel failure."""


class Kernel:
    """One callable kernel: checks arguments against its signature, then runs its dispatcher.

    The VM does not use `__call__`: it prepares an `abi.CallSite` per instruction
    (`call_site()`) and skips the Python checks, relying on the native dispatcher's.
    """

    def __init__(self, entry, functions, library, address, variant_address):
        self.name = entry["name"]
        self.kind = entry["kind"]
        self.op = entry["op"]
        self.attrs = entry["attrs"]
        self.symbol = entry["symbol"]
        self.inputs = [tuple(s) for s in entry["inputs"]]
        self.outputs = [tuple(s) for s in entry["outputs"]]
        self.variants = [v["name"] for v in entry["variants"]]
        self.address = address  # the native dispatcher
        self._functions = functions  # variant name -> cffi function pointer (test hook)
        self._entry = abi.kernel_function(address)
        self._variant = abi.ffi.cast("int32_t *", variant_address)
        self._library = library  # keeps the machine code alive
        sig = self.inputs + self.outputs
        self.dtypes = [dt for dt, _ in sig]
        self._np_dtypes = [DTYPES[dt][0] for dt, _ in sig]
        self._ranks = [rank for _, rank in sig]
        self._codes = [abi.dtype_code(dt) for dt, _ in sig]
        self._packer = abi.ArgPacker(self._codes, self._ranks)

    def __repr__(self):
        return f"<Kernel {self.name} {self.kind}:{self.op} variants={self.variants}>"

    @property
    def last_variant(self):
        """Name of the variant the latest call ran (any caller in this process), or None."""
        index = self.variant_index()
        return self.variants[index] if 0 <= index < len(self.variants) else None

    def variant_index(self) -> int:
        """What the dispatcher stored in `S__variant` (-1 before the first call)."""
        return self._variant[0]

    def call_site(self) -> "abi.CallSite":
        """Prepared descriptors for one VM call site of this kernel."""
        return abi.CallSite(self.address, self.dtypes, self._ranks)

    def variant_function(self, name):
        """The native function of one variant (`S__<name>`): a test hook that bypasses the
        dispatcher; it takes (DLTensor *args, int32_t nargs) like the kernel itself."""
        return self._functions[name]

    def __call__(self, inputs, outputs):
        """Run the kernel, writing `outputs` in place."""
        arrays = self._check(inputs, outputs)
        tensors, keep = self._packer.pack(arrays)
        rc = self._entry(tensors, len(arrays))
        del keep
        if rc:
            raise self.native_error(rc, [a.shape for a in arrays])

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

    def native_error(self, rc, shapes):
        """The typed error for native return code `rc`; `shapes` are the arguments' shapes."""
        kind, arg, dim = rc & 0xFF, (rc >> 8) & 0xFF, rc >> 16
        n_in = len(self.inputs)
        what = f"input {arg}" if arg < n_in else f"output {arg - n_in}"
        if kind == ERR_BROADCAST and arg < len(shapes):
            return ShapeError(f"kernel {self.name}: {what} of shape {tuple(shapes[arg])} does not "
                              f"broadcast to the output shape {tuple(shapes[-1])} (dim {dim})")
        reason = ERROR_KINDS.get(kind, "unknown error")
        if kind == ERR_SHAPE:
            return KernelShapeError(f"kernel {self.name}: native code returned {rc} ({reason}, "
                                    f"{what}, dim {dim}); argument shapes "
                                    f"{[tuple(s) for s in shapes]}")
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
        if len(spec) != 2 or spec[0] not in DTYPES or type(spec[1]) is not int \
                or not 0 <= spec[1] <= abi.MAX_RANK:
            _fail(f"{what} entry {spec!r} is not [dtype, rank] with a rank of at most {abi.MAX_RANK}")


def _check_entry(i, entry):
    _expect(entry, dict, f"kernel {i}")
    for key, types in (("name", str), ("kind", str), ("op", str), ("attrs", dict),
                       ("inputs", list), ("outputs", list), ("variants", list)):
        if key not in entry:
            _fail(f"kernel {i} lacks {key!r}")
        _expect(entry[key], types, f"kernel {i} field {key!r}")
    if entry["kind"] != "compiled":
        _fail(f"kernel {i} has unknown kind {entry['kind']!r}")
    _check_signature(entry["inputs"], f"kernel {i} inputs")
    _check_signature(entry["outputs"], f"kernel {i} outputs")
    for v in entry["variants"]:
        _expect(v, dict, f"kernel {i} variant")
        if not isinstance(v.get("name"), str) or not isinstance(v.get("symbol"), str):
            _fail(f"kernel {i} variant {v!r} lacks a str name and symbol")
    if not entry["variants"]:
        _fail(f"kernel {i} ({entry['name']}) has no variants")
    if not _is_symbol(entry.get("symbol")) or not all(_is_symbol(v["symbol"]) for v in entry["variants"]):
        _fail(f"kernel {i} ({entry['name']}): dispatcher and variant symbols must be non-empty "
              "identifiers")


def _is_symbol(name) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 256 and name.replace("_", "a").isalnum() \
        and name.isascii()


def validate_section(section):
    """Raise ExecutableFormatError unless `section` has the documented structure."""
    _expect(section, dict, "section")
    for key, types in (("target", dict), ("llvm_ir", list), ("object", list), ("kernels", list)):
        if key not in section:
            _fail(f"missing {key!r}")
        _expect(section[key], types, key)
    for texts, obj in zip(section["llvm_ir"], section["object"]):
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
            _fail("an llvm_ir unit must be a non-empty list of strings")
        _expect(obj, (bytes, bytearray), "object unit")
    if len(section["llvm_ir"]) != len(section["object"]):
        _fail(f"{len(section['llvm_ir'])} llvm_ir units but {len(section['object'])} objects")
    for key in ("triple", "cpu", "features"):
        _expect(section["target"].get(key), str, f"target {key}")
    for i, entry in enumerate(section["kernels"]):
        _check_entry(i, entry)


def load_kernels(section, trust_native_code=False) -> list:
    """Kernel objects for a section (see `load_kernels_reported`)."""
    return load_kernels_reported(section, trust_native_code)[0]


def load_kernels_reported(section, trust_native_code=False) -> tuple[list, provenance.LoadReport]:
    """Kernel objects for a section, running only code this machine generated (provenance.py):
    the locally remembered section for the same specs, else a rebuild from the specs. With
    `trust_native_code` the section's own object code runs (its IR re-JITted on another CPU).
    Also returns how the code was obtained."""
    validate_section(section)
    if not section["kernels"]:
        return [], provenance.LoadReport(0, "local")
    section, report = provenance.native_section(section, trust_native_code)
    library = codelib.CodeLibrary(section["llvm_ir"], section["object"], section["target"])
    return [_make_kernel(e, library) for e in section["kernels"]], report


def _make_kernel(entry, library):
    functions = {}
    for v in entry["variants"]:
        address = library.address(v["symbol"])
        if not address:
            _fail(f"kernel {entry['name']} variant {v['name']}: symbol {v['symbol']!r} not found")
        functions[v["name"]] = abi.kernel_function(address)
    address = library.address(entry["symbol"])
    variant_address = library.global_address(variant_global(entry["symbol"]))
    if not address or not variant_address:
        _fail(f"kernel {entry['name']}: dispatcher {entry['symbol']!r} or its variant global "
              "not found")
    return Kernel(entry, functions=functions, library=library, address=address,
                  variant_address=variant_address)
