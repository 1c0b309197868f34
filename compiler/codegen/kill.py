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

from dynvm.vm.bytecode import Instruction, Opcode, registers

from dynvm.compiler.codegen.regalloc import live_intervals
from dynvm.compiler.codegen.relink import relink

# what an instruction does, asked of the opcode table (flags and operand roles)


def _leases(ins) -> bool:
    """Its result is a new pooled block (table flag `leases`)."""
    return ins.spec.has("leases")


def _views(ins) -> bool:
    """Its result shares an operand's memory (an operand of role `v`)."""
    return "v" in ins.spec.roles


def _allocates(ins) -> bool:
    """It takes blocks from the pool, itself or in the frame it calls."""
    return ins.spec.has("leases") or ins.spec.has("calls")


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
        if not (_leases(ins) or _views(ins)):
            continue
        (dst,) = registers(ins, "w")
        if dst < num_params or writes.get(dst) != 1:
            continue
        if _leases(ins):
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
    last_alloc = max((pc for pc, ins in enumerate(code) if _allocates(ins)), default=-1)
    kills_after: dict[int, list] = {}
    for regs in groups.values():
        pc = max(end[r] for r in regs)
        if pc < last_alloc and code[pc].spec.falls_through:
            kills_after.setdefault(pc, []).extend(sorted(regs))
    if not kills_after:
        return code
    new_code = []
    for pc, ins in enumerate(code):
        new_code.append((pc, ins))
        new_code.extend((None, Instruction("KillRegister", r)) for r in kills_after.get(pc, ()))
    return relink(new_code)
