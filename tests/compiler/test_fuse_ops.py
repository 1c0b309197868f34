"""Fusion: elementwise chains become one kernel, epilogues fuse into dense/matmul, and fused
programs compute exactly what the unfused ones do."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.compiler import build, ir, op
from dynvm.compiler.passes import fuse_ops
from dynvm.compiler.typing import infer_types
from dynvm.vm import VirtualMachine

from tests.strategies import evaluate, examples, layouts, pin_programs, program_inputs, random_program


def kernel_calls(exe):
    return [ins for f in exe.functions for ins in f.instructions if ins.name == "CallKernel"]


def primitives(mod):
    text = str(mod)
    return text.count("Primitive=1")


def test_elementwise_chain_becomes_one_kernel():
    a, b, c = (ir.var(n, ir.TensorType((ir.Any(),), "float32")) for n in "abc")
    y = op.multiply(op.tanh(op.add(op.multiply(a, b), c)), op.sigmoid(a))
    mod = ir.IRModule.from_expr(ir.Function([a, b, c], y))
    assert primitives(fuse_ops(infer_types(mod))) == 1
    exe = build(mod)
    assert len(kernel_calls(exe)) == 1
    rng = np.random.default_rng(0)
    x, y_, z = (rng.standard_normal(37).astype(np.float32) for _ in range(3))
    expected = np.tanh(x * y_ + z) * (1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(VirtualMachine(exe).invoke("main", x, y_, z), expected, rtol=1e-5, atol=1e-6)


def test_shared_intermediate_is_not_fused_into_two_consumers():
    x = ir.var("x", ir.TensorType((4,), "float32"))
    shared = op.exp(x)
    mod = ir.IRModule.from_expr(ir.Function([x], ir.Tuple([op.add(shared, x), op.multiply(shared, x)])))
    exe = build(mod)
    assert len(kernel_calls(exe)) == 3  # exp once, then each consumer
    data = np.arange(4, dtype=np.float32)
    s, m = VirtualMachine(exe).invoke("main", data)
    np.testing.assert_allclose(s, np.exp(data) + data, rtol=1e-5)
    np.testing.assert_allclose(m, np.exp(data) * data, rtol=1e-5)


def test_scalar_constants_are_folded_into_the_kernel():
    x = ir.var("x", ir.TensorType((ir.Any(), 3), "float32"))
    y = op.maximum(op.multiply(x, ir.const(2.0)), ir.const(0.5))
    exe = build(ir.IRModule.from_expr(ir.Function([x], y)))
    assert len(kernel_calls(exe)) == 1
    assert not any(ins.name == "LoadConst" for ins in exe.functions[0].instructions)
    data = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(VirtualMachine(exe).invoke("main", data), np.maximum(data * 2, 0.5))


def test_fusion_keeps_branches_separate():
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    c = ir.var("c", ir.TensorType((), "bool"))
    body = ir.If(c, op.exp(op.negative(x)), op.relu(op.negative(x)))
    exe = build(ir.IRModule.from_expr(ir.Function([c, x], body)))
    data = np.array([-1.0, 0.5, 2.0], np.float32)
    vm = VirtualMachine(exe)
    np.testing.assert_allclose(vm.invoke("main", np.bool_(True), data), np.exp(-data), rtol=1e-6)
    np.testing.assert_allclose(vm.invoke("main", np.bool_(False), data), np.maximum(-data, 0))


def test_chains_inside_match_clauses_fuse_too():
    """An elementwise chain in a match clause (e.g. a Tree-LSTM node) is one kernel, and a value
    used by the match data and by a clause is still materialised once."""
    from dynvm.compiler import prelude

    mod = prelude.module()
    some = mod.constructor("Some")
    t = ir.TensorType((ir.Any(),), "float32")
    opt = ir.var("o", ir.TypeCall("Option", [t]))
    x, y = ir.var("x", t), ir.var("y", t)
    clause = ir.Clause(ir.PatternConstructor(some, [ir.PatternVar(x)]),
                       op.multiply(op.tanh(op.add(x, y)), op.sigmoid(y)))
    mod["main"] = ir.Function([opt, y], ir.Match(opt, [clause], complete=False))
    exe = build(mod)
    calls = [ins for ins in exe.functions[exe.function_index("main")].instructions
             if ins.name == "CallKernel"]
    assert len(calls) == 1
    from dynvm.vm import ADT
    a, b = np.linspace(-2, 2, 7, dtype=np.float32), np.linspace(1, 3, 7, dtype=np.float32)
    got = VirtualMachine(exe).invoke("main", ADT("Some", 0, (a,)), b)
    np.testing.assert_allclose(got, np.tanh(a + b) / (1 + np.exp(-b)), rtol=1e-5, atol=1e-6)


@pin_programs()
@settings(max_examples=examples(8))
@given(program=random_program(), rows=st.sampled_from([0, 1, 5, 17]), layout=layouts())
def test_fused_and_unfused_both_match_numpy_on_random_programs(program, rows, layout):
    func, reference = program
    mod = ir.IRModule.from_expr(func)
    x, y = program_inputs(rows, layout, seed=rows)
    expected = evaluate(reference, x, y)
    for exe in (build(mod), build(mod, fuse=False)):
        np.testing.assert_allclose(VirtualMachine(exe).invoke("main", x, y)[0], expected,
                                   rtol=1e-4, atol=1e-5)


def dense_bias_relu_module(rows=ir.Any()):
    x = ir.var("x", ir.TensorType((rows, 8), "float32"))
    w = ir.const(np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32))
    b = ir.const(np.random.default_rng(2).standard_normal(5).astype(np.float32))
    y = op.relu(op.add(op.dense(x, w), b))
    return ir.IRModule.from_expr(ir.Function([x], y)), w.data, b.data


def test_dense_epilogue_fuses_when_dense_is_compiled():
    mod, w, b = dense_bias_relu_module()
    assert op.get_op("dense").kernel == "compiled"
    exe = build(mod)
    assert len(kernel_calls(exe)) == 1
    data = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)
    np.testing.assert_allclose(VirtualMachine(exe).invoke("main", data),
                               np.maximum(data @ w.T + b, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(VirtualMachine(build(mod, fuse=False)).invoke("main", data),
                               np.maximum(data @ w.T + b, 0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axes", [None, [1, 0, 2], [2, 0, 1], [0, 2, 1], [-1, -3, -2]])
def test_transpose_feeding_an_elementwise_chain_is_read_through_strides(axes):
    x = ir.var("x", ir.TensorType((ir.Any(), 3, ir.Any()), "float32"))
    t = op.transpose(x, axes=axes)
    y = ir.var("y", ir.TensorType((ir.Any(), ir.Any()), "float32"))  # broadcast over dim 0
    body = op.sigmoid(op.multiply(op.add(t, y), ir.const(0.5)))
    mod = ir.IRModule.from_expr(ir.Function([x, y], body))
    exe = build(mod)
    assert len(kernel_calls(exe)) == 1                                # no transpose kernel
    rng = np.random.default_rng(7)
    vm, unfused = VirtualMachine(exe), VirtualMachine(build(mod, fuse=False))
    for shape in [(4, 3, 5), (1, 3, 1), (0, 3, 2), (2, 3, 17)]:
        a = rng.standard_normal(shape).astype(np.float32)
        t_shape = np.transpose(np.zeros(shape), axes).shape
        b = rng.standard_normal(t_shape[1:]).astype(np.float32)
        expected = 1 / (1 + np.exp(-(np.transpose(a, axes) + b) * 0.5))
        np.testing.assert_allclose(vm.invoke("main", a, b), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(unfused.invoke("main", a, b), expected, rtol=1e-5, atol=1e-6)


def test_a_tensor_read_both_transposed_and_plain():
    x = ir.var("x", ir.TensorType((4, 4), "float32"))
    body = op.subtract(op.transpose(x), x)             # x^T - x: one kernel, x passed twice
    exe = build(ir.IRModule.from_expr(ir.Function([x], body)))
    assert len(kernel_calls(exe)) == 1
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(VirtualMachine(exe).invoke("main", a), a.T - a)


def test_a_shared_transpose_is_materialised_once():
    x = ir.var("x", ir.TensorType((2, 3), "float32"))
    t = op.transpose(x)
    exe = build(ir.IRModule.from_expr(ir.Function([x], ir.Tuple([op.exp(t), op.negative(t)]))))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    e, n = VirtualMachine(exe).invoke("main", a)
    np.testing.assert_allclose(e, np.exp(a.T), rtol=1e-6)
    np.testing.assert_array_equal(n, -a.T)
