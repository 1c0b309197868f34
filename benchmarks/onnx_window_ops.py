"""MaxPool, AveragePool, ConvTranspose and RoiAlign: dynvm vs ONNX Runtime at typical CNN /
decoder / detection-head sizes (not a test: a measurement).

    python benchmarks/onnx_window_ops.py [--reps N] [--threads 1] [--tiny]

Each op is one ONNX node (onnx.helper) with a dynamic batch, built once by dynvm (the build
time is printed: the pooling converter used to emit one strided slice per window tap, 5-10 s
to build a 5x5 window), run at two sizes on both runtimes with the same inputs (outputs
compared) and timed interleaved (`dynvm.bench.onnx_file.compare`). ConvTranspose is lowered
onto conv2d of the stride-spread input (stride 2 multiplies the multiply-adds by 4), so its
ratio to ONNX Runtime's direct col2im kernel is the price of that lowering. Needs onnx and
onnxruntime.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynvm.bench import onnx_file  # noqa: E402


def node_model(op_type, inputs, attrs, opset=17):
    """A one-node model: inputs [(name, dims)] float32 except `batch_indices` (int64)."""
    from onnx import TensorProto, helper
    infos = [helper.make_tensor_value_info(n, TensorProto.INT64 if n == "batch_indices"
                                           else TensorProto.FLOAT, dims) for n, dims in inputs]
    node = helper.make_node(op_type, [n for n, _ in inputs], ["y"], **attrs)
    graph = helper.make_graph([node], op_type, infos,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def cases(rng, tiny):
    """name -> (model, [argument lists]): batch 1 and 4 (with --tiny: 1 and 2, smaller
    images, fewer channels and rois than the names say)."""
    batches = (1, 2) if tiny else (1, 4)
    side, rois, channels = (16, 10, 16) if tiny else (56, 100, 256)
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    x = lambda n, c, s: rng.standard_normal((n, c, s, s)).astype(np.float32)  # noqa: E731
    w = rng.standard_normal((64, 32, 4, 4)).astype(np.float32) * 0.05
    boxes = np.sort(rng.uniform(0, 48, (rois, 2, 2)), axis=1).reshape(rois, 4)[:, [0, 2, 1, 3]]
    return {
        "MaxPool 3x3/2 (N, 64, 56, 56)": (
            node_model("MaxPool", [("x", ["N", 64, side, side])], pool),
            [[x(n, 64, side)] for n in batches]),
        "AveragePool 3x3/2 (N, 64, 56, 56)": (
            node_model("AveragePool", [("x", ["N", 64, side, side])], pool),
            [[x(n, 64, side)] for n in batches]),
        "ConvTranspose 4x4/2 64->32 (N, 64, 32, 32)": (
            node_model("ConvTranspose", [("x", ["N", 64, 32, 32]), ("w", [64, 32, 4, 4])],
                       {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
            [[x(n, 64, 32), w] for n in batches]),
        "RoiAlign 7x7 x100 rois (N, 256, 50, 50)": (
            node_model("RoiAlign", [("x", ["N", channels, 50, 50]), ("rois", ["R", 4]),
                                    ("batch_indices", ["R"])],
                       {"output_height": 7, "output_width": 7, "sampling_ratio": 2,
                        "spatial_scale": 1.0}, opset=16),
            [[x(n, channels, 50), boxes.astype(np.float32), rng.integers(0, n, rois)]
             for n in batches]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a smoke run: small sizes")
    args = parser.parse_args()
    reps = 2 if args.tiny else args.reps
    onnx_file.compare_models([(name, lambda case=case: case) for name, case
                              in cases(np.random.default_rng(0), args.tiny).items()], args.threads, reps)

if __name__ == "__main__":
    main()
