"""Register allocation: map the emitter's one-register-per-value code onto few registers.

Linear scan over live intervals in code order. A backward jump (a loop) extends every interval
that touches the loop body over the whole loop, so values live around a loop keep their
register. Parameters keep registers 0..n-1. Two values share a register only when one interval
ends strictly before the other starts.
"""
from __future__ import annotations

from dynvm.vm.bytecode import ROLES, Instruction, registers


def _jump_offsets(ins):
    return [ins.args[i] for i in ins.spec.offset_fields]


def live_intervals(code, num_params):
    start, end = {}, {}
    for r in range(num_params):
        start[r], end[r] = -1, -1
    for pc, ins in enumerate(code):
        for r in registers(ins):
            start.setdefault(r, pc)
            end[r] = max(end.get(r, pc), pc)
    loops = [(pc + off, pc) for pc, ins in enumerate(code) for off in _jump_offsets(ins) if off <= 0]
    changed = bool(loops)
    while changed:
        changed = False
        for lo, hi in loops:
            for r in start:
                if start[r] <= hi and end[r] >= lo and (start[r] > lo or end[r] < hi):
                    start[r], end[r] = min(start[r], lo), max(end[r], hi)
                    changed = True
    return start, end


def allocate_registers(code: list, num_params: int):
    """Returns (rewritten code, register count)."""
    start, end = live_intervals(code, num_params)
    mapping = {r: r for r in range(num_params)}
    free_at = [end[r] for r in range(num_params)]     # physical register -> end of its occupant
    for r in sorted((r for r in start if r >= num_params), key=lambda r: start[r]):
        phys = next((p for p, e in enumerate(free_at) if e < start[r]), None)
        if phys is None:
            phys = len(free_at)
            free_at.append(end[r])
        else:
            free_at[phys] = end[r]
        mapping[r] = phys
    return [_rename(ins, mapping) for ins in code], max(len(free_at), 1)


def _rename(ins, mapping):
    args = list(ins.args)
    for i, is_list in ins.spec.role_fields(*ROLES):
        args[i] = [mapping[r] for r in args[i]] if is_list else mapping[args[i]]
    return Instruction(ins.op, *args)
