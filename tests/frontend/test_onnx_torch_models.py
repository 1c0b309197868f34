"""Models exported from PyTorch (LSTM + Linear, bidirectional GRU, a 2-layer transformer encoder
with a padding mask, a detection post-process, a greedy decoding Loop, a data-dependent If):
one executable per model, saved and reloaded, checked against ONNX Runtime at five input sizes.
Skipped without torch; tests/frontend/test_onnx_models.py has onnx.helper-built equivalents."""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from tests.frontend import onnx_models as M  # noqa: E402
from tests.frontend import torch_models as T  # noqa: E402

SIZES = (1, 2, 3, 7, 16)


@pytest.mark.parametrize("name", list(T.MODELS))
def test_exported_model_matches_onnxruntime_at_every_size(name, tmp_path):
    m, inputs = T.MODELS[name]()
    vm = M.compile_and_reload(m, tmp_path)
    for n in SIZES:
        args = inputs(n)
        got = vm.invoke("main", *args)
        got = list(got) if isinstance(got, tuple) else [got]
        want = M.ort_run(m, *args)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, (n, g.shape, w.shape)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"size {n}")


def test_the_written_out_encoder_is_nn_transformer_encoder():
    enc = T.Encoder().eval()
    x = torch.randn(1, 9, 32)
    padding = torch.zeros(1, 9, dtype=torch.bool)
    padding[0, 6:] = True
    with torch.no_grad():
        want = enc.reference(x, src_key_padding_mask=padding)
        got = enc(x, padding)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_the_exports_have_the_ops_they_are_meant_to_test():
    ops = {name: {n.op_type for n in T.MODELS[name]()[0].graph.node} for name in
           ("lstm_linear", "bidirectional_gru", "detection_postprocess", "greedy_decoder",
            "data_dependent_if")}
    assert "LSTM" in ops["lstm_linear"] and "GRU" in ops["bidirectional_gru"]
    assert {"NonZero", "NonMaxSuppression", "TopK", "Gather"} <= ops["detection_postprocess"]
    assert "Loop" in ops["greedy_decoder"] and "If" in ops["data_dependent_if"]
