"""The models of dynvm.models against their numpy references (one executable, many sizes), and
the scripts in examples/ that run them: each checks itself and exits 0 (`--tiny` sizes)."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.models import (arange_model, bert_varlen, check_and_time, list_ops, lstm,
                          nms_postprocess, tree_lstm)
from dynvm.vm import VirtualMachine

# the Ray examples (ray_*.py) need Ray and a cluster: tests/ray/ runs them
EXAMPLES = sorted(p for p in (pathlib.Path(__file__).resolve().parents[2] / "examples").glob("*.py")
                  if not p.name.startswith("ray_"))


@pytest.fixture(scope="module")
def lstm_vm():
    w = lstm.weights()
    return w, VirtualMachine(build(lstm.build_module(w)), max_depth=8)


@pytest.mark.parametrize("steps", [1, 2, 17, 128])
def test_lstm_matches_numpy_for_any_sequence_length(lstm_vm, steps):
    w, vm = lstm_vm
    x = lstm.make_input(steps, seed=steps)
    np.testing.assert_allclose(vm.invoke("main", x), lstm.reference(x, w), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tree_lstm_vm():
    w = tree_lstm.weights()
    return w, VirtualMachine(build(tree_lstm.build_module(w)))


@pytest.mark.parametrize("nodes", [1, 2, 9, 60, 200])
def test_tree_lstm_matches_numpy_on_random_trees(tree_lstm_vm, nodes):
    w, vm = tree_lstm_vm
    py_tree = tree_lstm.random_tree(nodes, seed=nodes)
    np.testing.assert_allclose(vm.invoke("main", tree_lstm.to_adt(py_tree)),
                               tree_lstm.reference(py_tree, w)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [0, 1, 13, 512])
def test_arange_model_matches_numpy(length):
    table = arange_model.position_table()
    vm = VirtualMachine(build(arange_model.build_module(table)))
    x = arange_model.make_input(length)
    np.testing.assert_allclose(vm.invoke("main", x), arange_model.reference(x, table), rtol=1e-6)


@pytest.mark.parametrize("lengths", [[], [1], [4, 1, 7, 2], list(range(1, 25))])
def test_list_ops_matches_numpy(lengths):
    from dynvm.vm.convert import from_list, to_list
    vm = VirtualMachine(build(list_ops.build_module()))
    xs = list_ops.make_input(lengths)
    out, energy = vm.invoke("main", to_list(xs), np.float32(0.5))
    expected, expected_energy = list_ops.reference(xs, np.float32(0.5))
    got = from_list(out)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(energy, expected_energy, rtol=1e-4)


@pytest.mark.parametrize("anchors", [0, 1, 37, 600])
def test_nms_postprocess_matches_the_tvm_reference(anchors):
    vm = VirtualMachine(build(nms_postprocess.build_module()))
    data = nms_postprocess.make_input(anchors, seed=anchors)
    np.testing.assert_array_equal(vm.invoke("main", data), nms_postprocess.reference(data))


@pytest.fixture(scope="module")
def bert_vm():
    w = bert_varlen.weights()
    return w, VirtualMachine(build(bert_varlen.build_module(w)))


@pytest.mark.parametrize("seq", [1, 7, 64])
def test_bert_varlen_matches_numpy_for_any_sequence_length(bert_vm, seq):
    w, vm = bert_vm
    x = bert_varlen.make_input(seq, seed=seq)
    np.testing.assert_allclose(vm.invoke("main", x), bert_varlen.reference(x, w), rtol=1e-4, atol=1e-4)


def test_a_twelve_layer_nested_encoder_matches_numpy():
    """BERT-base's structure (12 layers nested as one expression) at a small width: the form
    `dynvm bench`'s bert_base builds."""
    config = bert_varlen.Config(hidden=32, heads=4, ffn=64, layers=12)
    w = bert_varlen.weights(config)
    mod = bert_varlen.build_module(w)
    vm = VirtualMachine(build(mod))
    for seq in (1, 9):
        x = bert_varlen.make_input(seq, seed=seq, config=config)
        np.testing.assert_allclose(vm.invoke("main", x), bert_varlen.reference(x, w),
                                   rtol=1e-4, atol=1e-4)


def test_the_examples_self_check_reports_matches_and_mismatches(capsys):
    """check_and_time (the examples' main): exit status 0 only when every case matches numpy,
    one row per case."""
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], op.add(x, x)))))
    a = np.arange(5, dtype=np.float32)
    assert check_and_time(vm, "n", [(5, [a], 2 * a), (0, [a[:0]], a[:0])], 1e-6, 0, repeats=2) == 0
    assert check_and_time(vm, "n", [(5, [a], 2 * a), (5, [a], 3 * a)], 1e-6, 0, repeats=2) == 1
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split()[-1] for line in lines if line.split()[0] in ("5", "0")]
    assert rows == ["ok", "ok", "ok", "MISMATCH"]


def test_every_model_has_an_example_script():
    assert [p.stem for p in EXAMPLES] == sorted(
        m.__name__.rsplit(".", 1)[1]
        for m in (arange_model, bert_varlen, list_ops, lstm, nms_postprocess, tree_lstm))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_script_checks_itself_and_exits_zero(script, tmp_path):
    """`python examples/X.py --tiny` from any directory: every row checked ok, exit status 0."""
    proc = subprocess.run([sys.executable, str(script), "--tiny"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.rstrip().endswith(("ok", "MISMATCH"))]
    assert len(rows) >= 2 and all(row.rstrip().endswith("ok") for row in rows), proc.stdout
