"""Control-flow models: LSTM and Tree-LSTM on dynvm vs numpy, PyTorch eager and ONNX
Runtime, batch 1, one table (not a test).

    python benchmarks/control_flow.py [--reps 20] [--seqs 8 32 128] [--nodes 10 100] [--tiny]

LSTM (input 128, hidden 256) at each sequence length and child-sum Tree-LSTM at each tree size,
all in the same run: the dynvm VM (one executable for every length / tree), a numpy float32
implementation with a Python loop (LSTM) or the model's numpy recursion (Tree-LSTM),
PyTorch eager (`nn.LSTMCell` in a Python loop, `nn.LSTM`, a Tree-LSTM recursion) and ONNX
Runtime on `nn.LSTM` exported with a dynamic sequence axis. PyTorch and ONNX Runtime are measured
twice: with 1 thread (dynvm's VM is single-threaded) and with their default threads (all cores);
each group is interleaved with its own VM measurement. A missing package is a skipped row.

The ratio column is baseline time / dynvm time (> 1: dynvm is faster). The LSTM's time loop runs
as one native loop kernel (CallLoop); the row "loop in bytecode" is the same program built with
native_loops=False, which measures the VM's interpreter. After the table: where the time of one
LSTM step goes, natively and in bytecode (per-step VM overhead from the profiler). `--tiny` runs
one small size of each with few repetitions (the test suite's smoke run).
"""
import argparse
import io
import warnings

import numpy as np

from dynvm.bench import harness, peers
from dynvm.bench.harness import cpu_lines, fmt_time, measure, na_row, optional_import, print_table, row
from dynvm.compiler import build
from dynvm.models import lstm as lstm_model
from dynvm.models import tree_lstm
from dynvm.vm import VirtualMachine

REPS = 20


# ---------------------------------------------------------------------------------------------
# peers


def numpy_lstm(w):
    """A float32 numpy LSTM with a Python loop over the steps (the textbook implementation)."""
    w_ih_t, w_hh_t, b = w["w_ih"].T.copy(), w["w_hh"].T.copy(), w["b"]
    hidden = w_hh_t.shape[0]

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    def run(x):
        h = np.zeros((1, hidden), np.float32)
        c = np.zeros((1, hidden), np.float32)
        for row_ in x:
            gates = row_ @ w_ih_t + h @ w_hh_t + b
            i, f, g, o = np.split(gates, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        return h
    return run


def torch_cell_loop(torch, w):
    cell = peers.torch_lstm_cell(torch, w)
    hidden = w["w_hh"].shape[1]

    def run(x):                           # x: (seq, 1, 128) torch tensor
        with torch.inference_mode():
            h = torch.zeros(1, hidden)
            c = torch.zeros(1, hidden)
            for t in range(x.shape[0]):
                h, c = cell(x[t], (h, c))
            return h
    return run


def torch_lstm(torch, w):
    lstm = peers.torch_lstm(torch, w)

    def run(x):
        with torch.inference_mode():
            return lstm(x)[1][0]
    return run


def exported_onnx_lstm(torch, w):
    """nn.LSTM exported by torch.onnx.export with a dynamic sequence axis (TorchScript exporter);
    if export fails, the same LSTM built as one ONNX node (dynvm.bench.peers.onnx_lstm_model)."""
    lstm = peers.torch_lstm(torch, w)
    h0 = torch.zeros(1, 1, w["w_hh"].shape[1])
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(lstm, (torch.zeros(8, 1, w["w_ih"].shape[1]), (h0, h0)), buf,
                              input_names=["x", "h0", "c0"], output_names=["y", "h", "c"],
                              dynamic_axes={"x": {0: "seq"}}, dynamo=False)
        import onnx
        return onnx.load_from_string(buf.getvalue()), "torch.onnx.export", {"h0": h0.numpy(), "c0": h0.numpy()}
    except Exception as e:  # noqa: BLE001
        return peers.onnx_lstm_model(w), f"onnx.helper (export failed: {type(e).__name__})", {}


def ort_session(model, threads):
    ort, _ = optional_import("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# benchmarks


def close(got, expected):
    return np.allclose(np.asarray(got).reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)


def bench_lstm(seqs):
    w = lstm_model.weights()
    vm = VirtualMachine(build(lstm_model.build_module(w)))
    bytecode_vm = VirtualMachine(build(lstm_model.build_module(w), native_loops=False))
    torch, torch_why = optional_import("torch")
    ort, ort_why = optional_import("onnxruntime")
    onnx_mod, onnx_why = optional_import("onnx")
    default_threads = torch.get_num_threads() if torch else None
    exported = exported_onnx_lstm(torch, w) if torch and ort and onnx_mod else None
    if not exported and ort and onnx_mod:
        exported = (peers.onnx_lstm_model(w), "onnx.helper (no torch)", {})
    rows, seconds_vm = [], {}
    np_loop = numpy_lstm(w)
    for seq in seqs:
        x = lstm_model.make_input(seq, seed=seq)
        expected = lstm_model.reference(x, w)
        assert close(vm.invoke("main", x), expected), "dynvm LSTM does not match numpy"
        assert close(bytecode_vm.invoke("main", x), expected), "bytecode LSTM does not match numpy"
        assert close(np_loop(x), expected), "numpy loop does not match the reference"
        name = f"LSTM 128->256 seq {seq}"
        for threads in (1, default_threads or 1):
            fns, labels = {"vm": lambda: vm.invoke("main", x)}, {}
            if threads == 1:
                fns["numpy"], labels["numpy"] = (lambda: np_loop(x)), "numpy float32 Python loop"
                fns["bytecode"] = lambda: bytecode_vm.invoke("main", x)
                labels["bytecode"] = "dynvm, loop in bytecode (native_loops=False)"
            if torch:
                torch.set_num_threads(threads)
                xt = torch.from_numpy(x)[:, None, :]
                cell, full = torch_cell_loop(torch, w), torch_lstm(torch, w)
                assert close(cell(xt).numpy(), expected) and close(full(xt).numpy(), expected)
                fns["cell"], labels["cell"] = (lambda: cell(xt)), f"torch LSTMCell loop, {threads} thr"
                fns["lstm"], labels["lstm"] = (lambda: full(xt)), f"torch nn.LSTM, {threads} thr"
            if exported:
                model, how, extra = exported
                sess = ort_session(model, threads)
                feed = {"x": x[:, None, :], **extra}
                out = sess.run(None, feed)
                assert close(out[1] if len(out) > 1 else out[0], expected), "ORT LSTM mismatch"
                fns["ort"] = lambda: sess.run(None, feed)
                labels["ort"] = f"ORT LSTM ({how}), {threads} thr"
            got = measure(fns, REPS)
            if threads == 1:
                seconds_vm[seq] = got["vm"]
            for key, label in labels.items():
                rows.append(row(name, seq, got["vm"], got[key], baseline=label))
            if threads == default_threads == 1:
                break
        if not torch:
            rows.append(na_row(name + " vs PyTorch", seq, torch_why))
        if not exported:
            rows.append(na_row(name + " vs ONNX Runtime", seq, ort_why or onnx_why))
    if torch:
        torch.set_num_threads(default_threads)
    return rows, seconds_vm


def bench_tree_lstm(sizes):
    w = tree_lstm.weights()
    vm = VirtualMachine(build(tree_lstm.build_module(w)))
    torch, torch_why = optional_import("torch")
    default_threads = torch.get_num_threads() if torch else None
    rows = []
    for nodes in sizes:
        py_tree = tree_lstm.random_tree(nodes, seed=nodes)
        adt = tree_lstm.to_adt(py_tree)
        expected = tree_lstm.reference(py_tree, w)[0]
        assert close(vm.invoke("main", adt), expected), "dynvm Tree-LSTM does not match numpy"
        name = f"Tree-LSTM 64->128 {nodes} nodes"
        for threads in (1, default_threads or 1):
            fns = {"vm": lambda: vm.invoke("main", adt)}
            labels = {}
            if threads == 1:
                fns["numpy"] = lambda: tree_lstm.reference(py_tree, w)
                labels["numpy"] = "numpy recursion (float64, the model's reference)"
            if torch:
                torch.set_num_threads(threads)
                rec, tt = peers.torch_tree_lstm(torch, w), peers.to_torch_tree(torch, py_tree)
                assert close(rec(tt).numpy(), expected)
                fns["torch"], labels["torch"] = (lambda: rec(tt)), f"torch eager recursion, {threads} thr"
            got = measure(fns, REPS)
            for key, label in labels.items():
                rows.append(row(name, nodes, got["vm"], got[key], baseline=label))
            if threads == default_threads == 1:
                break
        if not torch:
            rows.append(na_row(name + " vs PyTorch", nodes, torch_why))
    if torch:
        torch.set_num_threads(default_threads)
    return rows


# ---------------------------------------------------------------------------------------------
# where the time goes


def lstm_profile(seconds_vm, runs=20):
    """Where one LSTM step's time goes: the native loop's time per iteration and, for the same
    loop run as bytecode (native_loops=False), the VM overhead per step and the top kernels and
    opcodes of one step."""
    seq = max(seconds_vm)
    w = lstm_model.weights()
    x = lstm_model.make_input(seq, seed=seq)
    total_steps = runs * seq
    native = VirtualMachine(build(lstm_model.build_module(w)), profile=True)
    for _ in range(runs):
        native.invoke("main", x)
    p = native.profile()
    iterations = sum(p.loop_iterations.values())
    lines = [f"profile of LSTM seq {seq}, {runs} invocations ({total_steps} steps):",
             f"  native loop (CallLoop): {iterations / runs:.0f} iterations per invoke, "
             f"{p.loop_seconds / max(iterations, 1) * 1e6:.2f} us per step (kernel calls and state "
             f"copies, no VM work); the rest of the invoke: "
             f"{(sum(p.opcode_seconds.values()) - p.loop_seconds) / runs * 1e6:.1f} us"]
    if len(seconds_vm) >= 2:
        lo, hi = min(seconds_vm), max(seconds_vm)
        per_step = (seconds_vm[hi] - seconds_vm[lo]) / (hi - lo)
        fixed = seconds_vm[lo] - lo * per_step
        lines.append(f"  unprofiled time per step (slope seq {lo}->{hi}): {per_step * 1e6:.2f} us; "
                     f"fixed cost per invoke {fmt_time(fixed) if fixed > 0 else 'n/a (noise)'}")
    pvm = VirtualMachine(build(lstm_model.build_module(w), native_loops=False), profile=True)
    for _ in range(runs):
        pvm.invoke("main", x)
    p = pvm.profile()
    handler = sum(p.opcode_seconds.values())
    lines += ["  the same loop as bytecode (native_loops=False):",
              f"  instructions per step: {sum(p.opcodes.values()) / total_steps:.1f}; kernel calls "
              f"per step: {p.opcodes.get('CallKernel', 0) / total_steps:.1f}",
              f"  per step: native kernel time {p.kernel_seconds / total_steps * 1e6:.2f} us, VM "
              f"overhead (handlers minus kernels) {p.vm_seconds / total_steps * 1e6:.2f} us, "
              f"VM cost per CallKernel {p.kernel_instruction_overhead() * 1e6:.2f} us "
              "(profiled: includes the profiler's timer calls)",
              "  top kernels (share of handler time):"]
    for name, stats in sorted(p.kernel_stats().items(), key=lambda kv: -kv[1]["seconds"])[:6]:
        variants = ", ".join(stats["variants"])
        lines.append(f"    {name[:48]:48} {stats['calls'] / total_steps:6.2f}/step "
                     f"{stats['seconds'] / total_steps * 1e6:8.2f} us/step "
                     f"{100 * stats['seconds'] / handler:5.1f}%  [{variants[:40]}]")
    lines.append("  top opcodes (handler time incl. kernels):")
    for name, count in sorted(p.opcodes.items(), key=lambda kv: -p.opcode_seconds[kv[0]])[:8]:
        s = p.opcode_seconds[name]
        lines.append(f"    {name:24} {count / total_steps:6.2f}/step {s / total_steps * 1e6:8.2f} us/step "
                     f"{100 * s / handler:5.1f}%")
    return lines


def main(argv=None):
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions per number")
    parser.add_argument("--seqs", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--tiny", action="store_true",
                        help="one small size each, 2 repetitions (a smoke run)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.reps, args.seqs, args.nodes = 2, [3], [3]
    REPS = harness.REPS = args.reps
    for line in cpu_lines():
        print(line)
    torch, _ = optional_import("torch")
    if torch:
        print(f"PyTorch {torch.__version__}: measured with 1 thread and with its default "
              f"{torch.get_num_threads()} threads; ONNX Runtime likewise (1 / all cores)")
    rows, seconds_vm = bench_lstm(args.seqs)
    rows += bench_tree_lstm(args.nodes)
    print("ratio = baseline time / dynvm time (> 1: dynvm is faster)")
    print_table(rows)
    print()
    for line in lstm_profile(seconds_vm, runs=2 if args.tiny else 20):
        print(line)


if __name__ == "__main__":
    main()
