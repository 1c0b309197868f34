"""Kernel calls from the VM: prepared call sites, typed errors, the profiler, and shipping
executables (load without compiling, re-JIT on another CPU)."""
import json

import numpy as np
import pytest

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import codelib
from dynvm.vm import (Executable, InvokeArgumentError, KernelError, ShapeError, VirtualMachine,
                     VMError)
from dynvm.vm.values import Tensor
from tests.strategies import laid_out
from tests.vm.vm_helpers import ANY, exe, fn, tensor

def program():
    """main(x, y) = (x + y) * x via two kernels (k0 add, k1 mul) on float32[?];
    wrong(x) passes its argument, of a type the verifier cannot know (any), to the float32 add;
    pair returns a tuple."""
    main = fn("main", ["x", "y"], [
        ("ShapeOf", 0, 2),
        ("AllocStorageReg", 2, 64, "float32", 3),
        ("AllocTensorReg", 3, 0, 2, "float32", 4),
        ("CallKernel", 0, [0, 1], [4]),
        ("AllocStorageReg", 2, 64, "float32", 5),
        ("AllocTensorReg", 5, 0, 2, "float32", 6),
        ("CallKernel", 1, [4, 0], [6]),
        ("Ret", 6)], param_types=[tensor(None), tensor(None)])
    fixed = fn("fixed", ["x"], [
        ("AllocStorage", 16, 64, "float32", 1),
        ("AllocTensor", 1, 0, [4], "float32", 2),
        ("CallKernel", 0, [0, 0], [2]),
        ("Ret", 2)], param_types=[tensor(4)])
    wrong = fn("wrong", ["x"], [
        ("AllocStorage", 16, 64, "float32", 1),
        ("AllocTensor", 1, 0, [2], "float32", 2),
        ("CallKernel", 0, [0, 0], [2]),
        ("Ret", 2)], param_types=[ANY])
    mismatch = fn("mismatch", ["x"], [
        ("AllocStorage", 64, 64, "float32", 1),
        ("AllocTensor", 1, 0, [3], "float32", 2),
        ("CallKernel", 0, [0, 0], [2]),
        ("Ret", 2)], param_types=[tensor(None)])
    return [main, fixed, wrong, mismatch]


@pytest.fixture(scope="module")
def kernel_exe():
    kb = KernelBuilder()
    kb.add_elementwise("add", ["add", ["in", 0], ["in", 1]], [("float32", 1)] * 2, ("float32", 1))
    kb.add_elementwise("mul", ["multiply", ["in", 0], ["in", 1]], [("float32", 1)] * 2, ("float32", 1))
    executable = exe(*program(), kernels=kb.finish())
    _KEEP_ALIVE.append(executable)
    return executable


_KEEP_ALIVE = []  # each Executable owns a native library; keep them for the whole session


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 100])
def test_results_match_numpy_across_sizes_and_variants(kernel_exe, n):
    vm = VirtualMachine(kernel_exe)
    x, y = np.arange(n, dtype=np.float32), np.full(n, 0.5, np.float32)
    np.testing.assert_array_equal(vm.invoke("main", x, y), (x + y) * x)


def test_a_call_site_reuses_its_descriptors_when_shapes_change(kernel_exe):
    vm = VirtualMachine(kernel_exe)
    for n in (3, 40, 3, 0, 7):
        x = np.linspace(-1, 1, n, dtype=np.float32)
        np.testing.assert_array_equal(vm.invoke("main", x, x), (x + x) * x)


@pytest.mark.parametrize("layout", ["step", "reversed", "broadcast"])
def test_strided_reversed_and_stride_0_inputs_give_numpy_results_and_stay_unchanged(kernel_exe,
                                                                                     layout):
    x = laid_out(np.linspace(-2, 3, 17, dtype=np.float32), layout)
    y = laid_out(np.arange(17, dtype=np.float32)[::-1].copy(), "reversed")
    before = x.copy(), y.copy()
    got = VirtualMachine(kernel_exe).invoke("main", x, y)
    np.testing.assert_array_equal(got, (x + y) * x)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(y, before[1])


def test_a_byte_swapped_input_is_converted(kernel_exe):
    x, y = np.arange(5, dtype=np.float32), np.linspace(0, 1, 5).astype(">f4")
    got = VirtualMachine(kernel_exe).invoke("main", x, y)
    np.testing.assert_array_equal(got, (x + y.astype(np.float32)) * x)
    with pytest.raises(InvokeArgumentError,
                       match=r"parameter 'y': expected dtype float32 \(float32\[\?\]\), got >f8"):
        VirtualMachine(kernel_exe).invoke("main", x, y.astype(">f8"))


def test_wrong_dtype_at_a_call_site_is_a_kernel_error(kernel_exe):
    with pytest.raises(KernelError, match="kernel add: input 0 has dtype float64, expected float32"):
        VirtualMachine(kernel_exe).invoke("wrong", np.ones(2))


def test_native_shape_check_becomes_a_shape_error(kernel_exe):
    with pytest.raises(ShapeError, match=r"input 0 of shape \(5,\) does not broadcast"):
        VirtualMachine(kernel_exe).invoke("mismatch", np.ones(5, np.float32))


def test_static_call_site_runs_repeatedly(kernel_exe):
    vm = VirtualMachine(kernel_exe)
    for i in range(3):
        x = np.full(4, i, np.float32)
        np.testing.assert_array_equal(vm.invoke("fixed", x), 2 * x)


def test_registers_hold_vm_tensors_with_known_addresses():
    a = np.arange(6, dtype=np.int64)
    t = Tensor.from_array(a)
    assert t.address == a.ctypes.data and t.shape == (6,) and t.dtype == "int64"
    assert t.array is a and t.reshaped((2, 3)).array.shape == (2, 3)
    assert Tensor.from_array(np.empty(0, np.float32)).address != 0


# ---------------------------------------------------------------- profiler

def test_profiler_counts_variants_and_writes_a_valid_chrome_trace(kernel_exe, tmp_path):
    vm = VirtualMachine(kernel_exe, profile=True)
    vm.invoke("main", np.ones(3, np.float32), np.ones(3, np.float32))
    vm.invoke("main", np.ones(32, np.float32), np.ones(32, np.float32))
    vm.invoke("main", np.ones(33, np.float32), np.ones(33, np.float32))
    prof = vm.profile()
    stats = prof.kernel_stats()
    assert stats["add"]["calls"] == 3 and stats["mul"]["calls"] == 3
    assert set(stats["add"]["variants"]) == {"scalar", "vector_exact", "vector"}
    assert prof.opcodes["CallKernel"] == 6 and prof.opcodes["Ret"] == 3
    assert prof.opcode_seconds["CallKernel"] >= prof.kernel_seconds > 0
    path = tmp_path / "trace.json"
    prof.save_chrome_trace(path)
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    assert len(events) == 6  # one per executed kernel
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["ts"] >= 0 for e in events)
    assert [e["name"] for e in events[:2]] == ["add[scalar]", "mul[scalar]"]
    assert events[2]["name"] == "add[vector_exact]" and events[4]["name"] == "add[vector]"
    text = str(prof)
    assert "add [vector_exact]" in text and "CallKernel" in text and "VM overhead" in text


def test_profiling_runs_each_instruction_alone_and_off_records_nothing(kernel_exe):
    vm, profiled = VirtualMachine(kernel_exe), VirtualMachine(kernel_exe, profile=True)
    names = [ins.name for ins in kernel_exe.functions[0].instructions]
    assert profiled.prepared_code("main") == names      # one timed handler per instruction
    assert "AllocStorageTensorReg" in vm.prepared_code("main")   # unprofiled: fused pairs
    with pytest.raises(VMError, match="profile=True"):
        vm.profile()
    with pytest.raises(VMError, match="no function named 'nope'"):
        vm.prepared_code("nope")


# ---------------------------------------------------------------- shipping

def test_load_on_the_same_cpu_compiles_nothing(kernel_exe, tmp_path):
    path = tmp_path / "k.dvm"
    kernel_exe.save(path)
    x = np.ones(5, np.float32)
    VirtualMachine(kernel_exe).invoke("main", x, x)   # the process's own runtime, made once
    before = dict(codelib.stats)
    loaded = Executable.load(path)
    _KEEP_ALIVE.append(loaded)
    np.testing.assert_array_equal(VirtualMachine(loaded).invoke("main", x, x), 2 * x)
    assert codelib.stats["compiles"] == before["compiles"]
    assert codelib.stats["rejits"] == before["rejits"]
    # the native tier's code, regenerated at load, comes from the object cache
    assert codelib.stats["cache_hits"] == before["cache_hits"] + 1
    assert codelib.stats["loads"] == before["loads"] + 2


def test_another_cpu_runs_the_code_generated_here_for_its_specs(kernel_exe):
    edited = Executable.from_bytes(kernel_exe.to_bytes())
    _KEEP_ALIVE.append(edited)
    edited.kernels = dict(edited.kernels, target=dict(edited.kernels["target"], cpu="other-cpu"),
                          object=[b"\x7fELF another cpu's"] * len(edited.kernels["object"]))
    before = dict(codelib.stats)
    loaded = Executable.from_bytes(edited.to_bytes())
    _KEEP_ALIVE.append(loaded)
    assert codelib.stats["rejits"] == before["rejits"]       # neither its object nor its IR ran
    x = np.ones(5, np.float32)
    np.testing.assert_array_equal(VirtualMachine(loaded).invoke("main", x, x), 2 * x)


def test_trusted_another_cpu_rejits_from_the_stored_llvm_ir(kernel_exe, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNVM_CACHE_DIR", str(tmp_path / "cache"))
    # trusted: taken as it is (untrusted, it could be rebuilt into the new cache, and the rejit
    # below would find its object there)
    edited = Executable.from_bytes(kernel_exe.to_bytes(), trust_native_code=True)
    _KEEP_ALIVE.append(edited)
    edited.kernels = dict(edited.kernels, target=dict(edited.kernels["target"], cpu="other-cpu"),
                          object=[b"\x7fELF another cpu's"] * len(edited.kernels["object"]))
    data = edited.to_bytes()
    before = dict(codelib.stats)
    loaded = Executable.from_bytes(data, trust_native_code=True)
    _KEEP_ALIVE.append(loaded)
    VirtualMachine(loaded)                                         # kernels load lazily
    assert codelib.stats["rejits"] == before["rejits"] + 1
    units = len(edited.kernels["object"])
    assert codelib.stats["compiles"] == before["compiles"] + units + 1  # + the native tier's
    x = np.ones(5, np.float32)
    np.testing.assert_array_equal(VirtualMachine(loaded).invoke("main", x, x), 2 * x)


def test_disassembly_lists_each_kernels_variants(kernel_exe):
    text = kernel_exe.disassemble()
    assert "k0: add (compiled) variants: scalar, vector_exact, vector, strided" in text
