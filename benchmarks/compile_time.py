"""Import + compile time of an ONNX model, with a cold and a warm kernel cache (not a test).

    python benchmarks/compile_time.py [--model transformer_encoder] [--runs 3] [--jobs 2 1]
                                      [--tiny]

The model (tests/frontend/torch_models.py, exported once by PyTorch) is imported and built in a
fresh process per run, so no kernel is remembered in memory: "cold" runs get an empty kernel
cache directory (DYNVM_CACHE_DIR), "warm" runs the directory a cold run filled. Each run prints
the wall time of the phases (Python imports, `from_onnx`, the compiler before the kernels, the
kernels: emitting their LLVM IR and compiling it), the CPU time of the process and of its
compile workers, the number of compile units, and the 1-minute load average when it ended
(wall times on a loaded machine say little: compare the CPU columns, or rerun). `--jobs` sets
DYNVM_COMPILE_JOBS (the processes compiling kernels at once) per series. Needs torch and onnx;
`--tiny` (the test suite's smoke run: one cold run of a two-op model built with onnx.helper)
needs only onnx.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHILD = r"""
import json, os, resource, sys, time
start = time.perf_counter(); cpu = time.process_time()
from dynvm.compiler import build
from dynvm.frontend.onnx import from_onnx
from dynvm.kernels import builder
phases = {"imports": time.perf_counter() - start}
finish = builder.KernelBuilder.finish
units = []

def timed_finish(self):
    t = time.perf_counter()
    try:
        section = finish(self)
        units.append(len(section["object"]))
        return section
    finally:
        phases["kernels"] = phases.get("kernels", 0.0) + time.perf_counter() - t

builder.KernelBuilder.finish = timed_finish
t = time.perf_counter()
mod = from_onnx(sys.argv[1])
phases["from_onnx"] = time.perf_counter() - t
t = time.perf_counter()
build(mod)
phases["compiler"] = time.perf_counter() - t - phases.get("kernels", 0.0)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"phases": phases, "total": time.perf_counter() - start,
                  "cpu": time.process_time() - cpu,
                  "worker_cpu": children.ru_utime + children.ru_stime,
                  "units": sum(units), "load": os.getloadavg()[0]}))
"""

PHASES = ("imports", "from_onnx", "compiler", "kernels")


def run(path, cache, jobs) -> dict:
    env = dict(os.environ, DYNVM_CACHE_DIR=cache, DYNVM_COMPILE_JOBS=str(jobs))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", CHILD, path], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def line(kind, jobs, r) -> str:
    phases = " ".join(f"{p} {r['phases'].get(p, 0.0):5.2f}" for p in PHASES)
    return (f"{kind:4s} jobs {jobs}  total {r['total']:5.2f} s  ({phases})  cpu {r['cpu']:5.2f} + "
            f"workers {r['worker_cpu']:5.2f} s  units {r['units']}  load {r['load']:.2f}")


def tiny_model():
    """relu(x + x) on x: float32[?, 4]."""
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    nodes = [helper.make_node("Add", ["x", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "tiny", [x], [y]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="transformer_encoder")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--tiny", action="store_true", help="a smoke run: a tiny model, cold")
    args = parser.parse_args()
    import onnx

    from dynvm.bench.harness import cpu_lines
    kinds = ("cold",) if args.tiny else ("cold", "warm")
    if args.tiny:
        args.model, args.runs, args.jobs = "tiny", 1, [1]
    with tempfile.TemporaryDirectory(prefix="dynvm-compile-time-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        if args.tiny:
            model = tiny_model()
        else:
            from tests.frontend import torch_models
            model = torch_models.MODELS[args.model]()[0]
        onnx.save(model, path)
        print(f"{args.model}: import + build in a fresh process, {args.runs} runs per series")
        for jobs in args.jobs:
            totals = {kind: [] for kind in kinds}
            for k in range(args.runs):
                cache = os.path.join(tmp, f"cache-{jobs}-{k}")
                for kind in kinds:
                    r = run(path, cache, jobs)
                    totals[kind].append(r["total"])
                    print(line(kind, jobs, r), flush=True)
            print(f"jobs {jobs}: median " + ", ".join(
                f"{kind} {statistics.median(totals[kind]):.2f} s" for kind in kinds))
    print("\n".join(cpu_lines()))


if __name__ == "__main__":
    main()
