"""Real models exported from PyTorch (`torch.onnx.export`, the TorchScript exporter, with dynamic
axes): the forms dynamic models take. Each builder returns (onnx.ModelProto, inputs(size)): the
model and a function giving its inputs at one input size. Import needs torch."""
import io
import warnings

import numpy as np
import onnx
import torch

OPSET = 17


def export(module, args, input_names, output_names, dynamic_axes, script=False):
    """The ONNX model of `module` (eval mode, fixed seed weights); `script` exports it via
    torch.jit.script so Python control flow becomes Loop / If."""
    module = module.eval()
    if script:
        module = torch.jit.script(module)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes)
    return onnx.load_from_string(f.getvalue())


def rng(seed):
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# --- nn.LSTM + Linear over a dynamic sequence ------------------------------------------------


class LstmLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.linear = torch.nn.LSTM(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.linear(y)


def lstm_linear():
    r = rng(0)
    m = export(LstmLinear(), (torch.randn(5, 1, 8),), ["x"], ["y"],
               {"x": {0: "seq"}, "y": {0: "seq"}})
    return m, lambda n: [r.standard_normal((n, 1, 8)).astype(np.float32)]


# --- nn.GRU, bidirectional --------------------------------------------------------------------


class BiGru(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(6, 10, bidirectional=True)

    def forward(self, x):
        y, h = self.gru(x)
        return y, h


def bidirectional_gru():
    r = rng(1)
    m = export(BiGru(), (torch.randn(5, 1, 6),), ["x"], ["y", "h"],
               {"x": {0: "seq"}, "y": {0: "seq"}})
    return m, lambda n: [r.standard_normal((n, 1, 6)).astype(np.float32)]


# --- a 2-layer TransformerEncoder with a padding mask -----------------------------------------


class Encoder(torch.nn.Module):
    """nn.TransformerEncoder(2 layers, post-norm, ReLU) with its attention written out: traced
    nn.MultiheadAttention bakes the export-time sequence length into a Reshape (ONNX Runtime
    rejects the exported file at any other length). The weights are the nn module's, so
    `reference` checks the rewrite against it."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.reference = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x, padding):
        for layer in self.reference.layers:
            x = layer.norm1(x + attention(layer.self_attn, x, padding))
            x = layer.norm2(x + layer.linear2(torch.relu(layer.linear1(x))))
        return x


def attention(mha, x, padding):
    """nn.MultiheadAttention(x, x, x, key_padding_mask=padding)[0] for batch_first x."""
    heads, width = mha.num_heads, x.shape[-1] // mha.num_heads
    q, k, v = torch.nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
    q, k, v = (t.reshape(t.shape[0], -1, heads, width).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) / width ** 0.5
    scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], -1, heads * width)
    return mha.out_proj(mixed)


def transformer_encoder():
    r = rng(2)
    x, pad = torch.randn(1, 7, 32), torch.zeros(1, 7, dtype=torch.bool)
    pad[0, -2:] = True
    m = export(Encoder(), (x, pad), ["x", "padding"], ["y"],
               {"x": {1: "seq"}, "padding": {1: "seq"}, "y": {1: "seq"}})

    def inputs(n):
        padding = np.zeros((1, n), bool)
        padding[0, n - n // 3:] = True            # the last third is padding (none when n < 3)
        return [r.standard_normal((1, n, 32)).astype(np.float32), padding]
    return m, inputs


# --- detection post-process: score filter, NMS, top-k, gather ---------------------------------


class Nms(torch.autograd.Function):
    """torchvision-free NonMaxSuppression: exported as the ONNX op by its symbolic."""

    @staticmethod
    def forward(ctx, boxes, scores, max_out, iou, score_threshold):
        return torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_out, iou, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, score_threshold)


class PostProcess(torch.nn.Module):
    """boxes (n, 4), scores (n,) -> the boxes and scores of the (at most 10) best boxes NMS keeps
    among those scoring over 0.3."""

    def forward(self, boxes, scores):
        keep = torch.nonzero(scores > 0.3).squeeze(1)
        boxes, scores = boxes[keep], scores[keep]
        selected = Nms.apply(boxes.unsqueeze(0), scores.view(1, 1, -1),
                             torch.tensor([100]), torch.tensor([0.5]), torch.tensor([0.0]))
        index = selected[:, 2]
        kept = scores[index]
        k = torch.clamp(torch.tensor(10), max=kept.shape[0])
        top, order = torch.topk(kept, k)
        return boxes[index[order]], top


def detection_postprocess():
    r = rng(3)
    boxes = torch.rand(6, 4)
    m = export(PostProcess(), (boxes, torch.rand(6)), ["boxes", "scores"], ["kept", "top"],
               {"boxes": {0: "n"}, "scores": {0: "n"}, "kept": {0: "k"}, "top": {0: "k"}})

    def inputs(n):
        corner = r.uniform(0, 20, (n, 2))
        size = r.uniform(1, 6, (n, 2))
        return [np.concatenate([corner, corner + size], 1).astype(np.float32),
                r.uniform(0, 1, n).astype(np.float32)]
    return m, inputs


# --- greedy decoding: a Loop appending its token each step ------------------------------------


class GreedyDecoder(torch.nn.Module):
    """From a start token, `steps` times: embed the last token, one recurrent step, argmax of
    the vocabulary logits; returns every token so far (grown by one per step)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 12)
        self.input, self.state = torch.nn.Linear(12, 12), torch.nn.Linear(12, 12)
        self.out = torch.nn.Linear(12, 20)

    def forward(self, h, steps: int):
        tokens = torch.zeros(1, dtype=torch.int64)
        for _ in range(steps):
            h = torch.tanh(self.input(self.embed(tokens[-1:])) + self.state(h))
            tokens = torch.cat([tokens, self.out(h).argmax(1)])
        return tokens, h


def greedy_decoder():
    r = rng(4)
    m = export(GreedyDecoder(), (torch.randn(1, 12), 5), ["h", "steps"], ["tokens", "h_out"],
               {}, script=True)
    return m, lambda n: [r.standard_normal((1, 12)).astype(np.float32), np.array(n, np.int64)]


# --- If on a data-dependent condition ---------------------------------------------------------


class Branch(torch.nn.Module):
    """Rows summing above zero: a linear map of x; otherwise the first row, negated."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)

    def forward(self, x):
        if bool(x.sum() > 0):
            return torch.relu(self.linear(x))
        return -x[:1]


def data_dependent_if():
    r = rng(5)
    m = export(Branch(), (torch.randn(4, 6),), ["x"], ["y"], {"x": {0: "n"}, "y": {0: "m"}},
               script=True)
    return m, lambda n: [(r.standard_normal((n, 6)) + (0.5 if n % 2 else -0.5)).astype(np.float32)]


MODELS = {"lstm_linear": lstm_linear, "bidirectional_gru": bidirectional_gru,
          "transformer_encoder": transformer_encoder,
          "detection_postprocess": detection_postprocess, "greedy_decoder": greedy_decoder,
          "data_dependent_if": data_dependent_if}
