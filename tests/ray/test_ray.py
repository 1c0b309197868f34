"""dynvm.ray on a local Ray (2 CPUs, one cluster for the module; skipped without Ray): a Ray Data
actor pool and a Serve deployment give what one VM gives, a failing row or request is reported
with its error and the rest are answered, and the two Ray examples check themselves."""
import http.client
import importlib.util
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import dynvm.ray  # noqa: E402
from dynvm import VirtualMachine, build  # noqa: E402
from dynvm.models import lstm  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BAD = np.zeros((3, 64), np.float32)   # the LSTM takes (?, 128)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def port():
    ray.init(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def exe():
    return build(lstm.build_module(lstm.weights()))


def test_an_actor_pool_matches_one_vm_and_reports_a_failing_row(port, exe):
    xs = [lstm.make_input(1 + i % 9, seed=i) for i in range(40)]
    xs[13] = BAD
    scored = ray.data.from_items([{"id": i, "x": x} for i, x in enumerate(xs)]).map_batches(
        dynvm.ray.Predictor, batch_format="numpy", batch_size=8, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=2),
        fn_constructor_kwargs={"executable": dynvm.ray.ship(exe)})
    vm = VirtualMachine(exe, threads=1)
    rows = sorted(scored.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(40))
    for i, row in enumerate(rows):
        if i == 13:
            assert row["error"].startswith("InvokeArgumentError: ") and "= 128" in row["error"]
            assert row["output"].shape == (0, 0)
        else:
            assert row["error"] == ""
            np.testing.assert_array_equal(row["output"], vm.invoke("main", xs[i]))


def post(port, route, body) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", route, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_the_serve_deployment_answers_over_http_and_handles(port, exe, tmp_path):
    exe.save(tmp_path / "lstm.dvm")
    handle = serve.run(dynvm.ray.deployment(str(tmp_path / "lstm.dvm")), name="test",
                       route_prefix="/test")
    vm = VirtualMachine(exe, threads=1)
    x = lstm.make_input(5)
    np.testing.assert_array_equal(handle.infer.remote(x).result(), vm.invoke("main", x))
    failed = handle.infer.remote(BAD).result()
    assert isinstance(failed, dynvm.ray.RowError) and failed.type == "InvokeArgumentError"
    status, body = post(port, "/test", {"args": [x.tolist()]})
    assert status == 200
    np.testing.assert_array_equal(np.array(body["output"], np.float32), vm.invoke("main", x))
    status, body = post(port, "/test", {"args": [BAD.tolist()]})
    assert status == 422 and body["error"]["type"] == "InvokeArgumentError"
    assert "= 128" in body["error"]["message"]
    status, body = post(port, "/test", {"x": 1})
    assert status == 400 and "args" in body["error"]["message"]
    serve.delete("test")


def example(name: str):
    """examples/<name>.py as a module; its functions travel to workers by value (workers
    cannot import the examples folder)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module


def test_the_batch_example_checks_itself_on_the_running_cluster(port, capsys):
    assert example("ray_batch_inference").main(["--rows", "64", "--max-len", "4"]) == 0
    assert capsys.readouterr().out.count(" ok") == 2


def test_the_serve_example_checks_itself_on_the_running_cluster(port, capsys):
    assert example("ray_serve").main(["--requests", "16", "--max-len", "4",
                                      "--port", str(port)]) == 0
    assert capsys.readouterr().out.count(" ok") == 3
