"""The example models, shipped with the package so that `dynvm bench` runs anywhere.

One module per model, each with the same four functions (weights are seeded, so every run and
every runtime sees the same numbers):

    weights()            the parameters (numpy float32), when the model has any
    build_module(...)    the model as an IRModule, written with `dynvm.ir` / `dynvm.op`
    reference(x, ...)    the same model in numpy: the correctness oracle
    make_input(size)     a seeded input of the given size

The models (and the size their input varies in):

    bert_varlen       BERT-style encoder (sequence length): SMALL has 2 layers, hidden 256;
                      BASE is BERT-base: 12 layers, hidden 768, 12 heads, FFN 3072
    lstm              single-layer LSTM, its time loop one native loop kernel (sequence length)
    tree_lstm         child-sum Tree-LSTM over the prelude's rose tree (nodes)
    nms_postprocess   SSD-style get_valid_counts + non-max suppression (anchors)
    arange_model      position embeddings x + take(table, arange(rows(x))) (rows)
    list_ops          map and foldl over a list of tensors (list length, tensor lengths)

The scripts in the repository's examples/ folder run these models against their references and
print timings, with the helpers below.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_seconds(fn, repeats: int = 10) -> float:
    """Median wall time of `repeats` calls of `fn()`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_and_time(vm, size_label, cases, rtol, atol, repeats=10) -> int:
    """An example's self-check: for each (size, args, expected) of `cases`, `main(*args)` is
    compared with `expected` (numpy) and timed (median of `repeats`), one table row each.
    Returns the script's exit status: 0 when every case matched."""
    ok = True
    print(f"{size_label:>6} {'dynvm ms':>9}  check")
    for size, args, expected in cases:
        good = bool(np.allclose(vm.invoke("main", *args), expected, rtol=rtol, atol=atol))
        ok &= good
        seconds = median_seconds(lambda: vm.invoke("main", *args), repeats)
        print(f"{size:>6} {seconds * 1e3:>9.3f}  {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


def tiny_mode(argv, description: str) -> bool:
    """An example script's command line: `--tiny` (a few small sizes, few repetitions: the test
    suite's smoke run) or nothing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", help="a few small sizes, for a quick check")
    return parser.parse_args(argv).tiny
