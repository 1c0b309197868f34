"""Type inference with Any dims: broadcasting, branches, globals, and errors with expression text."""
import pytest

from dynvm.compiler import ir, op
from dynvm.compiler.typing import infer_types
from dynvm.vm.errors import TypeInferenceError

A = ir.Any()


def infer(params, body, **kw):
    mod = ir.IRModule.from_expr(ir.Function(params, body, **kw))
    infer_types(mod)
    return mod["main"].checked_type.ret_type


def t(*shape, dtype="float32"):
    return ir.TensorType(shape, dtype)


@pytest.mark.parametrize("a,b,expected", [
    ((A, 4), (1, 4), (A, 4)),
    ((A, 1), (3,), (A, 3)),
    ((A,), (A,), (A,)),
    ((A,), (1,), (A,)),
    ((5, A), (5, 7), (5, 7)),
    ((), (2, A), (2, A)),
])
def test_broadcast_with_any(a, b, expected):
    x, y = ir.var("x", t(*a)), ir.var("y", t(*b))
    assert infer([x, y], op.add(x, y)) == t(*expected)


def test_static_broadcast_mismatch_is_an_error_quoting_the_call():
    x, y = ir.var("x", t(3)), ir.var("y", t(4))
    with pytest.raises(TypeInferenceError, match=r"add\(%x, %y\)"):
        infer([x, y], op.exp(op.add(x, y)))


def test_comparison_gives_bool_and_where_joins():
    x, y = ir.var("x", t(A, 2)), ir.var("y", t(2))
    assert infer([x, y], op.less(x, y)) == t(A, 2, dtype="bool")
    assert infer([x, y], op.where(op.less(x, y), x, y)) == t(A, 2)


def test_if_branches_with_different_dims_join_to_any():
    c = ir.var("c", t(dtype="bool"))
    x, y = ir.var("x", t(3, 4)), ir.var("y", t(5, 4))
    assert infer([c, x, y], ir.If(c, x, y)) == t(A, 4)


def test_if_branches_with_different_rank_are_an_error():
    c = ir.var("c", t(dtype="bool"))
    x, y = ir.var("x", t(3)), ir.var("y", t(3, 1))
    with pytest.raises(TypeInferenceError, match="branches"):
        infer([c, x, y], ir.If(c, x, y))


def test_if_condition_must_be_scalar():
    c = ir.var("c", t(2, dtype="bool"))
    x = ir.var("x", t(3))
    with pytest.raises(TypeInferenceError, match="condition"):
        infer([c, x], ir.If(c, x, x))


def test_let_and_tuples():
    x = ir.var("x", t(A, 3))
    v = ir.var("v")
    body = ir.Let(v, op.exp(x), ir.TupleGetItem(ir.Tuple([v, op.shape_of(v)]), 1))
    assert infer([x], body) == t(2, dtype="int64")


def test_tuple_index_out_of_range():
    x = ir.var("x", t(3))
    with pytest.raises(TypeInferenceError, match="out of range"):
        infer([x], ir.TupleGetItem(ir.Tuple([x]), 1))


def test_recursive_global_needs_return_type():
    mod = ir.IRModule()
    f = mod.get_global_var("f")
    n = ir.var("n", t(dtype="int64"))
    mod["f"] = ir.Function([n], ir.Call(f, [n]))
    with pytest.raises(TypeInferenceError, match="return type"):
        infer_types(mod)


def test_global_call_checks_argument_types():
    mod = ir.IRModule()
    g = mod.get_global_var("g")
    a = ir.var("a", t(A, 2))
    mod["g"] = ir.Function([a], op.relu(a))
    x = ir.var("x", t(4, 3))
    mod["main"] = ir.Function([x], ir.Call(g, [x]))
    with pytest.raises(TypeInferenceError, match="argument 0"):
        infer_types(mod)


def test_unannotated_parameter_is_an_error():
    x = ir.var("x")
    with pytest.raises(TypeInferenceError, match="annotation"):
        infer([x], x)


def test_declared_return_type_must_fit_body():
    x = ir.var("x", t(3))
    with pytest.raises(TypeInferenceError, match="return type"):
        infer([x], x, ret_type=t(4))
