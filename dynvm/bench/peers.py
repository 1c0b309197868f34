"""The models of `dynvm.models` on the runtimes `dynvm bench` compares the VM with: PyTorch eager
(written with `torch.nn` / `torch.nn.functional`) and ONNX Runtime (graphs built with
`onnx.helper`), from the same weights. Each is optional: a missing package raises `Skip`."""
from __future__ import annotations

from typing import Callable

import numpy as np

from dynvm.bench.harness import optional_import

THREADS = None          # threads of every runtime (`dynvm bench --threads`); None: each one's default
# With more than one thread, ONNX Runtime's and PyTorch's idle workers spin after a call (measured:
# ORT's slow down the next 1-5 calls of another runtime in the process, some 70 ms at BERT seq
# 256 on 2 cores): each batch is timed after this many seconds of untimed calls of its own.
SETTLE_SECONDS = 0.1


def settle_seconds() -> float:
    """Seconds of untimed calls before each timed batch (harness.measure_runs' `settle`): none
    with one thread per runtime, where no peer keeps spinning workers."""
    return 0.0 if THREADS == 1 else SETTLE_SECONDS


class Skip(Exception):
    """A runtime that cannot run this model here; the message is the reason (kept in the JSON)."""


def needs(module_name: str):
    mod, why = optional_import(module_name)
    if mod is None:
        raise Skip(why)
    return mod


def torch_module():
    torch = needs("torch")
    if THREADS:
        torch.set_num_threads(THREADS)
    return torch


def ort_session(model_proto) -> Callable:
    """An ONNX Runtime CPU session (all graph optimisations; default threads unless THREADS)."""
    ort = needs("onnxruntime")
    options = ort.SessionOptions()
    if THREADS:
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model_proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


class OnnxGraph:
    """A few lines per ONNX node: `g.op("MatMul", a, b)` returns the output name."""

    def __init__(self):
        self.onnx = needs("onnx")
        self.helper, self.numpy_helper = self.onnx.helper, self.onnx.numpy_helper
        self.nodes, self.inits, self.count = [], [], 0

    def fresh(self, hint="t"):
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, value, dtype=None):
        name = self.fresh("c")
        array = np.asarray(value, dtype=dtype)
        self.inits.append(self.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, *inputs, outputs=1, **attrs):
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def model(self, inputs, output, opset=17):
        h, tp = self.helper, self.onnx.TensorProto
        ins = [h.make_tensor_value_info(name, tp.FLOAT, shape) for name, shape in inputs]
        self.nodes.append(h.make_node("Identity", [output], ["out"]))
        graph = h.make_graph(self.nodes, "dynvm_bench", ins,
                             [h.make_tensor_value_info("out", tp.FLOAT, None)], self.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, 9)
        return model                     # ONNX Runtime validates it when the session loads


# --- BERT (dynvm.models.bert_varlen, any Config) ----------------------------------------------


def torch_bert(torch, w):
    """The encoder in PyTorch eager, float32, same weights: (seq, hidden) -> (seq, hidden)."""
    F = torch.nn.functional
    config = w["config"]
    layers = [{k: torch.from_numpy(v) for k, v in p.items()} for p in w["layers"]]
    hidden, heads, head = config.hidden, config.heads, config.head

    def run(x):
        with torch.inference_mode():
            s = x.shape[0]
            for p in layers:
                q, k, v = (F.linear(x, p["w" + n], p["b" + n]).view(s, heads, head).transpose(0, 1)
                           for n in "qkv")
                attn = torch.softmax(q @ k.transpose(1, 2) / np.sqrt(head), dim=-1)
                ctx = (attn @ v).transpose(0, 1).reshape(s, hidden)
                x = F.layer_norm(x + F.linear(ctx, p["wo"], p["bo"]), (hidden,), p["g1"], p["be1"], 1e-5)
                f = F.gelu(F.linear(x, p["w1"], p["b1"]), approximate="tanh")
                x = F.layer_norm(x + F.linear(f, p["w2"], p["b2"]), (hidden,), p["g2"], p["be2"], 1e-5)
            return x
    return run


def onnx_bert_model(w):
    """The encoder as an ONNX graph (MatMul + Add, Softmax, LayerNormalization, tanh-GELU from
    elementwise nodes), input "x": (seq, hidden)."""
    from dynvm.models.bert_varlen import GELU_C
    g, config = OnnxGraph(), w["config"]
    f32 = lambda v: g.const(np.float32(v))  # noqa: E731
    x = "x"
    for p in w["layers"]:
        def linear(v, wn, bn, p=p):
            return g.op("Add", g.op("MatMul", v, g.const(p[wn].T.copy())), g.const(p[bn]))

        def heads(v, perm):
            shape = g.const([-1, config.heads, config.head], np.int64)
            return g.op("Transpose", g.op("Reshape", v, shape), perm=perm)
        q = heads(linear(x, "wq", "bq"), [1, 0, 2])
        k_t = heads(linear(x, "wk", "bk"), [1, 2, 0])
        v = heads(linear(x, "wv", "bv"), [1, 0, 2])
        scores = g.op("Mul", g.op("MatMul", q, k_t), f32(1 / np.sqrt(config.head)))
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        merged = g.op("Reshape", g.op("Transpose", context, perm=[1, 0, 2]),
                      g.const([-1, config.hidden], np.int64))
        x = g.op("LayerNormalization", g.op("Add", x, linear(merged, "wo", "bo")),
                 g.const(p["g1"]), g.const(p["be1"]), axis=-1, epsilon=1e-5)
        h = linear(x, "w1", "b1")
        cube = g.op("Mul", h, g.op("Mul", h, h))
        inner = g.op("Mul", f32(GELU_C), g.op("Add", h, g.op("Mul", f32(0.044715), cube)))
        gelu = g.op("Mul", g.op("Mul", f32(0.5), h), g.op("Add", f32(1.0), g.op("Tanh", inner)))
        x = g.op("LayerNormalization", g.op("Add", x, linear(gelu, "w2", "b2")),
                 g.const(p["g2"]), g.const(p["be2"]), axis=-1, epsilon=1e-5)
    return g.model([("x", ["seq", config.hidden])], x)


# --- LSTM (dynvm.models.lstm) -----------------------------------------------------------------


def torch_lstm(torch, w):
    """nn.LSTM(128, 256) holding the model's weights (PyTorch's gate order i, f, g, o is the
    model's; the model has one bias, so bias_hh is zero)."""
    return _with_lstm_weights(torch, torch.nn.LSTM(*_lstm_sizes(w)), w, "_l0")


def torch_lstm_cell(torch, w):
    """nn.LSTMCell with the same weights (for a Python loop over the steps)."""
    return _with_lstm_weights(torch, torch.nn.LSTMCell(*_lstm_sizes(w)), w, "")


def _lstm_sizes(w):
    return w["w_ih"].shape[1], w["w_hh"].shape[1]


def _with_lstm_weights(torch, module, w, suffix):
    """Copy the model's weights into `module`'s parameters named weight_ih<suffix>, ..."""
    with torch.no_grad():
        getattr(module, "weight_ih" + suffix).copy_(torch.from_numpy(w["w_ih"]))
        getattr(module, "weight_hh" + suffix).copy_(torch.from_numpy(w["w_hh"]))
        getattr(module, "bias_ih" + suffix).copy_(torch.from_numpy(w["b"]))
        getattr(module, "bias_hh" + suffix).zero_()
    return module.eval()


def onnx_lstm_model(w):
    """An ONNX LSTM node (dynamic sequence axis, batch 1) with the model's weights. ONNX's gate
    order is i, o, f, c; the model's (and PyTorch's) is i, f, g, o."""
    g, hidden = OnnxGraph(), w["w_hh"].shape[1]
    order = [0, 3, 1, 2]

    def gates(m):
        return np.concatenate([m[k * hidden:(k + 1) * hidden] for k in order])[None]
    bias = np.concatenate([gates(w["b"])[0], np.zeros(4 * hidden, np.float32)])[None]
    _, y_h, _ = g.op("LSTM", "x", g.const(gates(w["w_ih"])), g.const(gates(w["w_hh"])), g.const(bias),
                     outputs=3, hidden_size=hidden)
    return g.model([("x", ["seq", 1, w["w_ih"].shape[1]])], y_h)


# --- Tree-LSTM (dynvm.models.tree_lstm) -------------------------------------------------------


def torch_tree_lstm(torch, w):
    """The child-sum Tree-LSTM as a PyTorch eager recursion (float32) over a tree made by
    `to_torch_tree`."""
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    hidden = w["u_f"].shape[0]

    def node(tree):
        x, children = tree
        states = [node(c) for c in children]
        zeros = torch.zeros((1, hidden))
        h_sum = sum((s[0] for s in states), zeros)
        i_x, o_x, u_x, f_x = torch.split(torch.nn.functional.linear(x, t["w"], t["b"]), hidden, dim=1)
        i_h, o_h, u_h = torch.split(h_sum @ t["u_iou"].T, hidden, dim=1)
        forget = sum((torch.sigmoid(f_x + h @ t["u_f"].T) * c for h, c in states), zeros)
        c = torch.sigmoid(i_x + i_h) * torch.tanh(u_x + u_h) + forget
        return torch.sigmoid(o_x + o_h) * torch.tanh(c), c

    def run(tree):
        with torch.inference_mode():
            return node(tree)[0]
    return run


def to_torch_tree(torch, tree):
    """A nested (x, [children]) tree of numpy arrays as the same tree of torch tensors."""
    x, children = tree
    return (torch.from_numpy(x), [to_torch_tree(torch, c) for c in children])


# --- NMS (dynvm.models.nms_postprocess) -------------------------------------------------------


def onnx_nms_model(classes=10):
    """get_valid_counts + TVM-style NMS with ONNX ops: per-class NonMaxSuppression (suppression
    is per class, like force_suppress=False), the kept rows sorted by score, the first
    max_output_size of them, -1 padded to TOP rows. `classes` is the number of class ids of
    make_input (0..9). Input "data": (1, anchors, 6)."""
    from dynvm.models.nms_postprocess import GVC, NMS, TOP
    g = OnnxGraph()
    i64 = lambda v: g.const(v, np.int64)  # noqa: E731
    rows = g.op("Squeeze", "data", i64([0]))                                     # (N, 6)
    col = lambda a, b: g.op("Slice", rows, i64([a]), i64([b]), i64([1]))  # noqa: E731
    cls = g.op("Cast", g.op("Squeeze", col(0, 1), i64([1])), to=7)              # int64 (N,)
    onehot = g.op("OneHot", cls, i64(classes), g.const([0.0, 1.0], np.float32), axis=-1)
    scores = g.op("Unsqueeze", g.op("Transpose", g.op("Mul", onehot, col(1, 2)), perm=[1, 0]), i64([0]))
    boxes = g.op("Unsqueeze", col(2, 6), i64([0]))
    selected = g.op("NonMaxSuppression", boxes, scores, i64([NMS["max_output_size"]]),
                    g.const([NMS["iou_threshold"]], np.float32),
                    g.const([GVC["score_threshold"]], np.float32))
    index = g.op("Squeeze", g.op("Slice", selected, i64([2]), i64([3]), i64([1])), i64([1]))
    kept = g.op("Gather", rows, index, axis=0)
    k = g.op("Min", g.op("Shape", index), i64([NMS["max_output_size"]]))
    _, order = g.op("TopK", g.op("Squeeze", g.op("Slice", kept, i64([1]), i64([2]), i64([1])), i64([1])),
                    k, axis=0, outputs=2)
    padded = g.op("Concat", g.op("Gather", kept, order, axis=0),
                  g.const(-np.ones((TOP, 6), np.float32)), axis=0)
    top = g.op("Slice", padded, i64([0]), i64([TOP]), i64([0]))
    return g.model([("data", [1, "anchors", 6])], g.op("Unsqueeze", top, i64([0])))


# --- arange (dynvm.models.arange_model) -------------------------------------------------------


def torch_arange(torch, table):
    """x + table[arange(rows(x))] in PyTorch eager."""
    table = torch.from_numpy(table)

    def run(x):
        with torch.inference_mode():
            return x + table[torch.arange(x.shape[0])]
    return run


def onnx_arange_model(table):
    """x + Gather(table, Range(0, rows(x), 1)), input "x": (rows, hidden)."""
    g = OnnxGraph()
    rows = g.op("Gather", g.op("Shape", "x"), g.const(0, np.int64), axis=0)
    positions = g.op("Range", g.const(0, np.int64), rows, g.const(1, np.int64))
    y = g.op("Add", "x", g.op("Gather", g.const(table), positions, axis=0))
    return g.model([("x", ["rows", table.shape[1]])], y)
