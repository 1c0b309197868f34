"""`dynvm compile model.onnx -o model.dvm`, `dynvm run model.dvm --input x=x.npy` and `dynvm bench
--onnx model.onnx`."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.e2e.test_cli import dynvm  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402


def test_compile_then_run_matches_onnxruntime(tmp_path):
    m = M.mlp()
    onnx.save(m, tmp_path / "mlp.onnx")
    proc = dynvm("compile", "mlp.onnx", "-o", "mlp.dvm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "x: float32[?, 8]" in proc.stdout and "main: native" in proc.stdout
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = dynvm("run", "mlp.dvm", "--input", "x=x.npy", "--output", "out.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "output0: float32[3, 4]" in proc.stdout
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["output0"], M.ort_run(m, x)[0],
                               rtol=1e-5, atol=1e-6)


def test_compile_pins_shapes_and_reports_unsupported_nodes(tmp_path):
    onnx.save(M.mlp(), tmp_path / "mlp.onnx")
    proc = dynvm("compile", "mlp.onnx", "-o", "mlp.dvm", "--shape", "x=2,8", cwd=tmp_path)
    assert proc.returncode == 0 and "x: float32[2, 8]" in proc.stdout, proc.stderr
    bad = M.model([onnx.helper.make_node("Det", ["x"], ["y"], name="hm")],
                  [onnx.helper.make_tensor_value_info("x", M.F, [2])],
                  [onnx.helper.make_tensor_value_info("y", M.F, [2])])
    onnx.save(bad, tmp_path / "bad.onnx")
    proc = dynvm("compile", "bad.onnx", "-o", "bad.dvm", cwd=tmp_path)
    assert proc.returncode == 1 and "hm (Det, opset 17): no converter" in proc.stderr


def test_run_names_missing_and_unknown_inputs(tmp_path):
    onnx.save(M.mlp(), tmp_path / "mlp.onnx")
    assert dynvm("compile", "mlp.onnx", "-o", "mlp.dvm", cwd=tmp_path).returncode == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    proc = dynvm("run", "mlp.dvm", "--input", "z=x.npy", cwd=tmp_path)
    assert proc.returncode == 2 and "main takes x; missing x; unknown z" in proc.stderr


def test_bench_onnx_times_dynvm_and_onnxruntime_at_each_size(tmp_path):
    onnx.save(M.mlp(), tmp_path / "mlp.onnx")
    proc = dynvm("bench", "--onnx", "mlp.onnx", "--shape", "x=1,8", "--shape", "x=32,8",
                 "--reps", "2", "--threads", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("x=")]
    assert [r[0] for r in rows] == ["x=1,8", "x=32,8"]
    assert all(r[6] == "ok" and float(r[5].rstrip("?")) > 0 for r in rows)   # name t u t u ratio


def test_bench_onnx_wants_every_dynamic_dim():
    from dynvm.bench.onnx_file import graph_inputs, size_points
    from dynvm.vm.errors import DynVMError
    specs = graph_inputs(M.mlp())
    assert specs == [("x", np.dtype(np.float32), (None, 8))]
    assert size_points(specs, [("x", (2, 8)), ("x", (5, 8))]) == [{"x": (2, 8)}, {"x": (5, 8)}]
    with pytest.raises(DynVMError, match=r"input x has dims \(\?, 8\): give every dim"):
        size_points(specs, [])
    with pytest.raises(DynVMError, match="--shape names no input of the model: y"):
        size_points(specs, [("y", (1, 8))])
