"""The opcode table's effects (operand roles, flags, static-runtime reasons) and the passes and
checks that derive their behaviour from them: every opcode declares its effects, each pass
treats exactly the opcodes the table marks, and changing a row changes what the pass does."""
import dataclasses

import numpy as np
import pytest

from dynvm.compiler.codegen.dce import eliminate_dead_code
from dynvm.compiler.codegen.kill import insert_kills
from dynvm.compiler.codegen.memory_plan import _plannable_blocks
from dynvm.compiler.codegen.regalloc import live_intervals
from dynvm.compiler.codegen.relink import relink
from dynvm.vm import (ExecutableFormatError, Instruction, Opcode, StaticRuntime, StaticRuntimeError,
                      VirtualMachine, bytecode)
from dynvm.vm.bytecode import FLAGS, OPCODES, ROLES
from dynvm.vm.prepare import PREPARERS
from tests.vm.vm_helpers import exe, fn, tensor

# the effects of every opcode: its register operands' roles (in operand order) and its flags;
# a change to the table must change this contract on purpose
EFFECTS = """
Move            w r         pure alias
Ret             r           terminator
Invoke          r w         calls
InvokeClosure   r r w       calls
CallKernel      u f
CallShapeFunc   u w
AllocStorage    w           pure leases
AllocStorageReg u w         pure leases
AllocTensor     v w         pure
AllocTensorReg  v u w       pure
AllocADT        r w         pure
AllocClosure    r w         pure
GetField        r w         pure
GetTag          u w         pure
If              u u
Goto            -           terminator
LoadConst       w           pure
LoadConsti      w           pure
ShapeOf         u w         pure
ReshapeTensor   v u w       pure
KillRegister    d
Fatal           -           terminator
CallLoop        u f         loop
"""
STATIC = {"Move", "Ret", "CallKernel", "AllocStorage", "AllocTensor", "AllocADT", "GetField", "GetTag",
          "LoadConst", "LoadConsti", "ShapeOf", "ReshapeTensor", "KillRegister"}


def test_every_opcode_declares_its_effects():
    rows = {r[0]: r[1:] for r in (line.split() for line in EFFECTS.strip().splitlines())}
    assert list(rows) == [s.name for s in OPCODES]
    for spec in OPCODES:
        roles = [r for r in spec.roles if r is not None]
        assert len(roles) == sum(kind in ("reg", "regs") for _, kind in spec.fields), spec.name
        assert all(r in ROLES for r in roles) and spec.flags <= FLAGS
        flags = [f for f in rows[spec.name] if f in FLAGS]
        assert (roles or ["-"]) == [r for r in rows[spec.name] if r not in FLAGS], spec.name
        assert spec.flags == frozenset(flags), spec.name
        assert isinstance(spec.not_static, str) and (spec.not_static == "") == (spec.name in STATIC)


def test_every_opcode_has_a_preparer_and_a_handler():
    assert set(PREPARERS) == set(Opcode)
    for spec in OPCODES:
        assert callable(getattr(VirtualMachine, "_op_" + spec.name)), spec.name


def test_a_row_that_does_not_declare_its_effects_is_rejected():
    with pytest.raises(ValueError, match="Bad: operand 'dst:reg' needs one role"):
        bytecode._table(("Bad", "dst:reg", "", "", "no role"))
    with pytest.raises(ValueError, match="needs one role"):
        bytecode._table(("Bad", "value:imm:r", "", "", "a role on an immediate"))
    with pytest.raises(ValueError, match="unknown flags in 'fast'"):
        bytecode._table(("Bad", "dst:reg:w", "fast", "", "unknown flag"))
    assert bytecode._table(("Good", "dst:reg:w value:imm", "pure", "", "fine"))[0].roles == ("w", None)


# ---------------------------------------------------------------- a sample of every opcode

def sample(spec, first_reg=100):
    """An instance of `spec` whose registers are fresh (first_reg, first_reg + 1, ...) and whose
    jumps go to the next instruction."""
    regs = iter(range(first_reg, first_reg + 100))
    values = {"reg": lambda: next(regs), "regs": lambda: [next(regs)], "offset": lambda: 1,
              "shape": lambda: [4], "dtype": lambda: "float32", "str": lambda: "boom"}
    return Instruction(spec.code, *[values.get(kind, lambda: 0)() for _, kind in spec.fields])


@pytest.mark.parametrize("spec", OPCODES, ids=lambda s: s.name)
def test_dce_removes_exactly_the_pure_opcodes_whose_results_are_unread(spec):
    code = [sample(spec), Instruction("Ret", 0)]
    kept = eliminate_dead_code(code)
    assert (len(kept) == 1) == ("pure" in spec.flags)


def test_dce_follows_the_table(monkeypatch):
    code = [Instruction("GetTag", 0, 1), Instruction("Ret", 0)]
    assert eliminate_dead_code(code) == code[1:]
    _patch(monkeypatch, "GetTag", flags=frozenset())     # no longer pure: it stays
    assert eliminate_dead_code(code) == code


def test_relink_and_regalloc_take_jumps_from_the_offset_operands():
    for spec in OPCODES:
        ins = sample(spec)
        assert (spec.offset_fields != ()) == (spec.code in bytecode.JUMPS)
        moved = relink([(None, Instruction("Move", 1, 0)), (0, ins), (1, Instruction("Ret", 0))])[1]
        assert [moved.args[i] for i in spec.offset_fields] == [1] * len(spec.offset_fields)
    # r1 is last read at the loop head: a backward jump of either kind keeps it live to the end
    # of the loop (pc 2); a forward If does not
    head = [Instruction("LoadConsti", 7, 1), Instruction("ShapeOf", 1, 2)]
    for jump, live_to in ((Instruction("If", 2, 2, 1, -1), 2), (Instruction("Goto", -1), 2),
                          (Instruction("If", 2, 2, 1, 1), 1)):
        assert live_intervals(head + [jump, Instruction("Ret", 0)], 1)[1][1] == live_to, jump


KILL_CODE = [Instruction("AllocStorage", 64, 64, "float32", 1),
             Instruction("AllocTensor", 1, 0, [16], "float32", 2),
             Instruction("CallKernel", 0, [0], [2]),
             None,                                          # the opcode under test
             Instruction("Ret", 0)]


@pytest.mark.parametrize("spec", OPCODES, ids=lambda s: s.name)
def test_kills_go_before_a_later_allocation_exactly_when_the_table_says_it_allocates(spec):
    code = list(KILL_CODE)
    code[3] = sample(spec)
    killed = len(insert_kills(code, 1)) > len(code)
    assert killed == ("leases" in spec.flags or "calls" in spec.flags)


def test_kill_insertion_follows_the_table(monkeypatch):
    code = list(KILL_CODE)
    code[3] = Instruction("GetTag", 0, 9)
    assert not any(ins.name == "KillRegister" for ins in insert_kills(code, 1))
    _patch(monkeypatch, "GetTag", flags=frozenset({"pure", "leases"}))
    assert [ins.name for ins in insert_kills(code, 1)][3:5] == ["KillRegister", "KillRegister"]


PLAN_CODE = [Instruction("AllocStorage", 64, 64, "float32", 1),
             Instruction("AllocTensor", 1, 0, [16], "float32", 2),
             Instruction("AllocStorage", 64, 64, "float32", 3),
             Instruction("AllocTensor", 3, 0, [16], "float32", 4),
             Instruction("CallKernel", 0, [0], [2]),
             Instruction("CallKernel", 0, [2], [4]),
             Instruction("ShapeOf", 4, 5),
             Instruction("Ret", 5)]


def test_memory_planning_follows_the_operand_roles(monkeypatch):
    """A tensor only `u`sed by ShapeOf stays in the arena; once ShapeOf's operand is a plain
    read (it may keep the value), the tensor escapes and gets its own block."""
    assert len(_plannable_blocks(PLAN_CODE, 1)) == 2
    _patch(monkeypatch, "ShapeOf", roles=("r", "w"))
    assert [b.tensor_pc for b in _plannable_blocks(PLAN_CODE, 1)] == [1]


def test_static_runtime_rejects_what_the_table_says(monkeypatch):
    program = exe(fn("main", ["x"], [("LoadConsti", 3, 1), ("Ret", 0)], param_types=[tensor(2)]))
    x = np.arange(2, dtype=np.float32)
    np.testing.assert_array_equal(StaticRuntime(program, "main").run(x), x)
    _patch(monkeypatch, "LoadConsti", not_static="is not wanted here")
    with pytest.raises(StaticRuntimeError, match=r"instruction 0 \(LoadConsti\) is not wanted here"):
        StaticRuntime(program, "main")


def test_the_verifier_checks_call_arity_by_the_calls_flag(monkeypatch):
    callee = fn("callee", ["a", "b"], [("Ret", 0)], param_types=[tensor(2)] * 2)
    caller = fn("main", ["x"], [("Invoke", 0, [0], 1), ("Ret", 1)], param_types=[tensor(2)])
    with pytest.raises(ExecutableFormatError, match="with 1 args, it takes 2"):
        exe(callee, caller).verify()
    _patch(monkeypatch, "Invoke", flags=frozenset())     # not a call: its operands are a prefix
    exe(callee, caller).verify()


def _patch(monkeypatch, name, **changes):
    """Replace one row of the opcode table for the test."""
    rows = list(OPCODES)
    spec = rows[Opcode[name]]
    rows[spec.code] = dataclasses.replace(spec, **changes)
    monkeypatch.setattr(bytecode, "OPCODES", tuple(rows))
    assert Instruction(name, *sample(spec).args).spec == rows[spec.code]   # read at use
