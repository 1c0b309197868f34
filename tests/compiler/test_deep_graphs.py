"""Graphs of any size: 10 000-op nested expressions and let chains build and run (against
numpy), print and parse back, and every pass alone walks a deep graph, all at Python's default
recursion limit (nothing in the compiler raises it)."""
import sys

import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.compiler.codegen import compile_module
from dynvm.compiler.ir.walk import Walker, each
from dynvm.compiler.passes import fuse_ops, lambda_lift
from dynvm.compiler.passes.lambda_lift import free_vars
from dynvm.compiler.passes.mutator import ExprMutator
from dynvm.compiler.typing import infer_types
from dynvm.vm import VirtualMachine

DEPTH = 10_000
HIDDEN = 8
F = ir.TensorType((ir.Any(), HIDDEN), "float32")


@pytest.fixture(autouse=True)
def default_recursion_limit():
    """The compiler must not need (or leave behind) a raised recursion limit."""
    limit = sys.getrecursionlimit()
    assert limit <= 1000
    yield
    assert sys.getrecursionlimit() == limit


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal((HIDDEN, HIDDEN)) * 0.3).astype(np.float32),
            (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32))


def layers_expr(x, ops, w, b):
    """tanh(add(dense(h, w), b)) repeated: `ops` ops as one nested expression."""
    h, wc, bc = x, ir.const(w), ir.const(b)
    for _ in range(ops // 3):
        h = op.tanh(op.add(op.dense(h, wc), bc))
    return h


def layers_numpy(x, ops, w, b):
    for _ in range(ops // 3):
        x = np.tanh(x @ w.T + b)
    return x


def elementwise_chain(x, ops):
    """add, tanh, multiply, ... nested `ops` deep (fused in bounded groups)."""
    e = x
    for i in range(ops):
        e = (op.add(e, ir.const(0.01)), op.tanh(e), op.multiply(e, ir.const(1.5)))[i % 3]
    return e


def elementwise_numpy(a, ops):
    for i in range(ops):
        a = (a + np.float32(0.01), np.tanh(a), a * np.float32(1.5))[i % 3]
    return a


def let_chain(x, ops):
    """The same elementwise ops, each bound by its own let."""
    steps, h = [], x
    for i in range(ops):
        v = ir.var(f"v{i}")
        steps.append((v, (op.add(h, ir.const(0.01)), op.tanh(h), op.multiply(h, ir.const(1.5)))[i % 3]))
        h = v
    body = h
    for v, value in reversed(steps):
        body = ir.Let(v, value, body)
    return body


def main(params, body):
    return ir.IRModule.from_expr(ir.Function(params, body))


def run(mod, *args, **build_kw):
    return VirtualMachine(build(mod, **build_kw)).invoke("main", *args)


def data(rows=3, seed=1):
    return np.random.default_rng(seed).standard_normal((rows, HIDDEN)).astype(np.float32)


# ------------------------------------------------------------------ build and run

def test_nested_dense_layers_of_ten_thousand_ops_build_and_run():
    w, b = weights()
    x = ir.var("x", F)
    a = data()
    got = run(main([x], layers_expr(x, DEPTH, w, b)), a)
    np.testing.assert_allclose(got, layers_numpy(a, DEPTH, w, b), rtol=1e-4, atol=1e-5)


def test_nested_elementwise_chain_of_ten_thousand_ops_builds_and_runs():
    x = ir.var("x", F)
    a = data()
    got = run(main([x], elementwise_chain(x, DEPTH)), a)
    np.testing.assert_allclose(got, elementwise_numpy(a, DEPTH), rtol=1e-4, atol=1e-5)


def test_let_chain_of_ten_thousand_ops_builds_and_runs():
    x = ir.var("x", F)
    a = data()
    got = run(main([x], let_chain(x, DEPTH)), a)
    np.testing.assert_allclose(got, elementwise_numpy(a, DEPTH), rtol=1e-4, atol=1e-5)


def test_deep_chain_inside_a_native_loop_body():
    """A while_loop whose body is a 3000-op nested expression: the native-loop planner walks it."""
    n = ir.var("n", ir.TensorType((), "int64"))
    x = ir.var("x", ir.TensorType((2, HIDDEN), "float32"))
    i0 = ir.const(0, "int64")
    loop = ir.while_loop(lambda i, h: op.less(i, n),
                         lambda i, h: [op.add(i, ir.const(1, "int64")), elementwise_chain(h, 3000)],
                         [i0, x])
    a = data(rows=2)
    got = run(main([n, x], ir.TupleGetItem(loop, 1)), np.array(2, np.int64), a)
    want = elementwise_numpy(elementwise_numpy(a, 3000), 3000)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_deeply_nested_ifs_and_functions_build_and_run():
    """Control flow nests too: 1500 ifs each inside the previous one's branch, under 300
    nested local functions (lambda lifting, type inference and codegen walk both)."""
    x, c = ir.var("x", F), ir.var("c", ir.TensorType((), "bool"))
    e = x
    for _ in range(1500):
        e = ir.If(c, op.add(e, ir.const(1.0)), x)
    for k in range(300):
        y = ir.var(f"y{k}", F)
        e = ir.Call(ir.Function([y], e if k else op.add(e, y)), [x])
    a = data()
    vm = VirtualMachine(build(main([x, c], e)))
    np.testing.assert_allclose(vm.invoke("main", a, np.array(True)), a * 2 + 1500, rtol=1e-5)
    np.testing.assert_allclose(vm.invoke("main", a, np.array(False)), a * 2, rtol=1e-5)


# ------------------------------------------------------------------ text format

def test_text_round_trip_of_a_ten_thousand_node_graph():
    w, b = weights()
    x = ir.var("x", F)
    mod = main([x], op.add(layers_expr(x, DEPTH // 2, w, b), elementwise_chain(x, DEPTH // 2)))
    text = str(mod)
    assert max(len(line) for line in text.splitlines()) < 2000   # deep nesting is bound, not inlined
    assert ir.structural_equal(ir.parse(text), mod)
    assert str(ir.parse(text)) == text


def test_deeply_nested_text_parses():
    """Hand-written text nests as deep as it likes: 10 000 calls and 2000 blocks."""
    src = ("def @main(%x: Tensor[(?, 8), float32]) {\n  "
           + "exp(" * DEPTH + "{ " * 2000 + "%x" + " }" * 2000 + ")" * DEPTH + "\n}\n")
    mod = ir.parse(src)
    x = mod["main"].params[0]
    e = x
    for _ in range(DEPTH):
        e = op.exp(e)
    assert ir.structural_equal(mod, main([x], e))


# ------------------------------------------------------------------ each pass alone

@pytest.fixture(scope="module")
def deep_typed():
    """A typed 10 000-op nested graph (dense layers and an elementwise chain)."""
    w, b = weights()
    x = ir.var("x", F)
    mod = main([x], op.add(layers_expr(x, DEPTH // 2, w, b), elementwise_chain(x, DEPTH // 2)))
    return infer_types(mod)


def count_calls(expr):
    class Count(Walker):
        def visit_Call(self, node):
            return 1 + sum((yield from each(node.args)))

        def default(self, node):
            return 0
    return Count().visit(expr)


def test_type_inference_alone(deep_typed):
    assert deep_typed["main"].checked_type.ret_type == F


def test_expr_mutator_alone(deep_typed):
    class Rename(ExprMutator):
        def rewrite_call(self, call):
            return ir.Call(call.callee, call.args, call.attrs) if call.args else call
    body = deep_typed["main"].body
    out = Rename().visit(body)
    assert out is not body and count_calls(out) == count_calls(body) >= DEPTH - 2


def test_fusion_alone(deep_typed):
    fused = fuse_ops(deep_typed)
    assert count_calls(fused["main"].body) < count_calls(deep_typed["main"].body) // 2
    assert fused["main"].checked_type == deep_typed["main"].checked_type


def test_lambda_lifting_alone():
    """10 000 nested calls of a local function: each becomes a direct call of the lifted global."""
    x, y = ir.var("x", F), ir.var("y", F)
    f = ir.var("f")
    e = x
    for _ in range(DEPTH):
        e = ir.Call(f, [e])
    mod = infer_types(main([x], ir.Let(f, ir.Function([y], op.exp(y)), e)))
    lifted = lambda_lift(mod)
    assert sorted(lifted.functions) == ["main", "main_f0"]
    assert count_calls(lifted["main"].body) == DEPTH


def test_codegen_alone(deep_typed):
    exe = compile_module(deep_typed)
    calls = [ins for ins in exe.functions[0].instructions if ins.name == "CallKernel"]
    assert len(calls) == count_calls(deep_typed["main"].body)


def test_free_variables_and_structural_equality_alone(deep_typed):
    body = deep_typed["main"].body
    assert free_vars(body) == deep_typed["main"].params
    w, b = weights()
    x = ir.var("x", F)
    other = op.add(layers_expr(x, DEPTH // 2, w, b), elementwise_chain(x, DEPTH // 2))
    assert ir.structural_equal(body, other)
    assert not ir.structural_equal(body, op.add(layers_expr(x, DEPTH // 2, w, b),
                                                elementwise_chain(x, DEPTH // 2 - 1)))


def test_printer_alone(deep_typed):
    text = ir.expr_text(deep_typed["main"].body)
    assert text.count("\n") >= DEPTH // 32 - 1 and text.endswith(")")
