"""A native loop state updated in place by set_row (compiler/codegen/native_loop.py,
kernels/loop.py "output" slots): the loop y(t) = set_row(y, t, x[t] * 2) over a (?, 3) state
stays one native loop kernel, gives numpy's result and the bytecode loop's steps at every
length (0 and 1 included), leaves its argument untouched, and a state read elsewhere in the
iteration keeps the copying loop."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine
from tests.e2e.test_native_loop_edges import I64, f32, opcodes


def row_loop_module(read_state_too=False):
    """loop(t, n, x: (?, 3), y: (?, 3)) = t < n ? loop(t + 1, n, x, set_row(y, t, row)) : y with
    row = 2 x[t] (plus y[0] when `read_state_too`); main(X, Y, N) = loop(0, N, X, Y)."""
    mod = ir.IRModule()
    loop = mod.get_global_var("loop")
    t, n = ir.var("t", I64), ir.var("n", I64)
    x, y = ir.var("x", f32(ir.Any(), 3)), ir.var("y", f32(ir.Any(), 3))
    row = op.multiply(op.take(x, t, axis=0), ir.const(2.0, "float32"))
    if read_state_too:
        row = op.add(row, op.take(y, ir.const(0, "int64"), axis=0))
    nxt = op.set_row(y, t, row)
    mod["loop"] = ir.Function(
        [t, n, x, y], ir.If(op.less(t, n), ir.Call(loop, [op.add(t, ir.const(1, "int64")), n, x, nxt]), y),
        ret_type=f32(ir.Any(), 3))
    X, Y, N = ir.var("X", f32(ir.Any(), 3)), ir.var("Y", f32(ir.Any(), 3)), ir.var("N", I64)
    mod["main"] = ir.Function([X, Y, N], ir.Call(loop, [ir.const(0, "int64"), N, X, Y]))
    return mod


@pytest.mark.parametrize("n", [0, 1, 5])
def test_rows_are_written_in_place_with_the_bytecode_loops_result_and_steps(n):
    exe, bytecode = build(row_loop_module()), build(row_loop_module(), native_loops=False)
    assert "CallLoop" in opcodes(exe, "loop") and "CallLoop" not in opcodes(bytecode, "loop")
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    y = np.full((5, 3), -1, np.float32)
    want = y.copy()
    want[:n] = 2 * x[:n]
    results = []
    for built in (exe, bytecode):
        vm = VirtualMachine(built, tier="python")
        results.append(vm.invoke("main", x, y, np.int64(n)))
        np.testing.assert_array_equal(results[-1], want)
        results.append(vm.steps)
    assert results[1] == results[3]
    np.testing.assert_array_equal(y, -1)          # the argument is copied, never written


def test_a_state_also_read_in_the_iteration_keeps_the_copying_loop():
    with pytest.warns(Warning, match="not a static tensor"):
        exe = build(row_loop_module(read_state_too=True))
    x = np.ones((3, 3), np.float32)
    got = VirtualMachine(exe).invoke("main", x, np.zeros((3, 3), np.float32), np.int64(3))
    np.testing.assert_array_equal(got[:, 0], [2, 4, 4])    # rows 1, 2 read the new row 0
