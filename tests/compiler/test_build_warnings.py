"""No silent slow paths: `build` warns (PerformanceWarning) about every function that runs in
the Python tier and every loop that stays bytecode, with the reason; fast programs build quietly."""
import warnings

import numpy as np
import pytest

from dynvm import PerformanceWarning
from dynvm.compiler import build, ir, op


def quietly_built(mod):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        return build(mod)


def test_a_program_on_the_fastest_paths_builds_without_a_warning():
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    quietly_built(ir.IRModule.from_expr(ir.Function([x], op.tanh(op.add(x, x)))))


def test_a_loop_that_stays_bytecode_is_named_with_the_reason():
    n = ir.var("n", ir.TensorType((), "int64"))
    one = ir.const(np.array(1, np.int64))

    def outer_body(i, total):       # a loop inside the loop: not one native loop kernel
        inner = ir.while_loop(lambda j, t: op.less(j, i), lambda j, t: [op.add(j, one), op.add(t, one)],
                              [ir.const(np.array(0, np.int64)), total])
        return [op.add(i, one), ir.TupleGetItem(inner, 1)]
    loop = ir.while_loop(lambda i, t: op.less(i, n), outer_body,
                         [ir.const(np.array(0, np.int64)), ir.const(np.array(0, np.int64))])
    with pytest.warns(PerformanceWarning, match="main_while_loop0: its loop runs as bytecode, not as "
                                                "one native loop kernel \\("):
        build(ir.IRModule.from_expr(ir.Function([n], ir.TupleGetItem(loop, 1))))


def test_every_function_outside_the_native_tier_is_named_with_the_reason():
    """A function above the native tier's size limit (an unfused chain of adds over Any dims)."""
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    y = x
    for _ in range(400):
        y = op.add(y, x)
    big = ir.IRModule.from_expr(ir.Function([x], y))
    with pytest.warns(PerformanceWarning, match="\n  main: runs in the Python tier \\(.* instructions: above"):
        exe = build(big, fuse=False)
    assert "main: Python tier (" in exe.explain()
