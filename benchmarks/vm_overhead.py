"""The VM's own cost: the one-op invoke floor next to other runtimes, the cost per bytecode
instruction and per loop iteration, for every dynvm execution tier (not a test).

    python benchmarks/vm_overhead.py [--reps 20] [--chain 1000] [--iterations 100000] [--tiny]

1. One-op floor: `add(x, y)` of two 1-element float32 tensors, declared with static dims (1,)
   and with an Any dim (?,): dynvm's `invoke` next to numpy (`np.add`), PyTorch eager
   (`torch.add`), ONNX Runtime (`session.run`, and `run_with_iobinding` over bound OrtValues)
   and the TVM Relax VM (apache-tvm, an optional peer), everything 1 thread, interleaved.
2. Cost per instruction: an unfused chain of `--chain` one-element adds (`build(fuse=False)`:
   one CallKernel per op). VM cost = (invoke time - kernel time) / instructions, with the kernel
   time taken two ways: the profiler's time inside the kernel calls (a Python-to-native call
   each; a profiling VM runs the python tier), and a `StaticRuntime` run of the same kernels (a
   flat list of prepared calls). Both include a Python-to-native transition per kernel, which a
   tier calling kernels from native code does not pay: for it they give a lower bound, and
   invoke time / instructions ("all-in") an upper bound.
3. Cost per loop iteration: `loop(n, acc) = n < 1 ? acc : loop(n - 1, acc + n)` for
   `--iterations` iterations, as bytecode (`native_loops=False`: a backward Goto per iteration)
   and as the native loop kernel (CallLoop); time per iteration, and for bytecode the VM's part
   (minus the profiled kernel time) and instructions per iteration.

Every number is a median of interleaved repetitions (dynvm.bench.harness.measure); each result
is checked against numpy first. The load average is printed: the machine may be shared. The
dynvm tiers are `TIERS` below (name -> VirtualMachine keyword arguments); every section has a
column or row per tier. `--tiny` runs small sizes with few repetitions (the suite's smoke run).
"""
import argparse

import numpy as np

from dynvm.bench import harness, peers
from dynvm.bench.harness import cpu_lines, fmt_time, measure, optional_import
from dynvm.compiler import build, ir, op
from dynvm.vm import StaticRuntime, VirtualMachine

# dynvm execution tiers measured side by side: name -> VirtualMachine keyword arguments
TIERS = {"python": {"tier": "python"}, "native": {"tier": "native"}}
REPS = 20
LOOP_STEPS = 10**9    # a step budget far above any loop here (the VM's default may be lower)


def vm(exe, tier, **kwargs):
    return VirtualMachine(exe, max_steps=LOOP_STEPS, **TIERS[tier], **kwargs)


def add_module(dims):
    t = ir.TensorType(dims, "float32")
    x, y = ir.var("x", t), ir.var("y", t)
    return ir.IRModule.from_expr(ir.Function([x, y], op.add(x, y)))


# ---------------------------------------------------------------------------------------------
# 1. the one-op floor


def one_op_columns(any_dim: bool, a, b) -> dict:
    """{column: (run, to_numpy) or the reason the runtime is missing}: `run()` computes a + b
    and is what is timed; `to_numpy(run())` is the result as a numpy array, checked before
    timing (results stay in the runtime's own tensor type: converting them is not timed)."""
    columns = {}
    for tier in TIERS:
        machine = vm(build(add_module((ir.Any(),) if any_dim else (1,))), tier)
        columns[f"dynvm {tier}"] = (lambda m=machine: m.invoke("main", a, b)), np.asarray
    columns["numpy"] = (lambda: np.add(a, b)), np.asarray
    torch, why = optional_import("torch")
    if torch:
        torch.set_num_threads(1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        columns["torch eager"] = (lambda: torch.add(ta, tb)), _numpy_method
    else:
        columns["torch eager"] = why
    columns.update(ort_add(any_dim, a, b))
    columns["TVM Relax VM"] = tvm_add(any_dim, a, b)
    return columns


def ort_add(any_dim, a, b) -> dict:
    """ONNX Runtime, 1 thread: `session.run` with a feed dict, and `run_with_iobinding` over
    OrtValues bound once (the output stays in ORT's buffer: read only to check it)."""
    try:
        g = peers.OnnxGraph()
        shape = ["n"] if any_dim else [1]
        peers.THREADS = 1
        session = peers.ort_session(g.model([("x", shape), ("y", shape)], g.op("Add", "x", "y")))
    except peers.Skip as e:
        return {"ORT run": str(e), "ORT iobinding": str(e)}
    import onnxruntime as ort
    feed = {"x": a, "y": b}
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
    binding.bind_ortvalue_output("out", ort.OrtValue.ortvalue_from_shape_and_type(a.shape, np.float32))
    return {"ORT run": ((lambda: session.run(None, feed)), lambda out: out[0]),
            "ORT iobinding": ((lambda: session.run_with_iobinding(binding)),
                              lambda _: binding.get_outputs()[0].numpy())}


def tvm_add(any_dim, a, b):
    """The TVM Relax VM running add(x, y) compiled for this CPU (llvm target), or why not."""
    tvm, why = optional_import("tvm")
    if tvm is None:
        return "TVM: not installed (pip install apache-tvm)"
    try:
        from tvm import relax, tirx
        dims = [tirx.Var("n", "int64")] if any_dim else [1]
        bb = relax.BlockBuilder()
        x, y = (relax.Var(name, relax.TensorType(dims, "float32")) for name in "xy")
        with bb.function("main", [x, y]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.add(x, y))
            bb.emit_func_output(out)
        machine = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu())
        fn, ta, tb = machine["main"], tvm.runtime.tensor(a), tvm.runtime.tensor(b)
    except Exception as e:  # noqa: BLE001 - the TVM API moves between releases: a missing column
        return f"TVM {tvm.__version__} failed ({type(e).__name__}: {str(e)[:100]})"
    return (lambda: fn(ta, tb)), _numpy_method


def _numpy_method(tensor):
    return tensor.numpy()


def bench_one_op():
    """(columns, rows, missing): rows are (label, {column: seconds}); missing {column: why}."""
    a, b = np.array([1.5], np.float32), np.array([2.25], np.float32)
    columns, rows, missing = [], [], {}
    for any_dim in (False, True):
        fns = {}
        for column, peer in one_op_columns(any_dim, a, b).items():
            if isinstance(peer, str):
                missing[column] = peer
                continue
            run, to_numpy = peer
            np.testing.assert_array_equal(to_numpy(run()).reshape(a.shape), a + b, err_msg=column)
            fns[column] = run
        columns += [c for c in fns if c not in columns]
        rows.append(("add, 1 element, " + ("Any dims (?,)" if any_dim else "static dims (1,)"),
                     measure(fns, REPS)))
    return columns, rows, missing


# ---------------------------------------------------------------------------------------------
# 2. cost per instruction: an unfused chain of one-element adds


def chain_module(length, dims):
    """y = x; y = y + x, `length` times: (length + 1) * x, one kernel call per add unfused."""
    x = ir.var("x", ir.TensorType(dims, "float32"))
    y = x
    for _ in range(length):
        y = op.add(y, x)
    return ir.IRModule.from_expr(ir.Function([x], y))


def profiled(machine, args, runs):
    """(instructions, kernel calls, kernel seconds) per invoke of a profiling VM."""
    for _ in range(runs):
        machine.invoke("main", *args)
    p = machine.profile()
    calls = sum(calls for calls, _ in p.kernels.values())
    return sum(p.opcodes.values()) / runs, calls / runs, p.kernel_seconds / runs


def bench_chain(length):
    """Rows (label, tier, seconds per invoke, instructions, kernel calls, VM cost per
    instruction from the profiled kernel time, the same from the static runtime's time)."""
    x = np.array([0.5], np.float32)
    rows = []
    for dims, label in (((1,), "static dims (1,)"), ((ir.Any(),), "Any dims (?,)")):
        exe = build(chain_module(length, dims), fuse=False)
        fns = {}
        for tier in TIERS:
            machine = vm(exe, tier)
            np.testing.assert_array_equal(machine.invoke("main", x), x * (length + 1))
            fns[tier] = lambda m=machine: m.invoke("main", x)
        if dims == (1,):
            static = StaticRuntime(exe)
            np.testing.assert_array_equal(static.run(x), x * (length + 1))
            fns["static"] = lambda: static.run(x)
        times = measure(fns, REPS)
        for tier in TIERS:
            instructions, calls, kernel = profiled(vm(exe, tier, profile=True), [x], 3)
            vs_static = ((times[tier] - times["static"]) / instructions if "static" in times
                         else None)
            rows.append((f"chain of {length} adds, {label}", tier, times[tier], instructions,
                         calls, (times[tier] - kernel) / instructions, vs_static,
                         times.get("static")))
    return rows


# ---------------------------------------------------------------------------------------------
# 3. cost per loop iteration


def loop_module():
    """main(n, acc) = n < 1 ? acc : main(n - 1, acc + n): a self tail call, so a loop."""
    i64 = ir.TensorType((), "int64")
    mod = ir.IRModule()
    main = mod.get_global_var("main")
    n, acc = ir.var("n", i64), ir.var("acc", i64)
    one = ir.const(1, "int64")
    mod["main"] = ir.Function([n, acc], ir.If(op.less(n, one), acc,
                                              ir.Call(main, [op.subtract(n, one), op.add(acc, n)])),
                              ret_type=i64)
    return mod


def bench_loop(iterations):
    """Rows (label, tier, seconds per invoke, seconds per iteration, instructions per
    iteration, VM seconds per iteration minus profiled kernel time (bytecode only))."""
    args = (np.int64(iterations), np.int64(0))
    expected = iterations * (iterations + 1) // 2
    rows = []
    for native in (False, True):
        exe = build(loop_module(), native_loops=native)
        calls_loop = any(ins.name == "CallLoop" for f in exe.functions for ins in f.instructions)
        assert calls_loop == native, "the loop should be native exactly when native_loops=True"
        fns = {}
        for tier in TIERS:
            machine = vm(exe, tier)
            assert int(machine.invoke("main", *args)) == expected
            fns[tier] = lambda m=machine: m.invoke("main", *args)
        times = measure(fns, max(3, REPS // 4))
        label = (f"{iterations} iterations, " +
                 ("native loop kernel (CallLoop)" if native else "bytecode (native_loops=False)"))
        for tier in TIERS:
            instructions, _, kernel = profiled(vm(exe, tier, profile=True), args, 1)
            per_iteration = times[tier] / iterations
            vm_part = None if native else (times[tier] - kernel) / iterations
            rows.append((label, tier, times[tier], per_iteration, instructions / iterations,
                         vm_part))
    return rows


# ---------------------------------------------------------------------------------------------
# report


def ns(seconds):
    if seconds is None:
        return "n/a"
    return "< 0" if seconds < 0 else f"{seconds * 1e9:,.0f} ns"


def print_one_op(columns, rows, missing):
    print("1. one-op invoke floor (median time per call; 1 thread)")
    width = max(14, *(len(c) + 2 for c in columns))
    print(f"{'workload':32}" + "".join(f"{c:>{width}}" for c in columns))
    for label, times in rows:
        print(f"{label:32}" + "".join(f"{fmt_time(times.get(c)):>{width}}" for c in columns))
    for column, why in missing.items():
        print(f"  {column}: {why}")


def print_chain(rows):
    print("2. VM cost per instruction: unfused chain. all-in = invoke / instructions (an upper "
          "bound for any tier); the kernel time subtracted is measured from Python (the profiler "
          "times each kernel call of the python tier, the static runtime runs the same kernels "
          "as a flat list), so for a tier calling kernels natively those columns are lower "
          "bounds (< 0: below the noise)")
    print(f"{'workload':34} {'tier':>8} {'invoke':>11} {'instr':>7} {'kernels':>8} "
          f"{'all-in/instr':>13} {'VM/instr (profiler)':>20} {'VM/instr (vs static)':>21} "
          f"{'static runtime':>15}")
    for label, tier, t, instructions, calls, vm_cost, vs_static, static in rows:
        print(f"{label:34} {tier:>8} {fmt_time(t):>11} {instructions:>7.0f} {calls:>8.0f} "
              f"{ns(t / instructions):>13} {ns(vm_cost):>20} {ns(vs_static):>21} "
              f"{fmt_time(static):>15}")


def print_loop(rows):
    print("3. VM cost per loop iteration (body: one compare, one subtract, one add; the kernel "
          "time subtracted is the python tier's profiled one, as in 2.)")
    print(f"{'workload':50} {'tier':>8} {'invoke':>11} {'per iteration':>14} {'instr/iter':>11} "
          f"{'VM/iter (minus kernels)':>24}")
    for label, tier, t, per_iteration, instructions, vm_part in rows:
        print(f"{label:50} {tier:>8} {fmt_time(t):>11} {ns(per_iteration):>14} "
              f"{instructions:>11.1f} {ns(vm_part):>24}")


def python_call_seconds():
    """The time of one no-op Python function call now: the interpreter's speed on this machine
    at this load (the Python tier's costs scale with it), printed next to the load average."""
    def noop(a, b):
        return a
    return measure({"call": lambda: noop(1, 2)}, REPS)["call"]


def main(argv=None):
    global REPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions per number")
    parser.add_argument("--chain", type=int, default=1000, help="ops in the unfused chain")
    parser.add_argument("--iterations", type=int, default=100_000, help="loop iterations")
    parser.add_argument("--tiny", action="store_true",
                        help="a 20-op chain, a 1000-iteration loop, 2 repetitions (a smoke run)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.reps, args.chain, args.iterations = 2, 20, 1000
    REPS = harness.REPS = args.reps
    for line in cpu_lines():
        print(line)
    print(f"dynvm tiers: {', '.join(f'{name} {kwargs}' for name, kwargs in TIERS.items())}")
    print(f"calibration: a no-op Python call (through a lambda) takes {ns(python_call_seconds())} now")
    print_one_op(*bench_one_op())
    print()
    print_chain(bench_chain(args.chain))
    print()
    print_loop(bench_loop(args.iterations))
    print(cpu_lines()[-1] + " (after the run)")


if __name__ == "__main__":
    main()
