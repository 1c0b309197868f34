"""KernelBuilder: collects the kernels of one executable and compiles them.

The compiler adds kernels while lowering; `finish()` compiles them (in units, in parallel:
`_compile`, codelib.Compilation) and returns the msgpack-able kernels section (its layout is
documented in runtime.py and docs/design.md).
Kernels come from the families registered in kernels/family.py: the builder validates
the signature, asks the family to check the spec and emit its variants and dispatcher, and
records {"symbol": S, "variants": [{"name", "symbol": S__<name>}...]} in the section.
"""
import copy
import json
import re

from llvmlite import ir

from dynvm.kernels import codelib, provenance
from dynvm.kernels.abi import MAX_RANK, variant_global
from dynvm.kernels.family import get_family, variant_symbol
from dynvm.vm.dtypes import DTYPES
from dynvm.vm.errors import ExecutableFormatError, KernelError


def _signature(specs, what):
    """Normalise [(dtype, rank)...] to [[dtype, rank]...], rejecting bad entries."""
    out = []
    for spec in specs:
        if not isinstance(spec, (list, tuple)) or len(spec) != 2:
            raise KernelError(f"{what}: expected (dtype, rank), got {spec!r}")
        dtype, rank = spec
        if dtype not in DTYPES:
            raise KernelError(f"{what}: unsupported dtype {dtype!r}")
        if type(rank) is not int or not 0 <= rank <= MAX_RANK:
            raise KernelError(f"{what}: rank must be an int in [0, {MAX_RANK}], got {rank!r}")
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
        self._target = codelib.host_target()
        self._kernels = []
        self._index = {}
        self._section = None

    def add_compiled(self, name, family, spec, inputs, outputs) -> int:
        """A kernel of `family` (kernels/family.py) for `spec` (a msgpack-able dict) -> index.

        inputs/outputs: [(dtype, rank)...]. Identical (family, spec, signature) share an index.
        """
        self._check_open()
        fam = get_family(family)
        if not isinstance(spec, dict):
            raise KernelError(f"kernel {name}: spec must be a dict, got {type(spec).__name__}")
        spec = _plain(spec)
        inputs = _signature(inputs, f"kernel {name} inputs")
        outputs = _signature(outputs, f"kernel {name} outputs")
        try:
            fam.check(spec, inputs, outputs)
            self._check_calls(fam, spec)
        except KernelError as e:
            raise KernelError(f"kernel {name}: {e}") from None
        key = json.dumps([family, spec, inputs, outputs], sort_keys=True)
        if key in self._index:
            return self._index[key]
        index = len(self._kernels)
        symbol = f"dynvm_k{index}_{re.sub(r'[^A-Za-z0-9_]', '_', str(name))[:48]}"
        return self._add(key, {"name": str(name), "kind": "compiled", "op": family,
                               "attrs": spec, "inputs": inputs, "outputs": outputs,
                               "symbol": symbol, "variants": []})     # emitted by finish()

    def add_elementwise(self, name, expr, inputs, output) -> int:
        """Shorthand: a fused elementwise kernel computing `expr` (see elementwise.py)."""
        return self.add_compiled(name, "elementwise", {"expr": expr}, inputs, [output])

    def _check_calls(self, fam, spec):
        """A kernel that calls other kernels (a native loop) may call only dispatchers already
        in this module, with their argument count: never an arbitrary symbol."""
        if fam.calls is None:
            return
        arity = {k["symbol"]: len(k["inputs"]) + len(k["outputs"]) for k in self._kernels}
        for symbol, nargs in fam.calls(spec):
            if arity.get(symbol) != nargs:
                raise KernelError(f"calls {symbol!r} with {nargs} arguments, which is not a kernel "
                                  "of this module taking that many")

    def entry(self, index: int) -> dict:
        """The section entry of kernel `index` (name, kind, symbol, ...); do not modify it."""
        return self._kernels[index]

    def _add(self, key, entry):
        index = len(self._kernels)
        self._kernels.append(entry)
        self._index[key] = index
        return index

    def _check_open(self):
        if self._section is not None:
            raise KernelError("KernelBuilder.finish() was already called")

    def finish(self) -> dict:
        """The kernels section: the one this machine generated before for the same kernels
        (provenance's spec key: names, specs, signatures, host, generator sources), found
        before any IR is generated; else every kernel's variants and dispatcher emitted and
        compiled, one object per unit (`_compile`; nothing to compile without kernels)."""
        if self._section is None:
            section = {"target": dict(self._target), "llvm_ir": [], "object": [],
                       "kernels": self._kernels}
            local = provenance.local_section(section) if self._kernels else None
            if local is not None:
                self._section = copy.deepcopy(local)
                return self._section
            if self._kernels:
                self._compile(section)
            self._section = section
            provenance.remember(section)
        return self._section

    def _compile(self, section):
        """Emit the kernels module by module (a kernel with the kernels it calls share one) and
        compile them in units of about UNIT_INSTRUCTIONS instructions, each handed to
        codelib.Compilation as soon as it is full, so earlier units compile (in another process)
        while later ones are emitted. The units depend only on the kernels, so the same kernels
        give the same objects."""
        compilation = codelib.Compilation(self._target)
        units, unit, size = [], [], 0
        for group in _groups(self._calls()):
            module = self._emit(group)
            unit.append(str(module))
            size += _instructions(module)
            if size >= UNIT_INSTRUCTIONS:
                units.append(unit)
                compilation.submit(unit)
                unit, size = [], 0
        if unit:
            units.append(unit)
            compilation.submit(unit, last=True)
        section["llvm_ir"], section["object"] = units, compilation.objects()

    def _calls(self) -> list:
        """Per kernel, the indices of the kernels it calls (a native loop calls its body's
        kernels' dispatchers)."""
        index = {k["symbol"]: i for i, k in enumerate(self._kernels)}
        out = []
        for entry in self._kernels:
            calls = get_family(entry["op"]).calls
            out.append([index[s] for s, _ in calls(entry["attrs"])] if calls is not None else [])
        return out

    def _emit(self, group) -> ir.Module:
        """One LLVM module holding the variants and dispatchers of the kernels `group`. Other
        definitions (helpers a family emits under a name of its own, which another module may
        emit too) become internal: only the kernels' symbols are visible outside a unit."""
        module = ir.Module(name="dynvm_kernels")
        module.triple = self._target["triple"]
        owned = set()
        for i in group:
            entry = self._kernels[i]
            names = get_family(entry["op"]).emit(module, entry["symbol"], entry["attrs"],
                                                 entry["inputs"], entry["outputs"])
            entry["variants"] = [{"name": v, "symbol": variant_symbol(entry["symbol"], v)}
                                 for v in names]
            owned.add(entry["symbol"])
            owned.update(v["symbol"] for v in entry["variants"])
            owned.add(variant_global(entry["symbol"]))
        for name, value in module.globals.items():
            if name not in owned and _defines(value) and value.linkage not in _LOCAL:
                value.linkage = "internal"
        return module


# A unit's size in LLVM instructions before optimisation: big enough that the per-unit costs
# (a module, an object, its sections in memory) stay small, small enough that a model's GEMM
# kernels spread over the compile processes (one GEMM kernel is about 7000).
UNIT_INSTRUCTIONS = 12000
_LOCAL = ("internal", "private")


def _groups(edges) -> list:
    """Connected components (sorted lists of indices) of the graph whose node i has the
    neighbours `edges[i]`, in order of their first index."""
    parent = list(range(len(edges)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i, neighbours in enumerate(edges):
        for j in neighbours:
            parent[root(i)] = root(j)
    components = {}
    for i in range(len(edges)):
        components.setdefault(root(i), []).append(i)
    return sorted(components.values())


def _defines(value) -> bool:
    """`value` (a module global) is a definition, not a declaration (llvmlite prints a global
    variable without an initializer as a declaration unless its linkage says otherwise)."""
    if isinstance(value, ir.Function):
        return not value.is_declaration
    return isinstance(value, ir.GlobalVariable) and (
        value.initializer is not None or value.linkage not in ("", "external", "extern_weak"))


def _instructions(module) -> int:
    return sum(len(block.instructions) for f in module.functions for block in f.blocks)


def rebuild_section(section: dict) -> dict:
    """Regenerate a (validated) kernels section from its recorded specs with the local
    generators: the code a foreign file's kernels run by default (see provenance.py)."""
    kb = KernelBuilder()
    for i, k in enumerate(section["kernels"]):
        try:
            kb.add_compiled(k["name"], k["op"], k["attrs"], k["inputs"], k["outputs"])
        except KernelError as e:
            raise ExecutableFormatError(f"kernels section: kernel {i} cannot be rebuilt from its "
                                        f"spec: {e}") from None
    codelib.stats["rebuilds"] += 1
    return kb.finish()
