"""Dynamic ops and the VM's memory system: NMS against ONNX Runtime and numpy, the two dynamic
examples across input sizes (latency, allocations, peak bytes), memory planning on/off, and
where the time of a small NMS invoke goes (not a test).

    python benchmarks/dynamic_ops.py [--reps 20] [--no-profile] [--tiny]

Times are medians of `reps` repetitions, each timing a batch of calls; the functions compared in
one table are interleaved batch by batch in the same run, and ratios are taken within the run.
Memory numbers come from `vm.memory_stats()` (peak_bytes_live: bytes in pooled blocks handed
out and not yet returned, the invocation's result included). `--tiny` runs two sizes of each
table with few repetitions (the test suite's smoke run).
"""
from __future__ import annotations

import argparse

import numpy as np

from dynvm.bench import harness
from dynvm.compiler import build, ir, op
from dynvm.models import arange_model, nms_postprocess
from dynvm.shape_funcs.vision import nms_select
from dynvm.vm import VirtualMachine

REPS = 20
NMS_ATTRS = {"max_output": 100, "iou_threshold": 0.5, "score_threshold": 0.05}


# ---------------------------------------------------------------------------------------------
# measuring


def measure(fns: dict, reps=None) -> dict:
    """{name: median seconds per call}, the functions interleaved one batch (~4 ms) each per
    repetition."""
    return harness.measure(fns, reps or REPS, budget=0.004)


def table(title, header, rows):
    print(f"\n## {title}\n")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def us(seconds):
    return "-" if seconds is None else f"{seconds * 1e6:.1f}"


def memory_of(vm, fn):
    """(new allocations, peak bytes live) of one call after `vm.reset_memory_stats()`."""
    vm.reset_memory_stats()
    fn()
    stats = vm.memory_stats()
    return stats["allocations"], stats["peak_bytes_live"]


# ---------------------------------------------------------------------------------------------
# (a) NMS: dynvm vs ONNX Runtime vs the numpy greedy reference


def nms_boxes(n, seed=0):
    """n random boxes [y1, x1, y2, x2] in a 300x300 image, clustered so NMS suppresses, and
    uniform scores in [0, 1)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 300, (max(n // 10, 1), 2))
    yx = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 8, (n, 2))
    hw = rng.uniform(10, 50, (n, 2))
    return np.hstack([yx, yx + hw]).astype(np.float32), rng.random(n).astype(np.float32)


def nms_vm(profile=False):
    boxes = ir.var("boxes", ir.TensorType((ir.Any(), 4), "float32"))
    scores = ir.var("scores", ir.TensorType((ir.Any(),), "float32"))
    out = op.non_max_suppression(boxes, scores, **NMS_ATTRS)
    return VirtualMachine(build(ir.IRModule.from_expr(ir.Function([boxes, scores], out))),
                          profile=profile)


def onnx_nms_session():
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    consts = [helper.make_tensor("max_out", TensorProto.INT64, [1], [NMS_ATTRS["max_output"]]),
              helper.make_tensor("iou", TensorProto.FLOAT, [1], [NMS_ATTRS["iou_threshold"]]),
              helper.make_tensor("score", TensorProto.FLOAT, [1], [NMS_ATTRS["score_threshold"]])]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"],
                            ["selected"], center_point_box=0)
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, None])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx.Serializer.serialize(model) if hasattr(onnx, "Serializer")
                                else model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def bench_nms(sizes=(1000, 5000)):
    vm, session = nms_vm(), onnx_nms_session()
    rows = []
    for n in sizes:
        boxes, scores = nms_boxes(n, seed=n)
        ours = vm.invoke("main", boxes, scores)
        ref = nms_select(boxes, scores, NMS_ATTRS)
        fns = {"dynvm": lambda: vm.invoke("main", boxes, scores),
               "numpy": lambda: nms_select(boxes, scores, NMS_ATTRS)}
        agree = [np.array_equal(ours, ref)]
        if session is not None:
            feeds = {"boxes": boxes[None], "scores": scores[None, None]}
            agree.append(np.array_equal(ours, session.run(None, feeds)[0][:, 2]))
            fns["onnxruntime"] = lambda: session.run(None, feeds)
        t = measure(fns, reps=max(REPS, 20) if n == 1000 else REPS)
        ort_s = t.get("onnxruntime")
        rows.append([n, len(ours), us(t["dynvm"]), us(ort_s) if session else "skipped",
                     f"{ort_s / t['dynvm']:.2f}" if ort_s else "-", us(t["numpy"]),
                     f"{t['numpy'] / t['dynvm']:.0f}", "ok" if all(agree) else "MISMATCH"])
    table("(a) NMS, simple form (iou 0.5, score > 0.05, max 100): vm.invoke vs session.run vs "
          "numpy greedy", ["boxes", "kept", "dynvm µs", "ORT µs", "ORT/dynvm", "numpy µs",
                           "numpy/dynvm", "results"], rows)


def nms_profile():
    """Where the time of a small NMS invoke goes: the VM's own profiler over many calls."""
    vm = nms_vm(profile=True)
    boxes, scores = nms_boxes(1000, seed=1000)
    for _ in range(2000):
        vm.invoke("main", boxes, scores)
    print("\n## Profile of 2000 NMS invokes on 1000 boxes (VirtualMachine(exe, profile=True))\n")
    print(vm.profile())


# ---------------------------------------------------------------------------------------------
# (b) the examples at 10 input sizes


EXAMPLES = {
    "nms_postprocess": (nms_postprocess, lambda m, n: m.make_input(n, seed=n),
                        [0, 1, 10, 50, 100, 500, 1000, 2000, 5000, 10000]),
    "arange_model": (arange_model, lambda m, n: m.make_input(n), [0, 1, 7, 16, 64, 100, 128, 256, 500, 512]),
}


def bench_examples(tiny=False):
    for name, (module, make, sizes) in EXAMPLES.items():
        sizes = sizes[:3] if tiny else sizes
        exe = build(module.build_module())
        vm = VirtualMachine(exe)
        rows = []
        for n in sizes:
            x = make(module, n)
            t = measure({"dynvm": lambda: vm.invoke("main", x)}, reps=max(5, REPS // 2))["dynvm"]
            allocs_warm, peak = memory_of(vm, lambda: vm.invoke("main", x))
            cold = VirtualMachine(exe)
            allocs_cold, _ = memory_of(cold, lambda: cold.invoke("main", x))
            rows.append([n, us(t), allocs_cold, allocs_warm, peak])
        # steady state: one fixed shape, many calls, count new blocks per call
        x = make(module, sizes[-2])
        for _ in range(5):
            vm.invoke("main", x)
        vm.reset_memory_stats()
        calls = 5 if tiny else 200
        for _ in range(calls):
            vm.invoke("main", x)
        stats = vm.memory_stats()
        table(f"(b) dynvm.models.{name}: one VM over {len(sizes)} sizes (size = anchors / sequence length)",
              ["size", "latency µs", "allocs (fresh VM)", "allocs (warm VM)", "peak bytes"], rows)
        print(f"\nafter warm-up at size {sizes[-2]}: {stats['allocations'] / calls:.2f} new "
              f"allocations per call over {calls} calls ({stats['pool_hits'] / calls:.1f} pool "
              f"hits per call)")


# ---------------------------------------------------------------------------------------------
# (c) memory planning on / off


def static_chain_module(n_ops=12, rows=256, cols=64):
    """A chain of 12 static ops (no fusion, so each is its own kernel and tensor)."""
    x = ir.var("x", ir.TensorType((rows, cols), "float32"))
    y = x
    for i in range(n_ops):
        y = op.tanh(op.add(y, x)) if i % 2 else op.multiply(op.exp(y), x)
    return ir.IRModule.from_expr(ir.Function([x], y))


def leased_bytes(vm, fn):
    """Bytes of every block one call leases (size classes): the peak if no block were ever
    reused or freed before the call returns (Relay-style: every tensor its own allocation
    until function exit)."""
    pool, total = vm._pool, [0]
    lease = pool.lease

    def counting(cls, *args):
        total[0] += cls
        return lease(cls, *args)

    pool.lease = counting
    try:
        fn()
    finally:
        del pool.lease
    return total[0]


def bench_planning():
    """Peak bytes live with memory planning on vs off. Planning is the
    liveness analysis (KillRegister, a block reused once its tensors are dead) plus the arena
    that coalesces static allocations; with it off every tensor has its own block until the
    invocation returns (Relay's VM before its memory planner), which `leased_bytes` measures
    exactly. The pooled VM without the arena pass is shown too: its dynamic reuse of dead
    blocks reaches the same peak, but costs a lease per tensor (the time columns)."""
    cases = []
    for name, (module, make, sizes) in EXAMPLES.items():
        cases.append((f"{name} (size {sizes[-2]})", module.build_module(), make(module, sizes[-2]), True))
    chain_input = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32) * 0.1
    cases.append(("chain of 24 static ops, fused", static_chain_module(), chain_input, True))
    cases.append(("chain of 24 static ops, unfused", static_chain_module(), chain_input, False))
    rows = []
    for name, mod, x, fuse in cases:
        peaks, outs, times = [], [], {}
        for plan in (True, False):
            # the Python tier: leased_bytes counts its pool's leases
            vm = VirtualMachine(build(mod, fuse=fuse, memory_plan=plan), tier="python")
            vm.invoke("main", x)
            _, peak = memory_of(vm, lambda: vm.invoke("main", x))
            peaks.append(peak)
            if not plan:
                no_reuse = leased_bytes(vm, lambda: vm.invoke("main", x))
            outs.append(vm.invoke("main", x))
            times["on" if plan else "off"] = (lambda v: lambda: v.invoke("main", x))(vm)
        t = measure(times, reps=max(5, REPS // 2))
        same = np.array_equal(outs[0], outs[1])
        rows.append([name, peaks[0], no_reuse, f"{100 * (1 - peaks[0] / no_reuse):.0f}%",
                     peaks[1], f"{100 * (1 - peaks[0] / peaks[1]):.0f}%",
                     us(t["on"]), us(t["off"]), "ok" if same else "MISMATCH"])
    table("(c) memory planning on/off: peak bytes live per invoke. 'off' = no planning, every "
          "tensor its own block until return; 'pooled VM, no arena' = build(mod, memory_plan="
          "False) on the pooled VM (dead blocks recycled at run time, one lease per tensor)",
          ["program", "peak on", "off", "lower by", "pooled VM, no arena", "lower by",
           "µs on", "µs no arena"], [r[:-1] for r in rows])
    print("results on == off: " + ", ".join(r[-1] for r in rows))
    chain = rows[-1]
    lower = 1 - chain[1] / chain[2]
    print(f"target (>= 30% lower peak with planning on a chain of >= 10 ops): "
          f"{'met' if lower >= 0.3 else 'MISSED'} ({chain[0]}: {100 * lower:.0f}% lower)")


def main(argv=None):
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions per number (>= 5)")
    parser.add_argument("--no-profile", action="store_true", help="skip the NMS profile")
    parser.add_argument("--tiny", action="store_true",
                        help="two sizes per table, 2 repetitions, no profile (a smoke run)")
    args = parser.parse_args(argv)
    REPS = 2 if args.tiny else max(5, args.reps)
    bench_nms((50, 200) if args.tiny else (1000, 5000))
    bench_examples(args.tiny)
    bench_planning()
    if not (args.no_profile or args.tiny):
        nms_profile()


if __name__ == "__main__":
    main()
