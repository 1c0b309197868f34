"""`dynvm bench`: the model suite on every runtime a user could pick, in one table.

For each model of `dynvm.bench.suite` and each input size: the dynamic VM (one executable for
every size), the static runtime compiled for that exact shape (where the model has a static
form), the model's numpy reference, PyTorch eager and ONNX Runtime (when installed). Each
runtime's output is checked against the reference once per size, then all runtimes are timed
interleaved (warm-up, then the median of `reps` repetitions, see `dynvm.bench.harness`).
Results: a table on stdout, `bench.json` (every runtime present with a time or marked skipped
with the reason) and, with matplotlib installed, `bench.png`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dynvm.bench import harness, peers
from dynvm.bench.peers import Skip
from dynvm.bench.suite import MODELS, Runner

RUNTIMES = ("vm", "python", "static", "numpy", "torch", "ort")
PEERS = RUNTIMES[1:]                                 # ratio columns: vm time / peer time
LABELS = {"vm": "dynvm VM", "python": "dynvm Python tier", "static": "static runtime",
          "numpy": "numpy reference", "torch": "PyTorch eager", "ort": "ONNX Runtime"}
MODES = {"full": 15, "quick": 5, "tiny": 2}         # repetitions per number
QUICK_DURATION = "about 2 minutes on 2 cores"      # `--quick`, warm kernel cache, quiet machine


def check(got, expected, tol) -> dict:
    got = np.asarray(got)
    if got.shape != expected.shape:
        return {"check": f"MISMATCH: shape {got.shape} != reference {expected.shape}"}
    err = float(np.max(np.abs(got.astype(np.float64) - expected))) if expected.size else 0.0
    ok = np.allclose(got, expected, rtol=tol[0], atol=tol[1])
    return {"check": "ok" if ok else f"MISMATCH: max abs error {err:.3g}", "max_abs_err": err}


def bench_size(model, ctx, n, reps, budget, progress) -> dict:
    """Every runtime on one input size: checked once against the reference, then timed."""
    label = f"{model.name} {model.size_name}={n}"
    progress.show(label + " (compiling)")
    sample = model.sample(ctx, n)
    expected = np.asarray(model.reference(ctx, sample), dtype=np.float64)
    cells, timed = {}, {}
    for runtime in RUNTIMES:
        cell = cells[runtime] = {}
        try:
            if runtime == "numpy":
                runner = Runner(lambda s: model.reference(ctx, s), note="the model's numpy reference")
            else:
                factory = model.runners.get(runtime)
                if factory is None:
                    raise Skip("not implemented for this model")
                t = time.perf_counter()
                runner = factory(ctx, n)
                cell["setup_seconds"] = round(time.perf_counter() - t, 3)
            args = runner.prepare(sample)
            cell.update(check(runner.result(runner.run(args)), expected, model.tol))
            if runner.note:
                cell["note"] = runner.note
            timed[runtime] = (lambda r=runner, a=args: r.run(a))
        except Skip as e:
            cells[runtime] = {"skipped": str(e)}
        except Exception as e:  # noqa: BLE001 - a failing runtime must not hide the others
            cells[runtime] = {"skipped": f"error: {type(e).__name__}: {e}"[:300], "error": True}
    progress.step(label)
    seconds, noisy = harness.measure_steady(timed, reps=reps, budget=budget,
                                            on_rep=lambda k: progress.step(label),
                                            settle=peers.settle_seconds())
    for runtime, s in seconds.items():
        cells[runtime]["seconds"] = s
        if runtime in noisy:
            cells[runtime]["noisy"] = noisy[runtime]
    vm = cells["vm"].get("seconds")
    ratios = {f"vm/{p}": (vm / cells[p]["seconds"] if vm and cells[p].get("seconds") else None)
              for p in PEERS}
    return {"model": model.name, "size_name": model.size_name, "size": n, "runtimes": cells,
            "ratios": ratios}


def noisy_ratio(result, peer) -> str:
    """Why the ratio vm/`peer` of `result` is not a result ("" when it is)."""
    cells = result["runtimes"]
    return "; ".join(f"{rt}: {cells[rt]['noisy']}" for rt in ("vm", peer) if "noisy" in cells[rt])


def targets(results) -> list:
    """The project's latency targets, read off the results (met / missed / not measured)."""
    by = {(r["model"], r["size"]): r for r in results}
    out = []

    def target(text, model, size, peer, limit):
        r = by.get((model, size))
        if r is None:
            out.append({"target": text, "status": "not measured (size not in this run)"})
            return
        ratio = r["ratios"][f"vm/{peer}"]
        if ratio is None:
            why = r["runtimes"][peer].get("skipped") or r["runtimes"]["vm"].get("skipped", "")
            out.append({"target": text, "status": f"not measured ({why})"})
        elif noisy_ratio(r, peer):
            out.append({"target": text, "ratio": ratio, "status": "unreliable",
                        "why": f"measured twice, still noisy: {noisy_ratio(r, peer)}"})
        else:
            out.append({"target": text, "ratio": ratio,
                        "status": "met" if ratio <= limit else "missed"})
    target("VM <= 10% slower than static, BERT seq 128", "bert", 128, "static", 1.10)
    target("VM <= 10% slower than static, LSTM seq 128", "lstm", 128, "static", 1.10)
    for seq in (16, 64, 128):
        target(f"BERT seq {seq} faster than PyTorch eager", "bert", seq, "torch", 1.0)
    target("VM <= 5% slower than static, BERT-base seq 128", "bert_base", 128, "static", 1.05)
    for seq in (1, 16, 128, 256):
        target(f"VM <= 3% slower than static, BERT seq {seq}", "bert", seq, "static", 1.03)
    for model in ("lstm", "lstm_cond"):
        for seq, limit in ((1, 0.9), (8, 0.9), (32, 0.9), (128, 1.0)):
            target(f"{model} seq {seq} <= {limit}x ONNX Runtime", model, seq, "ort", limit)
    for nodes in (1, 10, 50, 100, 200):
        target(f"tree_lstm {nodes} nodes >= 3x faster than PyTorch eager", "tree_lstm", nodes,
               "torch", 1 / 3)
    for n in (40, 200):
        target(f"list_ops {n} tensors >= 10x faster than the Python tier", "list_ops", n,
               "python", 0.1)
    for model, sizes in (("arange", (1, 512)), ("nms", (100, 20000))):
        for n in sizes:
            target(f"{model} {n} no slower than ONNX Runtime", model, n, "ort", 1.0)
    return out


def compile_stats() -> dict:
    """Native kernel compiles vs object-cache hits in this run (cold cache: slower first run)."""
    try:
        from dynvm.kernels import codelib
        return dict(codelib.stats)
    except Exception:  # noqa: BLE001
        return {}


def machine_info() -> dict:
    info = {"cpu": harness.cpu_model(), "cores": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0],
            "numpy": np.__version__}
    try:
        from dynvm.kernels import codelib
        info["llvm_cpu"] = codelib.host_target()["cpu"]
    except Exception:  # noqa: BLE001
        pass
    for name in ("torch", "onnxruntime", "matplotlib"):
        mod, why = harness.optional_import(name)
        info[name] = mod.__version__ if mod else why
        if name == "torch" and mod:
            info["torch_threads"] = peers.torch_module().get_num_threads()
    info["ort_threads"] = peers.THREADS or "default (all cores)"
    info["dynvm_threads"] = peers.THREADS or f"default ({len(os.sched_getaffinity(0))}, all cores)"
    info["numpy_blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    info["settle_seconds"] = peers.settle_seconds()
    return info


# ---------------------------------------------------------------------------------------------
# report


def fmt_cell(cell) -> str:
    if "seconds" in cell:
        s = cell["seconds"]
        text = f"{s * 1e6:.1f}us" if s < 1e-3 else f"{s * 1e3:.3f}ms"
        return text + ("!" if cell.get("check", "ok") != "ok" else "")
    return "skip" if not cell.get("error") else "ERROR"


def print_report(report, out=sys.stdout):
    print(f"dynvm bench ({report['mode']}, median of {report['reps']} repetitions after warm-up)",
          file=out)
    m = report["machine"]
    print(f"CPU: {m['cpu']}, {m['cores']} cores (LLVM target {m.get('llvm_cpu', '?')}); load average "
          f"at start {' '.join(map(str, m['load_average']))}; threads: dynvm {m.get('dynvm_threads', 1)}, torch "
          f"{m.get('torch_threads', '-')}, ORT {m['ort_threads']}, numpy BLAS "
          f"{m['numpy_blas_threads']}", file=out)
    if max(m["load_average"][0], m.get("load_average_end", [0])[0]) > \
            harness.MAX_LOAD_PER_CORE * (m["cores"] or 1):
        print(f"!! the machine was busy (load average {m['load_average'][0]} at start, "
              f"{m.get('load_average_end', ['?'])[0]} at end on {m['cores']} cores): multi-threaded "
              "peers suffer most; rerun on a quiet machine or with --threads 1", file=out)
    if m.get("settle_seconds"):
        print(f"each batch is timed after {m['settle_seconds']} s of untimed calls of the same "
              "runtime (multi-threaded peers' idle workers spin after a call and would slow the "
              "next runtime's batch)", file=out)
    print("ratios are VM latency / that runtime's latency: < 1 means the VM is faster; a ratio "
          "marked ? was measured twice and still noisy (not a result)", file=out)
    for model in dict.fromkeys(r["model"] for r in report["results"]):
        rows = [r for r in report["results"] if r["model"] == model]
        built = rows[0]["runtimes"]["vm"].get("setup_seconds")
        print(f"\n{model} ({rows[0]['size_name']}" + (f"; the VM's executable built in {built:.1f} s)"
                                                      if built is not None else ")"), file=out)
        print(f"{'size':>7} " + "".join(f"{rt:>11}" for rt in RUNTIMES)
              + "".join(f"{'vm/' + p:>11}" for p in PEERS), file=out)
        notes = {}
        for r in rows:
            cells = r["runtimes"]
            line = f"{r['size']:>7} " + "".join(f"{fmt_cell(cells[rt]):>11}" for rt in RUNTIMES)
            line += "".join(f"{r['ratios'][f'vm/{p}']:>10.2f}{'?' if noisy_ratio(r, p) else 'x'}"
                            if r["ratios"][f"vm/{p}"] else f"{'-':>11}" for p in PEERS)
            print(line, file=out)
            noisy = [f"{rt}: {cells[rt]['noisy']}" for rt in RUNTIMES if "noisy" in cells[rt]]
            if noisy:
                print(f"  ? at {r['size_name']}={r['size']}: {'; '.join(noisy)}", file=out)
            for rt in RUNTIMES:
                if "skipped" in cells[rt]:
                    notes.setdefault(f"{rt}: {cells[rt]['skipped']}", None)
                if cells[rt].get("check", "ok") != "ok":
                    print(f"  !! {rt} output {cells[rt]['check']} at {r['size_name']}={r['size']}",
                          file=out)
        for note in notes:
            print(f"  skipped {note}", file=out)
    if report["left_out"]:
        print(f"\nleft out of {report['mode']} mode (slow to build): {', '.join(report['left_out'])}; "
              "name them with --models to run them", file=out)
    print("\ntargets:", file=out)
    for t in report["targets"]:
        ratio = f" (vm/peer {t['ratio']:.2f}x)" if "ratio" in t else ""
        if t["status"] in ("met", "missed"):
            print(f"  {t['status']:<10} {t['target']}{ratio}", file=out)
        elif t["status"] == "unreliable":
            print(f"  {t['status']:<10} {t['target']} (vm/peer {t['ratio']:.2f}?): {t['why']}",
                  file=out)
        else:
            print(f"  {'-':<10} {t['target']}: {t['status']}", file=out)
    k = report.get("kernel_compiles", {})
    print(f"\nelapsed {report['elapsed_seconds']:.1f} s (native kernel compiles {k.get('compiles', '?')}, "
          f"object-cache hits {k.get('cache_hits', '?')})", file=out)


def plot(report, path) -> bool:
    """bench.png: latency vs input size, one panel per model, one line per runtime."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    cols = min(3, len(models))
    rows_n = (len(models) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    colors = dict(zip(RUNTIMES, ("tab:blue", "tab:cyan", "tab:orange", "tab:green", "tab:red",
                                 "tab:purple")))
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    for ax, model in zip(axes.flat, models):
        rows = [r for r in report["results"] if r["model"] == model]
        for rt in RUNTIMES:
            pts = [(r["size"], r["runtimes"][rt]["seconds"] * 1e3) for r in rows
                   if "seconds" in r["runtimes"][rt]]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[rt], label=LABELS[rt])
        sizes = [r["size"] for r in rows]
        if len(sizes) > 1 and min(sizes) > 0:
            ax.set_xscale("log")
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel(rows[0]["size_name"])
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[rt], marker="o", label=LABELS[rt]) for rt in RUNTIMES]
    fig.legend(handles=handles, loc="lower right", fontsize=8)
    fig.suptitle(f"dynvm bench ({report['mode']}) on {report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_sizes(text):
    """`--sizes`: a mode name (full, quick, tiny) or comma-separated positive integers."""
    if text in MODES:
        return text
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither {', '.join(MODES)} nor a list of sizes like 16,64,128")
    return sizes


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def sizes_of(model, mode, sizes, named) -> list:
    """The sizes `model` runs at: `sizes` if given, else the model's own for `mode`. A model
    left out of a mode (an empty list: too slow to build for quick runs) runs at its full-mode
    sizes when named with --models."""
    if isinstance(sizes, list):
        return sizes
    return model.sizes[mode] or (model.sizes["full"] if named else [])


def run(models=None, quick=False, out_dir=".", sizes=None, reps=None, stream=sys.stdout) -> int:
    """Run the bench; returns the exit status (1 if any output mismatched its reference)."""
    start = time.perf_counter()
    mode = sizes if isinstance(sizes, str) else ("quick" if quick else "full")
    reps = reps or MODES[mode]
    budget = 0.001 if mode != "full" else 0.003
    names = models or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"dynvm bench: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    plan = [(MODELS[n], s) for n in names for s in sizes_of(MODELS[n], mode, sizes, bool(models))]
    left_out = [n for n in names if not sizes_of(MODELS[n], mode, sizes, bool(models))]
    machine = machine_info()
    progress = harness.ProgressBar(sum(1 + reps for _ in plan))
    results, contexts = [], {}
    for model, n in plan:
        if model.name not in contexts:
            contexts[model.name] = model.setup()
        results.append(bench_size(model, contexts[model.name], n, reps, budget, progress))
    progress.close()
    report = {"mode": mode, "reps": reps, "machine": machine, "runtimes": list(RUNTIMES),
              "ratio_definition": "vm seconds / peer seconds (< 1: the VM is faster)",
              "results": results, "left_out": left_out}
    report["targets"] = targets(results)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["kernel_compiles"] = compile_stats()
    report["elapsed_seconds"] = time.perf_counter() - start
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(report, f, indent=1)
    print_report(report, stream)
    if plot(report, os.path.join(out_dir, "bench.png")):
        print(f"wrote {os.path.join(out_dir, 'bench.json')} and bench.png", file=stream)
    else:
        print(f"wrote {os.path.join(out_dir, 'bench.json')} (no matplotlib: no bench.png)", file=stream)
    bad = [r for r in results for c in r["runtimes"].values() if c.get("check", "ok") != "ok"]
    return 1 if bad else 0


def add_arguments(parser):
    from dynvm.cli import parse_shape
    slow = [m.name for m in MODELS.values() if not m.sizes["quick"]]
    parser.add_argument("--models", nargs="+", metavar="MODEL", choices=list(MODELS),
                        help=f"models to run (default: all of {', '.join(MODELS)})")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer sizes and repetitions ({QUICK_DURATION}; leaves out "
                             f"{', '.join(slow)} unless named with --models)")
    parser.add_argument("--out", default=".", metavar="DIR", help="where bench.json/bench.png go")
    parser.add_argument("--sizes", type=parse_sizes, default=None, metavar="N,N,...",
                        help="input sizes for every chosen model, instead of each model's own "
                             "(`tiny`: one small size per model, for the test suite)")
    parser.add_argument("--reps", type=positive_int, default=None, help="repetitions per number")
    parser.add_argument("--onnx", metavar="MODEL.onnx",
                        help="instead of the model suite: dynvm vs ONNX Runtime on this ONNX file "
                             "(needs onnx and onnxruntime)")
    parser.add_argument("--shape", action="append", type=parse_shape, default=[],
                        metavar="NAME=DIMS", help="with --onnx: an input's dims, e.g. x=1,64,32; "
                        "repeat an input's --shape for several sizes")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads for dynvm's kernels, PyTorch and ONNX Runtime (default: each "
                             "one's own default, all cores)")


def main_from_args(args) -> int:
    peers.THREADS = args.threads
    if args.onnx:
        from dynvm.bench import onnx_file
        return onnx_file.run(args.onnx, args.shape, args.reps)
    return run(args.models, args.quick, args.out, args.sizes, args.reps)
