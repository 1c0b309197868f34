"""The executable: the only contract between the compiler and the runtime, and its file format.

A `.dvm` file is ONE msgpack document (never pickle):

    {"header":   {"magic": "DYNVM", "format_version": 1, "producer": "dynvm 0.1.0",
                  "target": {"triple", "cpu", "features"}},      # copied from the kernels section
     "body":     bytes,    # msgpack of {"functions", "constants", "constructors", "kernels", "shape_funcs"}
     "checksum": bytes}    # sha256(msgpack(header) + body)

The checksum covers the header as well as the body so that no flipped byte anywhere (even in the
producer string) goes unnoticed. `from_bytes` checks, in order: msgpack and the document's shape,
magic, format version, checksum, then decodes and verifies every section. Every defect raises
ExecutableFormatError; nothing else escapes, and nothing runs before everything is verified.
"""
import hashlib
import math
from dataclasses import dataclass, field

import msgpack
import numpy as np

from dynvm.vm import bytecode, kinds
from dynvm.vm.dtypes import DTYPES, dtype_name, np_dtype
from dynvm.vm.errors import DynVMError, ExecutableFormatError

MAGIC = "DYNVM"
FORMAT_VERSION = 3   # 2: loop kernels take the interrupt word and record their step counts;
#                      3: the kernels section holds one IR text and one object per compile unit
VERSION = "0.1.0"
PRODUCER = f"dynvm {VERSION}"

TUPLE_CONSTRUCTOR = {"name": "tuple", "tag": 0, "arity": None, "adt": "tuple"}

# Per-file budgets: a small file must not make the loader, the verifier or the VM use memory or
# time without bound. `from_bytes` checks the counts and sizes on the decoded document before it
# builds any section; `verify` checks the per-function register count and the string lengths
# (also for executables built in memory). Each is far above what real models need (measured:
# BERT-base has 1 function of 1 485 instructions, 10 registers, 192 constants of 340 MB, 9
# kernels; the 100 000-op graphs of benchmarks/compile_scaling.py have one function of up to
# 600 000 instructions and 7 registers; names and messages are under 100 characters).
MAX_FUNCTIONS = 1 << 16
MAX_CONSTANTS = 1 << 20
MAX_KERNELS = 1 << 16
MAX_SHAPE_FUNCS = 1 << 16
MAX_CONSTRUCTORS = 1 << 16
MAX_INSTRUCTIONS_PER_FUNCTION = 1 << 23   # verification is linear: about 10 s at this size
MAX_INSTRUCTIONS = 1 << 24                # in all functions together
# A frame's register file is allocated at every call: a file must not make that unbounded.
# Compiled functions use far fewer (registers are reused once their value is dead).
MAX_REGISTERS = 1 << 20                   # per function
MAX_TOTAL_REGISTERS = 1 << 24             # in all functions together
MAX_CONSTANT_BYTES = 1 << 33              # the constants' data in all
MAX_NAME_LENGTH = 4096                    # of functions, parameters, constructors, ADTs, kernels...
MAX_MESSAGE_LENGTH = bytecode.MAX_MESSAGE_LENGTH  # a Fatal message (checked with the operands)
SECTIONS = ("functions", "constants", "constructors", "kernels", "shape_funcs")


def empty_kernels_section(target=None) -> dict:
    """A kernels section with no kernels (programs that only move values around)."""
    return {"target": dict(target or {"triple": "", "cpu": "", "features": ""}),
            "llvm_ir": [], "object": [], "kernels": []}


@dataclass
class VMFunction:
    """One bytecode function. Parameters arrive in registers 0..len(params)-1."""

    name: str
    params: list
    param_types: list
    ret_type: dict
    register_count: int
    instructions: list = field(default_factory=list)


class Executable:
    """Functions, constants, constructors, kernels and shape functions of one compiled module."""

    def __init__(self, functions, constants=(), constructors=None, kernels=None, shape_funcs=()):
        self.functions = list(functions)
        self.constants = [_frozen(c) for c in constants]
        self.constructors = list(constructors) if constructors is not None else [dict(TUPLE_CONSTRUCTOR)]
        self.kernels = kernels if kernels is not None else empty_kernels_section()
        self.shape_funcs = list(shape_funcs)
        self._loaded_kernels = None  # list of Kernel, loaded once and shared by every VM
        self._native_code = None     # vm.native.NativeCode, built by the first native-tier VM
        self._native_plan = None     # vm.native.planned: register kinds and native-tier reasons
        self.load_report = None  # how the kernels got their native code (provenance.LoadReport)
        self.trust_native_code = False  # run the section's own object code (see load)
        self._verified = False

    # ------------------------------------------------------------ lookup

    def function_index(self, name: str) -> int:
        """The index of function `name` (KeyError when there is none)."""
        for i, fn in enumerate(self.functions):
            if fn.name == name:
                return i
        raise KeyError(name)

    def loaded_kernels(self) -> list:
        """`kernels.load_kernels(self.kernels)`, done once and cached on the executable."""
        if self._loaded_kernels is None:
            if not self.kernels.get("kernels"):
                self._loaded_kernels = []
            else:
                # lazily: programs without kernels never touch LLVM; loading needs no code generator
                from dynvm.kernels.runtime import load_kernels_reported
                self._loaded_kernels, self.load_report = load_kernels_reported(
                    self.kernels, self.trust_native_code)
        return self._loaded_kernels

    def __eq__(self, other):
        if not isinstance(other, Executable):
            return NotImplemented
        return (self.functions == other.functions and self.constructors == other.constructors
                and self.kernels == other.kernels and self.shape_funcs == other.shape_funcs
                and len(self.constants) == len(other.constants)
                and all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
                        for a, b in zip(self.constants, other.constants)))

    __hash__ = None

    # ------------------------------------------------------------ serialization

    def to_bytes(self) -> bytes:
        """The executable as the bytes of a .dvm file (one msgpack document: header, body of
        sections, checksum; `from_bytes` reads it back and verifies everything)."""
        body = msgpack.packb({
            "functions": [_encode_function(f) for f in self.functions],
            "constants": [_encode_constant(c) for c in self.constants],
            "constructors": self.constructors,
            "kernels": self.kernels,
            "shape_funcs": self.shape_funcs,
        }, use_bin_type=True)
        header = {"magic": MAGIC, "format_version": FORMAT_VERSION, "producer": PRODUCER,
                  "target": dict(self.kernels["target"])}
        return msgpack.packb({"header": header, "body": body, "checksum": _checksum(header, body)},
                             use_bin_type=True)

    def save(self, path) -> None:
        """Write the executable to a .dvm file (`to_bytes`)."""
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path, trust_native_code=False) -> "Executable":
        """Read a .dvm file (see `from_bytes`)."""
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), trust_native_code)

    @classmethod
    def from_bytes(cls, data: bytes, trust_native_code=False) -> "Executable":
        """Decode and fully verify; raises ExecutableFormatError on any defect.

        The kernels run native code this machine generated: a file built here loads the code
        remembered for its kernel specs, any other file's kernels are rebuilt from their specs.
        `trust_native_code=True` runs the file's own object code instead (only for files from
        a source you trust: native code can do anything).
        """
        try:
            return _decode_document(data, trust_native_code)
        except (ExecutableFormatError, Warning):   # a warning the caller's filter made an error
            raise
        except Exception as e:  # noqa: BLE001 - the promise is: a bad file is a format error, always
            raise ExecutableFormatError(f"malformed executable ({type(e).__name__}: {e})") from e

    def verify(self) -> None:
        """Check every section (what `from_bytes` does after decoding); raises ExecutableFormatError.

        The VM runs this once per Executable before the first instruction, so bytecode built in
        memory by the compiler gets the same guarantees as a loaded file.
        """
        _verify_kernels_section(self.kernels)
        _verify_constructors(self.constructors)
        _verify_shape_funcs(self.shape_funcs)
        for c in self.constants:
            if not isinstance(c, np.ndarray) or c.dtype.name not in DTYPES:
                raise ExecutableFormatError(f"bad constant {c!r:.80}")
        names = set()
        for fn in self.functions:
            if fn.name in names:
                raise ExecutableFormatError(f"duplicate function name {fn.name!r}")
            names.add(fn.name)
            _verify_function(self, fn)
        for i in range(len(self.functions)):  # after all: a call site reads its callee's types
            kinds.check_function(self, i)
        self._verified = True

    # ------------------------------------------------------------ disassembly

    def explain(self) -> str:
        """Which functions run in the native tier, and why each other one runs in the Python
        tier (what `dynvm explain model.dvm` prints)."""
        from dynvm.vm.native import explain      # lazily: it imports llvmlite
        if not self._verified:
            self.verify()
        return explain(self)

    def disassemble(self) -> str:
        """A readable listing: tables first, then each function's code."""
        lines = ["constants:"]
        lines += [f"  c{i}: {_describe_constant(c)}" for i, c in enumerate(self.constants)]
        target = self.kernels["target"]
        lines.append(f"kernels (target {target.get('triple') or '-'} {target.get('cpu') or '-'}):")
        for i, k in enumerate(self.kernels["kernels"]):
            variants = ", ".join(v["name"] for v in k.get("variants", []))
            lines.append(f"  k{i}: {k['name']} ({k['kind']}) variants: {variants}")
        lines.append("shape functions:")
        lines += [f"  s{i}: {s['name']} {s.get('attrs', {})}" for i, s in enumerate(self.shape_funcs)]
        lines.append("constructors:")
        lines += [f"  ctor{i}: {c['name']} (adt {c['adt']}, tag {c['tag']}, arity {c['arity']})"
                  for i, c in enumerate(self.constructors)]
        for i, fn in enumerate(self.functions):
            params = ", ".join(f"r{j} {p}: {_describe_type(t)}"
                               for j, (p, t) in enumerate(zip(fn.params, fn.param_types)))
            lines.append("")
            lines.append(f"fn f{i} {fn.name}({params}) -> {_describe_type(fn.ret_type)}"
                         f"  [{fn.register_count} registers]")
            lines += [bytecode.format_instruction(ins, pc, self._describe_index)
                      for pc, ins in enumerate(fn.instructions)]
        return "\n".join(lines) + "\n"

    def _describe_index(self, kind, index):
        if kind == "func":
            return self.functions[index].name
        if kind == "const":
            return _describe_constant(self.constants[index])
        if kind == "ctor":
            return self.constructors[index]["name"]
        if kind == "shape_func":
            return self.shape_funcs[index]["name"]
        k = self.kernels["kernels"][index]
        return f"{k['name']}[{','.join(v['name'] for v in k.get('variants', []))}]"

    def __repr__(self):
        return (f"<Executable {len(self.functions)} functions, {len(self.constants)} constants, "
                f"{len(self.kernels['kernels'])} kernels>")


# ---------------------------------------------------------------- encoding helpers

def _frozen(c) -> np.ndarray:
    """A read-only contiguous view: constants are shared by every invocation, so nothing may write them."""
    view = np.asarray(c, order="C").view()
    view.setflags(write=False)
    return view


def _checksum(header: dict, body: bytes) -> bytes:
    return hashlib.sha256(msgpack.packb(header, use_bin_type=True) + body).digest()


def _encode_function(fn: VMFunction) -> dict:
    return {"name": fn.name, "params": list(fn.params), "param_types": list(fn.param_types),
            "ret_type": fn.ret_type, "register_count": fn.register_count,
            "instructions": [bytecode.encode(i) for i in fn.instructions]}


def _encode_constant(c: np.ndarray) -> dict:
    name = dtype_name(c.dtype)
    data = np.asarray(c, dtype=np_dtype(name).newbyteorder("<"), order="C").tobytes()
    return {"dtype": name, "shape": list(c.shape), "data": data}


def _describe_constant(c: np.ndarray) -> str:
    text = f"{c.dtype.name}[{', '.join(map(str, c.shape))}]"
    if c.size <= 4:
        text += f"={_short(c)}"
    return text


def _short(c):
    return repr(c.item()) if c.ndim == 0 else repr(c.tolist())


def _describe_type(t) -> str:
    kind = t.get("kind") if isinstance(t, dict) else None
    if kind == "tensor":
        dims = ", ".join("?" if d is None else str(d) for d in t["shape"])
        return f"{t['dtype']}[{dims}]"
    if kind == "tuple":
        return f"({', '.join(_describe_type(f) for f in t['fields'])})"
    if kind == "adt":
        return t["name"]
    if kind == "func":
        return "fn"
    return repr(t)


# ---------------------------------------------------------------- decoding

def _expect(cond, message):
    if not cond:
        raise ExecutableFormatError(message)


def _expect_dict(obj, keys, what):
    _expect(type(obj) is dict and set(obj) == set(keys),
            f"{what} must be a map with keys {sorted(keys)}, got {_brief(obj)}")


def _brief(obj):
    if type(obj) is dict:
        return f"map with keys {sorted(map(str, obj))}"
    return f"{type(obj).__name__} {obj!r:.60}"


def _check_framing(data: bytes):
    """Magic first, then the length the document declares (its body's byte count), so a wrong
    or cut file gets a plain message instead of msgpack's."""
    _expect(len(data) >= 16 and b"\xa5" + MAGIC.encode() in data[:64],
            f"not a dynvm executable (bad magic: {len(data)} bytes that do not start with a dynvm header)")
    expected = _declared_size(data)
    if expected is not None and len(data) < expected:
        raise ExecutableFormatError(f"truncated: {len(data)} of {expected} bytes (the file was cut short)")
    if expected is not None and len(data) > expected:
        raise ExecutableFormatError(f"{len(data) - expected} bytes after the end of the executable "
                                    f"({expected} bytes): not one dynvm executable")


_BIN_LENGTH = {0xc4: 1, 0xc5: 2, 0xc6: 4}      # msgpack bin 8/16/32: bytes of the length field
_CHECKSUM_TAIL = len(msgpack.packb("checksum")) + len(msgpack.packb(bytes(32), use_bin_type=True))


def _declared_size(data: bytes):
    """The document's size from its body's length field (the body follows the small header),
    or None when the layout is not the one `to_bytes` writes (msgpack then reports)."""
    key = msgpack.packb("body")
    at = data.find(key, 0, 4096)
    if at < 0 or at + len(key) >= len(data) or data[at + len(key)] not in _BIN_LENGTH:
        return None
    width = _BIN_LENGTH[data[at + len(key)]]
    start = at + len(key) + 1
    if start + width > len(data):
        return None
    length = int.from_bytes(data[start:start + width], "big")
    return start + width + length + _CHECKSUM_TAIL


def _decode_document(data, trust_native_code=False) -> Executable:
    _expect(isinstance(data, (bytes, bytearray, memoryview)), "an executable is bytes")
    data = bytes(data)
    _check_framing(data)
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        if "incomplete input" in str(e):
            raise ExecutableFormatError(f"truncated: the file ends after {len(data)} bytes, inside "
                                        "its header") from None
        raise ExecutableFormatError(f"not a dynvm executable: invalid msgpack ({e})") from None
    _expect_dict(doc, ("header", "body", "checksum"), "executable document")
    header = doc["header"]
    _expect(type(header) is dict, "executable header must be a map")
    _expect(header.get("magic") == MAGIC, f"not a dynvm executable: bad magic {header.get('magic')!r:.40}")
    version = header.get("format_version")
    _expect(type(version) is int, f"bad format version {version!r:.40}")
    _expect(version <= FORMAT_VERSION,
            f"the file's format version {version} is newer than supported (this is dynvm {VERSION},"
            f" which reads format version {FORMAT_VERSION}); upgrade dynvm")
    _expect(version == FORMAT_VERSION,
            f"the file's format version {version} is older than this dynvm {VERSION} reads "
            f"({FORMAT_VERSION}); build the program again with this dynvm")
    _expect_dict(header, ("magic", "format_version", "producer", "target"), "executable header")
    _expect(type(doc["body"]) is bytes and type(doc["checksum"]) is bytes, "body and checksum must be bytes")
    _expect(_checksum(header, doc["body"]) == doc["checksum"],
            "checksum mismatch: the executable is corrupt")
    body = msgpack.unpackb(doc["body"], raw=False, strict_map_key=True, use_list=True)
    _expect_dict(body, SECTIONS, "executable body")
    _check_budgets(body)
    _expect(header["target"] == body["kernels"].get("target") if type(body["kernels"]) is dict else False,
            "header target does not match the kernels section target")
    exe = Executable(
        functions=[_decode_function(f) for f in _list(body["functions"], "functions")],
        constants=[_decode_constant(c) for c in _list(body["constants"], "constants")],
        constructors=_list(body["constructors"], "constructors"),
        kernels=body["kernels"],
        shape_funcs=_list(body["shape_funcs"], "shape_funcs"),
    )
    exe.verify()
    exe.trust_native_code = trust_native_code
    _load_kernels_or_fail(exe)
    return exe


def _within(count, limit, name, what):
    _expect(count <= limit, f"the file has {count} {what}, over the limit {name} = {limit}")


def _check_budgets(body) -> None:
    """The counts and sizes of a decoded body against the per-file budgets (the MAX_ constants).
    Only sizes are read here: what has the wrong type is reported by the decoding that follows."""
    kernels = body["kernels"].get("kernels") if type(body["kernels"]) is dict else None
    for section, limit, name in (("functions", MAX_FUNCTIONS, "MAX_FUNCTIONS"),
                                 ("constants", MAX_CONSTANTS, "MAX_CONSTANTS"),
                                 ("shape_funcs", MAX_SHAPE_FUNCS, "MAX_SHAPE_FUNCS"),
                                 ("constructors", MAX_CONSTRUCTORS, "MAX_CONSTRUCTORS")):
        _within(len(_list(body[section], section)), limit, name, section)
    _within(len(kernels) if type(kernels) is list else 0, MAX_KERNELS, "MAX_KERNELS", "kernels")
    functions = [f for f in body["functions"] if type(f) is dict]
    code = [len(f["instructions"]) for f in functions if type(f.get("instructions")) is list]
    _within(max(code, default=0), MAX_INSTRUCTIONS_PER_FUNCTION, "MAX_INSTRUCTIONS_PER_FUNCTION",
            "instructions in one function")
    _within(sum(code), MAX_INSTRUCTIONS, "MAX_INSTRUCTIONS", "instructions")
    _within(sum(f["register_count"] for f in functions if type(f.get("register_count")) is int),
            MAX_TOTAL_REGISTERS, "MAX_TOTAL_REGISTERS", "registers")
    _within(sum(len(c["data"]) for c in body["constants"]
                if type(c) is dict and type(c.get("data")) is bytes),
            MAX_CONSTANT_BYTES, "MAX_CONSTANT_BYTES", "bytes of constants")


def _name(value, what) -> None:
    """A name: a string of at most MAX_NAME_LENGTH characters."""
    _expect(type(value) is str, f"{what} must be a string, got {_brief(value)}")
    _expect(len(value) <= MAX_NAME_LENGTH,
            f"{what} is {len(value)} characters long, over the limit MAX_NAME_LENGTH = {MAX_NAME_LENGTH}")


def _list(obj, what):
    _expect(type(obj) is list, f"{what} must be a list, got {_brief(obj)}")
    return obj


def _decode_function(obj) -> VMFunction:
    _expect_dict(obj, ("name", "params", "param_types", "ret_type", "register_count", "instructions"),
                 "function")
    code = _list(obj["instructions"], f"instructions of {obj['name']!r:.40}")
    return VMFunction(obj["name"], obj["params"], obj["param_types"], obj["ret_type"],
                      obj["register_count"], [bytecode.decode(i) for i in code])


def _decode_constant(obj) -> np.ndarray:
    _expect_dict(obj, ("dtype", "shape", "data"), "constant")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    _expect(type(dtype) is str and dtype in DTYPES, f"constant has unknown dtype {dtype!r:.40}")
    _expect(type(shape) is list and all(type(d) is int and d >= 0 for d in shape),
            f"constant has a bad shape {shape!r:.60}")
    _expect(type(data) is bytes, "constant data must be bytes")
    dt = np_dtype(dtype)
    _expect(len(data) == math.prod(shape) * dt.itemsize,
            f"constant {dtype}{shape} needs {math.prod(shape) * dt.itemsize} bytes, has {len(data)}")
    # copy: aligned, native byte order, independent of the file buffer; read-only so that no
    # kernel or caller can change a constant shared by every invocation
    arr = np.frombuffer(data, dtype=dt.newbyteorder("<")).astype(dt).reshape(shape)
    arr.setflags(write=False)
    return arr


def _load_kernels_or_fail(exe: Executable) -> None:
    try:
        exe.loaded_kernels()
    except ExecutableFormatError:
        raise
    except DynVMError as e:
        raise ExecutableFormatError(f"kernels section cannot be loaded: {e}") from e


# ---------------------------------------------------------------- verification

def _verify_function(exe: Executable, fn: VMFunction) -> None:
    where = f"function {fn.name!r:.60}"
    _name(fn.name, f"{where}: name")
    _expect(type(fn.params) is list, f"{where}: bad params")
    for p in fn.params:
        _name(p, f"{where}: a parameter name")
    _expect(type(fn.param_types) is list and len(fn.param_types) == len(fn.params),
            f"{where}: needs one param type per param")
    for t in fn.param_types:
        _verify_type(t, where)
    _verify_type(fn.ret_type, where)
    _expect(type(fn.register_count) is int and fn.register_count >= len(fn.params),
            f"{where}: register_count {fn.register_count!r:.20} is smaller than the parameter count")
    _expect(fn.register_count <= MAX_REGISTERS,
            f"{where}: register_count {fn.register_count} is over the limit MAX_REGISTERS = "
            f"{MAX_REGISTERS} (a frame would cost unbounded memory)")
    counts = {"func": len(exe.functions), "const": len(exe.constants),
              "kernel": len(exe.kernels["kernels"]), "shape_func": len(exe.shape_funcs),
              "ctor": len(exe.constructors)}
    bytecode.verify_function(fn.name, fn.instructions, fn.register_count, counts)
    for pc, ins in enumerate(fn.instructions):
        for kind in ins.spec.index_kinds:
            check = _ARITY_CHECKS.get(kind)
            problem = check(exe, ins) if check else None
            _expect(problem is None, f"{where}, pc {pc} ({ins.name}): {problem}")


def _check_function_args(exe, ins):
    """A call (flag `calls`) passes every parameter; a closure captures a prefix of them."""
    func, args, _ = ins.args
    want = len(exe.functions[func].params)
    if ins.spec.has("calls"):
        return None if len(args) == want else \
            f"calls {exe.functions[func].name!r} with {len(args)} args, it takes {want}"
    return None if len(args) <= want else f"captures {len(args)} values, the function takes {want}"


def _check_adt(exe, ins):
    ctor, fields, _ = ins.args
    arity = exe.constructors[ctor]["arity"]
    if ctor == 0 or arity is None or len(fields) == arity:
        return None
    return f"constructor {exe.constructors[ctor]['name']!r} takes {arity} fields, got {len(fields)}"


def _check_kernel(exe, ins):
    """An opcode flagged `loop` names a loop kernel (whose last two inputs and last output the
    VM supplies), any other a kernel that is not a loop; the registers match its signature."""
    k, inputs, outputs = ins.args
    spec = exe.kernels["kernels"][k]
    loop = ins.spec.has("loop")
    if (spec.get("op") == "loop") != loop:
        return f"kernel {spec['name']!r} is {'not ' if loop else ''}a loop kernel"
    n_in, n_out = len(spec["inputs"]) - 2 * loop, len(spec["outputs"]) - loop
    if len(inputs) == n_in and len(outputs) == n_out:
        return None
    return (f"kernel {spec['name']!r} takes {n_in} inputs and {n_out} outputs, got {len(inputs)}"
            f" and {len(outputs)}")


# operand counts checked against the table entry an index operand names, per index kind
# (constants and shape functions declare no arity)
_ARITY_CHECKS = {"func": _check_function_args, "ctor": _check_adt, "kernel": _check_kernel}


def _verify_type(t, where) -> None:
    """A type descriptor: tensor / tuple / adt / func / any (a type variable: no check)."""
    _expect(type(t) is dict and type(t.get("kind")) is str, f"{where}: bad type descriptor {t!r:.60}")
    kind = t["kind"]
    if kind == "tensor":
        _expect_dict(t, ("kind", "shape", "dtype"), f"{where}: tensor type")
        _expect(type(t["shape"]) in (list, tuple) and all(
            d is None or (type(d) is int and d >= 0) for d in t["shape"]), f"{where}: bad tensor shape")
        _expect(t["dtype"] in DTYPES if type(t["dtype"]) is str else False, f"{where}: bad dtype")
    elif kind == "tuple":
        _expect_dict(t, ("kind", "fields"), f"{where}: tuple type")
        _expect(type(t["fields"]) in (list, tuple), f"{where}: tuple fields must be a list")
        for f in t["fields"]:
            _verify_type(f, where)
    elif kind == "adt":
        _expect_dict(t, ("kind", "name"), f"{where}: adt type")
        _name(t["name"], f"{where}: an adt name")
    else:
        _expect(kind in ("func", "any"), f"{where}: unknown type kind {kind!r:.40}")


def _verify_constructors(ctors) -> None:
    _expect(ctors and type(ctors[0]) is dict and ctors[0].get("name") == "tuple" and ctors[0].get("tag") == 0,
            "constructor 0 must be the builtin tuple")
    names = set()
    for c in ctors:
        keys = ("name", "tag", "arity", "adt") + (("fields",) if "fields" in c else ())
        _expect_dict(c, keys, "constructor")
        if "fields" in c:     # the field types (optional): invoke checks ADT arguments deeply
            _expect(type(c["fields"]) is list and len(c["fields"]) == c["arity"],
                    f"constructor {c.get('name')!r:.40}: fields must list one type per field")
            for t in c["fields"]:
                _verify_type(t, f"constructor {c['name']!r:.40}")
        _expect(type(c["tag"]) is int and c["tag"] >= 0
                and (c["arity"] is None or (type(c["arity"]) is int and c["arity"] >= 0)),
                f"bad constructor {c!r:.80}")
        _name(c["name"], "a constructor name")
        _name(c["adt"], f"the adt of constructor {c['name']!r:.40}")
        _expect(c["name"] not in names, f"duplicate constructor name {c['name']!r}")
        names.add(c["name"])


def _verify_kernels_section(section) -> None:
    _expect(type(section) is dict and {"target", "llvm_ir", "object", "kernels"} <= set(section),
            f"kernels section must have target, llvm_ir, object and kernels, got {_brief(section)}")
    target = section["target"]
    _expect(type(target) is dict and all(type(target.get(k)) is str for k in ("triple", "cpu", "features")),
            "kernels target must have string triple, cpu and features")
    units, objects = section["llvm_ir"], section["object"]
    _expect(type(units) is list and type(objects) is list and len(units) == len(objects)
            and all(type(u) is list and u and all(type(t) is str for t in u) for u in units)
            and all(type(o) is bytes for o in objects),
            "kernels llvm_ir and object must be lists with one entry per compile unit: a "
            "non-empty list of strings and bytes")
    _expect(type(section["kernels"]) is list, "kernels list must be a list")
    for k in section["kernels"]:
        _expect(type(k) is dict and type(k.get("name")) is str and type(k.get("kind")) is str
                and type(k.get("inputs")) is list and type(k.get("outputs")) is list
                and all(_is_signature_entry(s) for s in k["inputs"] + k["outputs"])
                and type(k.get("variants")) is list
                and all(type(v) is dict and type(v.get("name")) is str for v in k["variants"]),
                f"bad kernel entry {k!r:.80}")
        for name in [k["name"], k.get("symbol", "")] + [v[key] for v in k["variants"]
                                                        for key in ("name", "symbol") if key in v]:
            _name(name, f"a name in kernel entry {k['name']!r:.40}")


def _is_signature_entry(s) -> bool:
    """A kernel operand's [dtype, rank] (the verifier's kind checks read it)."""
    return (type(s) is list and len(s) == 2 and type(s[0]) is str and s[0] in DTYPES
            and type(s[1]) is int and s[1] >= 0)


def _verify_shape_funcs(entries) -> None:
    for s in entries:
        _expect_dict(s, ("name", "attrs"), "shape function entry")
        _expect(type(s["name"]) is str and type(s["attrs"]) is dict, f"bad shape function entry {s!r:.80}")
        _name(s["name"], "a shape function name")
    if not entries:
        return
    from dynvm import shape_funcs  # lazily: the runtime only needs the registry when a program uses it
    for s in entries:
        try:
            shape_funcs.lookup(s["name"])
        except KeyError:
            raise ExecutableFormatError(f"unknown shape function {s['name']!r}") from None
