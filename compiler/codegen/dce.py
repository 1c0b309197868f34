"""Dead-code elimination on emitted bytecode.

Removes instructions that only define a register nobody reads (a tuple whose fields were used
directly, a shape never needed, ...), repeating until nothing changes. Only instructions with
no effect besides their destination are removed; kernels, shape functions, calls and control
flow always stay.
"""
from __future__ import annotations

from dynvm.compiler.codegen.relink import relink

PURE = {"Move", "LoadConst", "LoadConsti", "AllocADT", "AllocClosure", "GetField", "GetTag",
        "ShapeOf", "ReshapeTensor", "AllocTensor", "AllocTensorReg", "AllocStorage",
        "AllocStorageReg"}


def _read_registers(code) -> set:
    read = set()
    for ins in code:
        for i, (field, kind) in enumerate(ins.spec.fields):
            if field == "dst" or (ins.name == "CallShapeFunc" and field == "outputs"):
                continue
            if kind == "reg":
                read.add(ins.args[i])
            elif kind == "regs":
                read.update(ins.args[i])
    return read


def eliminate_dead_code(code: list) -> list:
    pcs = list(range(len(code)))
    while True:
        read = _read_registers(code[pc] for pc in pcs)
        kept = [pc for pc in pcs if not (code[pc].name in PURE and code[pc].args[-1] not in read)]
        if len(kept) == len(pcs):
            break
        pcs = kept
    if len(pcs) == len(code):
        return code
    return relink([(pc, code[pc]) for pc in pcs])
