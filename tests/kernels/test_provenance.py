"""A loaded file runs only native code this machine generated, unless the caller opts in.

The threat: a .dvm is bytes; its object code, IR, symbols and checksum can all be rewritten.
By default the kernels come from the locally remembered section for the file's kernel specs,
or are rebuilt from those specs; `trust_native_code=True` runs the file's own code."""
import dataclasses
import uuid
import warnings

import numpy as np
import pytest

import dynvm
from dynvm import build, ir, op
from dynvm.kernels import codelib, load_kernels
from dynvm.vm import Executable, VirtualMachine
from dynvm.vm.errors import ExecutableFormatError
from tests.e2e.test_control_flow import countdown_module

X = ir.TensorType((ir.Any(),), "float32")


def one_op_exe(make):
    x = ir.var("x", X)
    return build(ir.IRModule.from_expr(ir.Function([x], make(x))))


def with_foreign_code(victim, donor):
    """`victim`'s file whose kernel 0 claims its own spec but carries `donor`'s object code and
    symbols (the checksum is recomputed by to_bytes, as an attacker would)."""
    exe = Executable.from_bytes(victim.to_bytes())
    entry, donor_entry = exe.kernels["kernels"][0], donor.kernels["kernels"][0]
    exe.kernels["object"], exe.kernels["llvm_ir"] = donor.kernels["object"], donor.kernels["llvm_ir"]
    entry["symbol"], entry["variants"] = donor_entry["symbol"], donor_entry["variants"]
    return exe.to_bytes()


@pytest.fixture(scope="module")
def add_and_multiply():
    return one_op_exe(lambda x: op.add(x, x)), one_op_exe(lambda x: op.multiply(x, x))


def test_swapped_object_code_does_not_run_by_default(add_and_multiply):
    add, multiply = add_and_multiply
    data = with_foreign_code(add, multiply)
    x = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(VirtualMachine(Executable.from_bytes(data)).invoke("main", x), x + x)


def test_trust_native_code_runs_the_files_own_object_code(add_and_multiply):
    add, multiply = add_and_multiply
    data = with_foreign_code(add, multiply)
    x = np.array([1, 2, 3], np.float32)
    trusted = Executable.from_bytes(data, trust_native_code=True)
    np.testing.assert_array_equal(VirtualMachine(trusted).invoke("main", x), x * x)


def test_a_file_built_here_loads_its_remembered_code_without_compiling(add_and_multiply, tmp_path):
    path = tmp_path / "add.dvm"
    add_and_multiply[0].save(str(path))
    before = dict(codelib.stats)
    exe = Executable.load(str(path))
    assert (codelib.stats["compiles"], codelib.stats["rebuilds"]) == (before["compiles"], before["rebuilds"])
    np.testing.assert_array_equal(VirtualMachine(exe).invoke("main", np.ones(2, np.float32)), [2, 2])


def test_building_kernels_built_before_generates_no_ir(monkeypatch):
    """The builder asks for the section of the same kernels before emitting any: a second build
    of a program (in any process sharing the cache) skips the generators and LLVM."""
    from dynvm.kernels import family
    make = lambda x: op.tanh(op.add(x, op.multiply(x, x)))    # noqa: E731
    first = one_op_exe(make)
    emitted = []
    real = family.get_family

    def counting(name):
        fam = real(name)
        return dataclasses.replace(fam, emit=lambda *a: emitted.append(a[1]) or fam.emit(*a))
    monkeypatch.setattr("dynvm.kernels.builder.get_family", counting)
    second = one_op_exe(make)
    assert second.kernels["kernels"] == first.kernels["kernels"] and emitted == []
    x = np.linspace(-1, 1, 7, dtype=np.float32)
    np.testing.assert_array_equal(VirtualMachine(second).invoke("main", x),
                                  VirtualMachine(first).invoke("main", x))


def test_a_foreign_section_is_rebuilt_once_then_found_in_the_cache(monkeypatch, tmp_path):
    exe = one_op_exe(lambda x: op.tanh(op.subtract(x, x)))
    section = exe.kernels
    section["kernels"][0]["name"] = "never_built_here"      # specs nobody remembered
    section["object"], section["llvm_ir"] = [b"\x7fELF garbage"], [["garbage"]]
    monkeypatch.setenv("DYNVM_CACHE_DIR", str(tmp_path))
    before = codelib.stats["rebuilds"]
    with pytest.warns(dynvm.PerformanceWarning, match="1 kernel of this executable was rebuilt"):
        first = load_kernels(section)
    assert codelib.stats["rebuilds"] == before + 1
    load_kernels(section)
    assert codelib.stats["rebuilds"] == before + 1           # remembered, on disk too
    assert any(p.name.endswith(".section") for p in tmp_path.iterdir())
    out = np.empty(3, np.float32)
    first[0]([np.ones(3, np.float32)], [out])
    np.testing.assert_array_equal(out, 0)


def foreign_file(exe) -> bytes:
    """`exe`'s file as if built elsewhere: a kernel name no process has built (so its specs are
    neither remembered nor cached here) and object code this machine never generated."""
    copy = Executable.from_bytes(exe.to_bytes())
    copy.kernels["kernels"][0]["name"] = "elsewhere_" + uuid.uuid4().hex
    copy.kernels["object"] = [b"\x7fELF not this machine's code"]
    return copy.to_bytes()


def load_recording(data, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exe = Executable.from_bytes(data, **kwargs)
    return exe, [w for w in caught if issubclass(w.category, dynvm.PerformanceWarning)]


def test_a_rebuild_warns_once_with_count_and_time_and_the_next_load_is_silent(
        add_and_multiply, monkeypatch, tmp_path):
    monkeypatch.setenv("DYNVM_CACHE_DIR", str(tmp_path))
    data = foreign_file(add_and_multiply[0])
    first, caught = load_recording(data)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "1 kernel of this executable was rebuilt from their specs in" in message
    assert f"cached in {tmp_path}" in message and "trust_native_code=True" in message
    assert caught[0].filename == __file__                     # names the caller's line
    report = first.load_report
    assert (report.origin, report.kernels, report.rebuilt, report.cached) == ("rebuilt", 1, 1, True)
    assert report.seconds > 0
    again, caught = load_recording(data)
    assert caught == [] and again.load_report.origin == "local" and again.load_report.rebuilt == 0
    np.testing.assert_array_equal(VirtualMachine(again).invoke("main", np.ones(2, np.float32)), [2, 2])


def test_a_rebuild_without_a_cache_says_every_process_rebuilds(add_and_multiply, monkeypatch):
    monkeypatch.setenv("DYNVM_CACHE_DIR", "")
    exe, caught = load_recording(foreign_file(add_and_multiply[0]))
    assert len(caught) == 1 and "every new process rebuilds them again" in str(caught[0].message)
    assert exe.load_report.cached is False


def test_local_and_trusted_loads_do_not_warn(add_and_multiply):
    local, caught = load_recording(add_and_multiply[0].to_bytes())
    assert caught == [] and local.load_report.origin == "local"
    trusted, caught = load_recording(add_and_multiply[0].to_bytes(), trust_native_code=True)
    assert caught == [] and trusted.load_report.origin == "trusted"


def test_performance_warning_is_a_user_warning_that_can_become_an_error(add_and_multiply, tmp_path,
                                                                         monkeypatch):
    assert issubclass(dynvm.PerformanceWarning, UserWarning)
    monkeypatch.setenv("DYNVM_CACHE_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynvm.PerformanceWarning)
        with pytest.raises(dynvm.PerformanceWarning, match="rebuilt from their specs"):
            Executable.from_bytes(foreign_file(add_and_multiply[0]))


def test_trusted_garbage_object_code_is_a_format_error_not_a_crash(add_and_multiply):
    exe = Executable.from_bytes(add_and_multiply[0].to_bytes())
    exe.kernels["object"] = [b"not an object file"]
    with pytest.raises(ExecutableFormatError, match="not a native object file"):
        Executable.from_bytes(exe.to_bytes(), trust_native_code=True)
    np.testing.assert_array_equal(                            # the default ignores it
        VirtualMachine(Executable.from_bytes(exe.to_bytes())).invoke("main", np.ones(1, np.float32)), [2])


def test_empty_symbols_are_a_format_error(add_and_multiply):
    exe = Executable.from_bytes(add_and_multiply[0].to_bytes())
    exe.kernels["kernels"][0]["symbol"] = ""
    with pytest.raises(ExecutableFormatError, match="non-empty identifiers"):
        Executable.from_bytes(exe.to_bytes(), trust_native_code=True)


def test_a_native_loop_calling_a_symbol_outside_the_module_is_rejected_at_load():
    exe = build(countdown_module())
    loops = [k for k in exe.kernels["kernels"] if k["op"] == "loop"]
    assert loops, "the countdown compiles to a native loop kernel"
    loops[0]["name"] = "tampered_loop"                         # not remembered: rebuilt from spec
    loops[0]["attrs"]["body"][0][0] = "write"                  # libc, not a kernel
    with pytest.raises(ExecutableFormatError, match="calls 'write'.*not a kernel of this module"):
        Executable.from_bytes(exe.to_bytes())
