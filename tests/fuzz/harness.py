"""Structure-aware fuzzing of .dvm executables: every mutant is loaded and invoked in an isolated
worker process and its outcome classified.

    python -m tests.fuzz.harness --mutants 100000 --workers 2 --out fuzz-findings/

Seeds are small real programs (a dynamic elementwise chain, a native loop, the same loop in
bytecode, a prelude list program, a data-dependent arange) and three models: the NMS
post-process (data-dependent output sizes), a conv2d + bias + relu with Any batch and spatial
dims, and a one-layer BERT encoder (hidden 32: the SMALL model's kernels and bytecode shape at a
fraction of its weight bytes). A mutation edits the decoded
document — an instruction's opcode or operand, a jump target, a register count, a constant's
dtype/shape/bytes, a kernel entry's fields or spec, the object code, the LLVM IR, the target —
re-encodes it and recomputes the checksum (as an attacker would), or damages raw bytes.

Outcomes, per mutant:
  rejected     a typed error (a DynVMError) at load;
  typed        loaded, then a typed error at invoke;
  ran          loaded and invoked without error;
  untyped      any other exception (a bug: the promise is a typed error);
  crash        the worker died (signal, abort);
  hang         no answer within the time limit (the VM runs with a step budget);
  corruption   after the mutant, a clean program run in the same process gave a wrong answer.
Any of the last four is a finding; findings are written to --out with their mutant bytes.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time

import msgpack

FINDINGS = ("untyped", "crash", "hang", "corruption")
OUTCOMES = ("rejected", "typed", "ran") + FINDINGS
STEP_BUDGET = 20_000
# per mutant: a load may rebuild a seed's kernels from edited specs (an O3 compile: BERT's
# take ~5 s on an idle 2-core machine, 20 s under load), so the limit leaves room for that
TIMEOUT_SECONDS = 60.0


# ---------------------------------------------------------------------------------------------
# seeds: (name, executable bytes, invoke arguments)


def seed_programs():
    """[(name, bytes, args)] of the seed executables; args are msgpack-able (lists of floats)."""
    import numpy as np

    from dynvm import build, ir, op
    from dynvm.compiler import prelude

    f32 = ir.TensorType((ir.Any(),), "float32")
    x = ir.var("x", f32)
    chain = ir.IRModule.from_expr(ir.Function([x], op.tanh(op.multiply(op.add(x, x), x))))

    n, acc = ir.var("n", ir.TensorType((), "int64")), ir.var("acc", ir.TensorType((), "int64"))
    loop = ir.IRModule()
    gv = loop.get_global_var("main")
    one = ir.const(1, "int64")
    loop["main"] = ir.Function([n, acc], ir.If(op.less(n, one), acc,
                                               ir.Call(gv, [op.subtract(n, one), op.add(acc, n)])),
                               ret_type=ir.TensorType((), "int64"))

    rows = ir.var("rows", ir.TensorType((), "int64"))
    arange = ir.IRModule.from_expr(ir.Function([rows], op.cast(
        op.arange(ir.const(0, "int64"), rows, ir.const(1, "int64"), dtype="int64"), "float32")))

    lists = prelude.parse("""
        def @main(%x: Tensor[(?,), float32], %n: Tensor[(), int64]) -> Tensor[(), float32] {
          @foldl(fn (%acc: Tensor[(), float32], %y: Tensor[(?,), float32]) -> Tensor[(), float32] {
            add(%acc, sum(%y))
          }, 0.0f32, @iterate(fn (%y: Tensor[(?,), float32]) -> Tensor[(?,), float32] {
            multiply(%y, %x)
          }, %x, %n))
        }""")
    return [
        ("chain", build(chain).to_bytes(), [np.arange(7, dtype=np.float32).tolist()]),
        *model_seeds(),
        ("native_loop", build(loop).to_bytes(), [5, 0]),
        ("bytecode_loop", build(loop, native_loops=False).to_bytes(), [5, 0]),
        ("arange", build(arange).to_bytes(), [9]),
        ("lists", build(lists).to_bytes(), [[0.5, 1.5, -1.0], 4]),
    ]


def model_seeds():
    """[(name, bytes, args)] of the model seeds (see the module docstring)."""
    import numpy as np

    from dynvm import build, ir, op
    from dynvm.models import bert_varlen, nms_postprocess

    rng = np.random.default_rng(0)
    x = ir.var("x", ir.TensorType((ir.Any(), 3, ir.Any(), ir.Any()), "float32"))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal((4, 1, 1)).astype(np.float32)
    conv = ir.IRModule.from_expr(ir.Function([x], op.relu(op.add(
        op.conv2d(x, ir.const(w), strides=[2, 2], padding=[1, 1]), ir.const(bias)))))
    bert = bert_varlen.weights(bert_varlen.Config(hidden=32, heads=2, ffn=64, layers=1))
    return [
        ("nms", build(nms_postprocess.build_module()).to_bytes(),
         [nms_postprocess.make_input(12).tolist()]),
        ("conv2d", build(conv).to_bytes(), [rng.standard_normal((1, 3, 5, 6)).tolist()]),
        ("bert", build(bert_varlen.build_module(bert)).to_bytes(),
         [bert_varlen.make_input(3, config=bert["config"]).tolist()]),
    ]


# ---------------------------------------------------------------------------------------------
# mutations


INTERESTING = (0, 1, -1, 2, 7, 63, 64, 255, 256, 2**31 - 1, -2**31, 2**32, 2**63 - 1, -2**63)


def tree_paths(value, path=()):
    """Every (path, node) of a decoded msgpack tree, children before their parent."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from tree_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from tree_paths(v, path + (i,))
    yield path, value


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _mutate_leaf(rng, leaf):
    if isinstance(leaf, bool):
        return not leaf
    if isinstance(leaf, int):   # kept within what msgpack can encode (int64 / uint64)
        value = rng.choice([leaf + rng.choice((-2, -1, 1, 2)), rng.choice(INTERESTING), -leaf])
        return min(max(value, -2**63), 2**64 - 1)
    if isinstance(leaf, float):
        return rng.choice([float("nan"), float("inf"), -leaf, 0.0, 1e300])
    if isinstance(leaf, str):
        return rng.choice(["", leaf[::-1], leaf + "x", "float16", "int64", "bool", "write",
                           "compiled", "elementwise", "loop", leaf[:len(leaf) // 2]])
    if isinstance(leaf, bytes):
        return _damage(rng, leaf)
    if isinstance(leaf, list):
        choice = rng.randrange(4)
        if choice == 0 and leaf:
            return leaf[:-1]
        if choice == 1 and leaf:
            return leaf + [rng.choice(leaf)]
        if choice == 2:
            return list(reversed(leaf))
        return rng.choice([None, 0, "x", {}, [[]]])
    if isinstance(leaf, dict):
        if leaf and rng.random() < 0.5:
            copy = dict(leaf)
            del copy[rng.choice(list(copy))]
            return copy
        return rng.choice([None, [], 0])
    return rng.choice([0, "", [], {}])


def _damage(rng, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not data:
            data.append(rng.randrange(256))
        i = rng.randrange(len(data))
        kind = rng.randrange(4)
        if kind == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[i] = rng.choice((0, 0xFF, 0x7F, 0x80))
        elif kind == 2:
            del data[i:i + rng.randint(1, 16)]
        else:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(data)


def _edit_ir(rng, text: str) -> str:
    """An LLVM IR edit that stays text: a call redirected to libc, a constant or a type changed."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    edits = [lambda s: s.replace("call ", "call i32 @write(i32 1, ptr null, i64 1) ; ", 1),
             lambda s: s.replace("i64", "i32", 1), lambda s: s.replace("ret i32 0", "ret i32 1337"),
             lambda s: s.replace("add", "sub", 1), lambda s: ""]
    lines[i] = rng.choice(edits)(lines[i])
    return "\n".join(lines)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One mutant of the executable `data`."""
    if rng.random() < 0.1:
        return _damage(rng, data)
    doc = msgpack.unpackb(data, raw=False)
    body = msgpack.unpackb(doc["body"], raw=False)
    region = rng.choice(("functions", "functions", "functions", "constants", "constructors",
                         "kernels", "kernels", "object", "llvm_ir", "target", "header"))
    objects, units = body["kernels"]["object"], body["kernels"]["llvm_ir"]
    if region == "object" and objects:
        i = rng.randrange(len(objects))
        objects[i] = _damage(rng, objects[i])
    elif region == "llvm_ir" and units:
        unit = rng.choice(units)
        i = rng.randrange(len(unit))
        unit[i] = _edit_ir(rng, unit[i])
    elif region == "target":
        body["kernels"]["target"]["cpu"] = rng.choice(("generic", "skylake", "x86-64-v2", ""))
        doc["header"]["target"] = body["kernels"]["target"]
    elif region == "header":
        path, leaf = rng.choice(list(tree_paths(doc["header"])))
        if path:
            _set(doc["header"], path, _mutate_leaf(rng, leaf))
    else:
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            paths = [p for p in tree_paths(body[region]) if p[0]]
            if not paths:
                break
            path, leaf = rng.choice(paths)
            _set(body[region], path, _mutate_leaf(rng, leaf))
    doc["body"] = msgpack.packb(body, use_bin_type=True)
    from dynvm.vm.executable import _checksum   # recomputed, as an attacker would
    doc["checksum"] = _checksum(doc["header"], doc["body"])
    return msgpack.packb(doc, use_bin_type=True)


# ---------------------------------------------------------------------------------------------
# the worker: reads (seed, mutant) frames on stdin, answers one JSON line per mutant


def _frame(out, payload: bytes):
    out.write(struct.pack("<I", len(payload)) + payload)
    out.flush()


def _read_frame(stream):
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack("<I", head)
    return stream.read(size)


def worker_main():
    import faulthandler
    import signal
    import warnings

    import numpy as np

    from dynvm.vm import Executable, VirtualMachine
    from dynvm.vm.errors import DynVMError, PerformanceWarning

    faulthandler.register(signal.SIGUSR1)   # the driver asks where a hanging worker is
    warnings.simplefilter("ignore", PerformanceWarning)   # rebuilds are expected here

    clean = None
    while True:
        frame = _read_frame(sys.stdin.buffer)
        if frame is None:
            return
        mutant, args = msgpack.unpackb(frame, raw=False)
        if clean is None:   # the first frame is the clean countdown program
            clean = VirtualMachine(Executable.from_bytes(mutant))
            expected = int(clean.invoke("main", np.int64(10), np.int64(0)))
            sys.stdout.write(json.dumps({"outcome": "ran"}) + "\n")
            sys.stdout.flush()
            continue
        outcome, detail = _run_one(mutant, args, Executable, VirtualMachine, DynVMError, np)
        try:
            again = int(clean.invoke("main", np.int64(10), np.int64(0)))
        except Exception as e:  # noqa: BLE001
            again = repr(e)
        if again != expected:
            outcome, detail = "corruption", f"clean countdown(10) gave {again!r}, not {expected}"
        sys.stdout.write(json.dumps({"outcome": outcome, "detail": detail[:300]}) + "\n")
        sys.stdout.flush()


def _run_one(mutant, args, Executable, VirtualMachine, DynVMError, np):
    try:
        exe = Executable.from_bytes(mutant)
    except DynVMError as e:
        return "rejected", f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - classifying is the point
        return "untyped", f"load: {type(e).__name__}: {e}"
    try:
        vm = VirtualMachine(exe, max_steps=STEP_BUDGET)
        vm.invoke("main", *[np.asarray(a, dtype=np.float32 if isinstance(a, list) else np.int64)
                            for a in args])
    except DynVMError as e:
        return "typed", f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001
        return "untyped", f"invoke: {type(e).__name__}: {e}"
    return "ran", ""


# ---------------------------------------------------------------------------------------------
# the driver


class Worker:
    """One worker process; restarted after a crash or a hang."""

    def __init__(self, clean: bytes, cache_dir: str):
        self.clean, self.cache_dir = clean, cache_dir
        self.proc = self.stderr = None
        self.start()

    def start(self):
        if self.stderr is not None:
            self.stderr.close()
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.harness", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr,
                                     env=dict(os.environ, DYNVM_CACHE_DIR=self.cache_dir),
                                     cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                         os.path.abspath(__file__)))))
        self.send(self.clean, [])
        self.answer(120.0)

    def send(self, mutant, args):
        _frame(self.proc.stdin, msgpack.packb([mutant, args], use_bin_type=True))

    def answer(self, timeout):
        """The worker's JSON answer, or ("crash" | "hang") after restarting it."""
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            where = self.stack()
            self.proc.kill()
            self.proc.wait()
            self.start()
            return {"outcome": "hang", "detail": f"no answer within {timeout} s; {where}"}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.start()
            return {"outcome": "crash", "detail": f"worker exited with {code}"}
        return json.loads(line)

    def stack(self, frames=4) -> str:
        """The innermost frames of the (hanging) worker's Python stack, from faulthandler."""
        import signal
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").splitlines()
        start = max((i for i, line in enumerate(lines) if "most recent call first" in line),
                    default=len(lines))
        return "stack: " + " <- ".join(line.strip() for line in lines[start + 1:start + 1 + frames])

    def run(self, mutant, args, timeout=TIMEOUT_SECONDS):
        try:
            self.send(mutant, args)
        except BrokenPipeError:
            self.start()
            return {"outcome": "crash", "detail": "worker died before the mutant"}
        return self.answer(timeout)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.stderr.close()


def fuzz(mutants: int, seed: int = 0, out_dir: str | None = None, time_limit: float | None = None,
         progress=None) -> dict:
    """Run `mutants` mutants (or until `time_limit` seconds, building the seeds included);
    returns counts and findings."""
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    rng = random.Random(seed)
    seeds = seed_programs()
    clean = next(data for name, data, _ in seeds if name == "bytecode_loop")
    with tempfile.TemporaryDirectory(prefix="dynvm-fuzz-cache-") as cache:
        _fill_worker_cache(seeds, cache)
        return _run(rng, seeds, Worker(clean, cache), mutants, out_dir, deadline, progress)


def _fill_worker_cache(seeds, directory):
    """The workers' object cache: the seeds' kernels sections (a worker loads a seed without
    rebuilding it), then whatever sections mutated specs rebuild — gone with the run, never in
    the user's cache."""
    from dynvm.kernels import provenance
    from dynvm.vm import Executable
    for _, data, _ in seeds:
        provenance.remember(Executable.from_bytes(data).kernels, directory)


def _run(rng, seeds, worker, mutants, out_dir, deadline, progress) -> dict:
    counts = collections.Counter()
    by_seed = {name: collections.Counter() for name, _, _ in seeds}
    findings = []
    start = time.perf_counter()
    try:
        for k in range(mutants):
            if deadline is not None and time.perf_counter() > deadline:
                break
            name, data, args = rng.choice(seeds)
            mutant = mutate(rng, data)
            result = worker.run(mutant, args)
            if result["outcome"] == "corruption":
                worker.close()           # the process is damaged: later mutants get a new one
                worker.start()
            counts[result["outcome"]] += 1
            by_seed[name][result["outcome"]] += 1
            if result["outcome"] in FINDINGS:
                findings.append({"seed": name, "index": k, **result})
                if out_dir:
                    os.makedirs(out_dir, exist_ok=True)
                    with open(os.path.join(out_dir, f"{result['outcome']}-{k}.dvm"), "wb") as f:
                        f.write(mutant)
            if progress and (k + 1) % 500 == 0:
                progress(k + 1, counts)
    finally:
        worker.close()
    return {"counts": {o: counts[o] for o in OUTCOMES}, "total": sum(counts.values()),
            "seconds": time.perf_counter() - start, "findings": findings,
            "by_seed": {name: {o: c[o] for o in OUTCOMES} for name, c in by_seed.items()}}


def outcome_table(report) -> str:
    """The outcome counts per seed program and in total, as a Markdown table."""
    lines = ["| seed | " + " | ".join(OUTCOMES) + " | total |",
             "|---" * (len(OUTCOMES) + 2) + "|"]
    for name, c in [*report["by_seed"].items(), ("all", report["counts"])]:
        lines.append(f"| {name} | " + " | ".join(str(c[o]) for o in OUTCOMES)
                     + f" | {sum(c.values())} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for the mutants that are findings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    report = fuzz(args.mutants, args.seed, args.out,
                  progress=lambda n, c: print(f"{n:>7} mutants: {dict(c)}", flush=True))
    print(outcome_table(report))
    print(f"{report['total']} mutants in {report['seconds']:.0f} s (seed {args.seed})")
    for f in report["findings"][:20]:
        print(f"{f['outcome']:<10} seed {f['seed']:<14} #{f['index']}: {f['detail']}")
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
