"""BERT-small's kernels other than dense, one by one, against ONNX Runtime running a one-node
model of the same op on the same shape (not a test).

    python benchmarks/kernel_bert_ops.py [--seqs 16 128 256] [--threads 1 2] [--reps 21] [--tiny]

The ops and shapes are those of dynvm.models.bert_varlen's SMALL config (4 heads of 64, FFN 1024)
at sequence length S: softmax over (4, S, S); the tanh-GELU expression the model fuses into one
elementwise kernel, on (S, 1024); layer_norm over (S, 256); the head transposes (S, 4, 64) ->
(4, S, 64) and -> (4, 64, S) and back from (4, S, 64); batch_matmul (4, S, 64) x (4, S, 64)^T
times 1/8 (the scores) and (4, S, S) x (4, 64, S)^T (the context). dynvm's kernel is called
directly (kernels/abi.py: no VM around it); ONNX Runtime through `run_with_iobinding` on
preallocated arrays, so its fixed cost per run is small but not zero: the "ORT empty run" row
(one Identity of 4 floats) measures it. Each runtime's output is checked against numpy first.

Every number is the median over the repetitions of the wall time per call, each repetition
timing a batch of calls (about 0.5 ms) of each contender in turn: dynvm and ONNX Runtime at
every thread count are interleaved, so machine noise hits them alike. Columns: the time per
call at each thread count, the ratio dynvm/ORT (< 1: dynvm is faster) and dynvm's speedup from
1 thread to the most. The load average is printed before and after: on a machine busier than
its cores a second thread cannot help either runtime. Needs onnx and onnxruntime.
"""
import argparse
import os
import time

import numpy as np

from dynvm.kernels import abi, load_kernels, pool
from dynvm.kernels.builder import KernelBuilder
from dynvm.models import bert_varlen

HEADS, HEAD, HIDDEN, FFN = (bert_varlen.SMALL.heads, bert_varlen.SMALL.head,
                            bert_varlen.SMALL.hidden, bert_varlen.SMALL.ffn)
C = bert_varlen.GELU_C
SCALE = float(np.float32(1 / np.sqrt(HEAD)))


def _gelu_expr():
    """The expression the model's gelu() fuses into (as the compiler writes it)."""
    def k(v):
        return ["const", float(np.float32(v)), "float32"]
    x = ["in", 0]
    cube = ["multiply", x, ["multiply", x, x]]
    inner = ["multiply", k(C), ["add", x, ["multiply", k(0.044715), cube]]]
    return ["multiply", ["multiply", k(0.5), x], ["add", k(1.0), ["tanh", inner]]]


def _gelu_np(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(C * (x + 0.044715 * x ** 3)))


def _layer_norm_np(x, g, b):
    x = x.astype(np.float64)
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b


def _softmax_np(x):
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Case:
    """One op at one size: dynvm's kernel (family, spec, signature), its inputs, numpy's result,
    and the ONNX nodes of the same op (`onnx(g, names) -> output name`)."""

    def __init__(self, name, family, spec, inputs, out_shape, reference, onnx, ort_inputs=None):
        self.name, self.family, self.spec = name, family, spec
        self.inputs, self.out_shape, self.reference, self.onnx = inputs, out_shape, reference, onnx
        self.ort_inputs = inputs if ort_inputs is None else ort_inputs

    @property
    def signature(self):
        return [("float32", a.ndim) for a in self.inputs], ("float32", len(self.out_shape))


def cases(seq, rng):
    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    scores, ffn, hid = f32(HEADS, seq, seq) * 3, f32(seq, FFN) * 2, f32(seq, HIDDEN)
    gamma, beta = 1 + 0.1 * f32(HIDDEN), 0.02 * f32(HIDDEN)
    heads_in, per_head = f32(seq, HEADS, HEAD), f32(HEADS, seq, HEAD)
    q, k, p, v_t = f32(HEADS, seq, HEAD), f32(HEADS, seq, HEAD), f32(HEADS, seq, seq), \
        f32(HEADS, HEAD, seq)
    scale = np.float32(SCALE)
    return [
        Case("softmax", "softmax", {"op": "softmax", "axis": -1}, [scores], scores.shape,
             _softmax_np(scores), lambda g, n: g.op("Softmax", n[0], axis=-1)),
        Case("gelu (tanh)", "elementwise", {"expr": _gelu_expr()}, [ffn], ffn.shape,
             _gelu_np(ffn), _onnx_gelu),
        Case("layer_norm", "layer_norm", {"op": "layer_norm", "axis": -1, "epsilon": 1e-5},
             [hid, gamma, beta], hid.shape, _layer_norm_np(hid, gamma, beta),
             lambda g, n: g.op("LayerNormalization", n[0], g.const(gamma), g.const(beta),
                               axis=-1, epsilon=1e-5), [hid]),
        Case("transpose 102 heads", "transpose", {"op": "transpose", "axes": [1, 0, 2]},
             [heads_in], (HEADS, seq, HEAD), heads_in.transpose(1, 0, 2),
             lambda g, n: g.op("Transpose", n[0], perm=[1, 0, 2])),
        Case("transpose 120 heads", "transpose", {"op": "transpose", "axes": [1, 2, 0]},
             [heads_in], (HEADS, HEAD, seq), heads_in.transpose(1, 2, 0),
             lambda g, n: g.op("Transpose", n[0], perm=[1, 2, 0])),
        Case("transpose 102 merge", "transpose", {"op": "transpose", "axes": [1, 0, 2]},
             [per_head], (seq, HEADS, HEAD), per_head.transpose(1, 0, 2),
             lambda g, n: g.op("Transpose", n[0], perm=[1, 0, 2])),
        Case("batch_matmul q k^T /8", "matmul",
             {"op": "batch_matmul", "transpose_a": False, "transpose_b": True,
              "epilogue": ["multiply", ["in", 0], ["const", SCALE, "float32"]]},
             [q, k], (HEADS, seq, seq), (q.astype(np.float64) @ k.transpose(0, 2, 1)) * scale,
             lambda g, n: g.op("Mul", g.op("MatMul", n[0], n[1]), g.const(scale)),
             [q, np.ascontiguousarray(k.transpose(0, 2, 1))]),
        Case("batch_matmul p v", "matmul",
             {"op": "batch_matmul", "transpose_a": False, "transpose_b": True},
             [p, v_t], (HEADS, seq, HEAD), p.astype(np.float64) @ v_t.transpose(0, 2, 1),
             lambda g, n: g.op("MatMul", n[0], n[1]),
             [p, np.ascontiguousarray(v_t.transpose(0, 2, 1))]),
    ]


def _onnx_gelu(g, n):
    """The tanh-GELU as peers.onnx_bert_model writes it (ONNX Runtime runs these nodes)."""
    h = n[0]
    cube = g.op("Mul", h, g.op("Mul", h, h))
    poly = g.op("Add", h, g.op("Mul", g.const(np.float32(0.044715)), cube))
    inner = g.op("Mul", g.const(np.float32(C)), poly)
    return g.op("Mul", g.op("Mul", g.const(np.float32(0.5)), h),
                g.op("Add", g.const(np.float32(1.0)), g.op("Tanh", inner)))


# ---------------------------------------------------------------------------------------------
# the two runtimes


def build_kernels(all_cases):
    kb = KernelBuilder()
    index = {}
    for case in all_cases:
        ins, out = case.signature
        index[id(case)] = kb.add_compiled(case.name, case.family, case.spec, ins, [out])
    loaded = load_kernels(kb.finish())
    return {key: loaded[i] for key, i in index.items()}


def dynvm_call(kernel, case, threads):
    """A no-argument call of the kernel on the case's arrays at `threads` kernel threads, and
    the output array."""
    out = np.empty(case.out_shape, np.float32)
    arrays = case.inputs + [out]
    tensors, keep = abi.pack(arrays, [abi.dtype_code("float32")] * len(arrays))
    entry = abi.kernel_function(kernel.address)

    def call():
        pool.use_threads(threads)
        status = entry(tensors, len(arrays))
        if status != 0:
            raise RuntimeError(f"{case.name}: kernel status {status}")
    call.keep = keep
    return call, out


def ort_call(case, threads):
    """The case's nodes as a model whose last node writes "out", in a session at `threads`."""
    from dynvm.bench.peers import OnnxGraph
    g = OnnxGraph()
    h, tp = g.helper, g.onnx.TensorProto
    names = [f"in{i}" for i in range(len(case.ort_inputs))]
    case.onnx(g, names)
    g.nodes[-1].output[0] = "out"
    ins = [h.make_tensor_value_info(n, tp.FLOAT, list(a.shape))
           for n, a in zip(names, case.ort_inputs)]
    graph = h.make_graph(g.nodes, case.name, ins, [h.make_tensor_value_info("out", tp.FLOAT, None)],
                         g.inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return ort_session_call(model, dict(zip(names, case.ort_inputs)), case.out_shape, threads)


def ort_session_call(model, feeds, out_shape, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = np.empty(out_shape, np.float32)
    binding = sess.io_binding()
    for name, a in feeds.items():
        binding.bind_cpu_input(name, a)
    binding.bind_ortvalue_output("out", ort.OrtValue.ortvalue_from_numpy(out))

    def call():
        sess.run_with_iobinding(binding)
    call.keep = (sess, binding, feeds)
    return call, out


def ort_empty(threads):
    """ONNX Runtime's fixed cost of one run: an Identity of 4 floats."""
    from dynvm.bench.peers import OnnxGraph
    g = OnnxGraph()
    h, tp = g.helper, g.onnx.TensorProto
    g.nodes.append(h.make_node("Identity", ["in0"], ["out"]))
    graph = h.make_graph(g.nodes, "empty", [h.make_tensor_value_info("in0", tp.FLOAT, [4])],
                         [h.make_tensor_value_info("out", tp.FLOAT, [4])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return ort_session_call(model, {"in0": np.ones(4, np.float32)}, (4,), threads)[0]


# ---------------------------------------------------------------------------------------------
# timing


def batch(call, budget=5e-4):
    t = time.perf_counter()
    call()
    return max(1, int(budget / max(time.perf_counter() - t, 1e-7)))


def interleaved(calls, reps):
    """Median seconds per call of each call, timed in turn rep by rep (batches of ~0.5 ms)."""
    counts = [batch(c) for c in calls]
    times = [[] for _ in calls]
    for _ in range(reps):
        for call, count, spent in zip(calls, counts, times):
            t = time.perf_counter()
            for _ in range(count):
                call()
            spent.append((time.perf_counter() - t) / count)
    return [float(np.median(s)) for s in times]


def checked(name, runtime, got, want):
    err = float(np.max(np.abs(got - want) / (1 + np.abs(want)))) if want.size else 0.0
    if not err < 1e-4:
        print(f"MISMATCH {name} {runtime}: max relative error {err:.2e}")
        return False
    return True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seqs", type=int, nargs="+", default=[16, 128, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--only", nargs="+", help="cases whose name starts with one of these")
    p.add_argument("--tiny", action="store_true",
                   help="seq 16, 3 repetitions, one thread, no batch_matmul (a smoke run: its "
                        "two GEMM kernels take 3 s to compile cold)")
    args = p.parse_args()
    if args.tiny:
        args.seqs, args.reps, args.threads = [16], 3, [1]
        args.only = args.only or ["softmax", "gelu", "layer_norm", "transpose"]
    rng = np.random.default_rng(0)
    per_seq = {seq: [c for c in cases(seq, rng)
                     if not args.only or any(c.name.startswith(o) for o in args.only)]
               for seq in args.seqs}
    kernels = build_kernels([c for cs in per_seq.values() for c in cs])
    ts = args.threads
    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); wall time per call, "
          f"median of {args.reps}; ratio = dynvm/ORT")
    empty = interleaved([ort_empty(t) for t in ts], args.reps)
    print("ORT empty run: " + ", ".join(f"{e * 1e6:.1f} us at {t}T" for e, t in zip(empty, ts)))
    head = "".join(f"{f'dynvm {t}T':>11}{f'ORT {t}T':>10}{'ratio':>7}" for t in ts)
    print(f"{'seq':>4} {'op':<22}{head}{f'dynvm {ts[0]}T/{ts[-1]}T':>15}")
    for seq, cs in per_seq.items():
        for case in cs:
            calls = []
            ok = True
            for t in ts:
                mine, mine_out = dynvm_call(kernels[id(case)], case, t)
                theirs, their_out = ort_call(case, t)
                mine(), theirs()
                ok &= checked(case.name, f"dynvm {t}T", mine_out, case.reference)
                ok &= checked(case.name, f"ORT {t}T", their_out, case.reference)
                calls += [mine, theirs]
            if not ok:
                continue
            times = interleaved(calls, args.reps)
            cols = "".join(f"{times[2 * i] * 1e6:9.1f}us{times[2 * i + 1] * 1e6:8.1f}us"
                           f"{times[2 * i] / times[2 * i + 1]:7.2f}" for i in range(len(ts)))
            print(f"{seq:>4} {case.name:<22}{cols}{times[0] / times[-2]:15.2f}")
    pool.use_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
