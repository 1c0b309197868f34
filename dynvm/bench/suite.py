"""The models `dynvm bench` runs: for each, its sizes, how to make an input and the numpy
reference, and one runner factory per runtime (the dynamic VM, the static runtime, PyTorch
eager, ONNX Runtime). A factory raises `Skip` with the reason when a runtime cannot run the
model; the MODELS table at the end is the list `dynvm bench --models` chooses from."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from dynvm.bench import peers
from dynvm.bench.peers import Skip
from dynvm.models import arange_model, bert_varlen, list_ops, lstm, nms_postprocess, tree_lstm


@dataclasses.dataclass
class Runner:
    """One runtime ready for one model: `run(prepare(sample))` -> output, `result(output)` -> the
    numpy array compared with the reference. `prepare` runs outside the timed region."""
    run: Callable
    prepare: Callable = lambda sample: sample
    result: Callable = np.asarray
    note: str = ""


@dataclasses.dataclass
class Model:
    name: str
    size_name: str
    sizes: dict                      # mode -> list of sizes (empty: left out of that mode)
    tol: tuple                       # (rtol, atol) against the reference
    setup: Callable                  # () -> ctx dict (weights, ...), once per run
    sample: Callable                 # (ctx, size) -> sample
    reference: Callable              # (ctx, sample) -> numpy array
    runners: dict                    # runtime -> (ctx, size) -> Runner (raise Skip to skip)


def skip(reason):
    """A runner factory for a runtime the model has no form for."""
    def factory(ctx, n):
        raise Skip(reason)
    return factory


def vm_runner(build_mod, prepare=lambda s: s, tier="native", result=np.asarray):
    """The dynamic VM (in `tier`): one executable, built on first use, for every size. A
    prepared tuple is the invocation's arguments."""
    def factory(ctx, n):
        from dynvm.compiler import build
        from dynvm.vm import VirtualMachine
        if "exe" not in ctx:
            ctx["exe"] = build(build_mod(ctx))
        if tier not in ctx:
            ctx[tier] = VirtualMachine(ctx["exe"], tier=tier, threads=peers.THREADS)
        vm = ctx[tier]
        return Runner(lambda x: vm.invoke("main", *x) if type(x) is tuple else vm.invoke("main", x),
                      prepare, result)
    return factory


def static_runner(build_static):
    """vm.StaticRuntime over the executable of the model compiled for one exact size:
    `build_static(ctx, n)` -> IRModule."""
    def factory(ctx, n):
        from dynvm.compiler import build
        from dynvm.vm import StaticRuntime
        return Runner(StaticRuntime(build(build_static(ctx, n)), threads=peers.THREADS).run)
    return factory


def torch_runner(make, prepare=None, result=lambda y: y.numpy(), note=""):
    """PyTorch eager: `make(torch, ctx)` -> callable, made once per run."""
    def factory(ctx, n):
        torch = peers.torch_module()
        if "torch" not in ctx:
            ctx["torch"] = make(torch, ctx)
        return Runner(ctx["torch"], prepare(torch) if prepare else torch.from_numpy, result,
                      note=f"{note}{torch.get_num_threads()} threads")
    return factory


def ort_runner(make_model, input_name="x", prepare=lambda s: s, result=np.asarray):
    """ONNX Runtime: `make_model(ctx)` -> ModelProto, one session per run."""
    def factory(ctx, n):
        if "ort" not in ctx:
            sess = peers.ort_session(make_model(ctx))
            ctx["ort"] = Runner(lambda x: sess.run(None, {input_name: x})[0], prepare, result)
        return ctx["ort"]
    return factory


# --- BERT ------------------------------------------------------------------------------------


def bert(name, config, sizes, tol) -> Model:
    """The encoder of dynvm.models.bert_varlen at one Config."""
    return Model(
        name, "seq", sizes, tol, lambda: {"w": bert_varlen.weights(config)},
        sample=lambda ctx, n: bert_varlen.make_input(n, config=config),
        reference=lambda ctx, x: bert_varlen.reference(x, ctx["w"]),
        runners={
            "vm": vm_runner(lambda ctx: bert_varlen.build_module(ctx["w"])),
            "static": static_runner(lambda ctx, n: bert_varlen.build_module(ctx["w"], seq=n)),
            "torch": torch_runner(lambda torch, ctx: peers.torch_bert(torch, ctx["w"])),
            "ort": ort_runner(lambda ctx: peers.onnx_bert_model(ctx["w"]))})


BERT = bert("bert", bert_varlen.SMALL,
            {"full": [1, 16, 32, 64, 128, 256], "quick": [16, 64, 128], "tiny": [4]}, (1e-4, 1e-4))
# BERT-base: 340 MB of weights, slow to build and to set up every peer, so full mode only (or
# `--models bert_base`). Built as one nested expression, like the small encoder.
BERT_BASE = bert("bert_base", bert_varlen.BASE, {"full": [16, 128], "quick": [], "tiny": []},
                 (1e-3, 1e-3))


# --- LSTM ------------------------------------------------------------------------------------


def torch_lstm_run(torch, ctx):
    lstm_module = peers.torch_lstm(torch, ctx["w"])

    def run(x):
        with torch.inference_mode():
            return lstm_module(x)[1][0]
    return run


def lstm_model(name, count_in_condition, sizes) -> Model:
    """examples/lstm.py's LSTM; `count_in_condition`: the trip count written in the loop's
    condition (see lstm.build_module)."""
    return Model(
        name, "seq", sizes, (1e-4, 1e-5), lambda: {"w": lstm.weights()},
        sample=lambda ctx, n: lstm.make_input(n),
        reference=lambda ctx, x: lstm.reference(x, ctx["w"]),
        runners={"vm": vm_runner(lambda ctx: lstm.build_module(ctx["w"], count_in_condition=count_in_condition)),
                 "static": static_runner(lambda ctx, n: lstm.build_module(ctx["w"], steps=n)),
                 "torch": torch_runner(torch_lstm_run,
                                       prepare=lambda torch: lambda x: torch.from_numpy(x)[:, None, :],
                                       result=lambda h: h.numpy()[0], note="nn.LSTM, "),
                 "ort": ort_runner(lambda ctx: peers.onnx_lstm_model(ctx["w"]),
                                   prepare=lambda x: x[:, None, :], result=lambda y: y[0])})


LSTM = lstm_model("lstm", False, {"full": [1, 8, 32, 64, 128], "quick": [8, 128], "tiny": [3]})
# the same LSTM with the trip count in the loop condition
LSTM_COND = lstm_model("lstm_cond", True, {"full": [1, 8, 32, 128], "quick": [8, 128], "tiny": [3]})


# --- Tree-LSTM -------------------------------------------------------------------------------


TREE_LSTM = Model(
    "tree_lstm", "nodes", {"full": [1, 10, 50, 100, 200], "quick": [10, 100], "tiny": [3]},
    (1e-4, 1e-5), lambda: {"w": tree_lstm.weights()},
    sample=lambda ctx, n: tree_lstm.random_tree(n, seed=n),
    reference=lambda ctx, t: tree_lstm.reference(t, ctx["w"])[0],
    runners={"vm": vm_runner(lambda ctx: tree_lstm.build_module(ctx["w"]), prepare=tree_lstm.to_adt),
             "static": skip("no static form: recursion over a run-time tree"),
             "torch": torch_runner(lambda torch, ctx: peers.torch_tree_lstm(torch, ctx["w"]),
                                   prepare=lambda torch: lambda t: peers.to_torch_tree(torch, t),
                                   note="recursion, "),
             "ort": skip("no ONNX form: ONNX graphs have no recursion over trees")})


# --- list_ops --------------------------------------------------------------------------------


def _list_ops_flat(normalised, energy):
    """The list of normalised tensors and the energy as one array (what the check compares)."""
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in normalised] + [[float(energy)]])


def _list_ops_vm_result(out):
    from dynvm.vm.convert import from_list
    return _list_ops_flat(from_list(out[0]), out[1])


def _torch_list_ops(torch, ctx):
    def run(args):
        xs, scale = args
        normalised = [(x - x.mean()) * scale for x in xs]
        return normalised, sum(((y * y).sum() for y in normalised), torch.zeros(()))
    return run


def _list_ops_vm_args(sample):
    from dynvm.vm.convert import to_list
    return to_list(sample[0]), sample[1]


LIST_OPS_SCALE = np.array(0.5, np.float32)
LIST_OPS = Model(
    "list_ops", "tensors", {"full": [1, 3, 10, 40, 200], "quick": [10, 200], "tiny": [3]},
    (1e-5, 1e-5), dict,
    sample=lambda ctx, n: (list_ops.make_input([1 + 7 * k % 40 for k in range(n)], seed=n), LIST_OPS_SCALE),
    reference=lambda ctx, s: _list_ops_flat(*list_ops.reference(*s)),
    runners={"vm": vm_runner(lambda ctx: list_ops.build_module(), _list_ops_vm_args, result=_list_ops_vm_result),
             "python": vm_runner(lambda ctx: list_ops.build_module(), _list_ops_vm_args, tier="python",
                                 result=_list_ops_vm_result),
             "static": skip("no static form: a run-time list of run-time lengths"),
             "torch": torch_runner(_torch_list_ops,
                                   prepare=lambda torch: lambda s: ([torch.from_numpy(x) for x in s[0]],
                                                                    torch.from_numpy(s[1])),
                                   result=lambda out: _list_ops_flat([y.numpy() for y in out[0]], out[1]),
                                   note="a Python loop, "),
             "ort": skip("no ONNX form: ONNX has no lists of tensors of different lengths")})


# --- NMS -------------------------------------------------------------------------------------


NMS = Model(
    "nms", "anchors", {"full": [100, 1000, 5000, 20000], "quick": [1000, 5000], "tiny": [50]},
    (0, 1e-6), dict,
    sample=lambda ctx, n: nms_postprocess.make_input(n, seed=n),
    reference=lambda ctx, data: nms_postprocess.reference(data),
    runners={"vm": vm_runner(lambda ctx: nms_postprocess.build_module()),
             "static": skip("no static form in the model (upper-bound NMS output)"),
             "torch": skip("no PyTorch eager op with TVM get_valid_counts/NMS semantics "
                           "(torchvision's nms is a different pipeline)"),
             "ort": ort_runner(lambda ctx: peers.onnx_nms_model(), input_name="data")})


# --- arange ----------------------------------------------------------------------------------


ARANGE = Model(
    "arange", "rows", {"full": [1, 16, 128, 512], "quick": [16, 512], "tiny": [8]},
    (1e-6, 1e-6), lambda: {"table": arange_model.position_table()},
    sample=lambda ctx, n: arange_model.make_input(n),
    reference=lambda ctx, x: arange_model.reference(x, ctx["table"]),
    runners={"vm": vm_runner(lambda ctx: arange_model.build_module(ctx["table"])),
             "static": skip("no static form: arange's length is data-dependent"),
             "torch": torch_runner(lambda torch, ctx: peers.torch_arange(torch, ctx["table"])),
             "ort": ort_runner(lambda ctx: peers.onnx_arange_model(ctx["table"]))})


MODELS = {m.name: m for m in (BERT, LSTM, LSTM_COND, TREE_LSTM, LIST_OPS, NMS, ARANGE, BERT_BASE)}
