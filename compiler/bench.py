"""`dynvm bench`: the model suite on every runtime a user could pick, in one table.

For each model of `examples/` and each input size: the dynamic VM (one executable for every
size), the static runtime compiled for that exact shape (where the model has a static form), the
example's numpy reference, PyTorch eager and ONNX Runtime (when installed). Each runtime's output
is checked against the reference once per size, then all runtimes are timed interleaved (warm-up,
then the median of `reps` repetitions, see benchmarks/harness.py). Results: a table on stdout,
`bench.json` (every runtime present with a time or marked skipped with the reason) and, with
matplotlib installed, `bench.png`.

The examples and the measuring harness live in the repository, not in the installed package:
they are found at run time in ./examples and ./benchmarks, or next to the package.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from typing import Callable

import numpy as np

RUNTIMES = ("vm", "static", "numpy", "torch", "ort")
PEERS = ("static", "numpy", "torch", "ort")         # ratio columns: vm time / peer time
LABELS = {"vm": "dynvm VM", "static": "static runtime", "numpy": "numpy reference",
          "torch": "PyTorch eager", "ort": "ONNX Runtime"}
MODES = {"full": 15, "quick": 5, "tiny": 2}         # repetitions per number
THREADS = None                                      # --threads: PyTorch / ONNX Runtime threads


class Skip(Exception):
    """A runtime that cannot run this model here; the message is the reason (kept in the JSON)."""


# ---------------------------------------------------------------------------------------------
# finding the repository's examples and harness


def find_root() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.getcwd(), here):
        if os.path.isfile(os.path.join(root, "examples", "lstm.py")):
            return root
    raise SystemExit("dynvm bench: no examples/ folder found in the current directory or next to "
                     f"the package ({here}); run it from the dynvm repository root")


def load_file(name: str, path: str):
    """Import the Python file `path` as module `name` (once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def harness():
    return load_file("harness", os.path.join(find_root(), "benchmarks", "harness.py"))


def example(name: str):
    return load_file(f"dynvm_examples_{name}", os.path.join(find_root(), "examples", f"{name}.py"))


def with_weights(name: str):
    """The setup of a model whose example has `weights()`: the example and its weights."""
    def setup():
        ex = example(name)
        return {"ex": ex, "w": ex.weights()}
    return setup


# ---------------------------------------------------------------------------------------------
# runtimes


@dataclasses.dataclass
class Runner:
    """One runtime ready for one model: `run(prepare(sample))` -> output, `result(output)` -> the
    numpy array compared with the reference. `prepare` runs outside the timed region."""
    run: Callable
    prepare: Callable = lambda sample: sample
    result: Callable = np.asarray
    note: str = ""


def vm_runner(ctx, build_mod, prepare=lambda s: s) -> Runner:
    from dynvm.compiler import build
    from dynvm.vm import VirtualMachine
    if "vm" not in ctx:
        ctx["vm"] = VirtualMachine(build(build_mod()))
    vm = ctx["vm"]
    return Runner(lambda x: vm.invoke("main", x), prepare)


def static_runner(build_static: Callable, prepare=lambda s: s) -> Runner:
    """A vm.StaticRuntime over the executable of the model compiled for one exact shape."""
    from dynvm.compiler import build
    from dynvm.vm import StaticRuntime
    return Runner(StaticRuntime(build(build_static())).run, prepare)


def needs(module_name: str):
    mod, why = harness().optional_import(module_name)
    if mod is None:
        raise Skip(why)
    return mod


def torch_module():
    torch = needs("torch")
    if THREADS:
        torch.set_num_threads(THREADS)
    return torch


def ort_session(model_proto) -> Callable:
    """An ONNX Runtime CPU session (all graph optimisations; default threads unless --threads)."""
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


def ort_runner(model_proto, input_name="x", prepare=lambda s: s, result=np.asarray) -> Runner:
    sess = ort_session(model_proto)
    return Runner(lambda x: sess.run(None, {input_name: x})[0], prepare, result)


# ---------------------------------------------------------------------------------------------
# the models: for each, how to build it, make inputs, and run it on each runtime


@dataclasses.dataclass
class Model:
    name: str
    size_name: str
    sizes: dict                      # mode -> list of sizes
    tol: tuple                       # (rtol, atol) against the reference
    setup: Callable                  # () -> ctx dict (weights, the example module)
    sample: Callable                 # (ctx, size) -> sample
    reference: Callable              # (ctx, sample) -> numpy array
    runners: dict                    # runtime -> (ctx, size) -> Runner (raise Skip to skip)


# --- BERT ------------------------------------------------------------------------------------


def bert_static(ctx, n):
    return static_runner(lambda: ctx["ex"].build_module(ctx["w"], seq=n))


def bert_torch(ctx, n):
    torch = torch_module()
    if "torch_bert" not in ctx:
        ctx["torch_bert"] = torch_bert(torch, ctx["w"], ctx["ex"])
    return Runner(ctx["torch_bert"], torch.from_numpy, lambda y: y.numpy(),
                  note=f"{torch.get_num_threads()} threads")


def torch_bert(torch, w, ex):
    """The encoder of examples/bert_varlen.py in PyTorch eager, float32, same weights."""
    F = torch.nn.functional
    layers = [{k: torch.from_numpy(v) for k, v in p.items()} for p in w]
    hidden, heads, head = ex.HIDDEN, ex.HEADS, ex.HEAD

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


def bert_ort(ctx, n):
    if "ort_bert" not in ctx:
        ex, g = ctx["ex"], OnnxGraph()
        x = "x"
        for p in ctx["w"]:
            def linear(v, wn, bn):
                return g.op("Add", g.op("MatMul", v, g.const(p[wn].T.copy())), g.const(p[bn]))

            def heads(v, perm):
                return g.op("Transpose", g.op("Reshape", v, g.const([-1, ex.HEADS, ex.HEAD], np.int64)),
                            perm=perm)
            q = heads(linear(x, "wq", "bq"), [1, 0, 2])
            k_t = heads(linear(x, "wk", "bk"), [1, 2, 0])
            v = heads(linear(x, "wv", "bv"), [1, 0, 2])
            scores = g.op("Mul", g.op("MatMul", q, k_t), g.const(np.float32(1 / np.sqrt(ex.HEAD))))
            context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
            merged = g.op("Reshape", g.op("Transpose", context, perm=[1, 0, 2]),
                          g.const([-1, ex.HIDDEN], np.int64))
            x = g.op("LayerNormalization", g.op("Add", x, linear(merged, "wo", "bo")),
                     g.const(p["g1"]), g.const(p["be1"]), axis=-1, epsilon=1e-5)
            h = linear(x, "w1", "b1")
            f32 = lambda v: g.const(np.float32(v))  # noqa: E731
            cube = g.op("Mul", h, g.op("Mul", h, h))
            inner = g.op("Mul", f32(ex.GELU_C), g.op("Add", h, g.op("Mul", f32(0.044715), cube)))
            gelu = g.op("Mul", g.op("Mul", f32(0.5), h), g.op("Add", f32(1.0), g.op("Tanh", inner)))
            x = g.op("LayerNormalization", g.op("Add", x, linear(gelu, "w2", "b2")),
                     g.const(p["g2"]), g.const(p["be2"]), axis=-1, epsilon=1e-5)
        ctx["ort_bert"] = ort_runner(g.model([("x", ["seq", ex.HIDDEN])], x))
    return ctx["ort_bert"]


BERT = Model(
    "bert", "seq", {"full": [1, 16, 32, 64, 128, 256], "quick": [16, 64, 128], "tiny": [4]},
    (1e-4, 1e-4), with_weights("bert_varlen"),
    sample=lambda ctx, n: ctx["ex"].make_input(n),
    reference=lambda ctx, x: ctx["ex"].reference(x, ctx["w"]),
    runners={"vm": lambda ctx, n: vm_runner(ctx, lambda: ctx["ex"].build_module(ctx["w"])),
             "static": bert_static, "torch": bert_torch, "ort": bert_ort})


# --- LSTM ------------------------------------------------------------------------------------


def lstm_static(ctx, n):
    return static_runner(lambda: ctx["ex"].build_module(ctx["w"], steps=n))


def torch_lstm(torch, w):
    """nn.LSTM(128, 256) holding the example's weights (PyTorch's gate order i, f, g, o is the
    example's; the example has one bias, so bias_hh is zero)."""
    hidden = w["w_hh"].shape[1]
    lstm = torch.nn.LSTM(w["w_ih"].shape[1], hidden)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(w["w_ih"]))
        lstm.weight_hh_l0.copy_(torch.from_numpy(w["w_hh"]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(w["b"]))
        lstm.bias_hh_l0.zero_()
    return lstm.eval()


def torch_lstm_cell(torch, w):
    cell = torch.nn.LSTMCell(w["w_ih"].shape[1], w["w_hh"].shape[1])
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(w["w_ih"]))
        cell.weight_hh.copy_(torch.from_numpy(w["w_hh"]))
        cell.bias_ih.copy_(torch.from_numpy(w["b"]))
        cell.bias_hh.zero_()
    return cell.eval()


def lstm_torch(ctx, n):
    torch = torch_module()
    if "torch_lstm" not in ctx:
        ctx["torch_lstm"] = torch_lstm(torch, ctx["w"])
    lstm = ctx["torch_lstm"]

    def run(x):
        with torch.inference_mode():
            return lstm(x)[1][0]
    return Runner(run, lambda x: torch.from_numpy(x)[:, None, :], lambda h: h.numpy()[0],
                  note=f"nn.LSTM, {torch.get_num_threads()} threads")


def onnx_lstm_model(w):
    """An ONNX LSTM node (dynamic sequence axis, batch 1) with the example's weights. ONNX's gate
    order is i, o, f, c; the example's (and PyTorch's) is i, f, g, o."""
    g, hidden = OnnxGraph(), w["w_hh"].shape[1]
    order = [0, 3, 1, 2]

    def gates(m):
        return np.concatenate([m[k * hidden:(k + 1) * hidden] for k in order])[None]
    bias = np.concatenate([gates(w["b"])[0], np.zeros(4 * hidden, np.float32)])[None]
    _, y_h, _ = g.op("LSTM", "x", g.const(gates(w["w_ih"])), g.const(gates(w["w_hh"])), g.const(bias),
                     outputs=3, hidden_size=hidden)
    return g.model([("x", ["seq", 1, w["w_ih"].shape[1]])], y_h)


def lstm_ort(ctx, n):
    if "ort_lstm" not in ctx:
        ctx["ort_lstm"] = ort_runner(onnx_lstm_model(ctx["w"]), prepare=lambda x: x[:, None, :],
                                     result=lambda y: y[0])
    return ctx["ort_lstm"]


LSTM = Model(
    "lstm", "seq", {"full": [1, 8, 32, 64, 128], "quick": [8, 128], "tiny": [3]},
    (1e-4, 1e-5), with_weights("lstm"),
    sample=lambda ctx, n: ctx["ex"].make_input(n),
    reference=lambda ctx, x: ctx["ex"].reference(x, ctx["w"]),
    runners={"vm": lambda ctx, n: vm_runner(ctx, lambda: ctx["ex"].build_module(ctx["w"])),
             "static": lstm_static, "torch": lstm_torch, "ort": lstm_ort})


# --- Tree-LSTM -------------------------------------------------------------------------------


def torch_tree_lstm(torch, w):
    """The child-sum Tree-LSTM of examples/tree_lstm.py as a PyTorch eager recursion (float32)."""
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
    x, children = tree
    return (torch.from_numpy(x), [to_torch_tree(torch, c) for c in children])


def tree_torch(ctx, n):
    torch = torch_module()
    if "torch_tree" not in ctx:
        ctx["torch_tree"] = torch_tree_lstm(torch, ctx["w"])
    return Runner(ctx["torch_tree"], lambda t: to_torch_tree(torch, t), lambda h: h.numpy(),
                  note="recursion")


TREE_LSTM = Model(
    "tree_lstm", "nodes", {"full": [1, 10, 50, 100, 200], "quick": [10, 100], "tiny": [3]},
    (1e-4, 1e-5), with_weights("tree_lstm"),
    sample=lambda ctx, n: ctx["ex"].random_tree(n, seed=n),
    reference=lambda ctx, t: ctx["ex"].reference(t, ctx["w"])[0],
    runners={"vm": lambda ctx, n: vm_runner(ctx, lambda: ctx["ex"].build_module(ctx["w"]),
                                            prepare=ctx["ex"].to_adt),
             "static": lambda ctx, n: _skip("no static form: recursion over a run-time tree"),
             "torch": tree_torch,
             "ort": lambda ctx, n: _skip("no ONNX form: ONNX graphs have no recursion over trees")})


# --- NMS -------------------------------------------------------------------------------------


def onnx_nms_model(ex, classes=10):
    """get_valid_counts + TVM-style NMS with ONNX ops: per-class NonMaxSuppression (suppression
    is per class, like force_suppress=False), the kept rows sorted by score, the first
    max_output_size of them, -1 padded to TOP rows. `classes` is the number of class ids of
    make_input (0..9)."""
    g, nms = OnnxGraph(), ex.NMS
    i64 = lambda v: g.const(v, np.int64)  # noqa: E731
    rows = g.op("Squeeze", "data", i64([0]))                                     # (N, 6)
    col = lambda a, b: g.op("Slice", rows, i64([a]), i64([b]), i64([1]))  # noqa: E731
    cls = g.op("Cast", g.op("Squeeze", col(0, 1), i64([1])), to=7)              # int64 (N,)
    onehot = g.op("OneHot", cls, i64(classes), g.const([0.0, 1.0], np.float32), axis=-1)
    scores = g.op("Unsqueeze", g.op("Transpose", g.op("Mul", onehot, col(1, 2)), perm=[1, 0]), i64([0]))
    boxes = g.op("Unsqueeze", col(2, 6), i64([0]))
    selected = g.op("NonMaxSuppression", boxes, scores, i64([nms["max_output_size"]]),
                    g.const([nms["iou_threshold"]], np.float32),
                    g.const([ex.GVC["score_threshold"]], np.float32))
    index = g.op("Squeeze", g.op("Slice", selected, i64([2]), i64([3]), i64([1])), i64([1]))
    kept = g.op("Gather", rows, index, axis=0)
    k = g.op("Min", g.op("Shape", index), i64([nms["max_output_size"]]))
    _, order = g.op("TopK", g.op("Squeeze", g.op("Slice", kept, i64([1]), i64([2]), i64([1])), i64([1])),
                    k, axis=0, outputs=2)
    padded = g.op("Concat", g.op("Gather", kept, order, axis=0),
                  g.const(-np.ones((ex.TOP, 6), np.float32)), axis=0)
    top = g.op("Slice", padded, i64([0]), i64([ex.TOP]), i64([0]))
    return g.model([("data", [1, "anchors", 6])], g.op("Unsqueeze", top, i64([0])))


def nms_ort(ctx, n):
    if "ort_nms" not in ctx:
        ctx["ort_nms"] = ort_runner(onnx_nms_model(ctx["ex"]), input_name="data")
    return ctx["ort_nms"]


NMS = Model(
    "nms", "anchors", {"full": [100, 1000, 5000, 20000], "quick": [1000, 5000], "tiny": [50]},
    (0, 1e-6), lambda: {"ex": example("nms_postprocess")},
    sample=lambda ctx, n: ctx["ex"].make_input(n, seed=n),
    reference=lambda ctx, data: ctx["ex"].reference(data),
    runners={"vm": lambda ctx, n: vm_runner(ctx, ctx["ex"].build_module),
             "static": lambda ctx, n: _skip("no static form in the example (upper-bound NMS output)"),
             "torch": lambda ctx, n: _skip("no PyTorch eager op with TVM get_valid_counts/NMS "
                                           "semantics (torchvision's nms is a different pipeline)"),
             "ort": nms_ort})


# --- arange ----------------------------------------------------------------------------------


def arange_setup():
    ex = example("arange_model")
    return {"ex": ex, "table": ex.position_table()}


def arange_torch(ctx, n):
    torch = torch_module()
    table = torch.from_numpy(ctx["table"])

    def run(x):
        with torch.inference_mode():
            return x + table[torch.arange(x.shape[0])]
    return Runner(run, torch.from_numpy, lambda y: y.numpy())


def arange_ort(ctx, n):
    if "ort_arange" not in ctx:
        g = OnnxGraph()
        rows = g.op("Gather", g.op("Shape", "x"), g.const(0, np.int64), axis=0)
        positions = g.op("Range", g.const(0, np.int64), rows, g.const(1, np.int64))
        y = g.op("Add", "x", g.op("Gather", g.const(ctx["table"]), positions, axis=0))
        ctx["ort_arange"] = ort_runner(g.model([("x", ["rows", ctx["ex"].HIDDEN])], y))
    return ctx["ort_arange"]


ARANGE = Model(
    "arange", "rows", {"full": [1, 16, 128, 512], "quick": [16, 512], "tiny": [8]},
    (1e-6, 1e-6), arange_setup,
    sample=lambda ctx, n: ctx["ex"].make_input(n),
    reference=lambda ctx, x: ctx["ex"].reference(x, ctx["table"]),
    runners={"vm": lambda ctx, n: vm_runner(ctx, lambda: ctx["ex"].build_module(ctx["table"])),
             "static": lambda ctx, n: _skip("no static form: arange's length is data-dependent"),
             "torch": arange_torch, "ort": arange_ort})


def _skip(reason):
    raise Skip(reason)


MODELS = {m.name: m for m in (BERT, LSTM, TREE_LSTM, NMS, ARANGE)}


# ---------------------------------------------------------------------------------------------
# running


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
                runner = Runner(lambda s: model.reference(ctx, s), note="the example's reference")
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
    seconds = harness().measure(timed, reps=reps, budget=budget,
                                on_rep=lambda k: progress.step(label))
    for runtime, s in seconds.items():
        cells[runtime]["seconds"] = s
    vm = cells["vm"].get("seconds")
    ratios = {f"vm/{p}": (vm / cells[p]["seconds"] if vm and cells[p].get("seconds") else None)
              for p in PEERS}
    return {"model": model.name, "size_name": model.size_name, "size": n, "runtimes": cells,
            "ratios": ratios}


def targets(results) -> list:
    """Issue 6's targets, read off the results (met / missed / not measured)."""
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
        else:
            out.append({"target": text, "ratio": ratio,
                        "status": "met" if ratio <= limit else "missed"})
    target("VM <= 10% slower than static, BERT seq 128", "bert", 128, "static", 1.10)
    target("VM <= 10% slower than static, LSTM seq 128", "lstm", 128, "static", 1.10)
    for seq in (16, 64, 128):
        target(f"BERT seq {seq} faster than PyTorch eager", "bert", seq, "torch", 1.0)
    return out


def compile_stats() -> dict:
    """Native kernel compiles vs object-cache hits in this run (cold cache: slower first run)."""
    try:
        from dynvm.kernels import codelib
        return dict(codelib.stats)
    except Exception:  # noqa: BLE001
        return {}


def machine_info() -> dict:
    h = harness()
    info = {"cpu": h.cpu_model(), "cores": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0],
            "numpy": np.__version__}
    try:
        from dynvm.kernels import codelib
        info["llvm_cpu"] = codelib.host_target()["cpu"]
    except Exception:  # noqa: BLE001
        pass
    for name in ("torch", "onnxruntime", "matplotlib"):
        mod, why = h.optional_import(name)
        info[name] = mod.__version__ if mod else why
        if name == "torch" and mod:
            info["torch_threads"] = torch_module().get_num_threads()
    info["ort_threads"] = THREADS or "default (all cores)"
    info["numpy_blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
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
          f"at start {' '.join(map(str, m['load_average']))}; threads: dynvm 1, torch "
          f"{m.get('torch_threads', '-')}, ORT {m['ort_threads']}, numpy BLAS "
          f"{m['numpy_blas_threads']}", file=out)
    if max(m["load_average"][0], m.get("load_average_end", [0])[0]) > 0.5 * (m["cores"] or 1):
        print(f"!! the machine was busy (load average {m['load_average'][0]} at start, "
              f"{m.get('load_average_end', ['?'])[0]} at end on {m['cores']} cores): multi-threaded "
              "peers suffer most; rerun on a quiet machine or with --threads 1", file=out)
    print("ratios are VM latency / that runtime's latency: < 1 means the VM is faster", file=out)
    for model in dict.fromkeys(r["model"] for r in report["results"]):
        rows = [r for r in report["results"] if r["model"] == model]
        print(f"\n{model} ({rows[0]['size_name']})", file=out)
        print(f"{'size':>7} " + "".join(f"{rt:>11}" for rt in RUNTIMES)
              + "".join(f"{'vm/' + p:>11}" for p in PEERS), file=out)
        notes = {}
        for r in rows:
            cells = r["runtimes"]
            line = f"{r['size']:>7} " + "".join(f"{fmt_cell(cells[rt]):>11}" for rt in RUNTIMES)
            line += "".join(f"{r['ratios'][f'vm/{p}']:>10.2f}x" if r["ratios"][f"vm/{p}"] else f"{'-':>11}"
                            for p in PEERS)
            print(line, file=out)
            for rt in RUNTIMES:
                if "skipped" in cells[rt]:
                    notes.setdefault(f"{rt}: {cells[rt]['skipped']}", None)
                if cells[rt].get("check", "ok") != "ok":
                    print(f"  !! {rt} output {cells[rt]['check']} at {r['size_name']}={r['size']}",
                          file=out)
        for note in notes:
            print(f"  skipped {note}", file=out)
    print("\ntargets (issue 6):", file=out)
    for t in report["targets"]:
        ratio = f" (vm/peer {t['ratio']:.2f}x)" if "ratio" in t else ""
        print(f"  {t['status']:<10} {t['target']}{ratio}" if t["status"] in ("met", "missed")
              else f"  {'-':<10} {t['target']}: {t['status']}", file=out)
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
    colors = dict(zip(RUNTIMES, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
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
    if text is None or text in MODES:
        return text
    return [int(s) for s in text.split(",") if s.strip()]


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
    plan = [(MODELS[n], s) for n in names
            for s in (sizes if isinstance(sizes, list) else MODELS[n].sizes[mode])]
    h = harness()
    machine = machine_info()
    progress = h.ProgressBar(sum(1 + reps for _ in plan))
    results, contexts = [], {}
    for model, n in plan:
        if model.name not in contexts:
            contexts[model.name] = model.setup()
        results.append(bench_size(model, contexts[model.name], n, reps, budget, progress))
    progress.close()
    report = {"mode": mode, "reps": reps, "machine": machine, "runtimes": list(RUNTIMES),
              "ratio_definition": "vm seconds / peer seconds (< 1: the VM is faster)",
              "results": results}
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
    parser.add_argument("--models", nargs="+", metavar="MODEL", choices=list(MODELS),
                        help=f"models to run (default: all of {', '.join(MODELS)})")
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and repetitions (under 2 minutes on 2 cores)")
    parser.add_argument("--out", default=".", metavar="DIR", help="where bench.json/bench.png go")
    parser.add_argument("--sizes", type=parse_sizes, default=None, metavar="N,N,...",
                        help="input sizes for every chosen model, instead of each model's own "
                             "(`tiny`: one small size per model, for the test suite)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per number")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for PyTorch and ONNX Runtime (default: their own default, "
                             "all cores; the dynvm VM runs on one thread)")


def main_from_args(args) -> int:
    global THREADS
    THREADS = args.threads
    return run(args.models, args.quick, args.out, args.sizes, args.reps)
