"""Random programs with control flow run by both tiers: if on data, while loops, recursion,
data-dependent output shapes, Any dims, shape errors and step limits. The native tier must give
the Python tier's results bit for bit, its error classes and messages, and its step counts."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.compiler import build, ir, op
from dynvm.vm.errors import DynVMError
from tests.strategies import BINARY, UNARY, examples
from tests.vm.test_native_tier import assert_same, both_tiers

ROWS = ir.TensorType((ir.Any(), 3), "float32")
COUNT = ir.TensorType((), "int64")


def zero_d(value, dtype):
    return ir.const(np.array(value, dtype))


@st.composite
def tensor_expr(draw, env, depth):
    """A (?, 3) float32 expression over env's tensors: elementwise ops, `if` on a data-dependent
    condition, a while loop of `n` iterations, or a call of the recursive function."""
    kinds = ["leaf", "unary", "binary"] + (["if", "loop"] if depth > 0 else []) + \
        (["recursion"] if depth > 0 and env["calls"] else [])
    kind = draw(st.sampled_from(kinds))
    sub = lambda: draw(tensor_expr(env, depth - 1))       # noqa: E731
    if kind == "leaf":
        return draw(st.sampled_from(env["tensors"]))
    if kind == "unary":
        name = draw(st.sampled_from(sorted(UNARY)))
        value = sub()
        if name == "exp":
            value = op.minimum(op.maximum(value, ir.const(-20.0)), ir.const(20.0))
        return getattr(op, name)(value)
    if kind == "binary":
        return getattr(op, draw(st.sampled_from(sorted(BINARY))))(sub(), sub())
    if kind == "if":
        condition = op.greater(op.sum(sub()), zero_d(0.0, np.float32))
        return ir.If(condition, sub(), sub())
    if kind == "loop":
        step = draw(st.sampled_from(sorted(BINARY)))
        other = sub()

        def body(i, acc):
            return [op.add(i, zero_d(1, np.int64)), getattr(op, step)(acc, other)]
        # the loop's initial values are typed on their own: no call of the module's function
        init = draw(tensor_expr(dict(env, calls=False), depth - 1))
        loop = ir.while_loop(lambda i, acc: op.less(i, env["n"]), body, [zero_d(0, np.int64), init])
        return ir.TupleGetItem(loop, 1)
    env["used"].add("rec")
    return ir.Call(env["rec"], [env["n"], sub()])


def recursive_function(rec, step, tail):
    """rec(k, acc) = k < 1 ? acc : rec(k - 1, step(acc)) (tail) or step(rec(k - 1, acc))."""
    k, acc = ir.var("k", COUNT), ir.var("acc", ROWS)
    one = zero_d(1, np.int64)
    inner = ir.Call(rec, [op.subtract(k, one), step(acc) if tail else acc])
    return ir.Function([k, acc], ir.If(op.less(k, one), acc, inner if tail else step(inner)),
                       ret_type=ROWS)


@st.composite
def control_program(draw):
    """(IRModule, has data-dependent output): main(x, y: (?, 3), n: int64) -> a tuple of a
    random expression, its column sums and, sometimes, the positions of its positive entries
    (argwhere: a data-dependent row count)."""
    mod = ir.IRModule()
    x, y, n = ir.var("x", ROWS), ir.var("y", ROWS), ir.var("n", COUNT)
    env = {"tensors": [x, y], "n": n, "rec": mod.get_global_var("rec"), "calls": True, "used": set()}
    body = draw(tensor_expr(env, 2))
    fields = [body, op.sum(body, axis=[0])]
    if draw(st.booleans()):
        fields.append(op.argwhere(op.greater(body, zero_d(0.0, np.float32))))
    if "rec" in env["used"]:
        name = draw(st.sampled_from(sorted(UNARY)))
        mod["rec"] = recursive_function(env["rec"], getattr(op, name) if name != "exp" else op.tanh,
                                        draw(st.booleans()))
    mod["main"] = ir.Function([x, y, n], ir.Tuple(fields))
    return mod


def outcome(vm, args):
    """What an invocation gives: ("ok", result, steps) or ("error", class, message)."""
    try:
        return "ok", vm.invoke("main", *args), vm.steps
    except DynVMError as e:
        return "error", type(e).__name__, str(e)


def assert_same_outcome(native, python, args):
    a, b = outcome(native, args), outcome(python, args)
    assert a[0] == b[0], (a, b)
    if a[0] == "error":
        assert a == b
    else:
        assert_same(a[1], b[1])
        assert a[2] == b[2]


@settings(max_examples=examples(8), deadline=None)
@given(mod=control_program(), x_rows=st.sampled_from([0, 1, 2, 3]), y_rows=st.sampled_from([1, 2, 3]),
       n=st.integers(0, 4), seed=st.integers(0, 3), limit=st.one_of(st.none(), st.integers(0, 200)))
def test_random_control_flow_programs_agree(mod, x_rows, y_rows, n, seed, limit):
    exe = build(mod, native_loops=False)
    assert "Python tier" not in exe.explain(), exe.explain()
    rng = np.random.default_rng(seed)
    args = (rng.standard_normal((x_rows, 3)).astype(np.float32),
            rng.standard_normal((y_rows, 3)).astype(np.float32), np.array(n, np.int64))
    native, python = both_tiers(exe, max_steps=limit)
    assert_same_outcome(native, python, args)


def test_any_while_loop_runs_natively():
    """Nested loops whose trip counts come from shape_of/take in the condition, an `if` and a
    data-dependent shape (argwhere) inside the body: native throughout, same answers."""
    x, n = ir.var("x", ROWS), ir.var("n", COUNT)
    rows = op.take(op.shape_of(x), zero_d(0, np.int64))

    def outer_body(i, acc):
        def inner_body(j, total):
            positive = op.argwhere(op.greater(x, zero_d(0.0, np.float32)))     # (?, 2)
            count = op.cast(op.take(op.shape_of(positive), zero_d(0, np.int64)), "float32")
            grown = ir.If(op.greater(op.sum(total), zero_d(100.0, np.float32)),
                          op.subtract(total, count), op.add(total, count))
            return [op.add(j, zero_d(1, np.int64)), grown]
        inner = ir.while_loop(lambda j, total: op.less(j, op.add(i, n)), inner_body,
                              [zero_d(0, np.int64), acc])
        return [op.add(i, zero_d(1, np.int64)), ir.TupleGetItem(inner, 1)]
    outer = ir.while_loop(lambda i, acc: op.less(i, rows), outer_body, [zero_d(0, np.int64), x])
    exe = build(ir.IRModule.from_expr(ir.Function([x, n], ir.TupleGetItem(outer, 1))))
    assert "Python tier" not in exe.explain(), exe.explain()
    native, python = both_tiers(exe)
    rng = np.random.default_rng(0)
    for r in (0, 1, 4):
        args = rng.standard_normal((r, 3)).astype(np.float32), np.array(2, np.int64)
        assert_same_outcome(native, python, args)
