"""The IR text format: printing, parsing back to a structurally equal module, and parse errors."""
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynvm.compiler import ir, op
from dynvm.vm.errors import IRParseError
from tests.strategies import examples

A = ir.Any()
F4 = ir.TensorType((A, 4), "float32")
I64 = ir.TensorType((), "int64")


def roundtrip(mod):
    """parse(print(mod)) equals mod, and printing is a fixed point."""
    text = str(mod)
    back = ir.parse(text)
    assert ir.structural_equal(mod, back), text
    assert str(back) == text
    return text


def main_of(params, body, ret=None, types=()):
    return ir.IRModule.from_expr(ir.Function(params, body, ret), types)


def list_adt():
    a = ir.TypeVar("a")
    cons = ir.Constructor("Cons", [a, ir.TypeCall("List", [a])], "List")
    nil = ir.Constructor("Nil", [], "List")
    return ir.TypeData("List", [a], [cons, nil]), cons, nil


# ------------------------------------------------------------------ hand-written programs

def test_example_program_prints_in_the_documented_form():
    x, n, y = ir.var("x", F4), ir.var("n", I64), ir.var("y", F4)
    mod = ir.IRModule()
    main = mod.get_global_var("main")
    shared = op.add(x, ir.const(1.0, "float32"))
    body = ir.Let(y, op.exp(shared), ir.If(
        op.less(n, ir.const(0, "int64")), op.multiply(shared, y),
        ir.Call(main, [y, op.subtract(n, ir.const(1, "int64"))])))
    mod["main"] = ir.Function([x, n], body, F4)
    assert roundtrip(mod) == (
        "def @main(%x: Tensor[(?, 4), float32], %n: Tensor[(), int64]) -> Tensor[(?, 4), float32] {\n"
        "  %0 = add(%x, 1.0f32);\n"
        "  let %y: Tensor[(?, 4), float32] = exp(%0);\n"
        "  if (less(%n, 0i64)) {\n"
        "    multiply(%0, %y)\n"
        "  } else {\n"
        "    @main(%y, subtract(%n, 1i64))\n"
        "  }\n"
        "}\n")


def test_let_chain_tuple_and_tuple_get_item_roundtrip():
    x = ir.var("x", F4)
    a, b = ir.var("a"), ir.var("b", ir.TupleType([F4, F4]))
    body = ir.Let(a, op.exp(x), ir.Let(b, ir.Tuple([a, x]),
                  ir.Tuple([ir.TupleGetItem(b, 1), ir.Tuple([a]), ir.Tuple([])])))
    text = roundtrip(main_of([x], body))
    assert "%b.1" in text and "(%a,)" in text and "()" in text


def test_mutual_recursion_resolves_globals_defined_later():
    mod = ir.IRModule()
    n1, n2 = ir.var("n", I64), ir.var("n", I64)
    even, odd = mod.get_global_var("even"), mod.get_global_var("odd")
    one, zero = ir.const(1, "int64"), ir.const(0, "int64")
    mod["even"] = ir.Function([n1], ir.If(op.equal(n1, zero), ir.const(True),
                                          ir.Call(odd, [op.subtract(n1, one)])))
    mod["odd"] = ir.Function([n2], ir.If(op.equal(n2, zero), ir.const(False),
                                         ir.Call(even, [op.subtract(n2, one)])))
    text = roundtrip(mod)
    assert "@odd(subtract(%n, 1i64))" in text and "True" in text


def test_closures_and_function_literals_with_captured_vars():
    x, y, f = ir.var("x", F4), ir.var("y", F4), ir.var("f")
    lam = ir.Function([y], op.multiply(x, y), F4)
    body = ir.Let(f, lam, ir.Call(f, [ir.Call(ir.Function([ir.var("z")], x), [x])]))
    text = roundtrip(main_of([x], body))
    assert "let %f = fn (%y: Tensor[(?, 4), float32]) -> Tensor[(?, 4), float32] {" in text
    assert "(fn (%z) {" in text


def test_adt_declaration_constructors_and_nested_match():
    td, cons, nil = list_adt()
    lt = ir.TypeCall("List", [F4])
    l, d = ir.var("l", lt), ir.var("d", F4)
    h, t, h2, p = ir.var("h"), ir.var("t", lt), ir.var("h2"), ir.var("p")
    m = ir.Match(ir.Tuple([l, d]), [
        ir.Clause(ir.PatternTuple([ir.PatternConstructor(cons, [ir.PatternVar(h), ir.PatternConstructor(
            cons, [ir.PatternVar(h2), ir.PatternWildcard()])]), ir.PatternWildcard()]), op.add(h, h2)),
        ir.Clause(ir.PatternTuple([ir.PatternConstructor(cons, [ir.PatternVar(h), ir.PatternVar(t)]),
                                   ir.PatternVar(p)]), ir.Let(ir.var("q"), op.add(h, p), h)),
        ir.Clause(ir.PatternTuple([ir.PatternConstructor(nil), ir.PatternWildcard()]), d),
    ])
    mod = main_of([l, d], ir.Tuple([m, ir.Call(cons, [d, ir.Call(nil, [])]), cons]), types=[td])
    text = roundtrip(mod)
    assert text.startswith("type List[a] {\n  Cons(a, List[a]),\n  Nil,\n}\n")
    assert "(Cons(%h, Cons(%h2, _)), _) => add(%h, %h2)," in text
    assert "Cons(%d, Nil)" in text and "(Cons(%h_1, %t: List[Tensor[(?, 4), float32]]), %p) => {" in text


def test_incomplete_match_and_uncalled_constructors():
    td, cons, nil = list_adt()
    l = ir.var("l", ir.TypeCall("List", [F4]))
    m = ir.Match(l, [ir.Clause(ir.PatternConstructor(nil), ir.Tuple([nil, cons]))], complete=False)
    text = roundtrip(main_of([l], m, types=[td]))
    assert "match? (%l)" in text and "(ctor(Nil), Cons)" in text
    back = ir.parse(text)
    complete = main_of([l], ir.Match(l, m.clauses), types=[td])
    assert not ir.structural_equal(back, complete)


def test_shared_subexpressions_print_once_and_parse_as_a_dag():
    x = ir.var("x", F4)
    e = op.exp(x)
    for _ in range(40):  # a tree of 2**40 paths: only linear work is possible
        e = op.add(e, e)
    text = roundtrip(main_of([x], e))
    assert text.count("= add(") == 39
    body = ir.parse(text)["main"].body
    assert body.args[0] is body.args[1]


def test_shared_node_used_in_both_branches_is_bound_before_the_if():
    x, c = ir.var("x", F4), ir.var("c", ir.TensorType((), "bool"))
    s = op.exp(x)
    text = roundtrip(main_of([x, c], ir.If(c, op.add(s, x), op.multiply(s, x))))
    assert text.index("%0 = exp(%x);") < text.index("if (%c)")


def test_shared_node_local_to_a_branch_stays_in_the_branch_after_its_let():
    x, c, y = ir.var("x", F4), ir.var("c", ir.TensorType((), "bool")), ir.var("y")
    s = op.exp(y)
    branch = ir.Let(y, op.negative(x), op.add(s, s))
    text = roundtrip(main_of([x, c], ir.If(c, branch, x)))
    assert text.index("let %y = negative(%x);") < text.index("%0 = exp(%y);")


def test_shared_node_under_a_function_literal_and_match_clause():
    td, cons, nil = list_adt()
    x, h, t, z = ir.var("x", F4), ir.var("h"), ir.var("t"), ir.var("z")
    inner = op.tanh(op.add(h, z))
    lam = ir.Function([z], op.multiply(inner, inner))
    m = ir.Match(ir.Call(cons, [x, ir.Call(nil, [])]), [
        ir.Clause(ir.PatternConstructor(cons, [ir.PatternVar(h), ir.PatternVar(t)]), ir.Call(lam, [h])),
        ir.Clause(ir.PatternWildcard(), x)])
    roundtrip(main_of([x], m, types=[td]))


def test_non_tail_let_prints_as_a_block_expression():
    x, a, b = ir.var("x", F4), ir.var("a"), ir.var("b")
    inner = ir.Let(a, op.exp(x), op.add(a, a))
    body = ir.Let(b, ir.Let(ir.var("c"), x, inner), op.multiply(inner, b))
    text = roundtrip(main_of([x], body))
    assert "let %b = {" in text


def test_shared_if_and_match_nodes_get_graph_bindings():
    x, c = ir.var("x", F4), ir.var("c", ir.TensorType((), "bool"))
    cond = ir.If(c, op.exp(x), x)
    text = roundtrip(main_of([x, c], ir.Tuple([cond, ir.TupleGetItem(ir.Tuple([cond]), 0), cond])))
    assert "%0 = if (%c) {" in text


def test_same_variable_names_are_disambiguated():
    x1, x2, x3 = ir.var("x", F4), ir.var("x", F4), ir.var("x_1")
    body = ir.Let(x2, op.exp(x1), ir.Let(x3, op.add(x1, x2), x3))
    text = roundtrip(main_of([x1], body))
    assert "let %x_1: " in text and "let %x_1_1 = " in text


def test_odd_variable_and_global_names_are_sanitised_or_quoted():
    a, b = ir.var("0weird name"), ir.var("")
    mod = ir.IRModule({"my func": ir.Function([a, b], op.add(a, b))})
    text = roundtrip(mod)
    assert '@"my func"' in text and "%v0weird_name" in text


def test_type_params_and_all_type_forms():
    td, cons, nil = list_adt()
    a, b = ir.TypeVar("a"), ir.TypeVar("b")
    ft = ir.FuncType([a, ir.TupleType([b, ir.TupleType([])])], ir.TypeCall("List", [a]))
    tt = ir.TupleType([ir.TensorType((5,), "int64"), ir.TensorType((), "bool"),
                       ir.TensorType((0, A, 1), "float64"), ir.TupleType([ir.TensorType((2,), "int32")])])
    f, y = ir.var("f", ft), ir.var("y", tt)
    fn = ir.Function([f, y], y, tt, type_params=[a, b])
    mod = ir.IRModule({"g": fn}, [td])
    text = roundtrip(mod)
    assert "def @g[a, b](%f: fn (a, (b, ())) -> List[a], %y: (Tensor[(5,), int64], Tensor[(), bool], " \
           "Tensor[(0, ?, 1), float64], (Tensor[(2,), int32],))) -> " in text


def test_function_attrs_and_call_attrs_of_every_value_type():
    x = ir.var("x", F4)
    call = ir.Call(ir.Op("sum"), [x], {"axis": [1, -1], "keepdims": True, "exclude": False})
    body = ir.Tuple([call, op.cast(x, dtype="int32"), op.reshape(x, newshape=(-1, 2)),
                     op.strided_slice(x, begin=[0], end=[2], strides=None)])
    fn = ir.Function([x], body, attrs={"Primitive": 1, "scale": 0.5, "big": 1e300, "nan": math.nan,
                                       "inf": -math.inf, "name": 'quo"te\n', "none": None,
                                       "nested": [[1, 2.0], [True, "s"]], "tuple": (3, 4)})
    text = roundtrip(ir.IRModule({"main": fn}))
    assert "sum(%x, axis=[1, -1], keepdims=True, exclude=False)" in text
    assert 'cast(%x, dtype="int32")' in text and "newshape=[-1, 2]" in text
    assert 'Primitive=1, scale=0.5, big=1e+300, "nan"=nan, "inf"=-inf, name="quo\\"te\\n"' in text


def test_op_names_with_dots_and_op_values():
    x, s = ir.var("x", F4), ir.var("s", ir.TensorType((2,), "int64"))
    body = ir.Tuple([ir.Call(ir.Op("dyn.reshape"), [x, s]), ir.Op("exp")])
    assert "dyn.reshape(%x, %s)" in roundtrip(main_of([x, s], body))


@pytest.mark.parametrize("value,dtype,text", [
    (1.0, "float32", "1.0f32"), (2.5, "float64", "2.5f64"), (3, "int64", "3i64"),
    (-1, "int32", "-1i32"), (True, "bool", "True"), (False, "bool", "False"),
    (math.nan, "float32", "nanf32"), (math.inf, "float64", "inff64"),
    (-math.inf, "float32", "-inff32"), (-0.0, "float32", "-0.0f32"), (0.1, "float32", "0.1f32"),
    (1e30, "float32", "1e+30f32"), (2 ** 63 - 1, "int64", "9223372036854775807i64"),
    (-2 ** 31, "int32", "-2147483648i32"), (1e-45, "float32", "1e-45f32"),
])
def test_scalar_constants_of_every_dtype_roundtrip_exactly(value, dtype, text):
    c = ir.const(value, dtype)
    assert str(c) == text
    back = ir.parse(f"def @main() {{ {text} }}")["main"].body
    assert back.data.dtype == np.dtype(dtype) and back.data.shape == ()
    assert back.data.tobytes() == c.data.tobytes() or (np.isnan(back.data) and np.isnan(c.data))


@pytest.mark.parametrize("data", [
    np.array([[1.5, np.nan, -np.inf], [np.inf, -0.0, 1e-40]], np.float32),
    np.array([0.1, 1 / 3, 1e308, 5e-324], np.float64),
    np.zeros((0,), np.float32), np.zeros((2, 0, 3), np.int64), np.array([7], np.int32),
    np.array([[True, False]]), np.array([-2 ** 63, 2 ** 63 - 1], np.int64),
])
def test_tensor_constants_roundtrip_exactly(data):
    x = ir.var("x")
    text = roundtrip(main_of([x], ir.Tuple([ir.Constant(data), x])))
    assert f"const({data.dtype.name}, (" in text


def test_comments_and_free_layout_are_accepted():
    text = """
    // a comment
    def @main(%x: Tensor[(?,4),float32],) -> Tensor[(?, 4), float32] {  // trailing
      %0 = exp(%x) ; add(%0,%0,)
    }
    """
    mod = ir.parse(text)
    x = ir.var("x", F4)
    e = op.exp(x)
    assert ir.structural_equal(mod, main_of([x], op.add(e, e), F4))


def test_scalar_literals_as_written_in_the_brief():
    mod = ir.parse("def @main() { (1f32, 2.5f64, 3i64, -1i32, True, 1e3f32) }")
    values = [(f.data.dtype.name, f.data.item()) for f in mod["main"].body.fields]
    assert values == [("float32", 1.0), ("float64", 2.5), ("int64", 3), ("int32", -1),
                      ("bool", True), ("float32", 1000.0)]


def test_parser_fills_default_attrs():
    mod = ir.parse("def @main(%x) { sum(%x, axis=[0]) }")
    assert mod["main"].body.attrs == {"axis": [0], "keepdims": False, "exclude": False}


def test_expr_text_of_sub_expressions_and_big_constants():
    x = ir.var("x", F4)
    e = op.exp(x)
    assert str(op.add(e, e)) == "%0 = exp(%x);\nadd(%0, %0)"
    big = ir.const(np.arange(100, dtype=np.float32))
    assert str(op.add(x, big)) == "add(%x, const(float32, (100,), [...]))"
    assert ir.expr_text(F4) == "Tensor[(?, 4), float32]"


# ------------------------------------------------------------------ deep programs

def test_ten_thousand_lets_print_parse_and_compare_without_recursion_errors():
    x = ir.var("x", F4)
    vars_ = [ir.var(f"v{i}") for i in range(10_000)]
    body = vars_[-1]
    for i in reversed(range(10_000)):
        body = ir.Let(vars_[i], op.exp(vars_[i - 1] if i else x), body)
    mod = main_of([x], body)
    start = time.perf_counter()
    roundtrip(mod)
    assert time.perf_counter() - start < 20


def test_call_nesting_of_depth_one_thousand():
    x = ir.var("x", F4)
    e = x
    for _ in range(1000):
        e = op.tanh(e)
    roundtrip(main_of([x], e))


def test_nested_ifs_of_depth_three_hundred():
    x, c = ir.var("x", F4), ir.var("c", ir.TensorType((), "bool"))
    e = x
    for _ in range(300):
        e = ir.If(c, op.exp(e), x)
    roundtrip(main_of([x, c], e))


# ------------------------------------------------------------------ random programs

UNARY = ["exp", "tanh", "negative", "sigmoid", "relu"]
BINARY = ["add", "multiply", "subtract", "maximum"]


@st.composite
def random_dags(draw):
    """A function over 1-3 params built from random ops on earlier nodes (so nodes get shared),
    with some lets, tuples, tuple-get-items and ifs."""
    params = [ir.var(draw(st.sampled_from(["x", "y", "x"])), F4) for _ in range(draw(st.integers(1, 3)))]
    cond = ir.var("c", ir.TensorType((), "bool"))
    nodes = list(params)
    lets = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "const", "let", "tuple", "if",
                                     "fn", "block"]))
        pick = st.sampled_from(nodes)
        if kind == "unary":
            node = getattr(op, draw(st.sampled_from(UNARY)))(draw(pick))
        elif kind == "binary":
            node = getattr(op, draw(st.sampled_from(BINARY)))(draw(pick), draw(pick))
        elif kind == "const":
            node = op.add(draw(pick), ir.const(draw(st.floats(width=32)), "float32"))
        elif kind == "tuple":
            node = ir.TupleGetItem(ir.Tuple([draw(pick), draw(pick)]), draw(st.integers(0, 1)))
        elif kind == "if":
            node = ir.If(cond, draw(pick), draw(pick))
        elif kind == "fn":  # a closure whose body shares a node that uses the param
            z = ir.var("z")
            inner = op.exp(op.add(z, draw(pick)))
            node = ir.Call(ir.Function([z], op.multiply(inner, inner)), [draw(pick)])
        elif kind == "block":  # a let that is not in tail position, sharing inside its block
            v = ir.var("b")
            inner = op.tanh(op.add(v, draw(pick)))
            node = op.add(ir.Let(v, draw(pick), op.multiply(inner, inner)), draw(pick))
        else:
            v = ir.var(draw(st.sampled_from(["t", "x"])))
            lets.append((v, draw(pick)))
            node = v
        nodes.append(node)
    body = nodes[-1] if draw(st.booleans()) else ir.Tuple(nodes[len(params):])
    for v, value in reversed(lets):
        body = ir.Let(v, value, body)
    return main_of(params + [cond], body)


@settings(max_examples=examples(150), suppress_health_check=[HealthCheck.too_slow])
@given(random_dags())
def test_random_dags_roundtrip(mod):
    roundtrip(mod)


dims = st.one_of(st.just(A), st.integers(0, 9))
tensor_types = st.builds(ir.TensorType, st.lists(dims, max_size=4).map(tuple),
                         st.sampled_from(["float32", "float64", "int32", "int64", "bool"]))
types = st.recursive(
    tensor_types,
    lambda inner: st.one_of(
        st.builds(ir.TupleType, st.lists(inner, max_size=3)),
        st.builds(ir.FuncType, st.lists(inner, max_size=3), inner),
        st.builds(lambda args: ir.TypeCall("List", args), st.lists(inner, min_size=1, max_size=1))),
    max_leaves=8)


@settings(max_examples=examples(150))
@given(types)
def test_random_types_roundtrip(t):
    td, _, _ = list_adt()
    x = ir.var("x", t)
    text = roundtrip(main_of([x], x, t, types=[td]))
    assert ir.expr_text(t) in text


@settings(max_examples=examples(150))
@given(st.sampled_from(["float32", "float64", "int32", "int64", "bool"]), st.data())
def test_random_constants_roundtrip_bit_exactly(dtype, data):
    shape = data.draw(st.lists(st.integers(0, 3), max_size=3))
    size = int(np.prod(shape))
    np_dtype = np.dtype(dtype)
    raw = data.draw(st.binary(min_size=size * np_dtype.itemsize, max_size=size * np_dtype.itemsize))
    arr = np.frombuffer(raw, dtype=np.uint8).copy()
    if dtype == "bool":
        arr = arr.astype(bool)
    else:
        arr = arr.view(np_dtype)
    arr = arr.reshape(shape)
    mod = main_of([], ir.Tuple([ir.Constant(arr)]))
    back = ir.parse(str(mod))["main"].body.fields[0]
    assert back.data.dtype == arr.dtype and back.data.shape == arr.shape
    same = back.data.tobytes() == arr.tobytes()
    if dtype.startswith("float"):
        same = same or bool(np.all((back.data == arr) | (np.isnan(back.data) & np.isnan(arr))))
    assert same


# ------------------------------------------------------------------ parse errors

@pytest.mark.parametrize("text,message", [
    ("def @main(%x) { frobnicate(%x) }", r"line 1, col 17: unknown op 'frobnicate'"),
    ("def @main(%x) { add(%x, %y) }", r"line 1, col 25: undefined variable %y"),
    ("def @main(%x) { @nope(%x) }", r"line 1, col 17: undefined global @nope"),
    ("def @main(%x) {\n  add(%x, %x) }}", r"line 2, col 16: expected 'def' or 'type', got '}'"),
    ("def @main(%x) {\n  add(%x, %x); }", r"line 2, col 14: expected '}' closing the block"),
    ("def @main(%x) { add(%x %x) }", r"line 1, col 24: expected ',' or '\)', got '%x'"),
    ("def @main(%x: Tensor[(?, 4), float16]) { %x }", r"unknown dtype 'float16'"),
    ("def @main(%x) { add(%x, 1) }", r"line 1, col 25: expected an expression \(scalar constants"),
    ("def @main(%x) { %0 }", r"undefined graph binding %0"),
    ("def @main(%x) { exp(%x, %x) }", r"op exp takes 1 argument"),
    ("def @main(%x) { exp(%x, flavour=1) }", r"op exp has no attribute"),
    ("def @main(%x) { cast(%x) }", r"op cast needs attribute 'dtype'"),
    ("def @main(%x) { 3000000000i32 }", r"line 1, col 17: 3000000000 is out of range for int32"),
    ("def @main(%x) { const(float32, (2,), [1.0]) }", r"const has 1 values for shape \(2,\)"),
    ("def @main(%x) { match (%x) { Foo => %x } }", r"unknown constructor Foo"),
    ("def @main(%x) { %x }\ndef @main(%y) { %y }", r"line 2, col 5: @main is defined twice"),
    ("fn @main() { 1f32 }", r"line 1, col 1: expected 'def' or 'type', got 'fn'"),
    ("def @main(%x) { let %y = %y; %y }", r"undefined variable %y"),
    ("def @main(%x) { add(%x, $) }", r"line 1, col 25: unexpected character '\$'"),
    ("def @main(%x) { %x", r"line 1, col 1: unclosed"),
    ("def @main(%x) { exp(%x) ", r"unclosed"),
    ("def @main(%x) { 99999999999999999999i64 }", r"out of range for int64"),
])
def test_malformed_text_raises_parse_error_with_position(text, message):
    with pytest.raises(IRParseError, match=message):
        ir.parse(text)
