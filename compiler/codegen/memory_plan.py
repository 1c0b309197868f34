"""Static memory planning: tensors of static size share one arena per function invocation.

The emitter gives every kernel output its own `AllocStorage` + `AllocTensor`. Here every
*static-size* tensor that does not escape (it is only read or written by kernels, shape
functions, ShapeOf or If, directly or through zero-copy `ReshapeTensor` views that don't escape
either — never moved, returned, put in a tuple or passed to a call) gets an
offset in one arena, allocated once at function entry; two tensors share bytes only when
their live intervals (from regalloc's liveness, loops included) do not overlap. Tensors with
`Any` shapes keep their own storage: the VM's pool recycles those blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from vm.bytecode import Instruction

from compiler.codegen.regalloc import live_intervals
from compiler.codegen.relink import relink

ALIGN = 64
NON_ESCAPING_USES = {"CallKernel", "CallShapeFunc", "ShapeOf", "If", "AllocTensor"}


@dataclass
class Block:
    storage_pc: int
    tensor_pc: int
    size: int
    start: int
    end: int
    offset: int = -1


def _reg_uses(code):
    """register -> names of the instructions reading it."""
    uses: dict[int, list] = {}
    for ins in code:
        for i, (field, kind) in enumerate(ins.spec.fields):
            if field == "dst":
                continue
            regs = ins.args[i] if kind == "regs" else (ins.args[i],) if kind == "reg" else ()
            for r in regs:
                uses.setdefault(r, []).append(ins.name)
    return uses


def _plannable_blocks(code, num_params):
    uses = _reg_uses(code)
    start, end = live_intervals(code, num_params)
    storage_at = {ins.args[-1]: pc for pc, ins in enumerate(code) if ins.name == "AllocStorage"}
    views: dict[int, list] = {}
    for ins in code:
        if ins.name == "ReshapeTensor":
            views.setdefault(ins.args[0], []).append(ins.args[-1])
    blocks = []
    for pc, ins in enumerate(code):
        if ins.name != "AllocTensor" or ins.args[0] not in storage_at:
            continue
        storage, tensor = ins.args[0], ins.args[-1]
        if uses.get(storage) != ["AllocTensor"]:
            continue
        last_use = _last_use_if_contained(tensor, uses, views, end)
        if last_use is None:
            continue
        spc = storage_at[storage]
        blocks.append(Block(spc, pc, code[spc].args[0], min(start[storage], start[tensor]),
                            max(last_use, pc)))
    return blocks


def _last_use_if_contained(reg, uses, views, end):
    """The last pc touching `reg` or a reshaped view of it, or None if any of them escapes."""
    last = end[reg]
    for name in uses.get(reg, []):
        if name == "ReshapeTensor":
            continue
        if name not in NON_ESCAPING_USES:
            return None
    for view in views.get(reg, []):
        view_last = _last_use_if_contained(view, uses, views, end)
        if view_last is None:
            return None
        last = max(last, view_last)
    return last


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

    Returns (code, arena size in bytes); code is unchanged when fewer than two tensors qualify.
    """
    blocks = _plannable_blocks(code, num_params)
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
