"""`dynvm bench --onnx model.onnx [--shape name=dims ...]`: dynvm against ONNX Runtime on the
same ONNX file.

The model is imported and built once (one executable for every size); each size point gives
every dynamic input its dims (`--shape x=1,64,32`; give `--shape` for an input several times
for several sizes, the k-th value of each input making the k-th size). Inputs are random:
floats standard normal, integers in [0, 10), bools all false. At each size both runtimes run
the same inputs, their outputs are compared once, then they are timed interleaved (medians of
`dynvm.bench.harness.measure_steady`: measured again when the machine is busy, a ratio still
noisy is marked `?`). The table gives both medians and the ratio dynvm / ORT (< 1:
dynvm is faster).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from dynvm.bench import harness, peers
from dynvm.vm.errors import DynVMError

INT_RANGE = 10


def graph_inputs(model) -> list:
    """(name, numpy dtype, dims with None for a dynamic dim) of each graph input that is not
    an initializer."""
    from onnx import helper
    initialized = {init.name for init in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initialized:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        specs.append((vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return specs


def size_points(specs, shapes) -> list:
    """The list of {input name: dims} to run: `shapes` is the (name, dims) pairs of --shape."""
    given: dict = {}
    for name, dims in shapes:
        given.setdefault(name, []).append(dims)
    names = {name for name, _, _ in specs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise DynVMError(f"--shape names no input of the model: {', '.join(unknown)} "
                         f"(inputs: {', '.join(sorted(names))})")
    count = max((len(v) for v in given.values()), default=1)
    points = []
    for k in range(count):
        point = {}
        for name, _, dims in specs:
            options = given.get(name, [dims])
            chosen = options[k] if len(options) == count else options[0] \
                if len(options) == 1 else None
            if chosen is None:
                raise DynVMError(f"--shape gives {name} {len(options)} times and another input "
                                 f"{count} times; give each input once or equally often")
            if len(chosen) != len(dims) or any(d is None for d in chosen):
                raise DynVMError(f"input {name} has dims {describe(dims)}: give every dim with "
                                 f"--shape {name}=d1,d2,... (got {describe(chosen)})")
            point[name] = tuple(chosen)
        points.append(point)
    return points


def describe_input(a) -> str:
    """`1,64,32` for a tensor, its value for a scalar."""
    return str(a.item()) if a.ndim == 0 else ",".join(map(str, a.shape))


def describe(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def random_input(dtype, dims, rng):
    if dtype.kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, INT_RANGE, dims).astype(dtype)
    return np.zeros(dims, dtype)


def outputs_match(got, want, rtol=1e-4, atol=1e-5) -> str:
    got = list(got) if isinstance(got, tuple) else [got]
    for k, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        if g.shape != w.shape:
            return f"MISMATCH: output {k} has shape {g.shape}, ONNX Runtime's {w.shape}"
        if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
            err = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
            return f"MISMATCH: output {k} differs by up to {err:.3g}"
    return "ok"


def random_inputs(model, points, seed=0) -> list:
    """For each size point, the model's inputs (in graph order) filled at random."""
    rng = np.random.default_rng(seed)
    specs = graph_inputs(model)
    return [[random_input(dtype, point[name], rng) for name, dtype, _ in specs]
            for point in points]


def compare(model, arg_sets, reps=None, budget=0.002, on_rep=None) -> list:
    """One result per list of inputs (in graph order) in `arg_sets`: {"inputs" (input name ->
    its dims, or its value for a scalar), "dynvm", "ort" (median seconds), "ratio", "check",
    "noisy" (why the medians are not to be trusted, "" when they are: see
    `harness.measure_steady`)}; dynvm's executable is built once for all of them."""
    from dynvm.compiler import build
    from dynvm.frontend.onnx import from_onnx
    from dynvm.vm import VirtualMachine
    vm = VirtualMachine(build(from_onnx(model)), threads=peers.THREADS)
    peers.needs("onnxruntime").set_default_logger_severity(3)   # errors only
    session = peers.ort_session(model)
    names = [name for name, _, _ in graph_inputs(model)]
    results = []
    for args in arg_sets:
        feed = dict(zip(names, args))
        check = outputs_match(vm.invoke("main", *args), session.run(None, feed))
        seconds, noisy = harness.measure_steady({"dynvm": lambda: vm.invoke("main", *args),
                                                 "ort": lambda: session.run(None, feed)},
                                                reps=reps, budget=budget, on_rep=on_rep,
                                                settle=peers.settle_seconds())
        results.append({"inputs": {n: describe_input(a) for n, a in feed.items()},
                        "dynvm": seconds["dynvm"],
                        "ort": seconds["ort"], "ratio": seconds["dynvm"] / seconds["ort"],
                        "check": check,
                        "noisy": "; ".join(f"{k}: {why}" for k, why in noisy.items())})
    return results


def print_results(path, results, out=sys.stdout):
    print(f"{path}: dynvm vs ONNX Runtime (median per call; ratio = dynvm / ORT, < 1: dynvm "
          "is faster; ? = unreliable, the machine was busy)", file=out)
    print(f"{'inputs':<40} {'dynvm':>12} {'ORT':>12} {'ratio':>7}  check", file=out)
    for r in results:
        shapes = " ".join(f"{n}={d}" for n, d in r["inputs"].items())
        ratio = f"{r['ratio']:.2f}" + ("?" if r["noisy"] else "")
        print(f"{shapes:<40} {harness.fmt_time(r['dynvm']):>12} {harness.fmt_time(r['ort']):>12} "
              f"{ratio:>7}  {r['check']}" + (f" (unreliable: {r['noisy']})" if r["noisy"] else ""),
              file=out)


def compare_models(models, threads, reps, out=sys.stdout):
    """The benchmark scripts' report: the machine, then for each (name, `make`) in `models`
    (`make()` returns the model and its argument sets, built when its turn comes) the table of
    `print_results` and the seconds it took, then the load average."""
    peers.THREADS = threads
    for line in harness.cpu_lines():
        print(line, file=out)
    print(f"threads: {threads}, {reps} repetitions per number", file=out)
    for name, make in models:
        start = time.perf_counter()
        model, arg_sets = make()
        results = compare(model, arg_sets, reps=reps)
        print(file=out)
        print_results(name, results, out)
        print(f"(build + runs {time.perf_counter() - start:.1f} s)", file=out)
    print("\n" + harness.cpu_lines()[-1] + " (after the run)", file=out)


def run(path, shapes, reps=None, out=sys.stdout) -> int:
    """`dynvm bench --onnx`: the exit status is 1 if an output mismatched, 2 on bad options."""
    import onnx
    model = onnx.load(path)
    try:
        points = size_points(graph_inputs(model), shapes)
    except DynVMError as e:
        print(f"dynvm bench: {e}", file=sys.stderr)
        return 2
    for line in harness.cpu_lines():
        print(line, file=out)
    print(f"threads: {peers.THREADS or 'each runtime default'}", file=out)
    reps = reps or harness.REPS
    progress = harness.ProgressBar(len(points) * reps)
    start = time.perf_counter()
    results = compare(model, random_inputs(model, points), reps=reps,
                      on_rep=lambda k: progress.step(path))
    progress.close()
    print_results(path, results, out)
    print(f"({time.perf_counter() - start:.1f} s including the build)", file=out)
    return 1 if any(r["check"] != "ok" for r in results) else 0
