"""Dead-code elimination on emitted bytecode.

Removes instructions that only define a register nobody reads (a tuple whose fields were used
directly, a shape never needed, ...), repeating until nothing changes. Only opcodes the table
marks `pure` (no effect besides their written registers) are removed; kernels, shape functions,
calls and control flow always stay.
"""
from __future__ import annotations

from dynvm.compiler.codegen.relink import relink
from dynvm.vm.bytecode import READ_ROLES, registers


def _read_registers(code) -> set:
    read = set()
    for ins in code:
        read.update(registers(ins, *READ_ROLES))
    return read


def _dead(ins, read) -> bool:
    return ins.spec.has("pure") and not any(r in read for r in registers(ins, "w"))


def eliminate_dead_code(code: list) -> list:
    pcs = list(range(len(code)))
    while True:
        read = _read_registers(code[pc] for pc in pcs)
        kept = [pc for pc in pcs if not _dead(code[pc], read)]
        if len(kept) == len(pcs):
            break
        pcs = kept
    if len(pcs) == len(code):
        return code
    return relink([(pc, code[pc]) for pc in pcs])
