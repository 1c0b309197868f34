"""Batch inference on Ray Data: the LSTM of `dynvm.models.lstm` scores variable-length sequences
(no padding: every row is one invocation at its own length) on an actor pool of 1, then 2
actors, each loading the executable once from the object store; every result is checked
against one local VM, bit for bit. Prints the object-store transfer of the executable, the
per-row cost on one core and the throughput of each pool.

    python examples/ray_batch_inference.py [--rows N] [--max-len L] [--address ray://...]

Without `--address` it starts a local Ray on 2 CPUs (`ray.init(num_cpus=2)`); with one, the same
code runs on that cluster. Exits 1 when a result differs from the local VM's or a row failed.
"""
import argparse
import sys
import time

import numpy as np
import ray

import dynvm.ray
from dynvm import Executable, VirtualMachine, build
from dynvm.models import lstm


def sequence(row: int, max_len: int) -> np.ndarray:
    """Row `row`'s input: a seeded (length, 128) sequence, length 1..max_len."""
    return lstm.make_input(1 + (row * 7919) % max_len, seed=row)


def sequences(batch: dict, max_len: int) -> dict:
    """A batch of row ids -> the same ids and their sequences (an object column)."""
    xs = np.empty(len(batch["id"]), dtype=object)
    for i, row in enumerate(batch["id"]):
        xs[i] = sequence(int(row), max_len)
    return {"id": batch["id"], "x": xs}


@ray.remote(num_cpus=1)
def fetch_and_load(ref_holder: list) -> tuple:
    """In a worker: seconds to fetch the executable's bytes from the object store, seconds to
    load them (verify, native code), and how the kernels got their code."""
    start = time.perf_counter()
    data = ray.get(ref_holder[0])
    fetched = time.perf_counter()
    exe = Executable.from_bytes(data)
    return fetched - start, time.perf_counter() - fetched, exe.load_report.origin


class TimedPredictor(dynvm.ray.Predictor):
    """dynvm.ray.Predictor, plus a `cpu` column: the CPU seconds its batch took, per row. On a
    shared machine, CPU seconds / wall seconds says how many cores the actors actually got."""

    def __call__(self, batch: dict) -> dict:
        start = time.thread_time()
        out = super().__call__(batch)
        out["cpu"] = np.full(len(batch["id"]), (time.thread_time() - start) / len(batch["id"]))
        return out


def score(inputs, exe_ref, actors: int):
    """The scored dataset (materialized) and the wall seconds it took, actor start included."""
    start = time.perf_counter()
    scored = inputs.map_batches(
        TimedPredictor, batch_format="numpy", batch_size=256, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"executable": exe_ref}).materialize()
    return scored, time.perf_counter() - start


def collect(scored, rows: int):
    """Outputs in row order (rows, 1, 256) and the actors' CPU seconds; raises if a row failed."""
    out, cpu = np.empty((rows, 1, lstm.HIDDEN), np.float32), 0.0
    for batch in scored.iter_batches(batch_format="numpy", batch_size=4096):
        failed = [e for e in batch["error"] if e]
        if failed:
            raise RuntimeError(f"{len(failed)} rows failed, e.g. {failed[0]}")
        out[batch["id"]] = np.stack(list(batch["output"]))
        cpu += batch["cpu"].sum()
    return out, cpu


def local_outputs(exe, rows: int, max_len: int):
    """One local VM on one thread over every row: (outputs, seconds per row)."""
    vm = VirtualMachine(exe, threads=1)
    xs = [sequence(row, max_len) for row in range(rows)]
    out = np.empty((rows, 1, lstm.HIDDEN), np.float32)
    start = time.perf_counter()
    for row, x in enumerate(xs):
        out[row] = vm.invoke("main", x)
    return out, (time.perf_counter() - start) / rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="sequences to score")
    parser.add_argument("--max-len", type=int, default=16, help="longest sequence (steps)")
    parser.add_argument("--address", help="a Ray cluster to use instead of a local one")
    args = parser.parse_args(argv)
    started_here = not ray.is_initialized()   # a caller (a notebook, a test) may have started one
    if started_here:
        ray.init(address=args.address) if args.address else ray.init(num_cpus=2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        return run(args.rows, args.max_len)
    finally:
        if started_here:
            ray.shutdown()


def run(rows: int, max_len: int) -> int:
    exe = build(lstm.build_module(lstm.weights()))
    data = exe.to_bytes()
    start = time.perf_counter()
    exe_ref = dynvm.ray.ship(exe)
    put = time.perf_counter() - start
    fetch, load, origin = ray.get(fetch_and_load.remote([exe_ref]))
    print(f"executable: {len(data) / 1e6:.2f} MB; ray.put {put * 1e3:.1f} ms; in a worker: "
          f"fetch {fetch * 1e3:.1f} ms, load {load * 1e3:.1f} ms ({origin} native code)")

    inputs = ray.data.range(rows).map_batches(sequences, batch_format="numpy",
                                              fn_kwargs={"max_len": max_len}).materialize()
    expected, per_row = local_outputs(exe, rows, max_len)
    print(f"{rows} sequences of 1..{max_len} steps; one local VM, one thread: "
          f"{per_row * 1e6:.0f} us per row")
    ok, throughput = True, {}
    for actors in (1, 2):
        scored, seconds = score(inputs, exe_ref, actors)
        throughput[actors] = rows / seconds
        outputs, cpu = collect(scored, rows)
        good = np.array_equal(outputs, expected)
        ok &= good
        print(f"{actors} actor{'s' if actors > 1 else ' '}: {seconds:7.2f} s  "
              f"{throughput[actors]:8.0f} rows/s  actors' CPU {cpu / rows * 1e6:4.0f} us per row, "
              f"{cpu / seconds:4.2f} cores busy  {'ok' if good else 'MISMATCH'}")
    print(f"2 actors / 1 actor: {throughput[2] / throughput[1]:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
