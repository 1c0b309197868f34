"""Whole ONNX models through from_onnx -> build -> save -> load -> run, against ONNX Runtime
at several input sizes (one executable per model)."""
import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dynvm.compiler import ir  # noqa: E402
from dynvm.frontend.onnx import from_onnx  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402


def outputs(result):
    return list(result) if isinstance(result, tuple) else [result]


def check(vm, m, *inputs):
    got = outputs(vm.invoke("main", *inputs))
    want = M.ort_run(m, *inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_mlp_with_a_dynamic_batch_matches_onnxruntime(tmp_path):
    m = M.mlp()
    mod = from_onnx(m)
    assert mod["main"].params[0].type_annotation == ir.TensorType((ir.Any(), 8), "float32")
    vm = M.compile_and_reload(m, tmp_path)
    rng = np.random.default_rng(1)
    for batch in (1, 2, 5, 17, 64):
        check(vm, m, rng.standard_normal((batch, 8)).astype(np.float32))


def test_shapes_pins_a_symbolic_dim():
    mod = from_onnx(M.mlp(), shapes={"x": (3, 8)})
    assert mod["main"].params[0].type_annotation == ir.TensorType((3, 8), "float32")


def test_shape_gather_reshape_computes_the_shape_at_run_time(tmp_path):
    m = M.shape_gather_reshape()
    vm = M.compile_and_reload(m, tmp_path)
    for n, k in ((1, 1), (2, 3), (5, 7), (3, 0), (8, 2)):
        check(vm, m, np.arange(n * k * 4, dtype=np.float32).reshape(n, k, 4))


def test_loop_grows_a_tensor_by_concat_and_collects_scan_outputs(tmp_path):
    m = M.growing_loop()
    vm = M.compile_and_reload(m, tmp_path)
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    for n in (0, 1, 2, 5, 9):
        check(vm, m, np.array(n, np.int64), x)
        acc, totals = vm.invoke("main", np.array(n, np.int64), x)
        assert acc.shape == (n + 1, 3) and totals.shape == (n,)


def test_if_on_a_data_dependent_condition_with_differently_shaped_branches(tmp_path):
    m = M.data_dependent_if()
    vm = M.compile_and_reload(m, tmp_path)
    for x in ([[1, 2], [3, 4]], [[-1, -2], [3, -4], [0, 0]], [[5, 5]], [[-9, 1]] * 4,
              [[0.5, -0.25]] * 6):
        check(vm, m, np.array(x, np.float32))


def test_bidirectional_lstm_over_a_dynamic_sequence_then_linear(tmp_path):
    m = M.lstm_linear()
    vm = M.compile_and_reload(m, tmp_path)
    rng = np.random.default_rng(2)
    for seq in (1, 2, 5, 11, 30):
        check(vm, m, rng.standard_normal((seq, 1, 4)).astype(np.float32))


def test_bidirectional_gru_with_an_initial_state(tmp_path):
    m = M.bidirectional_gru()
    vm = M.compile_and_reload(m, tmp_path)
    rng = np.random.default_rng(3)
    for seq in (1, 2, 4, 9, 20):
        check(vm, m, rng.standard_normal((seq, 1, 3)).astype(np.float32),
              rng.standard_normal((2, 1, 6)).astype(np.float32))


def test_attention_with_a_key_padding_mask(tmp_path):
    m = M.masked_attention()
    vm = M.compile_and_reload(m, tmp_path)
    rng = np.random.default_rng(4)
    for seq in (1, 2, 3, 8, 13):
        padding = np.arange(seq) >= seq - seq // 3
        check(vm, m, rng.standard_normal((seq, 8)).astype(np.float32), padding)


def test_detection_postprocess_filters_suppresses_and_takes_the_top_boxes(tmp_path):
    m = M.detection_postprocess()
    vm = M.compile_and_reload(m, tmp_path)
    rng = np.random.default_rng(5)
    for n in (0, 1, 3, 8, 30):
        check(vm, m, M.random_boxes(rng, n), rng.uniform(0, 1, n).astype(np.float32))
