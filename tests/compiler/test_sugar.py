"""Expression sugar: operators, indexing, .shape/.dtype and Python values build the IR the `op`
functions build, and run like numpy."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.compiler.ir import structural_equal
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import DynVMError

F = ir.TensorType((ir.Any(), 3), "float32")
I = ir.TensorType((ir.Any(),), "int64")


def run(params, body, *args):
    return VirtualMachine(build(ir.IRModule.from_expr(ir.Function(params, body)))).invoke("main", *args)


@pytest.mark.parametrize("sugar, plain", [
    (lambda x, y: x + y, lambda x, y: op.add(x, y)),
    (lambda x, y: x - y * x, lambda x, y: op.subtract(x, op.multiply(y, x))),
    (lambda x, y: -x / y, lambda x, y: op.divide(op.negative(x), y)),
    (lambda x, y: x ** y, lambda x, y: op.power(x, y)),
    (lambda x, y: x < y, lambda x, y: op.less(x, y)),
    (lambda x, y: x >= y, lambda x, y: op.greater_equal(x, y)),
    (lambda x, y: x * 2.0 + 1, lambda x, y: op.add(op.multiply(x, ir.const(2.0, "float32")),
                                                   ir.const(1.0, "float32"))),
    (lambda x, y: 3 - x, lambda x, y: op.subtract(ir.const(3.0, "float32"), x)),
])
def test_operators_build_the_ops_ir(sugar, plain):
    x, y = ir.var("x", F), ir.var("y", F)
    assert structural_equal(sugar(x, y), plain(x, y))
    assert str(sugar(x, y)) == str(plain(x, y))


def test_operators_run_like_numpy():
    x, y = ir.var("x", F), ir.var("y", F)
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    b = np.full((2, 3), 0.5, np.float32)
    out = run([x, y], ir.Tuple([(x * 2.0 + y) / 4, x <= 0, x > y, -x]), a, b)
    for got, want in zip(out, [(a * 2 + b) / 4, a <= 0, a > b, -a]):
        np.testing.assert_array_equal(got, want)


def test_python_values_take_the_other_operands_dtype():
    n = ir.var("n", I)
    np.testing.assert_array_equal(run([n], n * 2 + 1, np.arange(3)), [1, 3, 5])
    assert (n * 2).args[1].data.dtype == np.int64
    assert op.add(ir.var("x", F), 1.5).args[1].data.dtype == np.float32
    with pytest.raises(DynVMError, match="2.5 cannot be a int64 constant without changing it"):
        n * 2.5
    w = np.ones((3, 3), np.float64)
    assert op.add(ir.var("x", F), w).args[1].data.dtype == np.float32


def test_matmul_and_indexing():
    x = ir.var("x", ir.TensorType((ir.Any(), 3), "float32"))
    w = ir.var("w", ir.TensorType((3, 2), "float32"))
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = run([x, w], ir.Tuple([x @ w, x[1], x[-1], x[1:3], x[:, 2], x[::2, 1:]]), a, b)
    for got, want in zip(out, [a @ b, a[1], a[-1], a[1:3], a[:, 2], a[::2, 1:]]):
        np.testing.assert_array_equal(got, want)


def test_tuple_fields_shape_and_dtype():
    x = ir.var("x", F)
    pair = ir.Tuple([x, x.shape[0]])
    assert isinstance(pair[1], ir.TupleGetItem)
    assert x.dtype == "float32" and (x < 1.0).dtype == "bool" and op.cast(x, "int32").dtype == "int32"
    assert len(x.shape) == 2
    rows, last = run([x], ir.Tuple([pair[1], x.shape[-1]]), np.zeros((5, 3), np.float32))
    assert int(rows) == 5 and int(last) == 3


def test_expressions_stay_keys_and_are_not_iterable():
    x, y = ir.var("x", F), ir.var("y", F)
    assert x != y and x == x and len({x: 1, y: 2}) == 2
    with pytest.raises(TypeError, match="not iterable"):
        list(x)
