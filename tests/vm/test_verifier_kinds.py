"""The verifier's register kinds (vm/kinds.py): what `register_kinds` reports, that every check
rejects a hand-made file naming the function, pc, opcode, register, expected and found kinds,
that joins never reject a program that is fine on every path, and the per-file budgets."""
import dataclasses

import msgpack
import pytest

from dynvm.compiler import build
from dynvm.models import list_ops, lstm, nms_postprocess, tree_lstm
from dynvm.vm import Executable, ExecutableFormatError, bytecode, executable
from dynvm.vm.bytecode import READ_ROLES, registers
from dynvm.vm.executable import empty_kernels_section
from dynvm.vm.kinds import ANY, SCALAR_I64, UNDEF, Kind, join, mismatch, register_kinds, tensor
from tests.vm.test_executable import rewrite, small_exe
from tests.vm.vm_helpers import ANY as ANY_TYPE
from tests.vm.vm_helpers import NAT, NAT_CTORS, exe, fn
from tests.vm.vm_helpers import SCALAR_I64 as SCALAR_I64_TYPE
from tests.vm.vm_helpers import tensor as tensor_type


def kernels(*signatures):
    """A kernels section listing kernels of the given (op, inputs, outputs) with [dtype, rank]
    operands: enough for `verify`, which reads the entries only (nothing here is loaded or run)."""
    section = empty_kernels_section()
    section["kernels"] = [{"name": f"k{i}", "kind": "compiled", "op": op, "attrs": {}, "inputs": ins,
                           "outputs": outs, "symbol": f"s{i}", "variants": []}
                          for i, (op, ins, outs) in enumerate(signatures)]
    return section


ADD_F32_1D = ("elementwise", [["float32", 1], ["float32", 1]], [["float32", 1]])
LOOP = ("loop", [["float32", 1], ["int64", 0], ["int32", 0]], [["float32", 1], ["int64", 0]])  # + the VM's budget, word, counters
LEASE = [("AllocStorage", 64, 64, "float32", 2), ("AllocTensor", 2, 0, [4], "float32", 3)]


# ---------------------------------------------------------------- register_kinds

def test_register_kinds_gives_every_registers_kind_before_every_pc():
    main = fn("main", ["x"], [
        ("LoadConsti", 0, 1),                          # 0
        ("ShapeOf", 0, 2),                             # 1
        ("AllocStorage", 48, 64, "float32", 3),        # 2
        ("If", 1, 1, 1, 3),                            # 3: -> 4 or 6
        ("AllocTensor", 3, 0, [4], "float32", 4),      # 4
        ("Goto", 2),                                   # 5: -> 7
        ("AllocTensor", 3, 0, [2], "float32", 4),      # 6
        ("Move", 5, 4),                                # 7: the two paths meet
        ("Ret", 5),                                    # 8
        ("Fatal", "never reached"),                    # 9
    ], registers=6, param_types=[tensor_type(None, 3)])
    kinds = register_kinds(exe(main), 0)
    assert len(kinds) == 10 and all(len(k) == 6 for k in kinds[:9])
    assert kinds[0] == [tensor("float32", 2, (None, 3))] + [UNDEF] * 5
    assert kinds[3][1:4] == [SCALAR_I64, tensor("int64", 1, (2,)), Kind("storage", "float32")]
    assert kinds[5][4] == tensor("float32", 1, (4,)) and kinds[7][4] == tensor("float32", 1, (None,))
    assert kinds[7][5] == UNDEF and kinds[8][5] == kinds[8][4]       # Move: the flag `alias`
    assert kinds[9] is None                                          # unreachable


def test_kinds_of_adts_closures_calls_and_fields():
    main = fn("main", ["x"], [
        ("AllocADT", 2, [1], 2), ("AllocADT", 0, [0, 2], 3),         # S(?) and (x, S(?))
        ("GetField", 3, 0, 4), ("GetField", 3, 1, 5), ("GetTag", 5, 6),
        ("AllocClosure", 1, [0], 7), ("InvokeClosure", 7, [], 1), ("Ret", 1),
    ], registers=8, param_types=[tensor_type(2)], ret_type=NAT)
    z = fn("z", ["x"], [("AllocADT", 1, [], 1), ("Ret", 1)], param_types=[tensor_type(None)], ret_type=NAT)
    kinds = register_kinds(exe(main, z, constructors=NAT_CTORS), 0)
    pair = kinds[2][3]
    assert (pair.kind, pair.name, pair.ctor, len(pair.fields)) == ("adt", "tuple", 0, 2)
    assert kinds[3][4] == tensor("float32", 1, (2,)) and kinds[4][5].name == "Nat"
    assert kinds[5][6] == SCALAR_I64
    assert kinds[6][7] == Kind("closure", func=1, fields=(tensor("float32", 1, (2,)),))
    assert kinds[7][1] == Kind("adt", name="Nat")                    # z's declared return type


def test_a_loop_reaches_a_fixed_point_and_keeps_what_every_iteration_agrees_on():
    # r1 = (x,) then r1 = (r1,) in a loop: the nesting is unknown at the head, the tuple is known
    main = fn("main", ["x"], [("LoadConsti", 0, 2), ("AllocADT", 0, [0], 1),
                              ("If", 2, 2, 1, 3),                     # 2: -> 3 or 5
                              ("AllocADT", 0, [1], 1), ("Goto", -2),
                              ("Ret", 1)], registers=3)
    head = register_kinds(exe(main), 0)[2]
    assert (head[1].kind, head[1].name, len(head[1].fields), head[1].fields[0]) == ("adt", "tuple", 1, ANY)
    assert head[2] == SCALAR_I64


@pytest.mark.parametrize("module", [lstm.build_module, tree_lstm.build_module, list_ops.build_module,
                                    nms_postprocess.build_module], ids=lambda m: m.__module__)
def test_compiled_models_have_a_defined_kind_for_every_register_they_read(module):
    executable = build(module())
    for i, f in enumerate(executable.functions):
        kinds = register_kinds(executable, i)
        assert len(kinds) == len(f.instructions)
        for pc, (ins, state) in enumerate(zip(f.instructions, kinds)):
            if state is not None:
                assert all(state[r] != UNDEF for r in registers(ins, *READ_ROLES)), (f.name, pc)


def test_join_and_mismatch():
    a, b = tensor("float32", 2, (3, 4)), tensor("float32", 2, (3, 5))
    assert join(a, b) == tensor("float32", 2, (3, None)) and join(a, a) is a
    assert join(a, tensor("int64", 1)) == tensor(None, None) and join(a, SCALAR_I64).kind == "tensor"
    assert join(a, UNDEF) == ANY and join(a, Kind("storage")) == ANY
    assert not mismatch(a, tensor("float32", 2)) and mismatch(a, tensor("float32", 1))
    assert mismatch(a, tensor("float32", 2, (3, 6))) and not mismatch(ANY, a) and mismatch(UNDEF, ANY)


# ---------------------------------------------------------------- every check, on a bad file

I64 = SCALAR_I64_TYPE
F32 = tensor_type(None)
BAD = {
    "undefined read": (
        [("Ret", 1)], {},
        r"'main', pc 0 \(Ret\): reads r1, which is undefined on every path to it"),
    "kernel input dtype": (
        LEASE + [("LoadConsti", 1, 1), ("CallKernel", 0, [0, 1], [3]), ("Ret", 3)], {},
        r"pc 3 \(CallKernel\): r1 \(input 1\) must be tensor float32\[\?\], found tensor int64\[\]"),
    "kernel input rank": (
        LEASE + [("CallKernel", 0, [0, 0], [3]), ("Ret", 3)], {"param_types": [tensor_type(None, 2)]},
        r"pc 2 \(CallKernel\): r0 \(input 0\) must be tensor float32\[\?\], found tensor float32\[\?, 2\]"),
    "kernel output dtype": (
        [("AllocStorage", 64, 64, "int64", 2), ("AllocTensor", 2, 0, [4], "int64", 3),
         ("CallKernel", 0, [0, 0], [3]), ("Ret", 3)], {},
        r"r3 \(output 0\) must be tensor float32\[\?\], found tensor int64\[4\]"),
    "kernel output rank": (
        [("AllocStorage", 64, 64, "float32", 2), ("AllocTensor", 2, 0, [2, 2], "float32", 3),
         ("CallKernel", 0, [0, 0], [3]), ("Ret", 3)], {},
        r"r3 \(output 0\) must be tensor float32\[\?\], found tensor float32\[2, 2\]"),
    "loop kernel operands": (
        LEASE + [("LoadConsti", 1, 1), ("CallLoop", 1, [1], [3]), ("Ret", 3)], {},
        r"pc 3 \(CallLoop\): r1 \(input 0\) must be tensor float32\[\?\], found tensor int64\[\]"),
    "shape function input": (
        [("AllocADT", 0, [], 1), ("CallShapeFunc", 0, [1], [2]), ("Ret", 2)], {},
        r"pc 1 \(CallShapeFunc\): r1 \(input 0\) must be tensor \? of unknown rank, found tuple of 0"),
    "storage of a tensor": (
        [("AllocTensor", 0, 0, [4], "float32", 1), ("Ret", 1)], {},
        r"pc 0 \(AllocTensor\): r0 must be storage, found tensor float32\[\?\]"),
    "float shape": (
        [("AllocStorage", 64, 64, "float32", 2), ("AllocTensorReg", 2, 0, 0, "float32", 3), ("Ret", 3)], {},
        r"pc 1 \(AllocTensorReg\): r0 \(shape\) must be tensor int64\[\?\], found tensor float32\[\?\]"),
    "0-d shape": (
        [("LoadConsti", 4, 1), ("AllocStorageReg", 1, 64, "float32", 2), ("Ret", 2)], {},
        r"pc 1 \(AllocStorageReg\): r1 \(shape\) must be tensor int64\[\?\], found tensor int64\[\]"),
    "reshape by a tuple": (
        [("AllocADT", 0, [], 1), ("ReshapeTensor", 0, 1, 2), ("Ret", 2)], {},
        r"pc 1 \(ReshapeTensor\): r1 \(shape\) must be tensor int64\[\?\], found tuple of 0"),
    "shape of a closure": (
        [("AllocClosure", 0, [], 1), ("ShapeOf", 1, 2), ("Ret", 2)], {},
        r"pc 1 \(ShapeOf\): r1 must be tensor \? of unknown rank, found closure of f0"),
    "field of a tensor": (
        [("GetField", 0, 0, 1), ("Ret", 1)], {},
        r"pc 0 \(GetField\): r0 must be ADT, found tensor float32\[\?\]"),
    "field out of range": (
        [("AllocADT", 0, [0], 1), ("GetField", 1, 1, 2), ("Ret", 2)], {},
        r"pc 1 \(GetField\): reads field 1 of r1, a tuple of 1 with 1 fields"),
    "negative field": (
        [("AllocADT", 0, [0], 1), ("GetField", 1, -1, 2), ("Ret", 2)], {},
        r"pc 1 \(GetField\): reads field -1: a field index is not negative"),
    "tag of a storage": (
        [("AllocStorage", 8, 8, "int64", 1), ("GetTag", 1, 2), ("Ret", 2)], {},
        r"pc 1 \(GetTag\): r1 must be ADT, found storage"),
    "call of a tensor": (
        [("InvokeClosure", 0, [], 1), ("Ret", 1)], {},
        r"pc 0 \(InvokeClosure\): r0 must be closure, found tensor float32\[\?\]"),
    "closure arity": (
        [("AllocClosure", 1, [0], 1), ("InvokeClosure", 1, [0], 2), ("Ret", 2)], {},
        r"pc 1 \(InvokeClosure\): r1 is a closure of 'g', which takes 0 arguments, got 1"),
    "if on a vector": (
        [("LoadConsti", 0, 1), ("If", 0, 1, 1, 1), ("Ret", 0)], {},
        r"pc 1 \(If\): r0 \(test\) must be tensor \?\[\], found tensor float32\[\?\]"),
    "returned dtype": (
        [("Ret", 0)], {"ret_type": I64},
        r"pc 0 \(Ret\): r0 \(the returned value\) must be tensor int64\[\], found tensor float32\[\?\]"),
    "returned static dim": (
        [("Ret", 0)], {"param_types": [tensor_type(3)], "ret_type": tensor_type(4)},
        r"r0 \(the returned value\) must be tensor float32\[4\], found tensor float32\[3\]"),
    "returned tuple for an ADT": (
        [("AllocADT", 0, [], 1), ("Ret", 1)], {"ret_type": NAT},
        r"r1 \(the returned value\) must be ADT Nat, found tuple of 0"),
    "returned tuple size": (
        [("AllocADT", 0, [0], 1), ("Ret", 1)], {"ret_type": {"kind": "tuple", "fields": [F32, F32]}},
        r"r1 \(the returned value\) must be tuple of 2, found tuple of 1"),
    "closure for a tensor": (
        [("AllocClosure", 0, [], 1), ("Ret", 1)], {"ret_type": F32},
        r"must be tensor float32\[\?\], found closure of f0"),
    "call argument": (
        [("LoadConsti", 1, 1), ("Invoke", 1, [1], 2), ("Ret", 2)], {},
        r"pc 1 \(Invoke\): r1 \(parameter 'y' of 'g'\) must be tensor float32\[\?\], found tensor int64\[\]"),
    "captured value": (
        [("LoadConsti", 1, 1), ("AllocClosure", 1, [1], 2), ("Ret", 2)], {},
        r"pc 1 \(AllocClosure\): r1 \(parameter 'y' of 'g'\) must be tensor float32\[\?\]"),
    "constructor field": (
        [("AllocADT", 3, [0], 1), ("Ret", 1)], {},
        r"pc 0 \(AllocADT\): r0 \(field 0 of 'Box'\) must be tensor int64\[\], found tensor float32\[\?\]"),
}
TYPED_CTORS = NAT_CTORS + [{"name": "Box", "tag": 0, "arity": 1, "adt": "Box", "fields": [I64]}]


def bad_exe(code, options):
    main = fn("main", ["x"], code, **options)
    g = fn("g", ["y"], [("Ret", 0)])
    return exe(main, g, constructors=TYPED_CTORS, kernels=kernels(ADD_F32_1D, LOOP),
               shape_funcs=[{"name": "add", "attrs": {}}])


@pytest.mark.parametrize("name", BAD)
def test_each_check_rejects_a_bad_function_naming_where_and_what(name):
    code, options, phrase = BAD[name]
    with pytest.raises(ExecutableFormatError, match=phrase) as info:
        bad_exe(code, options).verify()
    assert str(info.value).startswith("function 'main', pc ")


def test_a_bad_file_is_rejected_at_load_before_its_kernels_are_looked_at():
    code, options, phrase = BAD["kernel input dtype"]
    with pytest.raises(ExecutableFormatError, match=phrase):
        Executable.from_bytes(bad_exe(code, options).to_bytes())


def test_the_issues_reproducer_a_shared_small_int_as_a_kernel_output_is_rejected():
    code = [("LoadConsti", 1, 2), ("CallKernel", 0, [0, 0], [2]), ("Ret", 2)]
    with pytest.raises(ExecutableFormatError, match="writes into r2, which does not hold memory"):
        bad_exe(code, {}).verify()


BRANCH = [("LoadConsti", 0, 5)]    # r5: a 0-d test for the If of each case below


@pytest.mark.parametrize("code, ret_type", [
    # a tensor on one path, a tuple on the other: `any` after the join, the VM checks the use
    (BRANCH + [("If", 5, 5, 1, 3), ("AllocADT", 0, [], 1), ("Goto", 2), ("Move", 1, 0),
               ("GetField", 1, 0, 2), ("Ret", 2)], ANY_TYPE),
    # r1 defined on one path only: not undefined on every path
    (BRANCH + [("If", 5, 5, 1, 2), ("LoadConsti", 1, 1), ("Ret", 1)], I64),
    # float32 on one path, int64 on the other: the dtype is unknown, the kernel's check is the VM's
    (BRANCH + LEASE + [("If", 5, 5, 1, 3), ("LoadConsti", 1, 1), ("Goto", 2), ("Move", 1, 0),
                       ("CallKernel", 0, [0, 1], [3]), ("Ret", 3)], F32),
    # a static dim that differs between paths fits any declared dim
    (BRANCH + [("If", 5, 5, 1, 4), ("AllocStorage", 64, 64, "float32", 2),
               ("AllocTensor", 2, 0, [4], "float32", 1), ("Goto", 3),
               ("AllocStorage", 64, 64, "float32", 2), ("AllocTensor", 2, 0, [5], "float32", 1),
               ("Ret", 1)], tensor_type(4)),
    # closures of g capturing 0 or 1 values: the count is unknown after the join, the VM checks it
    (BRANCH + [("If", 5, 5, 1, 3), ("AllocClosure", 1, [], 1), ("Goto", 2), ("AllocClosure", 1, [0], 1),
               ("InvokeClosure", 1, [0], 2), ("Ret", 2)], F32),
], ids=["tensor or tuple", "defined on one path", "dtype joined", "dims joined", "closures joined"])
def test_what_is_fine_on_every_path_passes(code, ret_type):
    bad_exe(code, {"ret_type": ret_type}).verify()


def test_every_kind_rule_reads_the_opcode_row_at_use(monkeypatch):
    """The `alias` flag of Move gives the destination the source's kind; without it, `any`."""
    code = [("LoadConsti", 1, 1), ("Move", 2, 1), ("Ret", 2)]
    assert register_kinds(bad_exe(code, {}), 0)[2][2] == SCALAR_I64
    rows = list(bytecode.OPCODES)
    rows[0] = dataclasses.replace(rows[0], flags=rows[0].flags - {"alias"})
    monkeypatch.setattr(bytecode, "OPCODES", tuple(rows))
    assert register_kinds(bad_exe(code, {}), 0)[2][2] == ANY


# ---------------------------------------------------------------- budgets

@pytest.mark.parametrize("limit, value, phrase", [
    ("MAX_FUNCTIONS", 1, "the file has 2 functions, over the limit MAX_FUNCTIONS = 1"),
    ("MAX_CONSTANTS", 4, "the file has 5 constants, over the limit MAX_CONSTANTS = 4"),
    ("MAX_CONSTRUCTORS", 2, "the file has 3 constructors, over the limit MAX_CONSTRUCTORS = 2"),
    ("MAX_INSTRUCTIONS_PER_FUNCTION", 6, "7 instructions in one function, over the limit MAX_INSTRUC"),
    ("MAX_INSTRUCTIONS", 8, "the file has 9 instructions, over the limit MAX_INSTRUCTIONS = 8"),
    ("MAX_TOTAL_REGISTERS", 6, "the file has 7 registers, over the limit MAX_TOTAL_REGISTERS = 6"),
    ("MAX_CONSTANT_BYTES", 41, "the file has 42 bytes of constants, over the limit MAX_CONSTANT_BYTES = 41"),
    ("MAX_NAME_LENGTH", 4, "a constructor name is 5 characters long, over the limit MAX_NAME_LENGTH = 4"),
])
def test_each_budget_is_checked_at_load_naming_its_limit(monkeypatch, limit, value, phrase):
    data = small_exe().to_bytes()
    Executable.from_bytes(data)
    monkeypatch.setattr(executable, limit, value)
    with pytest.raises(ExecutableFormatError, match=phrase):
        Executable.from_bytes(data)


def test_budgets_on_kernels_shape_functions_and_messages(monkeypatch):
    data = rewrite(small_exe().to_bytes(),
                   body=lambda b: b["shape_funcs"].append({"name": "add", "attrs": {}}))
    monkeypatch.setattr(executable, "MAX_SHAPE_FUNCS", 0)
    with pytest.raises(ExecutableFormatError, match="1 shape_funcs, over the limit MAX_SHAPE_FUNCS = 0"):
        Executable.from_bytes(data)
    monkeypatch.setattr(bytecode, "MAX_MESSAGE_LENGTH", 1)               # the Fatal of small_exe says "no"
    with pytest.raises(ExecutableFormatError, match=r"pc 3 \(Fatal\): operand message is 2 characters long, "
                                                    "over the limit MAX_MESSAGE_LENGTH = 1"):
        small_exe().verify()
    big = msgpack.unpackb(msgpack.packb(kernels(ADD_F32_1D)), raw=False)
    data = rewrite(small_exe().to_bytes(), body=lambda b: b["kernels"]["kernels"].extend(big["kernels"]))
    monkeypatch.setattr(executable, "MAX_KERNELS", 0)
    with pytest.raises(ExecutableFormatError, match="1 kernels, over the limit MAX_KERNELS = 0"):
        Executable.from_bytes(data)

