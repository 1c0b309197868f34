"""Every script in benchmarks/ runs its `--tiny` mode to the end from any directory: exit
status 0, a table printed, no failed measurement (the scripts check each result against numpy
before timing it and print a row's error instead of the row when one fails)."""
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPTS = sorted((pathlib.Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))
# scripts of an optional extra: skipped without it
REQUIRES = {"compile_time.py": "onnx", "onnx_conformance.py": "onnx", "onnx_models.py": "torch",
            "onnx_window_ops.py": "onnxruntime", "kernel_bert_ort.py": "onnxruntime",
            "kernel_bert_ops.py": "onnxruntime"}
PRINTS = {"compile_scaling.py": ["nested: marginal us/op", "lets: marginal us/op"]}  # besides a table


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_runs_its_tiny_mode(script, tmp_path):
    if script.name in REQUIRES:
        pytest.importorskip(REQUIRES[script.name])
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), "--tiny"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) >= 4, proc.stdout
    for failure in ("MISMATCH", "Error:", "Traceback"):
        assert failure not in proc.stdout, proc.stdout
    for text in PRINTS.get(script.name, []):
        assert text in proc.stdout, proc.stdout
