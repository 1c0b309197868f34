"""Small ONNX models built with onnx.helper (the shapes dynamic models have: a dynamic batch, a
shape computed at run time, a loop growing a tensor, a data-dependent branch), and helpers to
run a model on dynvm and on ONNX Runtime."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dynvm.compiler import build
from dynvm.frontend.onnx import from_onnx
from dynvm.vm import Executable, VirtualMachine

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def model(nodes, inputs, outputs, initializers=(), opset=17, name="g", check=True):
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in dict(initializers).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if check:
        onnx.checker.check_model(m)
    return m


def mlp(seed=0):
    """x (batch, 8) -> MatMul + Add -> Relu -> Gemm(transB) -> Softmax: batch is symbolic."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((4, 16)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1, alpha=0.5),
             helper.make_node("Softmax", ["logits"], ["y"], axis=-1)]
    return model(nodes, [helper.make_tensor_value_info("x", F, ["batch", 8])],
                 [helper.make_tensor_value_info("y", F, ["batch", 4])],
                 {"w1": w1, "b1": b1, "w2": w2, "b2": b2})


def shape_gather_reshape():
    """x (n, m, 4) -> Shape -> Gather(0) -> Concat([n, -1]) -> Reshape: a run-time shape."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["newshape"], axis=0),
             helper.make_node("Reshape", ["x", "newshape"], ["y"])]
    return model(nodes, [helper.make_tensor_value_info("x", F, ["n", "m", 4])],
                 [helper.make_tensor_value_info("y", F, ["n", None])],
                 {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
                  "minus_one": np.array([-1], np.int64)})


def growing_loop():
    """Loop n times: acc = Concat(acc, acc[-1:] * 2 + i); acc starts as x (1, 3): it grows by
    one row per iteration. Outputs the final acc and a scan output (the step's sum)."""
    body = helper.make_graph(
        [helper.make_node("Slice", ["acc_in", "m1", "big", "zero1"], ["last"]),
         helper.make_node("Mul", ["last", "two"], ["twice"]),
         helper.make_node("Cast", ["i"], ["fi"], to=F),
         helper.make_node("Add", ["twice", "fi"], ["row"]),
         helper.make_node("Concat", ["acc_in", "row"], ["acc_out"], axis=0),
         helper.make_node("ReduceSum", ["row"], ["total"], keepdims=0),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", B, []),
         helper.make_tensor_value_info("acc_in", F, [None, 3])],
        [helper.make_tensor_value_info("cond_out", B, []),
         helper.make_tensor_value_info("acc_out", F, [None, 3]),
         helper.make_tensor_value_info("total", F, [])],
        [numpy_helper.from_array(np.array([-1], np.int64), "m1"),
         numpy_helper.from_array(np.array([1 << 40], np.int64), "big"),
         numpy_helper.from_array(np.array([0], np.int64), "zero1"),
         numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    nodes = [helper.make_node("Loop", ["n", "", "x"], ["acc", "totals"], body=body)]
    return model(nodes, [helper.make_tensor_value_info("n", I64, []),
                         helper.make_tensor_value_info("x", F, [1, 3])],
                 [helper.make_tensor_value_info("acc", F, [None, 3]),
                  helper.make_tensor_value_info("totals", F, [None])])


def data_dependent_if():
    """If sum(x) > 0 then x * 2 else x[:1] - 1: the branches differ in shape."""
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", F, None)])
    other = helper.make_graph(
        [helper.make_node("Slice", ["x", "zero1", "one1"], ["head"]),
         helper.make_node("Sub", ["head", "one"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    return model(nodes, [helper.make_tensor_value_info("x", F, ["n", 2])],
                 [helper.make_tensor_value_info("y", F, [None, 2])],
                 {"two": np.array(2.0, np.float32), "zero": np.array(0.0, np.float32),
                  "one": np.array(1.0, np.float32), "zero1": np.array([0], np.int64),
                  "one1": np.array([1], np.int64)})


def compile_and_reload(m, tmp_path):
    exe = build(from_onnx(m))
    path = tmp_path / "model.dvm"
    exe.save(path)
    return VirtualMachine(Executable.load(path))


def ort_run(m, *inputs):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def lstm_linear(seed=0, hidden=8, features=4):
    """A bidirectional LSTM over a symbolic sequence length, then Linear (MatMul + Add) on Y."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((2, 4 * hidden, features)) * 0.3).astype(np.float32)
    r = (rng.standard_normal((2, 4 * hidden, hidden)) * 0.3).astype(np.float32)
    b = (rng.standard_normal((2, 8 * hidden)) * 0.1).astype(np.float32)
    lin = (rng.standard_normal((2 * hidden, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("LSTM", ["x", "w", "r", "b"], ["y", "y_h", "y_c"],
                              hidden_size=hidden, direction="bidirectional"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["yt", "flat"], ["y2"]),
             helper.make_node("MatMul", ["y2", "lin"], ["out"])]
    return model(nodes, [helper.make_tensor_value_info("x", F, ["seq", 1, features])],
                 [helper.make_tensor_value_info("out", F, ["seq", 1, 3]),
                  helper.make_tensor_value_info("y_h", F, [2, 1, hidden])],
                 {"w": w, "r": r, "b": b, "lin": lin,
                  "flat": np.array([0, 0, -1], np.int64)})


def bidirectional_gru(seed=0, hidden=6, features=3):
    """A bidirectional GRU (linear_before_reset, as PyTorch exports it) over a symbolic
    sequence length, its initial state given."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((2, 3 * hidden, features)) * 0.4).astype(np.float32)
    r = (rng.standard_normal((2, 3 * hidden, hidden)) * 0.4).astype(np.float32)
    b = (rng.standard_normal((2, 6 * hidden)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("GRU", ["x", "w", "r", "b", "", "h0"], ["y", "y_h"],
                              hidden_size=hidden, direction="bidirectional", linear_before_reset=1)]
    return model(nodes, [helper.make_tensor_value_info("x", F, ["seq", 1, features]),
                         helper.make_tensor_value_info("h0", F, [2, 1, hidden])],
                 [helper.make_tensor_value_info("y", F, ["seq", 2, 1, hidden]),
                  helper.make_tensor_value_info("y_h", F, [2, 1, hidden])],
                 {"w": w, "r": r, "b": b})


def masked_attention(seed=0, width=8):
    """One attention head over x (seq, width) with a key padding mask (seq,): scores of padded
    keys are -inf before the softmax, then LayerNormalization of x + attention."""
    rng = np.random.default_rng(seed)
    wq, wk, wv = ((rng.standard_normal((width, width)) * 0.3).astype(np.float32) for _ in range(3))
    nodes = [helper.make_node("MatMul", ["x", name], [name[1]]) for name in ("wq", "wk", "wv")]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
              helper.make_node("MatMul", ["q", "kt"], ["s"]),
              helper.make_node("Mul", ["s", "scale"], ["scaled"]),
              helper.make_node("Unsqueeze", ["padding", "zero1"], ["pad_row"]),
              helper.make_node("Where", ["pad_row", "minus_inf", "scaled"], ["masked"]),
              helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["att"]),
              helper.make_node("Add", ["x", "att"], ["res"]),
              helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], axis=-1)]
    return model(nodes, [helper.make_tensor_value_info("x", F, ["seq", width]),
                         helper.make_tensor_value_info("padding", B, ["seq"])],
                 [helper.make_tensor_value_info("y", F, ["seq", width])],
                 {"wq": wq, "wk": wk, "wv": wv, "scale": np.array(width ** -0.5, np.float32),
                  "zero1": np.array([0], np.int64), "minus_inf": np.array(-np.inf, np.float32),
                  "gamma": np.ones(width, np.float32), "beta": np.zeros(width, np.float32)})


def detection_postprocess(max_boxes=4):
    """boxes (n, 4), scores (n,): keep scores > 0.3 (NonZero -> Gather), NonMaxSuppression,
    then the best `max_boxes` of the survivors (TopK with a run-time k) -> Gather."""
    nodes = [helper.make_node("Greater", ["scores", "threshold"], ["over"]),
             helper.make_node("NonZero", ["over"], ["nz"]),
             helper.make_node("Squeeze", ["nz", "zero1"], ["keep"]),
             helper.make_node("Gather", ["boxes", "keep"], ["kb"], axis=0),
             helper.make_node("Gather", ["scores", "keep"], ["ks"], axis=0),
             helper.make_node("Unsqueeze", ["kb", "zero1"], ["b3"]),
             helper.make_node("Reshape", ["ks", "one_one_m1"], ["s3"]),
             helper.make_node("NonMaxSuppression", ["b3", "s3", "max_out", "iou"], ["sel"]),
             helper.make_node("Gather", ["sel", "two"], ["index"], axis=1),
             helper.make_node("Gather", ["ks", "index"], ["survivors"], axis=0),
             helper.make_node("Shape", ["survivors"], ["count"]),
             helper.make_node("Min", ["count", "max_k"], ["k"]),
             helper.make_node("TopK", ["survivors", "k"], ["top", "order"]),
             helper.make_node("Gather", ["index", "order"], ["best"], axis=0),
             helper.make_node("Gather", ["kb", "best"], ["kept"], axis=0)]
    return model(nodes, [helper.make_tensor_value_info("boxes", F, ["n", 4]),
                         helper.make_tensor_value_info("scores", F, ["n"])],
                 [helper.make_tensor_value_info("kept", F, ["k", 4]),
                  helper.make_tensor_value_info("top", F, ["k"])],
                 {"threshold": np.array(0.3, np.float32), "zero1": np.array([0], np.int64),
                  "one_one_m1": np.array([1, 1, -1], np.int64),
                  "max_out": np.array([100], np.int64), "iou": np.array([0.5], np.float32),
                  "two": np.array(2, np.int64), "max_k": np.array([max_boxes], np.int64)})


def random_boxes(rng, n):
    corner = rng.uniform(0, 10, (n, 2))
    return np.concatenate([corner, corner + rng.uniform(1, 5, (n, 2))], 1).astype(np.float32)
