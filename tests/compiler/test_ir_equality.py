"""structural_equal: alpha-equivalence, exact constants, attrs, types, ADTs, DAGs and deep programs."""
import math
import time

import numpy as np
import pytest

from dynvm.compiler import ir, op

A = ir.Any()
F4 = ir.TensorType((A, 4), "float32")
eq = ir.structural_equal


def fn(params, body, ret=None, **kw):
    return ir.Function(params, body, ret, **kw)


def list_adt(elem_var="a", nil_name="Nil"):
    a = ir.TypeVar(elem_var)
    cons = ir.Constructor("Cons", [a, ir.TypeCall("List", [a])], "List")
    nil = ir.Constructor(nil_name, [], "List")
    return ir.TypeData("List", [a], [cons, nil]), cons, nil


# ------------------------------------------------------------------ equal

def test_functions_equal_up_to_renaming_of_params_and_lets():
    x, y, t = ir.var("x", F4), ir.var("y", F4), ir.var("t")
    p, q, u = ir.var("p", F4), ir.var("q", F4), ir.var("u")
    a = fn([x, y], ir.Let(t, op.add(x, y), op.multiply(t, x)))
    b = fn([p, q], ir.Let(u, op.add(p, q), op.multiply(u, p)))
    assert eq(a, b) and eq(b, a)


def test_checked_type_is_ignored_and_dag_equals_its_tree():
    x, y = ir.var("x"), ir.var("y")
    shared = op.exp(x)
    a = fn([x], op.add(shared, shared))
    b = fn([y], op.add(op.exp(y), op.exp(y)))
    b.body.checked_type = F4
    assert eq(a, b)


def test_nan_constants_are_equal_and_lists_equal_tuples_in_attrs():
    x = ir.var("x")
    a = op.add(x, ir.const(np.array([np.nan, 1.0], np.float32)))
    b = op.add(x, ir.const(np.array([np.nan, 1.0], np.float32)))
    assert eq(a, b)
    assert eq(op.reshape(x, newshape=(2, -1)), op.reshape(x, newshape=[2, -1]))
    assert eq(ir.Call(ir.Op("f"), [], {"v": math.nan}), ir.Call(ir.Op("f"), [], {"v": math.nan}))


def test_free_vars_pair_by_name():
    assert eq(op.exp(ir.var("x")), op.exp(ir.var("x")))
    assert not eq(op.exp(ir.var("x")), op.exp(ir.var("y")))


def test_type_params_are_alpha_equivalent():
    a, b = ir.TypeVar("a"), ir.TypeVar("b")
    fa = fn([ir.var("x", a)], ir.var("z"), a, type_params=[a])
    fb = fn([ir.var("x", b)], ir.var("z"), b, type_params=[b])
    assert eq(fa, fb)


def test_modules_with_adts_and_match_are_equal():
    def build():
        td, cons, nil = list_adt()
        mod = ir.IRModule(type_definitions=[td])
        l, h, t = ir.var("l", ir.TypeCall("List", [F4])), ir.var("h"), ir.var("t")
        length = mod.get_global_var("length")
        m = ir.Match(l, [
            ir.Clause(ir.PatternConstructor(cons, [ir.PatternVar(h), ir.PatternVar(t)]),
                      op.add(ir.const(1, "int64"), ir.Call(length, [t]))),
            ir.Clause(ir.PatternConstructor(nil), ir.const(0, "int64"))])
        mod["length"] = fn([l], m)
        return mod
    assert eq(build(), build())


def test_types_and_type_data_compare_structurally():
    assert eq(ir.TupleType([F4, ir.FuncType([F4], F4)]), ir.TupleType([F4, ir.FuncType([F4], F4)]))
    assert not eq(ir.TensorType((A, 4)), ir.TensorType((3, 4)))
    assert eq(list_adt("a")[0], list_adt("b")[0])
    assert not eq(list_adt()[0], list_adt(nil_name="Empty")[0])
    assert eq(None, None) and not eq(None, F4)


# ------------------------------------------------------------------ not equal

def test_different_binding_structure_is_not_equal():
    x, y = ir.var("x"), ir.var("y")
    p, q = ir.var("x"), ir.var("y")
    assert not eq(fn([x, y], op.add(x, y)), fn([p, q], op.add(q, p)))
    assert not eq(fn([x, y], op.add(x, x)), fn([p, q], op.add(p, q)))
    # a bound var against a free var of the same name
    free = ir.var("x")
    assert not eq(fn([x], x), fn([p], free))


def test_let_bound_value_differs_from_the_inlined_value():
    x, t = ir.var("x"), ir.var("t")
    assert not eq(fn([x], ir.Let(t, op.exp(x), t)), fn([ir.var("x")], op.exp(x)))


@pytest.mark.parametrize("a,b", [
    (np.array([1.0], np.float32), np.array([2.0], np.float32)),
    (np.array([1.0], np.float32), np.array([1.0], np.float64)),
    (np.array([1, 2], np.int64), np.array([[1, 2]], np.int64)),
    (np.array(0.0, np.float32), np.array(-0.0, np.float32)),
    (np.array([np.nan], np.float32), np.array([1.0], np.float32)),
    (np.array(True), np.array(False)),
])
def test_different_constants_are_not_equal(a, b):
    assert not eq(ir.Constant(a), ir.Constant(b))


@pytest.mark.parametrize("a,b", [
    ({"axis": 1}, {"axis": 2}),
    ({"axis": 1}, {"axis": True}),
    ({"axis": 1}, {"axis": 1.0}),
    ({"axis": [1, 2]}, {"axis": [1]}),
    ({"axis": None}, {}),
    ({"dtype": "int32"}, {"dtype": "int64"}),
])
def test_different_attrs_are_not_equal(a, b):
    x = ir.var("x")
    assert not eq(ir.Call(ir.Op("f"), [x], a), ir.Call(ir.Op("f"), [x], b))


def test_different_annotations_and_return_types_are_not_equal():
    assert not eq(fn([ir.var("x", F4)], ir.var("z")), fn([ir.var("x")], ir.var("z")))
    assert not eq(fn([ir.var("x", F4)], ir.var("z")), fn([ir.var("x", ir.TensorType((A, 5)))], ir.var("z")))
    assert not eq(fn([], ir.var("z"), F4), fn([], ir.var("z")))
    t1, t2 = ir.var("t", F4), ir.var("t")
    assert not eq(ir.Let(t1, ir.var("z"), t1), ir.Let(t2, ir.var("z"), t2))


def test_other_structural_differences_are_not_equal():
    x, c = ir.var("x"), ir.var("c")
    assert not eq(ir.If(c, x, op.exp(x)), ir.If(c, op.exp(x), x))
    assert not eq(ir.TupleGetItem(ir.Tuple([x, x]), 0), ir.TupleGetItem(ir.Tuple([x, x]), 1))
    assert not eq(ir.Tuple([x]), ir.Tuple([x, x]))
    assert not eq(ir.GlobalVar("f"), ir.GlobalVar("g"))
    assert not eq(op.exp(x), op.tanh(x))
    assert not eq(fn([x], x, attrs={"Primitive": 1}), fn([x], x))
    td, cons, nil = list_adt()
    h = ir.var("h")
    m1 = ir.Match(x, [ir.Clause(ir.PatternConstructor(cons, [ir.PatternVar(h), ir.PatternWildcard()]), h)])
    m2 = ir.Match(x, [ir.Clause(ir.PatternConstructor(cons, [ir.PatternWildcard(), ir.PatternVar(h)]), h)])
    m3 = ir.Match(x, m1.clauses, complete=False)
    assert not eq(m1, m2) and not eq(m1, m3)
    assert not eq(ir.IRModule({"main": fn([x], x)}), ir.IRModule({"other": fn([x], x)}))


# ------------------------------------------------------------------ size and depth

def test_shared_dag_compares_in_linear_time():
    def build():
        x = ir.var("x")
        e = x
        for _ in range(200):
            e = op.add(e, e)
        return fn([x], e)
    start = time.perf_counter()
    assert eq(build(), build())
    assert time.perf_counter() - start < 1


def test_ten_thousand_lets_and_call_depth_two_thousand():
    def lets(n, last_const):
        x = ir.var("x")
        vs = [ir.var(f"v{i}") for i in range(n)]
        body = op.add(vs[-1], ir.const(last_const, "float32"))
        for i in reversed(range(n)):
            body = ir.Let(vs[i], op.exp(vs[i - 1] if i else x), body)
        return fn([x], body)
    assert eq(lets(10_000, 1.0), lets(10_000, 1.0))
    assert not eq(lets(10_000, 1.0), lets(10_000, 2.0))

    def calls(n, leaf):
        e = leaf
        for _ in range(n):
            e = op.tanh(e)
        return e
    x = ir.var("x")
    assert eq(calls(2000, x), calls(2000, x))
    assert not eq(calls(2000, x), calls(1999, x))
