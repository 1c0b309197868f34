"""The dynvm instruction set: one table, everything else derived from it.

Like Lua's `lopcodes.h` with its `luaP_opmodes`, `OPCODES` below is the single definition of
every opcode: its name, its operand fields (each with a kind and, for registers, a role), its
effect flags, whether the static runtime can run it, and a one-line meaning. The opcode number is
the position in the table. Encoding, decoding, verification and disassembly are generic over the
table, and so are the compiler passes that reason about effects (dead-code elimination,
KillRegister insertion, memory planning, register allocation, relinking), the static runtime
and the loader's checks: none of them keeps a list of opcode names. Adding an opcode is one row
here, one preparer and handler in the VM (vm/prepare.py, vm/machine.py), one kind rule for the
verifier (vm/kinds.py) and one case in the code generator.

Operand kinds:
    reg         a register index of the current frame            (int)
    regs        a list of register indices                       (list of int)
    func        an index into Executable.functions               (int)
    kernel      an index into the kernels section's kernel list  (int)
    const       an index into Executable.constants               (int)
    shape_func  an index into Executable.shape_funcs             (int)
    ctor        an index into Executable.constructors            (int, 0 = tuple)
    imm         an immediate integer                             (int)
    shape       a static shape                                   (list of int >= 0)
    dtype       a dtype name from vm/dtypes.py                   (str)
    offset      a jump relative to the instruction's own pc      (int)
    str         a message                                        (str)

Register roles (every reg/regs operand has exactly one, written `field:kind:role`):
    r   read: the value is read and may be kept (moved, stored in a tuple, ADT or closure,
        returned, passed to a call); memory planning treats it as escaping
    u   used: read during the instruction only; nothing refers to the value afterwards
    v   viewed: the instruction's result is a view sharing this operand's memory
    f   filled: the register holds a tensor the instruction writes into, in place
    w   written: the instruction (re)defines the register
    d   dropped: the register is cleared (the value's last use)

Flags:
    pure        no effect besides writing its `w` registers: removable when nothing reads them
    terminator  control never continues at the next instruction (a function may end with it)
    leases      writes a new storage block taken from the VM's pool
    calls       runs another function in a new frame (which may lease blocks of its own)
    loop        its kernel operand names a native loop kernel (others name plain kernels)
    alias       its written register receives the very value of its read register (a Move):
                whatever is known of the source (its kind, that it holds leased memory) holds
                for the destination

Static runtime column: empty when StaticRuntime resolves or prepares the opcode when it is
built; otherwise why it cannot (the reason is its error message).
"""
import enum
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dynvm.vm.dtypes import DTYPES
from dynvm.vm.errors import ExecutableFormatError

ROLES = {"r": "read", "u": "used", "v": "viewed", "f": "filled", "w": "written", "d": "dropped"}
FLAGS = {"pure", "terminator", "leases", "calls", "loop", "alias"}
REGISTER_KINDS = ("reg", "regs")
INDEX_KINDS = ("func", "kernel", "const", "shape_func", "ctor")


@dataclass(frozen=True)
class OpSpec:
    """One row of the opcode table."""

    code: int
    name: str
    fields: tuple  # ((field name, kind), ...)
    roles: tuple   # per field: its register role (a key of ROLES), None for other kinds
    flags: frozenset
    not_static: str  # why StaticRuntime cannot run it ("" when it can)
    doc: str

    # derived from the row once (the verifier asks for them at every instruction)
    @cached_property
    def field_names(self):
        return tuple(f for f, _ in self.fields)

    @cached_property
    def offset_fields(self) -> tuple:
        """Indices of the jump offset operands (a jump has at least one)."""
        return tuple(i for i, (_, kind) in enumerate(self.fields) if kind == "offset")

    @cached_property
    def index_kinds(self) -> tuple:
        """The kinds of its operands that index a table of the executable (func, kernel, ...)."""
        return tuple(kind for _, kind in self.fields if kind in INDEX_KINDS)

    @cached_property
    def falls_through(self) -> bool:
        """Whether execution may continue at the next instruction without a jump to it."""
        return not self.has("terminator") and not self.offset_fields

    def role_fields(self, *roles) -> tuple:
        """(index, is a list) of the register operands whose role is one of `roles`."""
        found = self._role_fields.get(roles)
        if found is None:
            found = self._role_fields[roles] = tuple(
                (i, self.fields[i][1] == "regs") for i, role in enumerate(self.roles) if role in roles)
        return found

    @cached_property
    def _role_fields(self) -> dict:
        return {}

    def has(self, flag) -> bool:
        """Whether the row carries `flag` (one of FLAGS)."""
        assert flag in FLAGS, flag
        return flag in self.flags


def _table(*rows):
    """The OpSpecs of `rows`; a register operand without exactly one known role, a role on
    another kind, or an unknown flag is a ValueError (every opcode declares its effects)."""
    specs = []
    for code, (name, fields, flags, not_static, doc) in enumerate(rows):
        parsed, roles = [], []
        for f in fields.split():
            field, kind, *role = f.split(":")
            if (kind in REGISTER_KINDS) != (len(role) == 1) or not set(role) <= set(ROLES):
                raise ValueError(f"{name}: operand {f!r} needs one role of {sorted(ROLES)} "
                                 "exactly when it is a register")
            parsed.append((field, kind))
            roles.append(role[0] if role else None)
        if not set(flags.split()) <= FLAGS:
            raise ValueError(f"{name}: unknown flags in {flags!r}")
        registers = sorted((role, kind) for role, (_, kind) in zip(roles, parsed) if role)
        if "alias" in flags.split() and registers != [("r", "reg"), ("w", "reg")]:
            raise ValueError(f"{name}: an alias reads one register and writes one")
        specs.append(OpSpec(code, name, tuple(parsed), tuple(roles), frozenset(flags.split()),
                            not_static, doc))
    return tuple(specs)


_CONTROL = "is control flow"
# fmt: off
OPCODES = _table(
    # name              operands (field:kind[:role])                    flags          static runtime: why not
    ("Move",            "dst:reg:w src:reg:r",                          "pure alias",  "",
     "R[dst] := R[src]"),
    ("Ret",             "src:reg:r",                                    "terminator",  "",
     "return R[src] to the caller"),
    ("Invoke",          "func:func args:regs:r dst:reg:w",              "calls",       "is a function call",
     "R[dst] := functions[func](R[args]...)"),
    ("InvokeClosure",   "closure:reg:r args:regs:r dst:reg:w",          "calls",       "is a closure call",
     "R[dst] := call R[closure] with its captured values then R[args]..."),
    ("CallKernel",      "kernel:kernel inputs:regs:u outputs:regs:f",   "",            "",
     "kernels[kernel](R[inputs], R[outputs]), writing the outputs in place"),
    ("CallShapeFunc",   "shape_func:shape_func inputs:regs:u outputs:regs:w", "",      "computes a shape at run time (a dynamic shape)",
     "R[outputs] := 1-D int64 shapes computed by the shape function from R[inputs]"),
    ("AllocStorage",    "size:imm alignment:imm dtype:dtype dst:reg:w", "pure leases", "",
     "R[dst] := new Storage of `size` bytes"),
    ("AllocStorageReg", "shape:reg:u alignment:imm dtype:dtype dst:reg:w", "pure leases", "sizes storage at run time (a dynamic shape)",
     "R[dst] := new Storage of prod(R[shape]) * itemsize(dtype) bytes"),
    ("AllocTensor",     "storage:reg:v offset:imm shape:shape dtype:dtype dst:reg:w", "pure", "",
     "R[dst] := tensor view of R[storage] at byte `offset`, static shape"),
    ("AllocTensorReg",  "storage:reg:v offset:imm shape:reg:u dtype:dtype dst:reg:w", "pure", "shapes a tensor at run time (a dynamic shape)",
     "R[dst] := tensor view of R[storage] at byte `offset`, shape R[shape]"),
    ("AllocADT",        "ctor:ctor fields:regs:r dst:reg:w",            "pure",        "",
     "R[dst] := constructors[ctor](R[fields]...) (ctor 0 makes a tuple)"),
    ("AllocClosure",    "func:func captured:regs:r dst:reg:w",          "pure",        "builds a closure",
     "R[dst] := closure of functions[func] capturing R[captured]"),
    ("GetField",        "obj:reg:r index:imm dst:reg:w",                "pure",        "",
     "R[dst] := field `index` of the tuple or ADT R[obj]"),
    ("GetTag",          "obj:reg:u dst:reg:w",                          "pure",        "",
     "R[dst] := constructor tag of R[obj] (0-d int64)"),
    ("If",              "test:reg:u target:reg:u then_off:offset else_off:offset", "",  _CONTROL,
     "pc += then_off if int(R[test]) == int(R[target]) else else_off"),
    ("Goto",            "off:offset",                                   "terminator",  _CONTROL,
     "pc += off"),
    ("LoadConst",       "const:const dst:reg:w",                        "pure",        "",
     "R[dst] := constants[const]"),
    ("LoadConsti",      "value:imm dst:reg:w",                          "pure",        "",
     "R[dst] := value (0-d int64)"),
    ("ShapeOf",         "tensor:reg:u dst:reg:w",                       "pure",        "",
     "R[dst] := shape of R[tensor] (1-D int64)"),
    ("ReshapeTensor",   "tensor:reg:v shape:reg:u dst:reg:w",           "pure",        "",
     "R[dst] := zero-copy view of R[tensor] with shape R[shape]"),
    ("KillRegister",    "reg:reg:d",                                    "",            "",
     "R[reg] := None (free the value early)"),
    ("Fatal",           "message:str",                                  "terminator",  "always raises",
     "raise VMError(message)"),
    ("CallLoop",        "kernel:kernel inputs:regs:u outputs:regs:f",   "loop",        "runs a loop (control flow, as a native loop kernel)",
     "run the native loop kernels[kernel] on R[inputs] into R[outputs] (the VM adds the step budget, the interrupt word and the iteration counters)"),
)
# fmt: on

Opcode = enum.IntEnum("Opcode", [(s.name, s.code) for s in OPCODES])
Opcode.__doc__ = "Opcode numbers, generated from OPCODES (Opcode.Move == 0, ...)."

_BY_NAME = {s.name: s for s in OPCODES}
TERMINATORS = frozenset(Opcode(s.code) for s in OPCODES if s.has("terminator"))
JUMPS = frozenset(Opcode(s.code) for s in OPCODES if s.offset_fields)
_TERMINATOR_NAMES = " or ".join(", ".join(s.name for s in OPCODES if s.code in TERMINATORS).rsplit(", ", 1))


def is_loop_function(instructions) -> bool:
    """Whether a function is a native loop function: straight-line code around exactly one
    loop-flagged instruction (CallLoop), ending in Ret, as the compiler emits a loop it turned
    into a loop kernel. Both tiers count its whole body as one step; the CallLoop charges the
    rest (the bytecode loop's `fixed + n * per_iteration` steps, recorded in the kernel spec)."""
    if not instructions or instructions[-1].name != "Ret":
        return False
    specs = [ins.spec for ins in instructions[:-1]]
    return sum(spec.has("loop") for spec in specs) == 1 and not any(
        spec.has("calls") or spec.has("terminator") or spec.offset_fields for spec in specs)


def registers(ins, *roles) -> list:
    """The registers of `ins`'s operands whose role is one of `roles` (any role when none are
    given), in operand order."""
    out = []
    for i, is_list in ins.spec.role_fields(*(roles or ROLES)):
        if is_list:
            out.extend(ins.args[i])
        else:
            out.append(ins.args[i])
    return out


# The longest `str` operand (a Fatal message) a file may hold (a per-file budget).
MAX_MESSAGE_LENGTH = 1 << 16

READ_ROLES = ("r", "u", "v", "f", "d")  # every role but "w": the register's value is needed


def _is_int(x):
    return type(x) is int


def _is_int_list(x):
    return type(x) in (list, tuple) and all(type(i) is int for i in x)


_KIND_TYPE_OK = {
    "reg": _is_int, "func": _is_int, "kernel": _is_int, "const": _is_int,
    "shape_func": _is_int, "ctor": _is_int, "imm": _is_int, "offset": _is_int,
    "regs": _is_int_list, "shape": _is_int_list,
    "dtype": lambda x: type(x) is str, "str": lambda x: type(x) is str,
}
assert all(k in _KIND_TYPE_OK for s in OPCODES for _, k in s.fields)


def spec_of(opcode) -> OpSpec:
    """The table row for an opcode given as name, number or `Opcode`."""
    if isinstance(opcode, str):
        spec = _BY_NAME.get(opcode)
    elif isinstance(opcode, (int, np.integer)) and not isinstance(opcode, bool) and 0 <= opcode < len(OPCODES):
        spec = OPCODES[int(opcode)]
    else:
        spec = None
    if spec is None:
        raise ExecutableFormatError(f"unknown opcode {opcode!r}")
    return spec


def _normalize(value):
    """Lists become tuples (hashable, comparable); numpy integers become ints."""
    if isinstance(value, (list, tuple)):
        return tuple(int(v) if isinstance(v, np.integer) else v for v in value)
    if isinstance(value, np.integer):
        return int(value)
    return value


class Instruction:
    """One instruction: `op` is the opcode number, `args` the operand tuple in table order.

    Fields can also be read by name (`instr.dst`). The VM dispatches on `(op, args)` only.
    """

    __slots__ = ("op", "args")

    def __init__(self, opcode, *operands):
        spec = spec_of(opcode)
        if len(operands) != len(spec.fields):
            raise ExecutableFormatError(
                f"{spec.name} takes {len(spec.fields)} operands "
                f"({' '.join(spec.field_names)}), got {len(operands)}")
        self.op = spec.code
        self.args = tuple(_normalize(v) for v in operands)

    @property
    def spec(self) -> OpSpec:
        return OPCODES[self.op]

    @property
    def name(self) -> str:
        return OPCODES[self.op].name

    def __getattr__(self, field):
        if field in Instruction.__slots__:  # not yet set: no recursion through self.op
            raise AttributeError(field)
        try:
            return self.args[OPCODES[self.op].field_names.index(field)]
        except (ValueError, AttributeError):
            raise AttributeError(field) from None

    def __eq__(self, other):
        return isinstance(other, Instruction) and self.op == other.op and self.args == other.args

    def __hash__(self):
        return hash((self.op, self.args))

    def __repr__(self):
        return f"Instruction({', '.join(map(repr, (self.name,) + self.args))})"


# ---------------------------------------------------------------- encoding / decoding

def encode(instr: Instruction) -> list:
    """A msgpack-able list: [opcode number, operand, ...] with tuples as lists."""
    return [instr.op] + [list(a) if isinstance(a, tuple) else a for a in instr.args]


def decode(obj) -> Instruction:
    """The inverse of `encode`; any malformation raises ExecutableFormatError."""
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ExecutableFormatError(f"an instruction must be [opcode, operands...], got {obj!r:.80}")
    spec = spec_of(obj[0])
    operands = obj[1:]
    if len(operands) != len(spec.fields):
        raise ExecutableFormatError(
            f"{spec.name} takes {len(spec.fields)} operands, got {len(operands)}")
    for (field, kind), value in zip(spec.fields, operands):
        if not _KIND_TYPE_OK[kind](value):
            raise ExecutableFormatError(f"{spec.name} operand {field} must be a {kind}, got {value!r:.80}")
    return Instruction(spec.code, *operands)


# ---------------------------------------------------------------- verification

def verify_function(name: str, instructions, register_count: int, counts: dict) -> None:
    """Check one function's code in isolation; raises ExecutableFormatError.

    `counts` maps each index kind (func, kernel, const, shape_func, ctor) to the size of the
    table it indexes. Guarantees afterwards: every operand has the right type, every register and
    table index is in range, every jump lands inside the function, dtypes and shapes are valid,
    and the last instruction is a terminator (Ret, Goto, Fatal), so the pc can never run off the
    end.
    """
    n = len(instructions)
    if type(register_count) is not int or register_count < 0:
        raise ExecutableFormatError(f"function {name!r}: bad register_count {register_count!r}")
    if n == 0:
        raise ExecutableFormatError(f"function {name!r} has no instructions")
    for pc, instr in enumerate(instructions):
        if not isinstance(instr, Instruction):
            raise ExecutableFormatError(f"function {name!r}, pc {pc}: not an Instruction: {instr!r:.80}")
        for (field, kind), value in zip(instr.spec.fields, instr.args):
            problem = _operand_problem(kind, value, pc, n, register_count, counts)
            if problem:
                raise ExecutableFormatError(
                    f"function {name!r}, pc {pc} ({instr.name}): operand {field} {problem}")
    if instructions[-1].op not in TERMINATORS:
        raise ExecutableFormatError(
            f"function {name!r}: last instruction is {instructions[-1].name}, "
            f"expected {_TERMINATOR_NAMES} (execution would fall off the end)")
    _check_filled_registers(name, instructions)


def _check_filled_registers(name, instructions):
    """A register filled in place (a kernel's output, role `f`) must, on every path to that
    instruction, hold memory this frame leased from the pool: a `leases` result, or a view
    (role `v`) or an alias (flag `alias`, a Move) of one. Never a parameter, a constant, a
    `LoadConsti`/`GetTag` value, a field or a call's result, which may be shared with other
    invocations or other VMs.
    A forward dataflow over the control-flow graph; a join keeps "leased" only when every
    incoming path agrees."""
    n = len(instructions)
    states = [None] * n                  # per pc: frozenset of registers holding leased memory
    states[0] = frozenset()
    work = [0]
    while work:
        pc = work.pop()
        instr, leased = instructions[pc], states[pc]
        spec = instr.spec
        for i, many in spec.role_fields("f"):
            for r in (instr.args[i] if many else (instr.args[i],)):
                if r not in leased:
                    raise ExecutableFormatError(
                        f"function {name!r}, pc {pc} ({instr.name}): writes into r{r}, which does "
                        "not hold memory this frame allocated on every path to it")
        after = _leased_after(spec, instr.args, leased)
        for nxt in _successors(spec, instr.args, pc):
            merged = after if states[nxt] is None else states[nxt] & after
            if merged != states[nxt]:
                states[nxt] = merged
                work.append(nxt)


def _leased_after(spec, args, leased):
    sources = [args[i] for i, _ in spec.role_fields("v")]
    if spec.has("alias"):
        sources += [args[i] for i, _ in spec.role_fields("r")]
    fresh = spec.has("leases") or (sources and all(r in leased for r in sources))
    written = set()
    for i, many in spec.role_fields("w", "d"):
        written.update(args[i] if many else (args[i],))
    keep = leased - written
    if fresh and spec.role_fields("w"):
        keep |= {args[i] for i, many in spec.role_fields("w") if not many}
    return keep


def _successors(spec, args, pc):
    nxt = [pc + args[i] for i in spec.offset_fields]
    if spec.falls_through:
        nxt.append(pc + 1)
    return nxt


def _operand_problem(kind, value, pc, n, register_count, counts):
    """A description of what is wrong with one operand, or None."""
    if not _KIND_TYPE_OK[kind](value):
        return f"must be a {kind}, got {value!r:.80}"
    if kind == "reg":
        if not 0 <= value < register_count:
            return f"register r{value} out of range (register_count {register_count})"
    elif kind == "regs":
        bad = [r for r in value if not 0 <= r < register_count]
        if bad:
            return f"register r{bad[0]} out of range (register_count {register_count})"
    elif kind in INDEX_KINDS:
        if not 0 <= value < counts[kind]:
            return f"{kind} index {value} out of range (there are {counts[kind]})"
    elif kind == "offset":
        if not 0 <= pc + value < n:
            return f"jumps to pc {pc + value}, outside the function (0..{n - 1})"
    elif kind == "shape":
        if any(d < 0 for d in value):
            return f"has a negative dimension: {list(value)}"
    elif kind == "dtype":
        if value not in DTYPES:
            return f"unknown dtype {value!r}"
    elif kind == "str":
        if len(value) > MAX_MESSAGE_LENGTH:
            return (f"is {len(value)} characters long, over the limit MAX_MESSAGE_LENGTH = "
                    f"{MAX_MESSAGE_LENGTH}")
    return None


# ---------------------------------------------------------------- disassembly

_LABELS = {"inputs": "in", "outputs": "out", "then_off": "then", "else_off": "else"}


def format_instruction(instr: Instruction, pc: int, describe=None) -> str:
    """One readable line, e.g. `  3: CallKernel k2(add[contiguous]) in=[r1, r2] out=[r3]`.

    `describe(kind, index) -> str` names table entries (kernel names, constant dtype/shape...);
    without it indices print bare. Jump targets print as absolute pcs (`@7`).
    """
    parts, dst = [], []
    for (field, kind), value in zip(instr.spec.fields, instr.args):
        (dst if field == "dst" else parts).append(_format_operand(field, kind, value, pc, describe))
    parts += dst  # results read last, as in `Move src=r0 -> r1`
    return f"{pc:>4}: {instr.name} {' '.join(parts)}".rstrip()


_PREFIX = {"func": "f", "kernel": "k", "const": "c", "shape_func": "s", "ctor": "ctor"}


def _format_operand(field, kind, value, pc, describe):
    if kind in INDEX_KINDS:
        text = f"{_PREFIX[kind]}{value}"
        return f"{text}({describe(kind, value)})" if describe else text
    label = _LABELS.get(field, field)
    if kind == "reg":
        return f"-> r{value}" if field == "dst" else f"{label}=r{value}"
    if kind == "regs":
        return f"{label}=[{', '.join(f'r{r}' for r in value)}]"
    if kind == "offset":
        return f"@{pc + value}" if field == "off" else f"{label}=@{pc + value}"
    if kind == "shape":
        return f"{label}=[{', '.join(map(str, value))}]"
    if kind == "str":
        return repr(value)
    return f"{label}={value}"
