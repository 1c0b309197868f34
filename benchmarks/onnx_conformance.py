"""ONNX's own node tests on dynvm and on ONNX Runtime (not a test: a measurement).

    python benchmarks/onnx_conformance.py [--ops Add MatMul ...] [--no-ort] [--failures]
                                          [--tiny] [--every N] [--json results.json]

Runs every case of `onnx.backend.test.loader.load_model_tests(kind="node")` (generated in
memory by the installed onnx package) through dynvm's backend (import, build, run) and through
`onnxruntime.backend`, and prints per op: cases, dynvm passed, ORT passed, and the seconds dynvm
spent on the op's cases (import + build + run). A case dynvm does not support
(UnsupportedOnnxError) is skipped; a case whose converters want a constant where the test feeds
a graph input (axes, pads, split sizes) runs again with those inputs as initializers and is
counted in the "const" column. The closing line is dynvm's `N passed, M failed, K skipped`,
after the cases ONNX Runtime passes and dynvm does not (failed or skipped), each with the
reason (`--failures` lists every failed case).

While it runs it prints a progress line every `--every` cases (running totals, elapsed time);
Ctrl-C stops it and prints the table and totals of the cases run so far. `--tiny` runs four ops
(the suite's smoke run); `--json` also writes every case's statuses and reasons.
"""
import argparse
import collections
import json
import os
import sys
import time
import warnings

TINY_OPS = ["Add", "Relu", "MatMul", "Softmax"]


def ort_backend():
    try:
        import onnxruntime
        import onnxruntime.backend as backend
    except ImportError:
        return None
    onnxruntime.set_default_logger_severity(3)  # errors only: its warnings would flood the table
    return backend


class Tally:
    """Per-op rows, totals and the per-case records of one run."""

    def __init__(self, with_ort: bool):
        self.with_ort = with_ort
        self.rows = collections.defaultdict(collections.Counter)
        self.seconds = collections.Counter()
        self.totals = collections.Counter()
        self.records = []   # (case, op, dynvm status, reason, ORT status or None)

    def add(self, case_name, op, status, reason, seconds, ort_status, const):
        row = self.rows[op]
        row["cases"] += 1
        row[status] += 1
        row["const"] += const
        row["ort"] += ort_status == "passed"
        self.seconds[op] += seconds
        self.totals[status] += 1
        self.totals["ort"] += ort_status == "passed"
        self.records.append((case_name, op, status, reason, ort_status))

    def progress(self, done, total, elapsed) -> str:
        t = self.totals
        ort = f", ORT {t['ort']} passed" if self.with_ort else ""
        return (f"[{done}/{total} cases, {elapsed:.0f} s] dynvm {t['passed']} passed, "
                f"{t['failed']} failed, {t['skipped']} skipped{ort}")

    def report(self, show_failures: bool) -> None:
        print(f"{'op':<28} {'cases':>5} {'dynvm':>6} {'const':>6} {'ORT':>5} {'dynvm s':>8}")
        for op in sorted(self.rows):
            row = self.rows[op]
            ort = str(row["ort"]) if self.with_ort else "-"
            print(f"{op:<28} {row['cases']:>5} {row['passed']:>6} {row['const']:>6} {ort:>5} "
                  f"{self.seconds[op]:>8.1f}")
        slowest = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:5]
        print("slowest ops (dynvm s): " + ", ".join(f"{op} {s:.1f}" for op, s in slowest))
        behind = [r for r in self.records if r[4] == "passed" and r[2] != "passed"]
        failures = [r for r in self.records if r[2] == "failed"] if show_failures else []
        for title, items in (("ONNX Runtime passes, dynvm does not:", behind),
                             ("every dynvm failure:", failures)):
            if items:
                print(title)
                for name, op, status, reason, _ in items:
                    print(f"  {name} ({op}, {status}): {reason}")
        t = self.totals
        if self.with_ort:
            print(f"ONNX Runtime: {t['ort']} passed of {len(self.records)}")
        print(f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="*", help="only these ONNX op types")
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime pass")
    parser.add_argument("--failures", action="store_true", help="list every failed case")
    parser.add_argument("--tiny", action="store_true", help="four ops (a smoke run)")
    parser.add_argument("--every", type=int, default=50, help="a progress line every N cases")
    parser.add_argument("--json", help="write every case's result to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.simplefilter("ignore")  # the case generators' numpy overflow warnings
    from dynvm.frontend.onnx.backend import DynvmBackend, case_op, load_cases, run_case
    start = time.perf_counter()
    cases = load_cases(TINY_OPS if args.tiny else args.ops)
    ort = None if args.no_ort else ort_backend()
    tally = Tally(ort is not None)
    try:
        for done, case in enumerate(cases, 1):
            t0 = time.perf_counter()
            status, reason = run_case(DynvmBackend, case)
            seconds = time.perf_counter() - t0
            ort_status = run_case(ort, case, freeze=False)[0] if ort is not None else None
            const = reason.startswith("constant inputs") and status == "passed"
            tally.add(case.name, case_op(case), status, reason, seconds, ort_status, const)
            if args.every > 0 and done % args.every == 0:
                print(tally.progress(done, len(cases), time.perf_counter() - start), flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: totals of the first {len(tally.records)} of {len(cases)} cases")
    print(f"\n{len(tally.records)} cases in {time.perf_counter() - start:.0f} s")
    tally.report(args.failures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(zip(("case", "op", "dynvm", "reason", "ort"), r))
                       for r in tally.records], f, indent=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
