"""dynvm against ONNX Runtime on models exported from PyTorch (not a test: a measurement).

    python benchmarks/onnx_models.py [--models lstm_linear ...] [--reps N] [--threads 1] [--tiny]

The models of tests/frontend/torch_models.py (LSTM + Linear, bidirectional GRU, a 2-layer
transformer encoder with a padding mask, a detection post-process, a greedy decoding Loop, a
data-dependent If), plus `lstm_linear_batch8`: the LSTM + Linear exported with a dynamic batch
too, run on batches of 8 sequences; each exported once and built once by dynvm, run at several
input sizes on both runtimes with the same inputs (outputs compared), timed interleaved
(`dynvm.bench.harness.measure`). Prints per model and size: both medians and dynvm / ORT (< 1:
dynvm is faster). One thread by default (batch 1), as the targets are stated. `--tiny` (the test
suite's smoke run): two models at one small size, two repetitions. Needs torch, onnx and
onnxruntime.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynvm.bench import onnx_file  # noqa: E402

SIZES = {"lstm_linear": (1, 8, 32, 128, 512), "lstm_linear_batch8": (1, 8, 32, 128, 512),
         "bidirectional_gru": (1, 8, 32, 128, 512),
         "transformer_encoder": (8, 32, 128), "detection_postprocess": (10, 100, 1000),
         "greedy_decoder": (8, 32, 128), "data_dependent_if": (4, 64, 1024)}


def lstm_linear_batch8():
    """tests/frontend/torch_models.py's LSTM + Linear with the batch dim dynamic too; inputs of
    8 sequences."""
    import numpy as np
    import torch
    from tests.frontend import torch_models
    r = torch_models.rng(0)
    m = torch_models.export(torch_models.LstmLinear(), (torch.randn(5, 2, 8),), ["x"], ["y"],
                            {"x": {0: "seq", 1: "batch"}, "y": {0: "seq", 1: "batch"}})
    return m, lambda n: [r.standard_normal((n, 8, 8)).astype(np.float32)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a smoke run: two models, size 4")
    args = parser.parse_args()
    sizes = {name: (4,) for name in ("lstm_linear", "data_dependent_if")} if args.tiny else SIZES
    if args.tiny:
        args.models, args.reps = list(sizes), 2
    from tests.frontend import torch_models

    def make(name):
        model, inputs = (lstm_linear_batch8 if name == "lstm_linear_batch8"
                         else torch_models.MODELS[name])()
        return model, [inputs(n) for n in sizes[name]]
    onnx_file.compare_models([(name, lambda name=name: make(name)) for name in args.models],
                             args.threads, args.reps)


if __name__ == "__main__":
    main()
