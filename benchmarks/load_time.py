"""Load time of a .dvm file in a new process, by where its native code comes from (not a test).

    python benchmarks/load_time.py [--reps 5] [--models bert lstm nms] [--tiny]

A loaded file runs only native code this machine generated unless the caller opts in
(`Executable.load(path, trust_native_code=True)`): the kernels section is looked up by its
kernel specs in the object cache, or rebuilt from the specs and cached. Each case is timed in a
fresh Python process (what a program that loads a model pays; importing dynvm is not counted),
then the loaded executable is invoked once and checked against the model's numpy reference:

  (a) built here        the file built on this machine: its code is found in the object cache
  (b) foreign, 1st load the same file with an empty object cache, as if built elsewhere: the
                        kernels are rebuilt from their specs (and a PerformanceWarning says so)
  (c) foreign, 2nd load the same, with the cache (b) filled: a cache hit, like (a)
  (d) trusted           trust_native_code=True: the file's own object code, no lookup

Models: BERT (dynvm.models.bert_varlen SMALL), the LSTM and the NMS post-process. Every number
is the median of `--reps` repetitions; the repetitions interleave the cases and models. Object
caches are temporary folders (DYNVM_CACHE_DIR), the user's cache is not touched. `--tiny` runs
the NMS model once per case (the suite's smoke run).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from dynvm.bench.harness import cpu_lines, fmt_time

CASES = {
    "built here": {"trust": False, "cache": "build", "origin": "local"},
    "foreign, 1st load": {"trust": False, "cache": "fresh", "origin": "rebuilt"},
    "foreign, 2nd load": {"trust": False, "cache": "foreign", "origin": "local"},
    "trusted": {"trust": True, "cache": "fresh", "origin": "trusted"},
}

# the child: time Executable.load, then check one invoke against the reference (not timed)
CHILD = """
import json, sys, time, warnings
import numpy as np
from dynvm import PerformanceWarning, VirtualMachine
from dynvm.vm import Executable
path, trust, data = sys.argv[1], sys.argv[2] == "1", np.load(sys.argv[3])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    start = time.perf_counter()
    exe = Executable.load(path, trust_native_code=trust)
    seconds = time.perf_counter() - start
got = VirtualMachine(exe).invoke("main", data["x"])
print(json.dumps({"seconds": seconds, "origin": exe.load_report.origin,
                  "kernels": exe.load_report.kernels,
                  "warnings": sum(issubclass(w.category, PerformanceWarning) for w in caught),
                  "correct": bool(np.allclose(got, data["expected"], rtol=1e-3, atol=1e-4))}))
"""


def models(names):
    """{name: (module, x, expected)} of the models asked for."""
    from dynvm.models import bert_varlen, lstm, nms_postprocess
    out = {}
    if "bert" in names:
        w = bert_varlen.weights()
        x = bert_varlen.make_input(16)
        out["BERT SMALL"] = (bert_varlen.build_module(w), x, bert_varlen.reference(x, w))
    if "lstm" in names:
        w = lstm.weights()
        x = lstm.make_input(8)
        out["LSTM 128->256"] = (lstm.build_module(w), x, lstm.reference(x, w))
    if "nms" in names:
        x = nms_postprocess.make_input(100)
        out["NMS post-process"] = (nms_postprocess.build_module(), x, nms_postprocess.reference(x))
    return out


def load_once(path, data_path, case, caches, fresh_root):
    """One timed load in a new process; returns the child's JSON report."""
    spec = CASES[case]
    cache = tempfile.mkdtemp(dir=fresh_root) if spec["cache"] == "fresh" else caches[spec["cache"]]
    env = dict(os.environ, DYNVM_CACHE_DIR=cache)
    proc = subprocess.run([sys.executable, "-c", CHILD, path, "1" if spec["trust"] else "0", data_path],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{case}: the loading process failed:\n{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout.splitlines()[-1])
    if case == "foreign, 1st load":
        caches["foreign"] = cache          # (c) loads with the cache this load filled
    expected_warnings = 1 if spec["origin"] == "rebuilt" else 0
    if (report["origin"], report["warnings"], report["correct"]) != (spec["origin"], expected_warnings, True):
        raise RuntimeError(f"{case}: expected a {spec['origin']} load with {expected_warnings} "
                           f"PerformanceWarning and a correct result, got {report}")
    return report


def bench(names, reps, workdir):
    from dynvm.compiler import build
    caches = {"build": os.path.join(workdir, "build-cache")}
    os.environ["DYNVM_CACHE_DIR"] = caches["build"]       # builds below remember their code here
    files = {}
    for name, (module, x, expected) in models(names).items():
        stem = os.path.join(workdir, name.split()[0].lower())
        build(module).save(stem + ".dvm")
        np.savez(stem + ".npz", x=x, expected=expected)
        files[name] = (stem + ".dvm", stem + ".npz")
    fresh_root = os.path.join(workdir, "fresh")
    os.makedirs(fresh_root)
    seconds = {(name, case): [] for name in files for case in CASES}
    kernels = {}
    for _ in range(reps):
        for name, (path, data_path) in files.items():
            for case in CASES:              # (c) follows (b) in every repetition: its cache
                report = load_once(path, data_path, case, caches, fresh_root)
                seconds[(name, case)].append(report["seconds"])
                kernels[name] = report["kernels"]
    table = {key: float(np.median(ts)) for key, ts in seconds.items()}
    sizes = {name: os.path.getsize(path) for name, (path, _) in files.items()}
    return table, kernels, sizes


def seconds_text(seconds):
    return f"{seconds:.2f} s" if seconds >= 1 else fmt_time(seconds)


def print_table(table, kernels, sizes):
    width = 19
    print(f"{'model':18} {'kernels':>7} {'file':>9}" + "".join(f"{c:>{width}}" for c in CASES))
    for name in kernels:
        print(f"{name:18} {kernels[name]:>7} {sizes[name] / 1e6:>7.2f}MB"
              + "".join(f"{seconds_text(table[(name, c)]):>{width}}" for c in CASES))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per number")
    parser.add_argument("--models", nargs="+", default=["bert", "lstm", "nms"],
                        choices=["bert", "lstm", "nms"])
    parser.add_argument("--tiny", action="store_true", help="the NMS model, 1 repetition")
    args = parser.parse_args(argv)
    if args.tiny:
        args.reps, args.models = 1, ["nms"]
    for line in cpu_lines():
        print(line)
    with tempfile.TemporaryDirectory(prefix="dynvm-load-time-") as workdir:
        table, kernels, sizes = bench(args.models, args.reps, workdir)
    print(f"Executable.load in a new process, median of {args.reps} (the first load of a "
          "foreign file rebuilds its kernels; a PerformanceWarning reports it)")
    print_table(table, kernels, sizes)
    print(cpu_lines()[-1] + " (after the run)")


if __name__ == "__main__":
    main()
