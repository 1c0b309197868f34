"""ONNX's own node tests on dynvm and on ONNX Runtime (not a test: a measurement).

    python benchmarks/onnx_conformance.py [--ops Add MatMul ...] [--no-ort] [--failures] [--tiny]

Runs every case of `onnx.backend.test.loader.load_model_tests(kind="node")` (generated in
memory by the installed onnx package) through dynvm's backend (import, build, run) and through
`onnxruntime.backend`, and prints per op: cases, dynvm passed, ORT passed. A case dynvm does not
support (UnsupportedOnnxError) is skipped; a case whose converters want a constant where the
test feeds a graph input (axes, pads, split sizes) runs again with those inputs as initializers
and is counted in the "const" column. The closing line is dynvm's `N passed, M failed, K
skipped`, then the cases ONNX Runtime passes and dynvm fails (not skips), with the reason
(`--failures` lists every failed case). `--tiny` runs four ops (the suite's smoke run).
"""
import argparse
import collections
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="*", help="only these ONNX op types")
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime pass")
    parser.add_argument("--failures", action="store_true", help="list every failed case")
    parser.add_argument("--tiny", action="store_true", help="four ops (a smoke run)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.simplefilter("ignore")  # the case generators' numpy overflow warnings
    from dynvm.frontend.onnx.backend import (FAILED, PASSED, SKIPPED, DynvmBackend, case_op,
                                             load_cases, run_case)
    ops = TINY_OPS if args.tiny else args.ops
    start = time.perf_counter()
    cases = load_cases(ops)
    ort = None if args.no_ort else ort_backend()
    rows = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    exceptions, failures = [], []
    for case in cases:
        name = case_op(case)
        status, reason = run_case(DynvmBackend, case)
        row = rows[name]
        row["cases"] += 1
        row[status] += 1
        totals[status] += 1
        if reason.startswith("constant inputs") and status == PASSED:
            row["const"] += 1
        ort_status = run_case(ort, case, freeze=False)[0] if ort is not None else None
        row["ort"] += ort_status == PASSED
        if status == FAILED:
            failures.append((case.name, reason))
            if ort_status == PASSED:
                exceptions.append((case.name, reason))
    print(f"{'op':<28} {'cases':>5} {'dynvm':>6} {'const':>6} {'ORT':>5}")
    for name in sorted(rows):
        row = rows[name]
        ort_text = str(row["ort"]) if ort is not None else "-"
        print(f"{name:<28} {row['cases']:>5} {row[PASSED]:>6} {row['const']:>6} {ort_text:>5}")
    ort_total = sum(r["ort"] for r in rows.values())
    print(f"\n{len(cases)} cases in {time.perf_counter() - start:.0f} s; ONNX Runtime passed "
          f"{ort_total if ort is not None else '-'}; dynvm on the cases it supports: "
          f"{totals[PASSED]} of {totals[PASSED] + totals[FAILED]}")
    for title, items in (("ONNX Runtime passes, dynvm fails:", exceptions),
                         ("every dynvm failure:", failures if args.failures else [])):
        if items:
            print(title)
            for case_name, reason in items:
                print(f"  {case_name}: {reason}")
    print(f"{totals[PASSED]} passed, {totals[FAILED]} failed, {totals[SKIPPED]} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
