"""RNN, GRU and LSTM with per-sequence lengths (`sequence_lens` a run-time input): one generated
model holding every cell (GRU in both reset forms, LSTM with a clip) in every direction, checked
against ONNX Runtime and a numpy reference of ONNX's semantics (Y rows past a sequence's length
are 0, Y_h / Y_c are the states after its own last step, reverse starts from its own last
element) on batches of 1 and 3 with lengths 0 and 1 among them. The layer runs as one
`recurrent` call per direction, identically in both VM tiers and at any thread count; an LSTM
with peepholes runs as a loop and says so."""
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from dynvm.compiler import build  # noqa: E402
from dynvm.frontend.onnx import from_onnx  # noqa: E402
from dynvm.frontend.onnx.importer import UnsupportedOnnxError  # noqa: E402
from dynvm.vm import VirtualMachine  # noqa: E402
from dynvm.vm.errors import KernelError, PerformanceWarning  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402
from tests.numpy_reference import REFERENCE_KERNELS  # noqa: E402
from tests.vm.test_native_tier import NativeVM, assert_same, both_tiers  # noqa: E402

F, HIDDEN, FEATURES = TensorProto.FLOAT, 5, 3
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# (op, attributes): every cell, direction and reset form once
LAYERS = [("RNN", {"direction": "bidirectional", "activations": ["Relu", "Tanh"]}),
          ("GRU", {"direction": "forward", "linear_before_reset": 0}),
          ("GRU", {"direction": "reverse", "linear_before_reset": 1}),
          ("LSTM", {"direction": "bidirectional", "clip": 0.5})]     # a clip gates reach


def layer_weights(rng, kind, dirs):
    g = GATES[kind]
    return {"w": rng.standard_normal((dirs, g * HIDDEN, FEATURES)) * 0.5,
            "r": rng.standard_normal((dirs, g * HIDDEN, HIDDEN)) * 0.5,
            "b": rng.standard_normal((dirs, 2 * g * HIDDEN)) * 0.3}


def lengths_model(seed=0):
    """x (seq, batch, FEATURES), lens (batch,) int32, h0 (2, batch, HIDDEN) -> every layer's
    Y, Y_h (and Y_c)."""
    rng = np.random.default_rng(seed)
    nodes, outputs, weights, inits = [], [], [], {}
    for k, (kind, attrs) in enumerate(LAYERS):
        dirs = 2 if attrs["direction"] == "bidirectional" else 1
        w = {f"{name}{k}": v.astype(np.float32)
             for name, v in layer_weights(rng, kind, dirs).items()}
        inits.update(w)
        h0 = "h0" if dirs == 2 else ""
        names = [f"y{k}", f"yh{k}"] + ([f"yc{k}"] if kind == "LSTM" else [])
        nodes.append(helper.make_node(kind, ["x", *w, "lens", h0], names, hidden_size=HIDDEN,
                                      **attrs))
        outputs += [helper.make_tensor_value_info(n, F, shape) for n, shape in
                    zip(names, [["seq", dirs, "batch", HIDDEN]] + [[dirs, "batch", HIDDEN]] * 2)]
        weights.append((kind, attrs, [w[f"{n}{k}"] for n in "wrb"], len(names)))
    inputs = [helper.make_tensor_value_info("x", F, ["seq", "batch", FEATURES]),
              helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("h0", F, [2, "batch", HIDDEN])]
    return M.model(nodes, inputs, outputs, inits), weights


def numpy_layer(kind, attrs, w, r, b, x, lens, h0):
    """ONNX's outputs of one layer, per direction through the tests' numpy reference."""
    cell, g = kind.lower(), GATES[kind]
    defaults = DEFAULT_ACTIVATIONS[kind]
    mode = attrs["direction"]
    dirs = [False, True] if mode == "bidirectional" else [mode == "reverse"]
    acts = attrs.get("activations", defaults * len(dirs))
    seq, batch = x.shape[:2]
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        start = h0[d] if len(dirs) == 2 else np.zeros((batch, HIDDEN), np.float32)
        outs = [np.zeros((seq, batch, HIDDEN), np.float32), np.zeros((batch, HIDDEN), np.float32),
                np.zeros((batch, HIDDEN), np.float32)]
        REFERENCE_KERNELS["recurrent"](
            [x @ w[d].T, b[d, :g * HIDDEN], r[d].T, b[d, g * HIDDEN:], start,
             np.zeros((batch, HIDDEN), np.float32), lens], outs,
            {"cell": cell, "activations": acts[d * len(defaults):(d + 1) * len(defaults)],
             "reverse": reverse, "linear_before_reset": bool(attrs.get("linear_before_reset")),
             "clip": attrs.get("clip")})
        ys.append(outs[0][:, None])
        hs.append(outs[1][None])
        cs.append(outs[2][None])
    result = [np.concatenate(ys, 1), np.concatenate(hs, 0)]
    return result + [np.concatenate(cs, 0)] if kind == "LSTM" else result


CASES = [(5, [5, 0, 1]), (4, [2]), (1, [1]), (6, [3, 6, 4]), (3, [0]), (0, [0, 0]), (3, []),
         (0, [])]


@pytest.fixture(scope="module")
def compiled():
    m, weights = lengths_model()
    return m, weights, build(from_onnx(m))


def test_sequence_lens_at_run_time_match_ort_and_numpy(compiled):
    m, weights, exe = compiled
    native, python = both_tiers(exe, threads=1)
    two_threads = NativeVM(exe, threads=2)
    rng = np.random.default_rng(1)
    for seq, lens in CASES:
        batch = len(lens)
        x = rng.standard_normal((seq, batch, FEATURES)).astype(np.float32)
        h0 = rng.standard_normal((2, batch, HIDDEN)).astype(np.float32)
        lens = np.array(lens, np.int32)
        got = native.invoke("main", x, lens, h0)
        assert_same(got, python.invoke("main", x, lens, h0))
        assert_same(got, two_threads.invoke("main", x, lens, h0))
        want_np = [v for kind, attrs, (w, r, b), _ in weights
                   for v in numpy_layer(kind, attrs, w, r, b, x, lens, h0)]
        want_ort = M.ort_run(m, x, lens, h0) if batch else want_np   # ORT aborts on batch 0
        for g, n, o in zip(got, want_np, want_ort):
            np.testing.assert_allclose(g, n, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(g, o, rtol=1e-5, atol=1e-5)


def peephole_lstm(lens_input):
    rng = np.random.default_rng(2)
    inits = {k: v.astype(np.float32) for k, v in layer_weights(rng, "LSTM", 1).items()}
    inits["p"] = rng.standard_normal((1, 3 * HIDDEN)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", F, ["seq", 1, FEATURES])]
    if lens_input:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [1]))
    node = helper.make_node("LSTM", ["x", "w", "r", "b", "lens" if lens_input else "", "", "",
                                     "p"], ["y"], hidden_size=HIDDEN)
    return M.model([node], inputs, [helper.make_tensor_value_info("y", F, ["seq", 1, 1, HIDDEN])],
                   inits)


def test_a_peephole_lstm_runs_as_a_loop_and_says_so():
    with pytest.warns(PerformanceWarning, match="peepholes are not covered by the recurrent"):
        from_onnx(peephole_lstm(lens_input=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        with pytest.raises(UnsupportedOnnxError,
                           match="sequence_lens of a layer that runs as a loop must be a const"):
            from_onnx(peephole_lstm(lens_input=True))


def test_a_sequence_length_outside_the_sequence_is_a_typed_error(compiled):
    _, _, exe = compiled
    x = np.zeros((3, 2, FEATURES), np.float32)
    h0 = np.zeros((2, 2, HIDDEN), np.float32)
    for lens in ([4, 1], [-1, 1]):
        with pytest.raises(KernelError, match="invalid input value"):
            VirtualMachine(exe).invoke("main", x, np.array(lens, np.int32), h0)
