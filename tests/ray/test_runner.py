"""dynvm.ray's Runner without a Ray cluster (the module imports without Ray): rows run one
invocation each, or stacked by equal shape with `batch_dim`, and a failing row gets a RowError
while the other rows of its batch are answered."""
import threading

import numpy as np
import pytest

from dynvm import Executable, VirtualMachine, build, ir, op
from dynvm.ray import Predictor, RowError, Runner


@pytest.fixture(scope="module")
def row_sums():
    """main(x: float32[?, 4]) -> float32[?]: each row's sum (a leading batch dim)."""
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    return build(ir.IRModule.from_expr(ir.Function([x], op.sum(x, axis=1))))


def rows_of(*lengths):
    return [(np.arange(n, dtype=np.float32) + i,) for i, n in enumerate(lengths)]


def test_without_batch_dim_every_row_is_one_invocation_at_its_own_shape(row_sums):
    rows = [(np.full((n, 4), n, np.float32),) for n in (1, 3, 0, 7)]
    vm = VirtualMachine(row_sums)
    results = Runner(row_sums).run(rows)
    for (x,), got in zip(rows, results):
        np.testing.assert_array_equal(got, vm.invoke("main", x))


def test_with_batch_dim_rows_of_equal_shape_are_stacked_and_split_back(row_sums):
    rows = rows_of(4, 4, 4, 4, 4)
    results = Runner(row_sums, batch_dim=True).run(rows)
    assert [type(r) for r in results] == [np.float32] * 5
    np.testing.assert_array_equal(results, [x.sum() for (x,) in rows])


def test_with_batch_dim_a_tuple_result_is_split_field_by_field():
    x = ir.var("x", ir.TensorType((ir.Any(), 3), "float32"))
    exe = build(ir.IRModule.from_expr(ir.Function([x], ir.Tuple([op.sum(x, axis=1), op.exp(x)]))))
    rows = rows_of(3, 3)
    for (row,), (total, exp) in zip(rows, Runner(exe, batch_dim=True).run(rows)):
        assert total == row.sum()
        np.testing.assert_allclose(exp, np.exp(row), rtol=1e-6)


def test_batch_dim_on_a_function_whose_result_has_no_batch_dim_is_a_value_error():
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    exe = build(ir.IRModule.from_expr(ir.Function([x], op.sum(x))))
    with pytest.raises(ValueError, match="needs the leading batch dimension"):
        Runner(exe, batch_dim=True).run(rows_of(4, 4))


def test_a_failing_group_is_rerun_row_by_row_so_only_bad_rows_fail(row_sums):
    rows = rows_of(4, 5, 4, 5) + [(np.zeros(4, np.float64),)]
    results = Runner(row_sums, batch_dim=True).run(rows)
    assert results[0] == rows[0][0].sum() and results[2] == rows[2][0].sum()
    for bad in (1, 3, 4):
        assert isinstance(results[bad], RowError) and results[bad].type == "InvokeArgumentError"
    assert "expected dim 1 = 4" in results[1].message and "float64" in results[4].message


def test_nested_lists_are_stacked_as_lists_and_converted_by_the_vm(row_sums):
    results = Runner(row_sums, batch_dim=True).run([([1, 2, 3, 4],), ([0.5, 0, 0, 0],), ([[1]],)])
    assert results[:2] == [np.float32(10), np.float32(0.5)]
    assert isinstance(results[2], RowError)


def test_predictor_returns_outputs_and_error_columns_keeping_other_columns(row_sums, tmp_path):
    row_sums.save(tmp_path / "sums.dvm")
    predictor = Predictor(str(tmp_path / "sums.dvm"))
    xs = np.empty(3, dtype=object)
    xs[:] = [np.ones((2, 4), np.float32), np.ones((2, 3), np.float32), np.ones((5, 4), np.float32)]
    out = predictor({"id": np.array([7, 8, 9]), "x": xs})
    assert sorted(out) == ["error", "id", "output"]
    np.testing.assert_array_equal(out["id"], [7, 8, 9])
    np.testing.assert_array_equal(out["output"][0], [4, 4])
    assert out["output"][1].shape == (0,) and out["output"][1].dtype == np.float32
    assert out["error"][0] == "" and out["error"][1].startswith("InvokeArgumentError: ")


def test_the_executable_loads_from_bytes_a_path_or_an_executable(row_sums, tmp_path):
    row_sums.save(tmp_path / "sums.dvm")
    for source in (row_sums.to_bytes(), tmp_path / "sums.dvm", row_sums):
        assert isinstance(Runner(source).exe, Executable)
    with pytest.raises(TypeError, match="executable must be"):
        Runner(42)
    with pytest.raises(KeyError):
        Runner(row_sums, function="missing")


def test_each_thread_gets_its_own_vm(row_sums):
    runner = Runner(row_sums)
    vms = []
    thread = threading.Thread(target=lambda: vms.append(runner.vm()))
    thread.start()
    thread.join()
    assert runner.vm() is runner.vm() and vms[0] is not runner.vm()
