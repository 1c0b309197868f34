"""`dynvm bench` end to end: the tiny size set, run outside the repository, writes a bench.json
where every runtime of every model is either timed (and its output matched the reference) or
marked skipped with a reason; with PyTorch / ONNX Runtime installed their columns are timed."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from dynvm.bench.suite import MODELS

RUNTIMES = ["vm", "python", "static", "numpy", "torch", "ort"]
TINY = [name for name, m in MODELS.items() if m.sizes["tiny"]]
# runtimes each model has a form for (the others are skipped with a reason)
FORMS = {"bert": {"static", "torch", "ort"}, "lstm": {"static", "torch", "ort"},
         "lstm_cond": {"static", "torch", "ort"},
         "tree_lstm": {"torch"}, "list_ops": {"python", "torch"}, "nms": {"ort"}, "arange": {"torch", "ort"}}
PEER_MODULES = {"torch": ["torch"], "ort": ["onnxruntime", "onnx"]}


def bench(*args, cwd):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dynvm.cli", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = bench("--quick", "--sizes", "tiny", "--threads", "1", "--out", str(out), cwd=out)
    return proc, out


def test_bench_tiny_writes_json_with_every_runtime_timed_or_skipped(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["mode"] == "tiny" and report["runtimes"] == RUNTIMES
    assert [r["model"] for r in report["results"]] == TINY == list(FORMS)
    assert report["left_out"] == ["bert_base"]
    for result in report["results"]:
        where = f"{result['model']} {result['size_name']}={result['size']}"
        assert set(result["runtimes"]) == set(RUNTIMES), where
        for runtime, cell in result["runtimes"].items():
            if "skipped" in cell:
                assert cell["skipped"] and not cell.get("error"), f"{where} {runtime}: {cell}"
            else:
                assert cell["seconds"] > 0 and cell["check"] == "ok", f"{where} {runtime}: {cell}"
        for runtime in ["vm", "numpy"] + sorted(FORMS[result["model"]]):
            installed = all(importlib.util.find_spec(m) for m in PEER_MODULES.get(runtime, []))
            assert ("seconds" in result["runtimes"][runtime]) == installed, \
                f"{where} {runtime}: {result['runtimes'][runtime]}"
        assert set(result["ratios"]) == {f"vm/{p}" for p in RUNTIMES[1:]}, where
    assert {t["target"] for t in report["targets"]}, "targets are listed"
    if importlib.util.find_spec("matplotlib"):
        assert (out / "bench.png").stat().st_size > 0


def test_bench_output_speaks_plain_words(tiny_run):
    proc, _ = tiny_run
    assert "\ntargets:\n" in proc.stdout
    assert "left out of tiny mode (slow to build): bert_base" in proc.stdout
    for word in ("issue", ".py", "examples/"):
        assert word not in proc.stdout, word


def test_bench_sizes_run_only_the_chosen_model(tmp_path):
    proc = bench("--models", "arange", "--sizes", "3,5", "--reps", "1", "--out", str(tmp_path),
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["model"], r["size"]) for r in report["results"]] == [("arange", 3), ("arange", 5)]
    assert report["results"][0]["runtimes"]["vm"]["check"] == "ok"


@pytest.mark.parametrize("args, message", [
    (["--models", "resnet"], "invalid choice: 'resnet'"),
    (["--sizes", "16,big"], "'16,big' is neither full, quick, tiny nor a list of sizes"),
    (["--sizes", ""], "is neither full, quick, tiny nor a list of sizes"),
    (["--reps", "0"], "'0' is not a positive whole number"),
    (["--threads", "two"], "'two' is not a positive whole number"),
])
def test_bad_bench_arguments_exit_2_with_a_message(args, message, tmp_path):
    proc = bench(*args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "bench.json").exists()
