"""Measuring helpers shared by `dynvm bench` and the benchmark scripts in benchmarks/.

    from dynvm.bench.harness import measure, compare, row, print_table, cpu_lines

Every number is a median over `reps` repetitions; a repetition times a batch of calls sized to
last about `budget` seconds (at least one call), so microsecond calls are not swamped by the
timer. The functions being compared are interleaved, one batch of each per repetition, so
machine noise hits all of them alike. numpy is the only dependency (PyTorch, ONNX Runtime and
matplotlib are optional: `optional_import`).
"""
from __future__ import annotations

import importlib
import os
import platform
import sys
import time

import numpy as np

REPS = 20


# ---------------------------------------------------------------------------------------------
# measuring


def batch_size(fn, budget=0.002):
    """Calls per batch so that a batch lasts about `budget` seconds (at least 1)."""
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-7)
    return max(1, int(budget / once))


def settle_calls(fn, seconds):
    """Call `fn` (untimed) until `seconds` have passed: at least once if `seconds` > 0."""
    if seconds <= 0:
        return
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def measure_runs(fns: dict, reps=None, budget=0.002, warmup=1, on_rep=None, settle=0) -> dict:
    """{name: [seconds per call, one per repetition]} of every callable in `fns`, interleaved
    batch by batch.

    Each function is called `warmup` times first, and before each of its batches again, untimed,
    for `settle` seconds (at least once when > 0): runtimes whose idle worker threads spin for a
    while after a call (ONNX Runtime's and PyTorch's with more than one thread, for tens of
    milliseconds) would otherwise slow down the next function's batch. `on_rep(k)` (if given)
    is called after each repetition, e.g. to advance a progress bar."""
    reps = reps or REPS
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sizes = {name: batch_size(fn, budget) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for k in range(reps):
        for name, fn in fns.items():
            n = sizes[name]
            settle_calls(fn, settle)
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t) / n)
        if on_rep is not None:
            on_rep(k)
    return times


def measure(fns: dict, reps=None, budget=0.002, warmup=1, on_rep=None, settle=0) -> dict:
    """{name: median seconds per call} of every callable in `fns` (see `measure_runs`)."""
    return {name: float(np.median(ts))
            for name, ts in measure_runs(fns, reps, budget, warmup, on_rep, settle).items()}


# A median is trusted when its repetitions agree (interquartile range within this fraction of
# the median) and the machine had a core for every runnable thread, give or take the peers' own
# worker threads (load average at most 1.5 x cores).
MAX_SPREAD = 0.25
MAX_LOAD_PER_CORE = 1.5


def spread(times) -> float:
    """Interquartile range of `times` over their median: 0 for perfectly repeatable runs."""
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else 0.0


def noise(runs: dict, load: float, cores: int) -> dict:
    """{name: why its median is not to be trusted} for the medians of `runs` (from
    `measure_runs`, taken at load average `load`); empty when every one is."""
    if load > MAX_LOAD_PER_CORE * cores:
        return {name: f"load average {load:.1f} on {cores} cores" for name in runs}
    spreads = {name: spread(ts) for name, ts in runs.items()}
    return {name: f"repetitions spread {s:.0%} around their median"
            for name, s in spreads.items() if s > MAX_SPREAD}


def measure_steady(fns: dict, reps=None, budget=0.002, on_rep=None, attempts=2, settle=0):
    """({name: median seconds per call}, {name: why noisy}): measured again (up to `attempts`
    times) while the machine is busy or some function's repetitions scatter; the attempt with
    the fewest noisy medians is kept, and those still noisy say why. `settle`: seconds of
    untimed calls before each batch (`measure_runs`)."""
    cores = len(os.sched_getaffinity(0))
    best = None
    for _ in range(attempts):
        load_before = os.getloadavg()[0]
        runs = measure_runs(fns, reps, budget, on_rep=on_rep, settle=settle)
        noisy = noise(runs, max(load_before, os.getloadavg()[0]), cores)
        rank = (len(noisy), max((spread(ts) for ts in runs.values()), default=0.0))
        if best is None or rank < best[0]:
            best = (rank, runs, noisy)
        if not noisy:
            break
    _, runs, noisy = best
    return {name: float(np.median(ts)) for name, ts in runs.items()}, noisy


def compare(dynvm, baseline, reps=None):
    """Median seconds per call of `dynvm` and `baseline`, interleaved batch by batch."""
    got = measure({"dynvm": dynvm, "baseline": baseline}, reps)
    return got["dynvm"], got["baseline"]


def optional_import(name):
    """(module, None) if `name` imports, else (None, "<name> not installed")."""
    try:
        return importlib.import_module(name), None
    except ImportError as e:
        return None, f"{name} not installed ({e.__class__.__name__})"


class ProgressBar:
    """A one-line text progress bar on stderr (`\\r`-redrawn on a terminal, otherwise a line
    per 10% so logs stay short)."""

    def __init__(self, total: int, width: int = 30, stream=None):
        self.total, self.width, self.done = max(total, 1), width, 0
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._last_decile = -1

    def step(self, label: str = "", n: int = 1):
        self.done = min(self.total, self.done + n)
        self.show(label)

    def show(self, label: str = ""):
        frac = self.done / self.total
        filled = int(frac * self.width)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done:>3}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r" + line[:100].ljust(100))
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# rows and the report (one dynvm time against one baseline per row)


def row(name, size, dynvm_s, baseline_s=None, baseline="numpy", note=""):
    return {"name": name, "size": size, "dynvm": dynvm_s, "baseline": baseline_s,
            "baseline_name": baseline, "note": note}


def na_row(name, size, why):
    return {"name": name, "size": size, "dynvm": None, "baseline": None, "baseline_name": "",
            "note": f"n/a ({why})"}


def kernel_kinds(exe):
    """e.g. "3 compiled": what the executable really runs."""
    return f"{len(exe.kernels['kernels'])} compiled"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor() or platform.machine()


def cpu_lines():
    import llvmlite.binding as llvm
    from dynvm.kernels import codelib
    return [f"CPU (/proc/cpuinfo): {cpu_model()}, {os.cpu_count()} cores",
            f"llvmlite host CPU: {codelib.host_target()['cpu']} ({llvm.get_process_triple()})",
            f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    return f"{seconds * 1e6:.2f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3f} ms"


def print_table(rows, out=None):
    out = out or sys.stdout
    print(f"{'benchmark':52} {'size':>9} {'dynvm':>12} {'baseline':>12} {'ratio':>7}  note", file=out)
    for r in rows:
        ratio = (f"{r['baseline'] / r['dynvm']:.2f}x" if r["baseline"] and r["dynvm"] else "")
        base = fmt_time(r["baseline"]) if r["baseline"] is not None else ""
        note = "; ".join(part for part in (r["baseline_name"], r["note"]) if part)
        print(f"{r['name']:52} {r['size']:>9} {fmt_time(r['dynvm']):>12} {base:>12} {ratio:>7}  "
              f"{note}", file=out)
