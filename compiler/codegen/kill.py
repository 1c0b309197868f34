"""KillRegister insertion: drop pooled tensors and storage right after their last use.

A register keeps its value until the register is overwritten or the frame returns, so a large
intermediate would stay allocated while later ops allocate theirs. After memory planning (the
arena is planned already) and before register allocation (every value still has its own
register), this pass kills the registers holding a pool-backed block — a storage from
AllocStorage/AllocStorageReg that is not the arena, the tensors carved from it and their
ReshapeTensor views — right after the last instruction reading any of them. Then the VM's pool
can hand the block to a later allocation of the same invocation.

It only kills where that can lower the peak: some allocation (an opcode the table flags
`leases`, or `calls`: a call allocates in its frame) must come later in the code. Loops need no
special case: regalloc's live intervals cover a whole loop for any register used in it, so a
register used in a loop has its last use at the loop's backward Goto, after which nothing falls
through. Kills never go after an instruction that does not fall through (a terminator or a
jump: they would be dead or only run on one path). Killing is always safe: the register is dead
afterwards, and other references (a tuple, a returned value) keep the memory alive by
themselves.
"""
from __future__ import annotations

from dynvm.vm.bytecode import OPCODES, Instruction, Opcode, registers

from dynvm.compiler.codegen.regalloc import live_intervals
from dynvm.compiler.codegen.relink import relink

# the sets below come from the opcode table's flags and operand roles
LEASES = frozenset(s.code for s in OPCODES if s.has("leases"))        # a new pooled block
VIEWS = frozenset(s.code for s in OPCODES if "v" in s.roles)          # a view of an operand
ALLOCATING = frozenset(s.code for s in OPCODES if s.has("leases") or s.has("calls"))
NO_FALLTHROUGH = frozenset(s.code for s in OPCODES if not s.falls_through)


def pooled_groups(code, num_params) -> dict:
    """storage register -> the registers sharing its memory (itself, the tensors carved from
    it, their views), for pool-backed storage; registers are written once and are not
    parameters."""
    writes: dict[int, int] = {}
    carved: dict[int, int] = {}
    for ins in code:
        for r in registers(ins, "w"):
            writes[r] = writes.get(r, 0) + 1
        for r in registers(ins, "v"):
            carved[r] = carved.get(r, 0) + 1
    root_of: dict[int, int] = {}
    for ins in code:       # emission order: a view's source is defined before the view
        if ins.op not in LEASES and ins.op not in VIEWS:
            continue
        (dst,) = registers(ins, "w")
        if dst < num_params or writes.get(dst) != 1:
            continue
        if ins.op in LEASES:
            if not (ins.op == Opcode.AllocStorage and carved.get(dst, 0) > 1):  # not the arena
                root_of[dst] = dst
        else:
            (source,) = registers(ins, "v")
            if source in root_of:
                root_of[dst] = root_of[source]
    groups: dict[int, list] = {}
    for reg, root in root_of.items():
        groups.setdefault(root, []).append(reg)
    return groups


def insert_kills(code: list, num_params: int) -> list:
    """Code with KillRegisters after the last use of each pooled block's registers, where it
    may help. A block is freed only when all registers sharing it are dead, so the whole group
    is killed at once, after the last use of any of them."""
    groups = pooled_groups(code, num_params)
    if not groups:
        return code
    _, end = live_intervals(code, num_params)
    last_alloc = max((pc for pc, ins in enumerate(code) if ins.op in ALLOCATING), default=-1)
    kills_after: dict[int, list] = {}
    for regs in groups.values():
        pc = max(end[r] for r in regs)
        if pc < last_alloc and code[pc].op not in NO_FALLTHROUGH:
            kills_after.setdefault(pc, []).extend(sorted(regs))
    if not kills_after:
        return code
    new_code = []
    for pc, ins in enumerate(code):
        new_code.append((pc, ins))
        new_code.extend((None, Instruction("KillRegister", r)) for r in kills_after.get(pc, ()))
    return relink(new_code)
