"""ADTs, pattern matching and closures in the native tier, against the Python tier: the same
results, the same error classes, the same step counts; every example and every prelude function
native; long lists and deep trees within the typed limits."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynvm.compiler import build, prelude
from dynvm.vm import ADT, Closure, VirtualMachine
from dynvm.vm.convert import from_list, to_list, tree
from dynvm.vm.errors import DynVMError, InvokeArgumentError, PerformanceWarning, VMRecursionError
from tests.strategies import examples
from tests.vm.test_native_tier import NativeVM

VEC = "Tensor[(?), float32]"
LIST = f"List[{VEC}]"

# helpers every generated program may use: a filter (an If on a closure's result), compose (a
# closure returned from a function), a nested match over two lists, a tree sum (recursion
# through map and foldl)
HELPERS = f"""
def @filter(%p: fn ({VEC}) -> Tensor[(), bool], %l: {LIST}) -> {LIST} {{
  match (%l) {{
    Cons(%h, %t) => if (%p(%h)) {{ Cons(%h, @filter(%p, %t)) }} else {{ @filter(%p, %t) }},
    Nil => Nil,
  }}
}}

def @compose(%f: fn ({VEC}) -> {VEC}, %g: fn ({VEC}) -> {VEC}) -> fn ({VEC}) -> {VEC} {{
  fn (%x: {VEC}) -> {VEC} {{ %f(%g(%x)) }}
}}

def @pairs(%x: {LIST}, %y: {LIST}) -> {LIST} {{
  match ((%x, %y)) {{
    (Cons(%a, Cons(%b, %t)), Cons(%c, _)) => Cons(add(%a, %c), Cons(%b, @pairs(%t, %y))),
    (Cons(%a, %t), Nil) => Cons(%a, @pairs(%t, Nil)),
    _ => Nil,
  }}
}}

def @tree_sum(%t: Tree[Tensor[(), float32]]) -> Tensor[(), float32] {{
  match (%t) {{
    Rose(%v, %children) => @foldl(fn (%acc: Tensor[(), float32], %s: Tensor[(), float32]) -> Tensor[(), float32] {{
      add(%acc, %s)
    }}, %v, @map(@tree_sum, %children)),
  }}
}}

def @head(%l: {LIST}) -> {VEC} {{
  match? (%l) {{ Cons(%h, _) => %h }}
}}
"""

# list -> list steps (each a text template over the list expression `L`, the scale `%s` and
# a vector `%v`)
STEPS = {
    "scale": f"@map(fn (%x: {VEC}) -> {VEC} {{ multiply(%x, %s) }}, L)",
    "rev": "@rev(L)",
    "concat": "@concat(L, @rev(L))",
    "positive": f"@filter(fn (%x: {VEC}) -> Tensor[(), bool] {{ greater(sum(%x), 0.0f32) }}, L)",
    "compose": f"@map(@compose(fn (%x: {VEC}) -> {VEC} {{ add(%x, %s) }}, fn (%x: {VEC}) -> {VEC} {{ tanh(%x) }}), L)",
    "pairs": "@pairs(L, @rev(L))",
    "zip": f"@map(fn (%p: ({VEC}, {VEC})) -> {VEC} {{ subtract(%p.0, %p.1) }}, @zip(L, @rev(L)))",
    "iterate": f"@concat(L, @iterate(fn (%x: {VEC}) -> {VEC} {{ multiply(%x, %s) }}, @head(@concat(L, Cons(%v, Nil))), 3i64))",
}
# list -> result endings
ENDS = {
    "list": ("L", LIST),
    "energy": (f"@foldl(fn (%a: Tensor[(), float32], %x: {VEC}) -> Tensor[(), float32] {{ add(%a, sum(%x)) }}, 0.0f32, L)",
               "Tensor[(), float32]"),
    "foldr": (f"@foldr(fn (%x: {VEC}, %a: Tensor[(), float32]) -> Tensor[(), float32] {{ subtract(sum(%x), %a) }}, 0.0f32, L)",
              "Tensor[(), float32]"),
    "length": ("@length(L)", "Tensor[(), int64]"),
    "nth": ("@nth(L, 2i64)", VEC),          # fails (Fatal: no clause) on lists shorter than 3
    "head": ("@head(L)", VEC),              # fails on the empty list
}


def list_program(steps, end):
    expr = "%xs"
    for step in steps:
        expr = STEPS[step].replace("L", expr)
    body, ret = ENDS[end]
    return prelude.parse(HELPERS + f"""
def @main(%xs: {LIST}, %s: Tensor[(), float32], %v: {VEC}) -> {ret} {{
  {body.replace("L", expr)}
}}""")


def outcome(vm, *args):
    """(result or error class, steps)."""
    try:
        return vm.invoke("main", *args), vm.steps
    except DynVMError as e:
        return type(e), vm.steps


def assert_same(a, b):
    """Bit for bit through lists, tuples, ADTs and closures."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif isinstance(a, ADT):
        assert (a.constructor, a.tag, len(a.fields)) == (b.constructor, b.tag, len(b.fields))
        stack = [(a, b)]
        while stack:        # lists are long: no recursion
            x, y = stack.pop()
            assert (x.constructor, x.tag, len(x.fields)) == (y.constructor, y.tag, len(y.fields))
            for f, g in zip(x.fields, y.fields):
                if isinstance(f, ADT):
                    stack.append((f, g))
                else:
                    assert_same(f, g)
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, Closure):
        assert a.func_index == b.func_index and len(a.captured) == len(b.captured)
    else:
        assert a == b


def both(exe, **options):
    native = NativeVM(exe, **options)
    assert native._native is not None
    return native, VirtualMachine(exe, tier="python", **options)


def vectors(draw_lengths, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in draw_lengths]


@settings(max_examples=examples(8), deadline=None)
@given(steps=st.lists(st.sampled_from(sorted(STEPS)), max_size=3), end=st.sampled_from(sorted(ENDS)),
       lengths=st.lists(st.integers(0, 5), max_size=8), seed=st.integers(0, 3))
def test_random_list_programs_agree(steps, end, lengths, seed):
    exe = build(list_program(steps, end))
    assert all(line.endswith(": native") for line in exe.explain().splitlines()), exe.explain()
    native, python = both(exe)
    args = to_list(vectors(lengths, seed)), np.float32(0.5), np.ones(2, np.float32)
    (got, steps_native), (want, steps_python) = outcome(native, *args), outcome(python, *args)
    assert_same(got, want)
    assert steps_native == steps_python


def random_rose(rng, nodes):
    """A random rose tree of `nodes` nodes with 0-d float32 values."""
    values = [np.float32(rng.standard_normal()) for _ in range(nodes)]
    children = [[] for _ in range(nodes)]
    for k in range(1, nodes):
        children[int(rng.integers(0, k))].append(k)
    built = [None] * nodes
    for k in reversed(range(nodes)):
        built[k] = tree(np.asarray(values[k]), [built[c] for c in children[k]])
    return built[0]


@settings(max_examples=examples(12), deadline=None)
@given(nodes=st.integers(1, 60), seed=st.integers(0, 10))
def test_random_trees_agree(nodes, seed):
    exe = build(prelude.parse(HELPERS + """
        def @main(%t: Tree[Tensor[(), float32]]) -> (Tensor[(), float32], Tensor[(), int64]) {
          (@tree_sum(%t), @tree_size(%t))
        }"""))
    native, python = both(exe)
    t = random_rose(np.random.default_rng(seed), nodes)
    (got, n1), (want, n2) = outcome(native, t), outcome(python, t)
    assert_same(got, want)
    assert n1 == n2 and int(got[1]) == nodes


def test_every_example_and_prelude_function_is_native():
    from dynvm.models import arange_model, bert_varlen, list_ops, lstm, nms_postprocess, tree_lstm
    small_bert = bert_varlen.weights(bert_varlen.Config(hidden=32, heads=2, ffn=64, layers=1))
    modules = [tree_lstm.build_module(), list_ops.build_module(), lstm.build_module(),
               arange_model.build_module(), nms_postprocess.build_module(),
               bert_varlen.build_module(small_bert)]
    for mod in modules:
        text = build(mod).explain()
        assert all(line.endswith(": native") for line in text.splitlines()), text
    prelude_names = {line.split(":")[0] for line in build(prelude.parse(
        "def @main(%x: Tensor[(), int64]) -> Tensor[(), int64] { %x }")).explain().splitlines()}
    assert {"map", "foldl", "foldr", "length", "nth", "concat", "rev", "zip", "iterate",
            "tree_size"} <= prelude_names


def test_tree_lstm_and_list_ops_run_natively():
    from dynvm.models import list_ops, tree_lstm
    w = tree_lstm.weights()
    native, python = both(build(tree_lstm.build_module(w)))
    for nodes in (1, 7, 30):
        t = tree_lstm.to_adt(tree_lstm.random_tree(nodes, seed=nodes))
        assert_same(native.invoke("main", t), python.invoke("main", t))
        assert native.steps == python.steps
        np.testing.assert_allclose(native.invoke("main", t),
                                   tree_lstm.reference(tree_lstm.random_tree(nodes, seed=nodes), w)[0],
                                   rtol=1e-5, atol=1e-5)
    native, python = both(build(list_ops.build_module()))
    xs = to_list(list_ops.make_input([3, 0, 7]))
    assert_same(native.invoke("main", xs, np.float32(2)), python.invoke("main", xs, np.float32(2)))


def test_closures_cross_the_edge_both_ways():
    """A closure returned by invoke (capturing a tensor) is passed back in and called."""
    exe = build(prelude.parse(HELPERS + f"""
        def @adder(%s: {VEC}) -> fn ({VEC}) -> {VEC} {{ fn (%x: {VEC}) -> {VEC} {{ add(%x, %s) }} }}
        def @main(%f: fn ({VEC}) -> {VEC}, %xs: {LIST}) -> {LIST} {{ @map(%f, %xs) }}"""))
    native, python = both(exe)
    s = np.arange(3, dtype=np.float32)
    f_native, f_python = native.invoke("adder", s), python.invoke("adder", s)
    assert isinstance(f_native, Closure) and len(f_native.captured) == 1
    xs = to_list([np.ones(3, np.float32), np.full(3, 2, np.float32)])
    for f in (f_native, f_python):
        got, want = native.invoke("main", f, xs), python.invoke("main", f, xs)
        assert_same(got, want)
        assert [a.tolist() for a in from_list(got)] == [[1, 2, 3], [2, 3, 4]]


def test_adt_arguments_are_checked_all_the_way_down():
    exe = build(prelude.parse(f"def @main(%xs: {LIST}) -> Tensor[(), int64] {{ @length(%xs) }}"))
    vm = NativeVM(exe)
    bad = ADT("Cons", 0, (np.ones(2, np.float32), ADT("Some", 0, (np.ones(2),))))
    with pytest.raises(InvokeArgumentError, match="field 1 of a Cons"):
        vm.invoke("main", bad)
    assert int(vm.invoke("main", to_list([np.ones(2, np.float32)] * 4))) == 4


def test_a_long_list_is_built_walked_and_released_without_c_recursion():
    """10^5 elements: foldl and rev_onto are loops; releasing the list at the end walks a work
    list, not the C stack. map's recursion is 10^5 native frames deep: the native stack check
    hands it to the Python tier (one warning), with the Python tier's result."""
    n = 100_000
    exe = build(prelude.parse(f"""
        def @main(%xs: {LIST}) -> Tensor[(), int64] {{ @length(@rev(@rev(%xs))) }}
        def @mapped(%xs: {LIST}) -> Tensor[(), int64] {{
          @length(@map(fn (%x: {VEC}) -> {VEC} {{ %x }}, %xs))
        }}"""))
    native, python = both(exe)
    xs = to_list([np.zeros(1, np.float32)] * n)
    assert int(native.invoke("main", xs)) == n and native.steps == (python.invoke("main", xs), python.steps)[1]
    vm = VirtualMachine(exe)
    with pytest.warns(PerformanceWarning, match="native stack exhausted"):
        assert int(vm.invoke("mapped", xs)) == n


def test_deep_recursion_is_bounded_by_max_depth_in_both_tiers():
    exe = build(prelude.parse(f"def @main(%xs: {LIST}) -> {LIST} {{ @concat(%xs, %xs) }}"))
    xs = to_list([np.zeros(1, np.float32)] * 50)
    for tier in ("native", "python"):
        vm = VirtualMachine(exe, tier=tier, max_depth=20)
        with pytest.raises(VMRecursionError, match="max_depth=20"):
            vm.invoke("main", xs)
        assert len(from_list(VirtualMachine(exe, tier=tier, max_depth=60).invoke("main", xs))) == 100


def test_a_non_exhaustive_match_fails_as_in_the_python_tier():
    exe = build(list_program([], "head"))
    native, python = both(exe)
    args = to_list([]), np.float32(1), np.ones(2, np.float32)
    with pytest.raises(DynVMError) as from_native:
        native.invoke("main", *args)
    with pytest.raises(DynVMError) as from_python:
        python.invoke("main", *args)
    assert type(from_native.value) is type(from_python.value)
    assert str(from_native.value) == str(from_python.value) and "no clause matches" in str(from_native.value)
    assert native.steps == python.steps
