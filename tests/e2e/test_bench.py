"""`dynvm bench` end to end: the tiny size set writes a bench.json where every runtime of every
model is either timed (and its output matched the reference) or marked skipped with a reason."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUNTIMES = ["vm", "static", "numpy", "torch", "ort"]
MODELS = ["bert", "lstm", "tree_lstm", "nms", "arange"]


def run_bench(out_dir):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dynvm.cli", "bench", "--quick", "--sizes", "tiny",
                           "--threads", "1", "--out", str(out_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bench_tiny_writes_json_with_every_runtime_timed_or_skipped(tmp_path):
    proc = run_bench(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["mode"] == "tiny" and report["runtimes"] == RUNTIMES
    assert [r["model"] for r in report["results"]] == MODELS
    for result in report["results"]:
        where = f"{result['model']} {result['size_name']}={result['size']}"
        assert set(result["runtimes"]) == set(RUNTIMES), where
        for runtime, cell in result["runtimes"].items():
            if "skipped" in cell:
                assert cell["skipped"] and not cell.get("error"), f"{where} {runtime}: {cell}"
            else:
                assert cell["seconds"] > 0 and cell["check"] == "ok", f"{where} {runtime}: {cell}"
        assert "seconds" in result["runtimes"]["vm"], where
        assert set(result["ratios"]) == {f"vm/{p}" for p in RUNTIMES[1:]}, where
    assert {t["target"] for t in report["targets"]}, "targets are listed"
    assert "targets (issue 6)" in proc.stdout
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "bench.png").stat().st_size > 0
