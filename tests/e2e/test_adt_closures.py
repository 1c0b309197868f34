"""ADTs, pattern matching, closures and the prelude, end to end against Python references."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm.compiler import build, ir, op, prelude
from dynvm.compiler.codegen.patterns import NonExhaustiveMatchWarning
from dynvm.vm import ADT, Closure, Executable, VirtualMachine
from dynvm.vm.convert import from_list, to_list, tree
from dynvm.vm.errors import ShapeError, VMError
from tests.strategies import examples

F32 = ir.TensorType((ir.Any(),), "float32")
I64 = ir.TensorType((), "int64")

PROGRAMS = """
def @scale_all(%l: List[Tensor[(?,), float32]], %s: Tensor[(), float32]) -> List[Tensor[(?,), float32]] {
  @map(fn (%x: Tensor[(?,), float32]) -> Tensor[(?,), float32] { multiply(%x, %s) }, %l)
}
def @total(%l: List[Tensor[(?,), float32]]) -> Tensor[(), float32] {
  @foldl(fn (%acc: Tensor[(), float32], %x: Tensor[(?,), float32]) -> Tensor[(), float32] {
    add(%acc, sum(%x))
  }, 0.0f32, %l)
}
def @sizes(%l: List[Tensor[(?,), float32]]) -> List[Tensor[(), int64]] {
  @foldr(fn (%x: Tensor[(?,), float32], %acc: List[Tensor[(), int64]]) -> List[Tensor[(), int64]] {
    Cons(take(shape_of(%x), 0i64), %acc)
  }, Nil, %l)
}
def @len(%l: List[Tensor[(?,), float32]]) -> Tensor[(), int64] { @length(%l) }
def @at(%l: List[Tensor[(?,), float32]], %i: Tensor[(), int64]) -> Tensor[(?,), float32] { @nth(%l, %i) }
def @both(%a: List[Tensor[(?,), float32]], %b: List[Tensor[(?,), float32]]) -> List[Tensor[(?,), float32]] {
  @rev(@concat(%a, %b))
}
def @pairs(%a: List[Tensor[(?,), float32]], %b: List[Tensor[(?,), float32]]) -> List[(Tensor[(?,), float32], Tensor[(?,), float32])] {
  @zip(%a, %b)
}
def @powers(%x: Tensor[(?,), float32], %n: Tensor[(), int64]) -> List[Tensor[(?,), float32]] {
  @iterate(fn (%y: Tensor[(?,), float32]) -> Tensor[(?,), float32] { multiply(%y, %x) }, %x, %n)
}
def @size(%t: Tree[Tensor[(?,), float32]]) -> Tensor[(), int64] { @tree_size(%t) }
def @second_or_first(%l: List[Tensor[(?,), float32]]) -> Tensor[(?,), float32] {
  match (%l) {
    Cons(_, Cons(%y, _)) => %y,
    Cons(%x, Nil) => %x,
    Nil => const(float32, (0,), []),
  }
}
def @adder(%s: Tensor[(?,), float32]) -> fn (Tensor[(?,), float32]) -> Tensor[(?,), float32] {
  fn (%x: Tensor[(?,), float32]) -> Tensor[(?,), float32] { add(%x, %s) }
}
def @apply(%f: fn (Tensor[(?,), float32]) -> Tensor[(?,), float32], %x: Tensor[(?,), float32]) -> Tensor[(?,), float32] {
  %f(%x)
}
"""


@pytest.fixture(scope="module")
def exe():
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonExhaustiveMatchWarning)
        return build(prelude.parse(PROGRAMS))


@pytest.fixture(scope="module")
def vm(exe):
    return VirtualMachine(exe)


def arrays(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in lengths]


LISTS = st.lists(st.integers(0, 6), max_size=7)


@settings(max_examples=examples(15))
@given(lengths=LISTS, scale=st.floats(-3, 3, width=32))
def test_map_with_a_closure_capturing_a_tensor(vm, lengths, scale):
    items = arrays(lengths)
    got = from_list(vm.invoke("scale_all", to_list(items), np.float32(scale)))
    assert len(got) == len(items)
    for g, x in zip(got, items):
        np.testing.assert_allclose(g, x * np.float32(scale), rtol=1e-6)


@settings(max_examples=examples(15))
@given(lengths=LISTS)
def test_folds_length_nth_concat_rev_zip(vm, lengths):
    items = arrays(lengths, seed=1)
    lst = to_list(items)
    np.testing.assert_allclose(vm.invoke("total", lst), sum(float(x.sum()) for x in items),
                               rtol=1e-4, atol=1e-4)
    assert [int(s) for s in from_list(vm.invoke("sizes", lst))] == lengths
    assert int(vm.invoke("len", lst)) == len(items)
    for i, x in enumerate(items):
        np.testing.assert_array_equal(vm.invoke("at", lst, np.int64(i)), x)
    other = arrays(lengths[::-1], seed=2)
    both = from_list(vm.invoke("both", lst, to_list(other)))
    assert len(both) == len(items) + len(other)
    for g, x in zip(both, (items + other)[::-1]):
        np.testing.assert_array_equal(g, x)
    pairs = from_list(vm.invoke("pairs", lst, to_list(other[:3])))
    assert len(pairs) == min(len(items), len(other[:3]))
    for (g1, g2), x1, x2 in zip(pairs, items, other):
        np.testing.assert_array_equal(g1, x1)
        np.testing.assert_array_equal(g2, x2)


def test_nth_out_of_range_is_a_clear_run_time_error(vm):
    with pytest.raises(VMError, match="no clause matches"):
        vm.invoke("at", to_list(arrays([2])), np.int64(3))


def test_iterate_builds_powers(vm):
    x = np.array([1.0, 2.0, -0.5], np.float32)
    got = from_list(vm.invoke("powers", x, np.int64(4)))
    assert len(got) == 4
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, x ** (k + 1), rtol=1e-6)
    assert from_list(vm.invoke("powers", x, np.int64(0))) == []


def test_tree_size_recurses_over_a_rose_tree(vm):
    leaf = lambda: tree(np.zeros(1, np.float32))  # noqa: E731
    t = tree(np.ones(2, np.float32), [leaf(), tree(np.zeros(0, np.float32), [leaf(), leaf()]), leaf()])
    assert int(vm.invoke("size", t)) == 6


def test_nested_patterns(vm):
    a, b, c = arrays([1, 2, 3])
    np.testing.assert_array_equal(vm.invoke("second_or_first", to_list([a, b, c])), b)
    np.testing.assert_array_equal(vm.invoke("second_or_first", to_list([a])), a)
    assert vm.invoke("second_or_first", to_list([])).shape == (0,)


def test_closures_cross_the_python_boundary_and_survive_save_load(exe, tmp_path):
    path = tmp_path / "closures.dvm"
    exe.save(str(path))
    for e in (exe, Executable.load(str(path))):
        vm = VirtualMachine(e)
        s = np.array([1.0, 2.0], np.float32)
        add_s = vm.invoke("adder", s)
        assert isinstance(add_s, Closure)
        np.testing.assert_array_equal(vm.invoke("apply", add_s, np.array([10.0, 20.0], np.float32)),
                                      [11.0, 22.0])
        with pytest.raises(ShapeError):     # the captured (2,) tensor does not broadcast to (3,)
            vm.invoke("apply", add_s, np.zeros(3, np.float32))


def test_prelude_tags_match_the_python_converters():
    mod = prelude.module()
    assert (mod.constructor("Cons").tag, mod.constructor("Nil").tag, mod.constructor("Rose").tag) == (0, 1, 0)
    value = to_list([np.zeros(1)])
    assert isinstance(value, ADT) and value.constructor == "Cons"


def test_non_exhaustive_match_warns_and_fails_at_run_time():
    text = """
    def @head(%l: List[Tensor[(?,), float32]]) -> Tensor[(?,), float32] {
      match (%l) { Cons(%h, _) => %h, }
    }"""
    with pytest.warns(NonExhaustiveMatchWarning, match="head"):
        exe = build(prelude.parse(text))
    vm = VirtualMachine(exe)
    np.testing.assert_array_equal(vm.invoke("head", to_list(arrays([3]))), arrays([3])[0])
    with pytest.raises(VMError, match="no clause"):
        vm.invoke("head", to_list([]))


def test_mutual_recursion():
    text = """
    def @even(%n: Tensor[(), int64]) -> Tensor[(), bool] {
      if (equal(%n, 0i64)) { True } else { @odd(subtract(%n, 1i64)) }
    }
    def @odd(%n: Tensor[(), int64]) -> Tensor[(), bool] {
      if (equal(%n, 0i64)) { False } else { @even(subtract(%n, 1i64)) }
    }"""
    vm = VirtualMachine(build(ir.parse(text)))
    for n in range(6):
        assert bool(vm.invoke("even", np.int64(n))) == (n % 2 == 0)


def test_while_loop_runs_a_recurrence_over_a_sequence_of_any_length():
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    n = ir.var("n", I64)
    body = ir.while_loop(
        lambda i, h: op.less(i, n),
        lambda i, h: [op.add(i, ir.const(1, "int64")), op.tanh(op.add(h, op.take(x, i, axis=0)))],
        [ir.const(0, "int64"), op.zeros((4,), dtype="float32")])
    func = ir.Function([x], ir.Let(n, op.take(op.shape_of(x), ir.const(0, "int64")),
                                   ir.TupleGetItem(body, 1)))
    vm = VirtualMachine(build(ir.IRModule.from_expr(func)), max_depth=4)
    for rows in (0, 1, 33):
        data = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
        h = np.zeros(4, np.float32)
        for row in data:
            h = np.tanh(h + row)
        np.testing.assert_allclose(vm.invoke("main", data), h, rtol=1e-5, atol=1e-6)


def test_the_last_clause_of_an_exhaustive_match_tests_nothing():
    """length(l) over List: Cons is tested, Nil is what is left (no GetTag/If for it, no
    Fatal); the same match marked partial (`complete=False`) keeps both tests and the Fatal."""
    def module(complete):
        mod = prelude.module()
        t = ir.TensorType((), "float32")
        l, x, rest = ir.var("l", ir.TypeCall("List", [t])), ir.var("x", t), ir.var("rest", ir.TypeCall("List", [t]))
        cons, nil = mod.constructor("Cons"), mod.constructor("Nil")
        f = mod.get_global_var("total")
        mod["total"] = ir.Function([l], ir.Match(l, [
            ir.Clause(ir.PatternConstructor(cons, [ir.PatternVar(x), ir.PatternVar(rest)]),
                      op.add(x, ir.Call(f, [rest]))),
            ir.Clause(ir.PatternConstructor(nil, []), ir.const(0.0, "float32"))], complete=complete),
            ret_type=t)
        return build(mod)

    exhaustive, partial = module(True), module(False)
    names = [i.name for i in exhaustive.functions[exhaustive.function_index("total")].instructions]
    partial_names = [i.name for i in partial.functions[partial.function_index("total")].instructions]
    assert names.count("GetTag") == 1 and "Fatal" not in names
    assert partial_names.count("GetTag") == 2 and "Fatal" in partial_names
    values = to_list([np.float32(v) for v in (1.5, 2.0, -0.5)])
    for exe in (exhaustive, partial):
        assert float(VirtualMachine(exe).invoke("total", values)) == 3.0
        assert float(VirtualMachine(exe).invoke("total", to_list([]))) == 0.0


def test_adt_arguments_are_checked_all_the_way_down(vm):
    """A list whose tail is a tree, a Cons with three fields or an unknown constructor deep in
    the list is an InvokeArgumentError at invoke, not a wrong answer from a match that reads
    a Rose as the constructor with its tag; a 100000-element list still imports."""
    from dynvm.vm import InvokeArgumentError

    x = np.ones(2, np.float32)
    good = to_list([x, x])
    assert float(vm.invoke("total", good)) == 4.0
    bad_tail = ADT("Cons", 0, (x, tree(x)))
    too_many = to_list([x, x])
    too_many.fields[1].fields = (x, ADT("Nil", 1, ()), x)
    unknown = ADT("Cons", 0, (x, ADT("Snoc", 0, (x,))))
    for value, message in ((bad_tail, "field 1 of a Cons must be a List"),
                           (too_many, "with 3 fields"), (unknown, "'Snoc'")):
        with pytest.raises(InvokeArgumentError, match=message):
            vm.invoke("total", value)
    long = to_list([np.float32(1)] * 100_000)
    assert int(vm.invoke("len", long)) == 100_000


def test_tensor_fields_of_an_adt_are_checked_against_their_declared_type():
    from dynvm.vm import InvokeArgumentError

    exe = build(ir.parse("""
type Pair { Pair(Tensor[(2,), float32], Tensor[(?,), int64]) }
def @first(%p: Pair) -> Tensor[(2,), float32] { match (%p) { Pair(%a, _) => %a } }
"""))
    vm = VirtualMachine(exe)
    good = ADT("Pair", 0, (np.ones(2, np.float32), np.arange(3)))
    np.testing.assert_array_equal(vm.invoke("first", good), np.ones(2, np.float32))
    for fields, message in (((np.ones(2), np.arange(3)), r"float32 tensor of shape \(2\)"),
                            ((np.ones(3, np.float32), np.arange(3)), r"shape \(2\)"),
                            ((np.ones(2, np.float32), np.ones(3, np.float32)), r"int64 tensor of shape \(\?\)")):
        with pytest.raises(InvokeArgumentError, match=message):
            vm.invoke("first", ADT("Pair", 0, fields))
