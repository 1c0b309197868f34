"""What every register holds at every pc: the verifier's kind analysis, and an API for later tiers.

A forward dataflow over each function's control-flow graph (the model is IREE's ahead-of-time
verifier). The state before an instruction maps every register to a `Kind`: undefined, a tensor
(dtype, rank and the dimensions known statically), a storage block, an ADT or tuple (its
constructor and the kinds of its fields when known), a closure (its function and captured kinds
when known), or "any" (a join of different kinds, a value the file declares as `any`, or a
register defined on some paths only). Where control flow merges, kinds are joined: whatever the
incoming states disagree on becomes unknown. The analysis runs to a fixed point first; then
every reachable instruction is checked once against its final state, so the outcome does not
depend on the order the blocks were visited in.

Checks (a definite mismatch is an ExecutableFormatError naming the function, pc, opcode,
register, what was expected and what was found; an unknown part always passes and is left to
the VM's run-time checks):
  - no register is read (roles r, u, v, f) while it is undefined on every path to the read;
  - kernel inputs and outputs are tensors of the dtype and rank the kernel entry records;
    shape-function inputs are tensors; shapes (AllocStorageReg, AllocTensorReg, ReshapeTensor)
    are int64 1-D tensors; If compares 0-d tensors;
  - AllocTensor(Reg) views a storage; GetField and GetTag read ADTs (GetField's index is below the
    number of fields when that is known); InvokeClosure calls a closure (with as many values as
    its function takes, when the closure is known);
  - call arguments, captured values, constructor fields (when the constructor records their
    types) and returned values fit the declared types.

Each opcode's effect on kinds is one entry of `_RULES`; two effects come from the opcode table
instead: a register dropped (role `d`) becomes undefined, and an opcode flagged `alias` gives its
written register the kind of its read register (a Move).

Cost: one pass over the instructions per visit of a block (a single pass for code without
backward jumps); states are stored only at block entries (one kind per register), and joins
happen only at block ends.
"""
import heapq
from functools import lru_cache
from dataclasses import dataclass

from dynvm.vm.bytecode import Opcode, registers
from dynvm.vm.errors import ExecutableFormatError

KINDS = ("undef", "tensor", "storage", "adt", "closure", "any")
MAX_DEPTH = 4  # nesting of known field kinds kept (deeper fields become unknown): joins stay cheap
MAX_RANK = 64  # numpy's limit on dimensions


@dataclass(frozen=True)
class Kind:
    """What a register holds. Fields that do not apply to the kind, or are not known, are None.

    kind    one of KINDS
    dtype   tensor: element dtype name; storage: the dtype it was allocated for
    rank    tensor: number of dimensions
    dims    tensor: a tuple of `rank` entries, each an int or None (unknown)
    name    adt: the ADT's name ("tuple" for tuples)
    ctor    adt: the constructor index (0 for tuples)
    fields  adt: the fields' kinds; closure: the captured values' kinds
    func    closure: the function index
    """

    kind: str
    dtype: str = None
    rank: int = None
    dims: tuple = None
    name: str = None
    ctor: int = None
    fields: tuple = None
    func: int = None

    def __str__(self):
        if self.kind == "tensor":
            dims = "?" if self.dims is None else ", ".join("?" if d is None else str(d) for d in self.dims)
            shape = " of unknown rank" if self.rank is None else f"[{dims}]"
            return f"tensor {self.dtype or '?'}{shape}"
        if self.kind == "adt":
            if self.name == "tuple":
                return "tuple" if self.fields is None else f"tuple of {len(self.fields)}"
            return f"ADT {self.name}" if self.name else "ADT"
        if self.kind == "closure":
            return "closure" if self.func is None else f"closure of f{self.func}"
        return {"undef": "undefined", "any": "any value", "storage": "storage"}[self.kind]


UNDEF, ANY = Kind("undef"), Kind("any")
STORAGE, ADT, CLOSURE = Kind("storage"), Kind("adt"), Kind("closure")
TENSOR = Kind("tensor")
SCALAR_I64 = Kind("tensor", "int64", 0, ())
SHAPE = Kind("tensor", "int64", 1, (None,))  # a shape: int64 1-D, its length unknown


def tensor(dtype=None, rank=None, dims=None) -> Kind:
    """A tensor kind; `dims` defaults to `rank` unknown dimensions. A rank above MAX_RANK (no
    array has one) is unknown, so that a crafted shape cannot make the analysis slow."""
    if rank is not None and rank > MAX_RANK:
        rank = dims = None
    if dims is None and rank is not None:
        dims = (None,) * rank
    return _tensor(dtype, rank, None if dims is None else tuple(dims))


@lru_cache(maxsize=4096)
def _tensor(dtype, rank, dims):
    """One object per tensor kind in use: the analysis makes one at most instructions."""
    return Kind("tensor", dtype, rank, dims)


def kind_of_type(t, depth=0) -> Kind:
    """The kind of a value of a (verified) type descriptor: tensor / tuple / adt / func / any."""
    k = t["kind"]
    if k == "tensor":
        return tensor(t["dtype"], len(t["shape"]), t["shape"])
    if k == "tuple":
        fields = None if depth >= MAX_DEPTH else tuple(kind_of_type(f, depth + 1) for f in t["fields"])
        return Kind("adt", name="tuple", ctor=0, fields=fields)
    if k == "adt":
        return Kind("adt", name=t["name"])
    return CLOSURE if k == "func" else ANY


def join(a: Kind, b: Kind) -> Kind:
    """The most precise kind both `a` and `b` are (a value defined on one path only is `any`)."""
    if a == b:
        return a
    if a.kind != b.kind or a.kind == "undef":
        return ANY
    dims = None
    if a.dims is not None and b.dims is not None and len(a.dims) == len(b.dims):
        dims = tuple(x if x == y else None for x, y in zip(a.dims, b.dims))
    fields = None
    if a.fields is not None and b.fields is not None and len(a.fields) == len(b.fields):
        fields = tuple(join(x, y) for x, y in zip(a.fields, b.fields))
    return Kind(a.kind, *(x if x == y else None for x, y in ((a.dtype, b.dtype), (a.rank, b.rank))),
                dims, *(x if x == y else None for x, y in ((a.name, b.name), (a.ctor, b.ctor))),
                fields, a.func if a.func == b.func else None)


def mismatch(found: Kind, expected: Kind) -> bool:
    """Whether `found` definitely is not `expected` (None parts of either are unknown: they fit;
    `any` fits everything but the undefined)."""
    if found is expected:
        return False
    if found.kind == "any" or expected.kind == "any":
        return found.kind == "undef"
    if found.kind != expected.kind:
        return True
    for attr in ("dtype", "rank", "name", "ctor", "func"):
        x, y = getattr(found, attr), getattr(expected, attr)
        if x is not None and y is not None and x != y:
            return True
    if found.dims is not None and expected.dims is not None:
        for x, y in zip(found.dims, expected.dims):
            if x is not None and y is not None and x != y:
                return True
    if found.fields is not None and expected.fields is not None:
        return len(found.fields) != len(expected.fields) or any(
            mismatch(x, y) for x, y in zip(found.fields, expected.fields))
    return False


def _shallow(k: Kind, depth=MAX_DEPTH) -> Kind:
    """`k` with field kinds below `depth` levels forgotten (kinds built in a loop stay finite)."""
    if k.fields is None:
        return k
    if depth <= 1:
        return Kind(k.kind, name=k.name, ctor=k.ctor, func=k.func)
    return Kind(k.kind, name=k.name, ctor=k.ctor, func=k.func,
                fields=tuple(_shallow(f, depth - 1) for f in k.fields))


# ---------------------------------------------------------------- the rules, one per opcode

class _Site:
    """One instruction under analysis: reads kinds from the state; `expect` raises only in the
    checking pass (the fixed-point pass computes kinds, and unknown parts never fail)."""

    __slots__ = ("exe", "fn", "pc", "ins", "state", "checking", "shape_lengths", "assume")

    def __init__(self, exe, fn, checking, shape_lengths=None, assume=None):
        self.exe, self.fn, self.checking, self.shape_lengths = exe, fn, checking, shape_lengths
        self.assume = assume or {}

    def expect(self, reg, expected: Kind, what=""):
        """The kind of `reg` after checking that it fits `expected`."""
        found = self.state[reg]
        if self.checking and mismatch(found, expected):
            label = f" ({what})" if what else ""
            raise ExecutableFormatError(
                f"function {self.fn.name!r}, pc {self.pc} ({self.ins.name}): r{reg}{label} must be "
                f"{expected}, found {found}")
        return found

    def fail(self, message):
        if self.checking:
            raise ExecutableFormatError(
                f"function {self.fn.name!r}, pc {self.pc} ({self.ins.name}): {message}")


def _call_args(site, func, regs, first=0):
    """Check `regs` against the parameter types of function `func` from parameter `first` on."""
    callee = site.exe.functions[func]
    for i, (r, t) in enumerate(zip(regs, callee.param_types[first:]), first):
        site.expect(r, kind_of_type(t), f"parameter {callee.params[i]!r} of {callee.name!r}")


def _ret(site, src):
    site.expect(src, kind_of_type(site.fn.ret_type), "the returned value")


def _invoke(site, func, args, dst):
    _call_args(site, func, args)
    return {dst: kind_of_type(site.exe.functions[func].ret_type)}


def _invoke_closure(site, closure, args, dst):
    c = site.expect(closure, CLOSURE)
    if c.kind != "closure" or c.func is None:
        return {dst: ANY}
    callee = site.exe.functions[c.func]
    if c.fields is None:               # how many values it captured is not known here
        return {dst: kind_of_type(callee.ret_type)}
    captured = len(c.fields)
    if captured + len(args) != len(callee.params):
        site.fail(f"r{closure} is a closure of {callee.name!r}, which takes "
                  f"{len(callee.params) - captured} arguments, got {len(args)}")
    _call_args(site, c.func, args, captured)
    return {dst: kind_of_type(callee.ret_type)}


def _signature(site, k):
    """The kinds of kernel `k`'s register operands: (inputs, outputs), without the ones a loop
    kernel gets from the VM."""
    entry = site.exe.kernels["kernels"][k]
    loop = site.ins.spec.has("loop")
    ins, outs = entry["inputs"][:len(entry["inputs"]) - 2 * loop], entry["outputs"][:len(entry["outputs"]) - loop]
    return [tensor(d, r) for d, r in ins], [tensor(d, r) for d, r in outs]


def _call_kernel(site, k, inputs, outputs):
    want_in, want_out = _signature(site, k)
    for i, (r, want) in enumerate(zip(inputs, want_in)):
        site.expect(r, want, f"input {i}")
    for i, (r, want) in enumerate(zip(outputs, want_out)):
        site.expect(r, want, f"output {i}")
    return {}


def _call_shape_func(site, s, inputs, outputs):
    kinds = [site.expect(r, TENSOR, f"input {i}") for i, r in enumerate(inputs)]
    lengths = site.shape_lengths and site.shape_lengths(site.exe.shape_funcs[s], kinds)
    if not lengths or len(lengths) != len(outputs):
        return {r: SHAPE for r in outputs}
    return {r: tensor("int64", 1, (n,)) for r, n in zip(outputs, lengths)}


def _alloc_storage(site, size, alignment, dtype, dst):
    return {dst: Kind("storage", dtype)}


def _alloc_storage_reg(site, shape, alignment, dtype, dst):
    site.expect(shape, SHAPE, "shape")
    return {dst: Kind("storage", dtype)}


def _alloc_tensor(site, storage, offset, shape, dtype, dst):
    site.expect(storage, STORAGE)
    return {dst: tensor(dtype, len(shape), shape)}


def _rank_of_shape(site, shape):
    """The length of the shape in register `shape` (checked to be a shape), None if unknown."""
    k = site.expect(shape, SHAPE, "shape")
    return k.dims[0] if k.dims else None


def _alloc_tensor_reg(site, storage, offset, shape, dtype, dst):
    site.expect(storage, STORAGE)
    return {dst: tensor(dtype, _rank_of_shape(site, shape))}


def _alloc_adt(site, ctor, fields, dst):
    entry = site.exe.constructors[ctor]
    for i, (r, t) in enumerate(zip(fields, entry.get("fields", ()))):
        site.expect(r, kind_of_type(t), f"field {i} of {entry['name']!r}")
    kinds = tuple(_shallow(site.state[r], MAX_DEPTH - 1) for r in fields)
    return {dst: Kind("adt", name=entry["adt"], ctor=ctor, fields=kinds)}


def _alloc_closure(site, func, captured, dst):
    _call_args(site, func, captured)
    kinds = tuple(_shallow(site.state[r], MAX_DEPTH - 1) for r in captured)
    return {dst: Kind("closure", func=func, fields=kinds)}


def _get_field(site, obj, index, dst):
    k = site.expect(obj, ADT)
    if index < 0:
        site.fail(f"reads field {index}: a field index is not negative")
    if k.kind != "adt" or index < 0:
        return {dst: ANY}
    if k.fields is not None:
        if index < len(k.fields):
            return {dst: k.fields[index]}
        site.fail(f"reads field {index} of r{obj}, a {k} with {len(k.fields)} fields")
        return {dst: ANY}
    types = site.exe.constructors[k.ctor].get("fields") if k.ctor is not None else None
    if types is not None and 0 <= index < len(types):
        return {dst: kind_of_type(types[index])}
    return {dst: ANY}


def _get_tag(site, obj, dst):
    site.expect(obj, ADT)
    return {dst: SCALAR_I64}


def _if(site, test, target, then_off, else_off):
    site.expect(test, tensor(rank=0), "test")
    site.expect(target, tensor(rank=0), "target")
    return {}


def _load_const(site, const, dst):
    c = site.exe.constants[const]
    return {dst: tensor(c.dtype.name, c.ndim, c.shape)}


def _shape_of(site, src, dst):
    k = site.expect(src, TENSOR)
    return {dst: tensor("int64", 1, (k.rank if k.kind == "tensor" else None,))}


def _reshape(site, src, shape, dst):
    k = site.expect(src, TENSOR)
    return {dst: tensor(k.dtype if k.kind == "tensor" else None, _rank_of_shape(site, shape))}


def _nothing(site, *args):
    return {}


# Each opcode's rule: (site, *operands) -> {written register: kind}; registers a rule does not
# set are `any` when the opcode writes them (role `w`), unchanged otherwise. Dropped registers and
# the `alias` flag are handled from the table (see `_step`).
_RULES = {
    Opcode.Move: _nothing, Opcode.Ret: _ret, Opcode.Invoke: _invoke,
    Opcode.InvokeClosure: _invoke_closure, Opcode.CallKernel: _call_kernel,
    Opcode.CallShapeFunc: _call_shape_func, Opcode.AllocStorage: _alloc_storage,
    Opcode.AllocStorageReg: _alloc_storage_reg, Opcode.AllocTensor: _alloc_tensor,
    Opcode.AllocTensorReg: _alloc_tensor_reg, Opcode.AllocADT: _alloc_adt,
    Opcode.AllocClosure: _alloc_closure, Opcode.GetField: _get_field, Opcode.GetTag: _get_tag,
    Opcode.If: _if, Opcode.Goto: _nothing, Opcode.LoadConst: _load_const,
    Opcode.LoadConsti: lambda site, value, dst: {dst: SCALAR_I64},
    Opcode.ShapeOf: _shape_of, Opcode.ReshapeTensor: _reshape, Opcode.KillRegister: _nothing,
    Opcode.Fatal: _nothing, Opcode.CallLoop: _call_kernel,
}
assert set(_RULES) == set(Opcode), "every opcode needs a kind rule"


def _step(site, ins):
    """Check (in the checking pass) and apply one instruction to `site.state`, in place."""
    state = site.state
    if site.checking:
        for r in registers(ins, "r", "u", "v", "f"):
            if state[r].kind == "undef":
                site.fail(f"reads r{r}, which is undefined on every path to it")
    written = _RULES[ins.op](site, *ins.args)
    if ins.spec.has("alias"):
        (src,) = registers(ins, "r")
        written = {r: state[src] for r in registers(ins, "w")}
    for r in registers(ins, "w"):
        state[r] = site.assume.get((site.pc, r)) or written.get(r, ANY)
    for r in registers(ins, "d"):
        state[r] = UNDEF


# ---------------------------------------------------------------- the analysis

def _blocks(instructions):
    """The basic blocks: {first pc: (pc after the last, [the successors' first pcs])}."""
    n = len(instructions)
    starts = {0}
    for pc, ins in enumerate(instructions):
        spec = ins.spec
        if spec.offset_fields or spec.has("terminator"):
            starts.update(pc + ins.args[i] for i in spec.offset_fields)
            if pc + 1 < n:
                starts.add(pc + 1)
    order = sorted(starts)
    blocks = {}
    for start, end in zip(order, order[1:] + [n]):
        last = instructions[end - 1]
        spec = last.spec
        succ = [end - 1 + last.args[i] for i in spec.offset_fields]
        if spec.falls_through and end < n:
            succ.append(end)
        blocks[start] = (end, succ)
    return blocks


def _entry_state(fn):
    state = [UNDEF] * fn.register_count
    for i, t in enumerate(fn.param_types):
        state[i] = kind_of_type(t)
    return state


def _visit(site, start, end, record):
    """Run the block [start, end) on `site.state` (its entry state), recording states if asked."""
    code = site.fn.instructions
    for pc in range(start, end):
        site.pc, site.ins = pc, code[pc]
        if record is not None:
            record[pc] = list(site.state)
        _step(site, site.ins)


def _walk(exe, func_index, checking, record=None, shape_lengths=None, assume=None):
    """The fixed point over the blocks, lowest pc first, so that code without backward jumps
    visits every block once, after all its predecessors: then that single visit checks and
    records. With loops, a second pass over the final entry states does."""
    fn = exe.functions[func_index]
    blocks = _blocks(fn.instructions)
    acyclic = all(nxt > start for start, (_, succ) in blocks.items() for nxt in succ)
    site = _Site(exe, fn, checking and acyclic, shape_lengths, assume)
    heads = {0: _entry_state(fn)}
    work = [0]
    while work:
        start = heapq.heappop(work)
        end, succ = blocks[start]
        site.state = list(heads[start])
        _visit(site, start, end, record if acyclic else None)
        for nxt in succ:
            old = heads.get(nxt)
            new = site.state if old is None else [join(a, b) for a, b in zip(old, site.state)]
            if new != old:
                if nxt not in work:
                    heapq.heappush(work, nxt)
                heads[nxt] = list(new)
    if not acyclic:
        site.checking = checking
        for start, state in heads.items():
            site.state = list(state)
            _visit(site, start, blocks[start][0], record)


def check_function(exe, func_index) -> None:
    """Verify the register kinds of one function of a structurally verified executable (every
    function's types, operands and table indices checked); raises ExecutableFormatError."""
    _walk(exe, func_index, checking=True)


def register_kinds(exe, func_index, shape_lengths=None, assume=None) -> list:
    """For every pc of function `func_index` of a verified executable, the kind of every register
    before that instruction runs (a list of `register_count` Kinds), or None for a pc no path
    from the entry reaches. Memory: one list per pc.

    `shape_lengths(entry, input_kinds)`, when given, says how long the shapes a CallShapeFunc
    computes are (a list of ints, or None when unknown); the native tier knows it from tracing
    the shape function, the verifier does not ask.

    `assume`, when given, maps (pc, register) to the kind the register holds after the
    instruction at pc writes it, in place of what the rule says: what a later tier checks at
    run time there (the native tier's type words)."""
    record = [None] * len(exe.functions[func_index].instructions)
    _walk(exe, func_index, checking=False, record=record, shape_lengths=shape_lengths, assume=assume)
    return record
