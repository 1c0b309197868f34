"""Rewriting code while keeping relative jumps right.

Passes that delete or insert instructions describe the new code as a list of
(old pc or None, instruction); `relink` recomputes every jump offset (the operands of kind
`offset` in the opcode table) from the old targets.
"""
from __future__ import annotations

from dynvm.vm.bytecode import Instruction


def relink(new_code: list) -> list:
    """`new_code` is [(old_pc or None, Instruction)]; jumps in it still use old offsets
    (relative to their old pc). Returns the instructions with offsets fixed. A jump whose
    old target was deleted lands on the next kept instruction."""
    old_to_new = {}
    for new_pc, (old_pc, _) in enumerate(new_code):
        if old_pc is not None:
            old_to_new[old_pc] = new_pc
    max_old = max(old_to_new, default=-1)

    def new_target(old_target):
        while old_target not in old_to_new and old_target <= max_old:
            old_target += 1
        return old_to_new.get(old_target, len(new_code))

    out = []
    for new_pc, (old_pc, ins) in enumerate(new_code):
        fields = ins.spec.offset_fields
        if fields and old_pc is not None:
            args = list(ins.args)
            for i in fields:
                args[i] = new_target(old_pc + args[i]) - new_pc
            ins = Instruction(ins.op, *args)
        out.append(ins)
    return out
