"""lambda_lift on a loop that is not the head of its let chain."""
import numpy as np

from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine


def test_a_while_loop_in_the_body_of_a_let_is_lifted_and_runs():
    """(let %s = x * 2 in while_loop(i < n: acc += %s))[1]: the loop's own let is the body
    of another let."""
    x = ir.var("x", ir.TensorType((3,), "float32"))
    n = ir.var("n", ir.TensorType((), "int64"))
    s = ir.var("s", ir.TensorType((3,), "float32"))
    i = ir.var("i", ir.TensorType((), "int64"))
    acc = ir.var("acc", ir.TensorType((3,), "float32"))
    loop = ir.while_loop(lambda i, acc: op.less(i, n),
                         lambda i, acc: [op.add(i, ir.const(1, "int64")), op.add(acc, s)],
                         [(i, ir.const(0, "int64")), (acc, op.zeros([3], dtype="float32"))])
    body = ir.TupleGetItem(ir.Let(s, op.multiply(x, ir.const(2.0, "float32")), loop), 1)
    vm = VirtualMachine(build(ir.IRModule.from_expr(ir.Function([x, n], body))))
    x_value = np.array([1.0, -2.0, 0.5], np.float32)
    for trips in (0, 1, 4):
        np.testing.assert_allclose(vm.invoke("main", x_value, np.array(trips, np.int64)),
                                   x_value * 2 * trips)
