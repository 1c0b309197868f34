"""The opcode table and what derives from it: encoding, decoding, verification, disassembly."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.vm import ExecutableFormatError, Instruction, Opcode
from dynvm.vm.bytecode import OPCODES, decode, encode, format_instruction, verify_function
from tests.strategies import examples

CONTRACT = """
Move dst:reg src:reg
Ret src:reg
Invoke func:func args:regs dst:reg
InvokeClosure closure:reg args:regs dst:reg
CallKernel kernel:kernel inputs:regs outputs:regs
CallShapeFunc shape_func:shape_func inputs:regs outputs:regs
AllocStorage size:imm alignment:imm dtype:dtype dst:reg
AllocStorageReg shape:reg alignment:imm dtype:dtype dst:reg
AllocTensor storage:reg offset:imm shape:shape dtype:dtype dst:reg
AllocTensorReg storage:reg offset:imm shape:reg dtype:dtype dst:reg
AllocADT ctor:ctor fields:regs dst:reg
AllocClosure func:func captured:regs dst:reg
GetField obj:reg index:imm dst:reg
GetTag obj:reg dst:reg
If test:reg target:reg then_off:offset else_off:offset
Goto off:offset
LoadConst const:const dst:reg
LoadConsti value:imm dst:reg
ShapeOf tensor:reg dst:reg
ReshapeTensor tensor:reg shape:reg dst:reg
KillRegister reg:reg
Fatal message:str
CallLoop kernel:kernel inputs:regs outputs:regs
"""
# the rows of the instruction set in docs/design.md, including CallLoop (native loops, compiler/codegen/native_loop.py)

COUNTS = {"func": 2, "kernel": 1, "const": 3, "shape_func": 1, "ctor": 2}


def test_table_is_exactly_the_contract_opcode_table():
    rows = [line.split() for line in CONTRACT.strip().splitlines()]
    assert [s.name for s in OPCODES] == [r[0] for r in rows]
    for spec, row in zip(OPCODES, rows):
        assert [f"{f}:{k}" for f, k in spec.fields] == row[1:]
        assert spec.doc


def test_opcode_enum_numbers_follow_the_table():
    assert [int(getattr(Opcode, s.name)) for s in OPCODES] == list(range(len(OPCODES)))


def test_instruction_accepts_name_number_or_enum_and_reads_fields_by_name():
    a = Instruction("Invoke", 1, [2, 3], 4)
    assert a == Instruction(Opcode.Invoke, 1, (2, 3), 4) == Instruction(int(Opcode.Invoke), 1, [2, 3], 4)
    assert (a.func, a.args, a.dst) == (1, (1, (2, 3), 4), 4)
    assert a.name == "Invoke" and hash(a) == hash(Instruction("Invoke", 1, [2, 3], 4))
    with pytest.raises(AttributeError):
        a.nonexistent


def test_instruction_with_wrong_operand_count_is_a_format_error():
    with pytest.raises(ExecutableFormatError, match="takes 2 operands"):
        Instruction("Move", 1)


def test_unknown_opcode_name_is_a_format_error():
    with pytest.raises(ExecutableFormatError, match="unknown opcode"):
        Instruction("Frobnicate", 1)


# ---------------------------------------------------------------- encode / decode

_small = st.integers(min_value=0, max_value=2**31)
_KIND_VALUES = {
    "reg": _small, "func": _small, "kernel": _small, "const": _small, "shape_func": _small, "ctor": _small,
    "imm": st.integers(min_value=-2**63, max_value=2**63 - 1),
    "offset": st.integers(min_value=-2**31, max_value=2**31),
    "regs": st.lists(_small, max_size=5), "shape": st.lists(_small, max_size=5),
    "dtype": st.sampled_from(["float32", "float64", "int32", "int64", "bool"]),
    "str": st.text(max_size=20),
}


@st.composite
def instructions(draw):
    spec = draw(st.sampled_from(OPCODES))
    return Instruction(spec.code, *[draw(_KIND_VALUES[k]) for _, k in spec.fields])


@settings(max_examples=examples(300))
@given(st.lists(instructions(), max_size=20))
def test_encode_decode_round_trips_through_msgpack(code):
    import msgpack
    wire = msgpack.packb([encode(i) for i in code], use_bin_type=True)
    assert [decode(o) for o in msgpack.unpackb(wire, raw=False)] == code


@pytest.mark.parametrize("obj, phrase", [
    ([99, 1], "unknown opcode"),
    ([-1], "unknown opcode"),
    ([int(Opcode.Move), 1], "takes 2 operands"),
    ([int(Opcode.Move), 1, 2, 3], "takes 2 operands"),
    ([int(Opcode.Move), 1, "r2"], "must be a reg"),
    ([int(Opcode.Move), 1, True], "must be a reg"),
    ([int(Opcode.Move), 1.0, 2], "must be a reg"),
    ([int(Opcode.Invoke), 0, [1, "x"], 2], "must be a regs"),
    ([int(Opcode.Fatal), b"bytes"], "must be a str"),
    ([], "must be \\[opcode"),
    ("Move", "must be \\[opcode"),
    ([True, 1, 2], "must be \\[opcode"),
])
def test_decode_rejects_malformed_instructions(obj, phrase):
    with pytest.raises(ExecutableFormatError, match=phrase):
        decode(obj)


# ---------------------------------------------------------------- verification

def _verify(code, registers=4):
    verify_function("f", [Instruction(*c) for c in code], registers, COUNTS)


def test_verify_accepts_a_valid_function():
    _verify([("LoadConst", 2, 0), ("If", 0, 0, 1, 2), ("Goto", -2), ("Invoke", 1, [0, 3], 1),
             ("AllocStorage", 64, 64, "float32", 0), ("AllocTensor", 0, 0, [0, 3], "bool", 2),
             ("CallKernel", 0, [1], [2]), ("Ret", 1)])


LEASE = [("AllocStorage", 64, 64, "float32", 2), ("AllocTensor", 2, 0, [4], "float32", 3)]


@pytest.mark.parametrize("code", [
    [("CallKernel", 0, [1], [0]), ("Ret", 0)],                                # a parameter
    [("LoadConsti", 1, 1), ("CallKernel", 0, [0], [1]), ("Ret", 1)],          # a shared small int
    [("LoadConst", 0, 1), ("CallKernel", 0, [0], [1]), ("Ret", 1)],           # a constant
    [("GetTag", 0, 1), ("CallKernel", 0, [0], [1]), ("Ret", 1)],              # a tag
    [("Invoke", 0, [0], 1), ("CallKernel", 0, [0], [1]), ("Ret", 1)],         # a call's result
    LEASE + [("KillRegister", 3), ("CallKernel", 0, [0], [3]), ("Ret", 0)],   # freed first
    LEASE + [("Move", 3, 0), ("CallKernel", 0, [0], [3]), ("Ret", 0)],        # overwritten
    [("If", 0, 0, 1, 3)] + LEASE + [("CallKernel", 0, [0], [3]), ("Ret", 0)],  # one path skips it
])
def test_kernel_outputs_must_hold_memory_this_frame_allocated_on_every_path(code):
    with pytest.raises(ExecutableFormatError, match=r"writes into r\d, which does not hold memory"):
        _verify(code)


def test_leased_memory_reached_by_view_move_or_both_branches_may_be_written():
    _verify(LEASE + [("Move", 1, 3), ("CallKernel", 0, [0], [1]),
                     ("ReshapeTensor", 3, 0, 1), ("CallKernel", 0, [0], [1]), ("Ret", 1)])
    _verify([("If", 0, 0, 1, 4), ("AllocStorage", 64, 64, "float32", 2), ("AllocTensor", 2, 0, [4], "float32", 3),
             ("Goto", 3), ("AllocStorage", 64, 64, "float32", 2), ("AllocTensor", 2, 0, [4], "float32", 3),
             ("CallKernel", 0, [0], [3]), ("Ret", 3)])


@pytest.mark.parametrize("code, phrase", [
    ([("Move", 4, 0), ("Ret", 0)], "register r4 out of range"),
    ([("Move", 0, -1), ("Ret", 0)], "register r-1 out of range"),
    ([("Invoke", 0, [1, 9], 0), ("Ret", 0)], "register r9 out of range"),
    ([("LoadConst", 3, 0), ("Ret", 0)], "const index 3 out of range"),
    ([("Invoke", 2, [], 0), ("Ret", 0)], "func index 2 out of range"),
    ([("CallKernel", 1, [], []), ("Ret", 0)], "kernel index 1 out of range"),
    ([("CallShapeFunc", 5, [], []), ("Ret", 0)], "shape_func index 5 out of range"),
    ([("AllocADT", 2, [], 0), ("Ret", 0)], "ctor index 2 out of range"),
    ([("Goto", 2), ("Ret", 0)], "jumps to pc 2, outside"),
    ([("Goto", -1), ("Ret", 0)], "jumps to pc -1, outside"),
    ([("If", 0, 0, 1, 5), ("Ret", 0)], "jumps to pc 5"),
    ([("AllocStorage", 8, 8, "float16", 0), ("Ret", 0)], "unknown dtype 'float16'"),
    ([("AllocTensor", 0, 0, [2, -1], "float32", 1), ("Ret", 0)], "negative dimension"),
    ([("AllocTensor", 0, 0, [2.0], "float32", 1), ("Ret", 0)], "must be a shape"),
    ([("Move", 0, 1)], "fall off the end"),
    ([], "no instructions"),
])
def test_verify_rejects_defects(code, phrase):
    with pytest.raises(ExecutableFormatError, match=phrase):
        _verify(code)


def test_verify_names_function_and_pc():
    with pytest.raises(ExecutableFormatError, match=r"function 'f', pc 1 \(Move\)"):
        _verify([("Move", 0, 0), ("Move", 0, 7), ("Ret", 0)])


def test_verify_rejects_non_instruction_and_bad_register_count():
    with pytest.raises(ExecutableFormatError, match="not an Instruction"):
        verify_function("f", [[0, 1, 2]], 4, COUNTS)
    with pytest.raises(ExecutableFormatError, match="bad register_count"):
        verify_function("f", [Instruction("Ret", 0)], -1, COUNTS)


# ---------------------------------------------------------------- disassembly

def test_format_instruction_reads_like_the_design_example():
    names = {"kernel": lambda i: "add[contiguous,strided]"}
    line = format_instruction(Instruction("CallKernel", 2, [1, 2], [3]), 3, lambda k, i: names[k](i))
    assert line == "   3: CallKernel k2(add[contiguous,strided]) in=[r1, r2] out=[r3]"


def test_format_instruction_shows_jump_targets_as_absolute_pcs():
    assert format_instruction(Instruction("Goto", -3), 5).endswith("Goto @2")
    assert format_instruction(Instruction("If", 1, 2, 1, 4), 7).endswith("If test=r1 target=r2 then=@8 else=@11")
    assert format_instruction(Instruction("Fatal", "boom"), 0).endswith("Fatal 'boom'")
    assert format_instruction(Instruction("LoadConsti", 5, 2), 0).endswith("LoadConsti value=5 -> r2")
