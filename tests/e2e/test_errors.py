"""Bad input gives a typed error naming the problem, never a crash or a wrong answer."""
import msgpack
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.vm import Executable, VirtualMachine
from dynvm.vm.errors import ExecutableFormatError, InvokeArgumentError, TypeInferenceError


def small_exe():
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    return build(ir.IRModule.from_expr(ir.Function([x], op.exp(op.add(x, ir.const(1.0))))))


@pytest.fixture(scope="module")
def exe_bytes():
    return small_exe().to_bytes()


def test_wrong_dtype_at_invoke_names_the_parameter():
    vm = VirtualMachine(small_exe())
    with pytest.raises(InvokeArgumentError, match=r"main: parameter 'x': expected dtype float32 "
                                                  r"\(float32\[\?, 4\]\), got float64\[2, 4\]"):
        vm.invoke("main", np.ones((2, 4), np.float64))


def test_wrong_rank_and_static_dim_at_invoke():
    vm = VirtualMachine(small_exe())
    with pytest.raises(InvokeArgumentError, match=r"parameter 'x': expected rank 2 "
                                                  r"\(float32\[\?, 4\]\), got float32\[2, 4, 1\]"):
        vm.invoke("main", np.ones((2, 4, 1), np.float32))
    with pytest.raises(InvokeArgumentError, match=r"parameter 'x': expected dim 1 = 4 "
                                                  r"\(float32\[\?, 4\]\), got float32\[2, 5\]"):
        vm.invoke("main", np.ones((2, 5), np.float32))


def test_type_error_at_build_quotes_the_expression():
    x = ir.var("x", ir.TensorType((3, 4), "float32"))
    y = ir.var("y", ir.TensorType((5,), "float32"))
    with pytest.raises(TypeInferenceError, match=r"add\(%x, %y\)"):
        build(ir.IRModule.from_expr(ir.Function([x, y], op.exp(op.add(x, y)))))


def test_dtype_mismatch_at_build():
    x = ir.var("x", ir.TensorType((3,), "float32"))
    y = ir.var("y", ir.TensorType((3,), "int32"))
    with pytest.raises(TypeInferenceError, match="int32"):
        build(ir.IRModule.from_expr(ir.Function([x, y], op.multiply(x, y))))


def test_truncated_file_is_a_format_error(exe_bytes):
    for cut in (0, 1, 5, len(exe_bytes) // 3, len(exe_bytes) // 2, len(exe_bytes) - 1):
        with pytest.raises(ExecutableFormatError):
            Executable.from_bytes(exe_bytes[:cut])


def test_flipped_bytes_are_format_errors(exe_bytes):
    step = max(1, len(exe_bytes) // 200)
    for pos in range(0, len(exe_bytes), step):
        corrupt = bytearray(exe_bytes)
        corrupt[pos] ^= 0x5A
        with pytest.raises(ExecutableFormatError):
            Executable.from_bytes(bytes(corrupt))


def test_newer_format_version_is_refused(exe_bytes):
    doc = msgpack.unpackb(exe_bytes, raw=False)
    doc["header"]["format_version"] += 1
    with pytest.raises(ExecutableFormatError, match="newer"):
        Executable.from_bytes(msgpack.packb(doc, use_bin_type=True))


def test_save_load_round_trip_gives_identical_results(tmp_path):
    exe = small_exe()
    path = tmp_path / "m.dvm"
    exe.save(str(path))
    data = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    expected = np.exp(data + np.float32(1))
    for built in (Executable.load(str(path)), exe):
        np.testing.assert_allclose(VirtualMachine(built).invoke("main", data), expected, rtol=1e-6)
