"""The executable file: save/load round trips, and every kind of bad file is a format error."""
import msgpack
import numpy as np
import pytest

from dynvm.vm import Executable, ExecutableFormatError, Opcode
from dynvm.vm.executable import FORMAT_VERSION, _checksum

from tests.fuzz.harness import tree_paths
from tests.vm.vm_helpers import NAT, NAT_CTORS, exe, fn, tensor


def small_exe():
    """Two functions, constants of several dtypes (incl. 0-d and size-0), user constructors."""
    main = fn("main", ["x"], [
        ("LoadConst", 0, 1), ("LoadConsti", -5, 2), ("If", 1, 2, 1, 2), ("Fatal", "no"),
        ("Invoke", 1, [0], 3), ("AllocADT", 2, [3], 4), ("Ret", 4),
    ], registers=5, param_types=[tensor(None, 3)], ret_type=NAT)
    ident = fn("ident", ["y"], [("Move", 1, 0), ("Ret", 1)], registers=2, param_types=[tensor(None, 3)])
    return exe(main, ident, constructors=NAT_CTORS, constants=[
        np.array(3, np.int64), np.arange(6, dtype=np.float32).reshape(2, 3),
        np.zeros((0, 4), np.float64), np.array([True, False]), np.array([-1, 2**31 - 1], np.int32)])


def rewrite(data: bytes, header=None, body=None, keep_checksum=False) -> bytes:
    """Re-pack a file after `header(h)` / `body(b)` edited its parts, with a fresh checksum."""
    doc = msgpack.unpackb(data, raw=False)
    b = msgpack.unpackb(doc["body"], raw=False)
    if header:
        header(doc["header"])
    if body:
        body(b)
        doc["body"] = msgpack.packb(b, use_bin_type=True)
    if not keep_checksum:
        doc["checksum"] = _checksum(doc["header"], doc["body"])
    return msgpack.packb(doc, use_bin_type=True)


def test_save_load_round_trip_is_equal(tmp_path):
    original = small_exe()
    path = tmp_path / "model.dvm"
    original.save(path)
    loaded = Executable.load(path)
    assert loaded == original
    assert loaded.to_bytes() == original.to_bytes()
    assert all(not c.flags.writeable for c in loaded.constants)


def test_header_records_magic_version_producer_and_target():
    doc = msgpack.unpackb(small_exe().to_bytes(), raw=False)
    h = doc["header"]
    assert h["magic"] == "DYNVM" and h["format_version"] == FORMAT_VERSION
    assert h["producer"].startswith("dynvm ") and set(h["target"]) == {"triple", "cpu", "features"}
    assert len(doc["checksum"]) == 32


def test_every_truncation_is_a_format_error():
    data = small_exe().to_bytes()
    for n in range(len(data)):
        with pytest.raises(ExecutableFormatError):
            Executable.from_bytes(data[:n])


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
def test_every_single_flipped_byte_is_a_format_error(mask):
    data = small_exe().to_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= mask
        with pytest.raises(ExecutableFormatError):
            Executable.from_bytes(bytes(bad))


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb(3), msgpack.packb([1, 2]),
                                  msgpack.packb({"header": {}, "body": b"", "checksum": b""}),
                                  msgpack.packb({1: 2}), "not bytes", None])
def test_garbage_is_a_format_error(data):
    with pytest.raises(ExecutableFormatError):
        Executable.from_bytes(data)


def test_wrong_magic_is_rejected():
    bad = rewrite(small_exe().to_bytes(), header=lambda h: h.update(magic="ELF"))
    with pytest.raises(ExecutableFormatError, match="bad magic"):
        Executable.from_bytes(bad)


def test_newer_format_version_says_so():
    bad = rewrite(small_exe().to_bytes(), header=lambda h: h.update(format_version=FORMAT_VERSION + 1),
                  keep_checksum=True)
    with pytest.raises(ExecutableFormatError,
                       match=f"version {FORMAT_VERSION + 1} is newer than supported"):
        Executable.from_bytes(bad)


def test_older_format_version_says_to_build_again():
    """Version 1 files predate the loop kernels' interrupt word and step counts."""
    bad = rewrite(small_exe().to_bytes(), header=lambda h: h.update(format_version=FORMAT_VERSION - 1),
                  keep_checksum=True)
    with pytest.raises(ExecutableFormatError, match="older than .* build the program again"):
        Executable.from_bytes(bad)


def test_checksum_mismatch_is_reported():
    bad = rewrite(small_exe().to_bytes(), body=lambda b: b["functions"][1].update(name="other"),
                  keep_checksum=True)
    with pytest.raises(ExecutableFormatError, match="checksum mismatch"):
        Executable.from_bytes(bad)


def _set_instr(func, pc, encoded):
    def edit(body):
        body["functions"][func]["instructions"][pc] = encoded
    return edit


@pytest.mark.parametrize("encoded, phrase", [
    ([99, 0], "unknown opcode 99"),
    ([int(Opcode.Move), 1, 7], "register r7 out of range"),
    ([int(Opcode.LoadConst), 9, 1], "const index 9 out of range"),
    ([int(Opcode.Invoke), 5, [0], 1], "func index 5 out of range"),
    ([int(Opcode.Invoke), 1, [0, 0], 1], "with 2 args, it takes 1"),
    ([int(Opcode.AllocADT), 7, [], 1], "ctor index 7 out of range"),
    ([int(Opcode.AllocADT), 2, [], 1], "takes 1 fields, got 0"),
    ([int(Opcode.Goto), 100], "jumps to pc 101"),
    ([int(Opcode.CallKernel), 0, [], []], "kernel index 0 out of range"),
    ([int(Opcode.Move), 1], "takes 2 operands"),
])
def test_invalid_instruction_in_file_is_rejected(encoded, phrase):
    bad = rewrite(small_exe().to_bytes(), body=_set_instr(0, 1, encoded))
    with pytest.raises(ExecutableFormatError, match=phrase):
        Executable.from_bytes(bad)


@pytest.mark.parametrize("edit, phrase", [
    (lambda b: b["constants"][1].update(data=b"\0" * 3), "needs 24 bytes, has 3"),
    (lambda b: b["constants"][1].update(dtype="float16"), "unknown dtype"),
    (lambda b: b["constants"][1].update(shape=[-2, -3]), "bad shape"),
    (lambda b: b["functions"].append(b["functions"][1]), "duplicate function name"),
    (lambda b: b["functions"][0].update(register_count=0), "smaller than the parameter count"),
    (lambda b: b["functions"][0].update(register_count=2**20 + 1), "over the limit MAX_REGISTERS = 1048576"),
    (lambda b: b["functions"][0]["param_types"][0].update(dtype="complex64"), "bad dtype"),
    (lambda b: b["functions"][0].update(param_types=[{"kind": "weird"}]), "unknown type kind"),
    (lambda b: b["functions"][0].update(instructions=[]), "no instructions"),
    (lambda b: b["constructors"].pop(0), "constructor 0 must be the builtin tuple"),
    (lambda b: b["constructors"].append(dict(b["constructors"][1])), "duplicate constructor"),
    (lambda b: b["kernels"].update(object="text"), "one entry per compile unit"),
    (lambda b: b["kernels"].update(llvm_ir="text", object=b"obj"), "one entry per compile unit"),
    (lambda b: b["kernels"].update(llvm_ir=[["ir"]], object=[]), "one entry per compile unit"),
    (lambda b: b["kernels"].update(llvm_ir=[[]], object=[b""]), "one entry per compile unit"),
    (lambda b: b.pop("shape_funcs"), "executable body must be a map"),
    (lambda b: b["shape_funcs"].append({"name": 3, "attrs": {}}), "bad shape function entry"),
])
def test_invalid_sections_are_rejected(edit, phrase):
    bad = rewrite(small_exe().to_bytes(), body=edit)
    with pytest.raises(ExecutableFormatError, match=phrase):
        Executable.from_bytes(bad)


def test_header_target_must_match_kernels_target():
    bad = rewrite(small_exe().to_bytes(), header=lambda h: h["target"].update(cpu="pentium"))
    with pytest.raises(ExecutableFormatError, match="header target does not match"):
        Executable.from_bytes(bad)


def test_unknown_shape_function_is_rejected():
    bad = rewrite(small_exe().to_bytes(),
                  body=lambda b: b["shape_funcs"].append({"name": "no_such_op_xyz", "attrs": {}}))
    with pytest.raises(ExecutableFormatError, match="unknown shape function 'no_such_op_xyz'"):
        Executable.from_bytes(bad)


def test_disassembly_lists_tables_and_functions():
    text = small_exe().disassemble()
    for phrase in ["constants:", "c1: float32[2, 3]", "c0: int64[]=3", "c2: float64[0, 4]=[]",
                   "constructors:", "ctor2: S (adt Nat, tag 1, arity 1)", "kernels", "shape functions:",
                   "fn f0 main(r0 x: float32[?, 3]) -> Nat  [5 registers]",
                   "   1: LoadConsti value=-5 -> r2", "   2: If test=r1 target=r2 then=@3 else=@4",
                   "   4: Invoke f1(ident) args=[r0] -> r3", "   0: LoadConst c0(int64[]=3) -> r1",
                   "   5: AllocADT ctor2(S) fields=[r3] -> r4", "fn f1 ident(r0 y: float32[?, 3])"]:
        assert phrase in text, phrase


# ---------------------------------------------------------------- constants and kernels sections

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.strategies import arrays, examples, shapes  # noqa: E402


@settings(max_examples=examples(60))
@given(shapes(0, 3), st.sampled_from(["float32", "float64", "int32", "int64", "bool"]), st.integers(0, 99))
def test_constants_of_every_dtype_and_shape_round_trip(shape, dtype, seed):
    c = arrays(shape, dtype, seed)
    loaded = Executable.from_bytes(exe(fn("main", [], [("LoadConst", 0, 0), ("Ret", 0)]), constants=[c]).to_bytes())
    (d,) = loaded.constants
    assert d.dtype == c.dtype and d.shape == c.shape and np.array_equal(d, c, equal_nan=True)


def test_non_contiguous_constants_are_stored_contiguous():
    c = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]
    (d,) = Executable.from_bytes(exe(fn("main", [], [("LoadConst", 0, 0), ("Ret", 0)], registers=1), constants=[c]).to_bytes()).constants
    np.testing.assert_array_equal(d, c)


# Executables that load native code are kept alive for the whole session: disposing a second
# native library crashes in kernels/codelib.py today (a cached TargetMachine is owned, and freed,
# by the first MCJIT engine). See the vm/ report.
_KEEP_NATIVE_LIBRARIES_ALIVE = []


def test_round_trip_with_compiled_kernels_runs_the_loaded_code(tmp_path):
    from dynvm.kernels.builder import KernelBuilder
    from dynvm.vm import VirtualMachine
    kb = KernelBuilder()
    kb.add_elementwise("mul", ["multiply", ["in", 0], ["in", 0]], inputs=[("float64", 1)], output=("float64", 1))
    section = kb.finish()
    main = fn("main", ["x"], [
        ("ShapeOf", 0, 1), ("AllocStorageReg", 1, 64, "float64", 2),
        ("AllocTensorReg", 2, 0, 1, "float64", 3), ("CallKernel", 0, [0], [3]), ("Ret", 3),
    ], param_types=[tensor(None, dtype="float64")], ret_type=tensor(None, dtype="float64"))
    original = exe(main, kernels=section)
    original.save(tmp_path / "sq.dvm")
    loaded = Executable.load(tmp_path / "sq.dvm")
    _KEEP_NATIVE_LIBRARIES_ALIVE.append(loaded)
    assert loaded == original
    assert msgpack.unpackb(loaded.to_bytes(), raw=False)["header"]["target"] == section["target"]
    assert "k0: mul (compiled) variants: " in loaded.disassemble()
    x = np.linspace(-2, 2, 17)
    np.testing.assert_array_equal(VirtualMachine(loaded).invoke("main", x), x * x)


def test_kernels_section_that_cannot_load_is_a_format_error():
    section = {"target": {"triple": "", "cpu": "", "features": ""}, "llvm_ir": [], "object": [],
               "kernels": [{"name": "k", "kind": "numpy", "op": "cast", "attrs": {},
                            "inputs": [["float32", 1]], "outputs": [["float32", 1]], "variants": []}]}
    main = fn("main", ["x"], [("AllocStorage", 64, 64, "float32", 1), ("AllocTensor", 1, 0, [4], "float32", 2), 
                              ("CallKernel", 0, [0], [2]), ("Ret", 2)])
    with pytest.raises(ExecutableFormatError, match="unknown kind 'numpy'"):
        Executable.from_bytes(exe(main, kernels=section).to_bytes())


def test_call_kernel_with_wrong_argument_count_is_rejected():
    section = {"target": {"triple": "", "cpu": "", "features": ""}, "llvm_ir": [], "object": [],
               "kernels": [{"name": "k", "kind": "compiled", "op": "cast", "attrs": {}, "symbol": "k",
                            "inputs": [["float32", 1]], "outputs": [["float32", 1]],
                            "variants": [{"name": "v", "symbol": "k__v"}]}]}
    main = fn("main", ["x"], [("AllocStorage", 64, 64, "float32", 1), ("AllocTensor", 1, 0, [4], "float32", 2), 
                              ("CallKernel", 0, [0, 0], [2]), ("Ret", 2)])
    with pytest.raises(ExecutableFormatError, match="kernel 'k' takes 1 inputs and 1 outputs, got 2 and 1"):
        Executable.from_bytes(exe(main, kernels=section).to_bytes())


_SMALL_FILE = small_exe().to_bytes()
_LEAVES = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=5)
           | st.binary(max_size=5) | st.sampled_from([0, 1, 2, -1, "tuple", "float32", "S"]))


@settings(max_examples=examples(400))
@given(st.lists(st.tuples(st.integers(0, len(_SMALL_FILE) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_random_corruption_is_always_a_format_error(edits):
    bad = bytearray(_SMALL_FILE)
    for position, value in edits:
        bad[position] = value
    if bytes(bad) == _SMALL_FILE:
        return
    with pytest.raises(ExecutableFormatError):
        Executable.from_bytes(bytes(bad))


@settings(max_examples=examples(200))
@given(st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["header", "body", "checksum", "magic", "functions", "x"]), inner, max_size=4), max_leaves=20))
def test_arbitrary_msgpack_documents_are_format_errors(doc):
    with pytest.raises(ExecutableFormatError):
        Executable.from_bytes(msgpack.packb(doc, use_bin_type=True))


_BODY_PATHS = [path for path, _ in tree_paths(
    msgpack.unpackb(msgpack.unpackb(_SMALL_FILE, raw=False)["body"], raw=False))]


@settings(max_examples=examples(500))
@given(st.sampled_from(_BODY_PATHS[:-1]), _LEAVES | st.lists(_LEAVES, max_size=3))
def test_any_edited_body_value_loads_or_is_a_format_error(path, value):
    """Edit one value inside a well-checksummed body: it may still be valid, but never crashes."""
    def edit(body):
        for key in path[:-1]:
            body = body[key]
        body[path[-1]] = value
    try:
        Executable.from_bytes(rewrite(_SMALL_FILE, body=edit))
    except ExecutableFormatError:
        pass


@pytest.mark.parametrize("cut, phrase", [
    (lambda b: b"", "not a dynvm executable \\(bad magic: 0 bytes"),
    (lambda b: b"PK\x03\x04" + b"\0" * 100, "not a dynvm executable \\(bad magic: 104 bytes"),
    (lambda b: b[:30], "truncated: the file ends after 30 bytes, inside its header"),
    (lambda b: b[:len(b) // 2], "truncated: {half} of {full} bytes"),
    (lambda b: b[:-1], "truncated: {less} of {full} bytes"),
    (lambda b: b + b"\0\0", "2 bytes after the end of the executable \\({full} bytes\\)"),
])
def test_a_wrong_or_cut_file_is_named_plainly(cut, phrase):
    data = small_exe().to_bytes()
    phrase = phrase.format(half=len(data) // 2, less=len(data) - 1, full=len(data))
    with pytest.raises(ExecutableFormatError, match=phrase):
        Executable.from_bytes(cut(data))
