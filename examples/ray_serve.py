"""Online serving on Ray Serve: the LSTM of `dynvm.models.lstm` behind HTTP, requests grouped by
`@serve.batch`. A client sends requests of random sequence lengths from 1, 4 and 16 concurrent
connections (each one request after another) and reports p50/p99 latency and throughput per
level; every answer is checked against one local VM, bit for bit.

    python examples/ray_serve.py [--requests N] [--max-len L] [--port P] [--address ray://...]

Without `--address` it starts a local Ray on 2 CPUs (`ray.init(num_cpus=2)`). Exits 1 when an
answer differs from the local VM's or a request failed.
"""
import argparse
import http.client
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
from ray import serve

import dynvm.ray
from dynvm import VirtualMachine, build
from dynvm.models import lstm

APP, ROUTE = "dynvm_lstm", "/lstm"
LEVELS = (1, 4, 16)


def request_input(level: int, i: int, max_len: int) -> np.ndarray:
    """Request i's sequence at a concurrency level: seeded, 1..max_len steps."""
    return lstm.make_input(1 + (i * 7919 + level) % max_len, seed=1000 * level + i)


def client(port: int, inputs: list) -> list:
    """One connection sending `inputs` one after another: [(seconds, status, body)]."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    answers = []
    for x in inputs:
        body = json.dumps({"args": [x.tolist()]})
        start = time.perf_counter()
        conn.request("POST", ROUTE, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
        answers.append((time.perf_counter() - start, response.status, answer))
    conn.close()
    return answers


def run_level(port: int, clients: int, requests: int, max_len: int):
    """`requests` requests from `clients` connections: (inputs, answers, wall seconds)."""
    inputs = [request_input(clients, i, max_len) for i in range(requests)]
    shares = [inputs[c::clients] for c in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda share: client(port, share), shares))
    seconds = time.perf_counter() - start
    ordered = [None] * requests
    for c, answers in enumerate(results):
        ordered[c::clients] = answers
    return inputs, ordered, seconds


def check(vm, inputs, answers) -> bool:
    """Every answer a 200 whose output equals the local VM's exactly."""
    for x, (_, status, body) in zip(inputs, answers):
        if status != 200:
            print(f"request failed ({status}): {body[:200]!r}")
            return False
        got = np.array(json.loads(body)["output"], np.float32)
        if not np.array_equal(got, vm.invoke("main", x)):
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--max-len", type=int, default=16, help="longest sequence (steps)")
    parser.add_argument("--port", type=int, default=8000, help="Serve's HTTP port")
    parser.add_argument("--address", help="a Ray cluster to use instead of a local one")
    args = parser.parse_args(argv)
    started_here = not ray.is_initialized()   # a caller (a notebook, a test) may have started one
    if started_here:
        ray.init(address=args.address) if args.address else ray.init(num_cpus=2)
    try:
        return run(args.requests, args.max_len, args.port)
    finally:
        if started_here:
            serve.shutdown()
            ray.shutdown()


def run(requests: int, max_len: int, port: int) -> int:
    exe = build(lstm.build_module(lstm.weights()))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = dynvm.ray.deployment(dynvm.ray.ship(exe), max_batch_size=16, name="lstm")
    serve.run(app, name=APP, route_prefix=ROUTE)
    try:
        return measure(VirtualMachine(exe, threads=1), requests, max_len, port)
    finally:
        serve.delete(APP)


def measure(vm, requests: int, max_len: int, port: int) -> int:
    """Each concurrency level's latencies and throughput, every answer checked."""
    client(port, [request_input(0, 0, max_len)])   # warm up the proxy and the replica
    ok = True
    print(f"{requests} requests per level, sequences of 1..{max_len} steps")
    print(f"{'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}  check")
    for clients in LEVELS:
        inputs, answers, seconds = run_level(port, clients, requests, max_len)
        latencies = np.array([a[0] for a in answers]) * 1e3
        good = check(vm, inputs, answers)
        ok &= good
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"{clients:>7} {p50:8.2f} {p99:8.2f} {requests / seconds:8.0f}  "
              f"{'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
