"""The models in examples/ against their numpy references (one executable, many sizes)."""
import importlib.util
import pathlib

import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lstm():
    m = load_example("lstm")
    w = m.weights()
    return m, w, VirtualMachine(build(m.build_module(w)), max_depth=8)


@pytest.mark.parametrize("steps", [1, 2, 17, 128])
def test_lstm_matches_numpy_for_any_sequence_length(lstm, steps):
    m, w, vm = lstm
    x = m.make_input(steps, seed=steps)
    np.testing.assert_allclose(vm.invoke("main", x), m.reference(x, w), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tree_lstm():
    m = load_example("tree_lstm")
    w = m.weights()
    return m, w, VirtualMachine(build(m.build_module(w)))


@pytest.mark.parametrize("nodes", [1, 2, 9, 60, 200])
def test_tree_lstm_matches_numpy_on_random_trees(tree_lstm, nodes):
    m, w, vm = tree_lstm
    py_tree = m.random_tree(nodes, seed=nodes)
    np.testing.assert_allclose(vm.invoke("main", m.to_adt(py_tree)), m.reference(py_tree, w)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [0, 1, 13, 512])
def test_arange_model_matches_numpy(length):
    m = load_example("arange_model")
    table = m.position_table()
    vm = VirtualMachine(build(m.build_module(table)))
    x = m.make_input(length)
    np.testing.assert_allclose(vm.invoke("main", x), m.reference(x, table), rtol=1e-6)


@pytest.mark.parametrize("lengths", [[], [1], [4, 1, 7, 2], list(range(1, 25))])
def test_list_ops_matches_numpy(lengths):
    from dynvm.vm.convert import from_list, to_list
    m = load_example("list_ops")
    vm = VirtualMachine(build(m.build_module()))
    xs = m.make_input(lengths)
    out, energy = vm.invoke("main", to_list(xs), np.float32(0.5))
    expected, expected_energy = m.reference(xs, np.float32(0.5))
    got = from_list(out)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(energy, expected_energy, rtol=1e-4)


@pytest.mark.parametrize("anchors", [0, 1, 37, 600])
def test_nms_postprocess_matches_the_tvm_reference(anchors):
    m = load_example("nms_postprocess")
    vm = VirtualMachine(build(m.build_module()))
    data = m.make_input(anchors, seed=anchors)
    np.testing.assert_array_equal(vm.invoke("main", data), m.reference(data))


@pytest.fixture(scope="module")
def bert():
    m = load_example("bert_varlen")
    w = m.weights()
    return m, w, VirtualMachine(build(m.build_module(w)))


@pytest.mark.parametrize("seq", [1, 7, 64])
def test_bert_varlen_matches_numpy_for_any_sequence_length(bert, seq):
    m, w, vm = bert
    x = m.make_input(seq, seed=seq)
    np.testing.assert_allclose(vm.invoke("main", x), m.reference(x, w), rtol=1e-4, atol=1e-4)


def test_the_examples_self_check_reports_matches_and_mismatches(capsys):
    """check_and_time (the examples' main): exit status 0 only when every case matches numpy,
    one row per case."""
    from dynvm.vm.profiler import check_and_time

    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x], op.add(x, x)))))
    a = np.arange(5, dtype=np.float32)
    assert check_and_time(vm, "n", [(5, [a], 2 * a), (0, [a[:0]], a[:0])], 1e-6, 0, repeats=2) == 0
    assert check_and_time(vm, "n", [(5, [a], 2 * a), (5, [a], 3 * a)], 1e-6, 0, repeats=2) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines if line.split()[0] in ("5", "0")] == ["ok", "ok", "ok", "MISMATCH"]
