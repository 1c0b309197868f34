"""Static memory planning: tensors of static size share one arena per function invocation.

The emitter gives every kernel output its own `AllocStorage` + `AllocTensor`. Here every
*static-size* tensor that does not escape (the opcode table gives every operand that reads it
the role `u`sed or `f`illed — kernels, shape functions, ShapeOf, If — directly or through
zero-copy views (role `v`) that don't escape either — never moved, returned, put in a tuple or
passed to a call) gets an offset in one arena, allocated once at function entry; two tensors share bytes only when
their live intervals (from regalloc's liveness, loops included) do not overlap. Tensors with
`Any` shapes keep their own storage: the VM's pool recycles those blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from dynvm.vm.bytecode import READ_ROLES, Instruction, Opcode, registers

from dynvm.compiler.codegen.regalloc import live_intervals
from dynvm.compiler.codegen.relink import relink
from dynvm.vm.memory import size_class

ALIGN = 64
NON_ESCAPING_ROLES = ("u", "f", "d")   # read during the instruction only (views: followed)


@dataclass
class Block:
    storage_pc: int
    tensor_pc: int
    size: int
    start: int
    end: int
    offset: int = -1
    returned: bool = False


def _reg_uses(code):
    """register -> (opcode, role) of each operand reading it."""
    uses: dict[int, list] = {}
    for ins in code:
        for role in READ_ROLES:
            for r in registers(ins, role):
                uses.setdefault(r, []).append((ins.op, role))
    return uses


def _candidate_blocks(code, num_params):
    """(blocks that never escape, blocks whose tensor is only returned by Ret), and the
    static storages that are neither, as (pc, size) pairs."""
    uses = _reg_uses(code)
    start, end = live_intervals(code, num_params)
    storage_at = {ins.args[-1]: pc for pc, ins in enumerate(code) if ins.op == Opcode.AllocStorage}
    views: dict[int, list] = {}   # register -> the registers viewing its memory
    for ins in code:
        for source in registers(ins, "v"):
            views.setdefault(source, []).extend(registers(ins, "w"))
    contained, returned, taken = [], [], set()
    for pc, ins in enumerate(code):
        if ins.op != Opcode.AllocTensor or ins.args[0] not in storage_at:
            continue
        storage, tensor = ins.args[0], ins.args[-1]
        if uses.get(storage) != [(Opcode.AllocTensor, "v")]:
            continue
        last_use, escape = _containment(tensor, uses, views, end)
        if escape == "escapes":
            continue
        spc = storage_at[storage]
        taken.add(spc)
        block = Block(spc, pc, code[spc].args[0], min(start[storage], start[tensor]),
                      max(last_use, pc))
        if escape == "returned":
            block.end, block.returned = len(code), True
            returned.append(block)
        else:
            contained.append(block)
    others = [(pc, code[pc].args[0]) for pc in storage_at.values() if pc not in taken]
    return contained, returned, others


def _plannable_blocks(code, num_params):
    """The blocks that never escape (kept for tests and tools)."""
    return _candidate_blocks(code, num_params)[0]


def _containment(reg, uses, views, end):
    """(the last pc touching `reg` or a view of it, how it leaves the function): "contained"
    when only operands that do not keep it read them, "returned" when some are also returned
    by Ret (and nothing else), else "escapes"."""
    last, escape = end[reg], "contained"
    for op, role in uses.get(reg, []):
        if role == "v" or role in NON_ESCAPING_ROLES:
            continue
        if op != Opcode.Ret:
            return last, "escapes"
        escape = "returned"
    for view in views.get(reg, []):
        view_last, view_escape = _containment(view, uses, views, end)
        if view_escape == "escapes":
            return last, "escapes"
        if view_escape == "returned":
            escape = "returned"
        last = max(last, view_last)
    return last, escape


def _peak(intervals, n) -> int:
    """Max over pcs of the bytes of the (start, end, bytes) intervals live there."""
    delta = [0] * (n + 2)
    for s, e, nbytes in intervals:
        delta[max(s, 0)] += nbytes
        delta[min(e, n) + 1] -= nbytes
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def _assign_offsets(blocks) -> int:
    """First-fit by decreasing size; returns the arena size."""
    placed: list[Block] = []
    for block in sorted(blocks, key=lambda b: (-b.size, b.start)):
        offset = 0
        for other in sorted((p for p in placed if p.start <= block.end and block.start <= p.end),
                            key=lambda p: p.offset):
            if offset + block.size <= other.offset:
                break
            offset = max(offset, _aligned(other.offset + other.size))
        block.offset = offset
        placed.append(block)
    return max((b.offset + b.size for b in blocks), default=0)


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(code: list, num_params: int, new_register: int):
    """Rewrite `code` to use one arena (in register `new_register`) for plannable tensors.

    Returns (code, arena size in bytes); code is unchanged when fewer than two tensors qualify
    or when the plan would not lower the estimated peak (see `_choose_blocks`).
    """
    blocks = _choose_blocks(code, num_params)
    if len(blocks) < 2:
        return code, 0
    arena_size = _assign_offsets(blocks)
    dropped = {b.storage_pc for b in blocks}
    by_tensor = {b.tensor_pc: b for b in blocks}
    new_code = [(None, Instruction("AllocStorage", arena_size, ALIGN, "float32", new_register))]
    for pc, ins in enumerate(code):
        if pc in dropped:
            continue
        if pc in by_tensor:
            _, _, shape, dtype, dst = ins.args
            ins = Instruction("AllocTensor", new_register, by_tensor[pc].offset, shape, dtype, dst)
        new_code.append((pc, ins))
    return relink(new_code), arena_size


PEAK_SLACK = 64 * 1024


def _choose_blocks(code, num_params) -> list:
    """The blocks to put in the arena, or [] when planning would not lower the peak.

    The arena is one pooled block alive for the whole invocation, while without planning every
    static block is its own pooled block (rounded up to its size class) alive from its
    AllocStorage to its last use (KillRegister frees it there). So the peak of static bytes is
    estimated both ways over the straight-line order of the code (loops are covered by the
    live intervals) and the plan is used only when it is not higher by more than PEAK_SLACK
    bytes (a plan also turns many pool leases into one: in a loop body that is most of the
    allocation cost per iteration, worth a few KiB of peak):

    - the non-escaping tensors, plus
    - the returned tensor when it is the last block defined (then the result can take the
      bytes of an input of the last op that is dead by then, instead of a block of its own
      next to the whole arena; the caller's result keeps the arena alive afterwards, which
      costs at most the arena minus the result, and is only done when it lowers the peak).
    """
    contained, returned, others = _candidate_blocks(code, num_params)
    n = len(code)
    fixed = [(pc, n, size_class(size)) for pc, size in others]
    unplanned = _peak(fixed + [(b.storage_pc, b.end, size_class(b.size))
                               for b in contained + returned], n)
    options = [contained]
    if len(returned) == 1 and all(b.tensor_pc < returned[0].tensor_pc for b in contained):
        options.append(contained + returned)
    best, best_peak = [], unplanned
    for blocks in options:
        if len(blocks) < 2:
            continue
        trial = [Block(b.storage_pc, b.tensor_pc, b.size, b.start, b.end, returned=b.returned)
                 for b in blocks]
        arena = size_class(_assign_offsets(trial))
        rest = [b for b in contained + returned if b not in blocks]
        peak = _peak(fixed + [(0, n, arena)] + [(b.storage_pc, b.end, size_class(b.size))
                                                 for b in rest], n)
        if peak < best_peak or (not best and peak <= unplanned + PEAK_SLACK):
            best, best_peak = trial, peak
    return best
