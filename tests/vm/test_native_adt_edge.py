"""ADT, tuple and numpy-scalar arguments at invoke's native edge (`dvm_import`): the ones it takes
itself, the ones it hands to the general path, and that both give the Python tier's results,
errors and step counts."""
import numpy as np
import pytest

from dynvm.compiler import build, prelude
from dynvm.vm import ADT, VirtualMachine
from dynvm.vm.convert import from_list, to_list, tree
from dynvm.vm.errors import InvokeArgumentError
from dynvm.vm.native import numpy_layout_ok
from tests.vm.test_native_edge import Counting
from tests.vm.test_native_adt import assert_same

pytestmark = pytest.mark.skipif(not numpy_layout_ok(), reason="numpy's array layout is not the one edges read")

VEC = "Tensor[(?), float32]"
LIST = f"List[{VEC}]"
# a program with an ADT whose fields are declared tensors, a tuple parameter holding an ADT,
# a tree, and a parameter of a type variable's ADT (fields unchecked)
PROGRAM = prelude.parse(f"""
type Pair {{
  P(Tensor[(2), float32], List[{VEC}]),
}}

def @main(%xs: {LIST}) -> {LIST} {{ @rev(%xs) }}

def @pair(%p: Pair, %t: (Tensor[(2), float32], {LIST})) -> (Tensor[(2), float32], Tensor[(), int64], Tensor[(), int64]) {{
  match (%p) {{
    P(%a, %l) => (add(%a, %t.0), @length(%l), @length(%t.1)),
  }}
}}

def @size(%t: Tree[{VEC}]) -> Tensor[(), int64] {{ @tree_size(%t) }}
""")


@pytest.fixture(scope="module")
def exe():
    return build(PROGRAM)


def vec(*values):
    return np.array(values, np.float32)


def good_arguments():
    xs = to_list([vec(1, 2), vec(3, 4), vec(5, 6)])
    return {"main": (xs,),
            "pair": (ADT("P", 0, (vec(1, 2), xs)), (vec(3, 4), xs)),
            "size": (tree(vec(1), [tree(vec(2)), tree(vec(3), [tree(vec(4, 5))])]),)}


def both_answers(exe, name, args):
    """(native, python) results or errors, the native VM's general-path count, and steps."""
    native, python = Counting(exe), VirtualMachine(exe, tier="python")
    answers = []
    for vm in (native, python):
        try:
            answers.append(vm.invoke(name, *args))
        except InvokeArgumentError as e:
            answers.append(e)
    return answers, native


@pytest.mark.parametrize("name", ["main", "pair", "size"])
def test_good_adt_arguments_never_take_the_general_path(exe, name):
    args = good_arguments()[name]
    native, python = Counting(exe), VirtualMachine(exe, tier="python")
    native.invoke(name, *args)          # the first call on a thread takes its stack bounds
    general = native.general
    for _ in range(3):
        assert_same(native.invoke(name, *args), python.invoke(name, *args))
        assert native.steps == python.steps
    assert native.general == general


def _tail(xs):
    return xs.fields[1]


XS = to_list([vec(1, 2), vec(3, 4)])
# arguments the edge declines: the general path reports them (the same error as the Python tier)
BAD = {
    "unknown constructor": ("main", (ADT("Kons", 0, (vec(1), XS)),)),
    "wrong tag": ("main", (ADT("Cons", 1, (vec(1), XS)),)),
    "wrong arity": ("main", (ADT("Cons", 0, (vec(1),)),)),
    "another ADT's constructor": ("main", (ADT("Some", 0, (vec(1),)),)),
    "another ADT in a field": ("main", (ADT("Cons", 0, (vec(1), ADT("Nothing", 1, ()))),)),
    "a tuple for an ADT": ("main", ((vec(1), XS),)),
    "an array for an ADT": ("main", (vec(1),)),
    "a declared tensor field's dtype": ("pair", (ADT("P", 0, (vec(1, 2).astype(np.float64), XS)), (vec(1, 2), XS))),
    "a declared tensor field's extent": ("pair", (ADT("P", 0, (vec(1, 2, 3), XS)), (vec(1, 2), XS))),
    "a declared tensor field's rank": ("pair", (ADT("P", 0, (vec(1, 2)[None], XS)), (vec(1, 2), XS))),
    "a tuple's length": ("pair", (ADT("P", 0, (vec(1, 2), XS)), (vec(1, 2),))),
    "a tuple's tensor": ("pair", (ADT("P", 0, (vec(1, 2), XS)), (vec(1, 2, 3), XS))),
    "a tuple's ADT": ("pair", (ADT("P", 0, (vec(1, 2), XS)), (vec(1, 2), vec(1)))),
    "a string in a field": ("main", (ADT("Cons", 0, ("one", XS)),)),
    "an unsupported dtype in a field": ("main", (to_list([np.ones(2, np.float16)]),)),
}


def _cycle():
    node = ADT("Cons", 0, (vec(1), XS))
    node.fields = (vec(1), node)
    return node


@pytest.mark.parametrize("case", sorted(BAD) + ["a cycle"])
def test_bad_arguments_are_the_general_paths_errors(exe, case):
    name, args = BAD[case] if case in BAD else ("main", (_cycle(),))
    (got, want), _ = both_answers(exe, name, args)
    assert isinstance(want, InvokeArgumentError), want
    assert type(got) is type(want) and str(got) == str(want)


# arguments the edge declines that the general path converts: the Python tier's results
ODD = {
    "a strided array in a field": ("main", (to_list([np.arange(4, dtype=np.float32)[::2]]),)),
    "a big-endian array in a field": ("main", (to_list([vec(1, 2).astype(">f4")]),)),
    "a Python list in a field": ("main", (to_list([[1.0, 2.0]]),)),
    "a zero extent in a field": ("main", (to_list([np.zeros(0, np.float32)]),)),
    "a constructor name made at run time": ("main", (ADT("".join(["Co", "ns"]), 0, (vec(1), XS)),)),
    "an ADT subclass": ("main", (type("Sub", (ADT,), {})("Cons", 0, (vec(1), XS)),)),
    "a tuple subclass": ("pair", (ADT("P", 0, (vec(1, 2), XS)), type("T", (tuple,), {})((vec(1, 2), XS)))),
    "a strided tensor in a tuple": ("pair", (ADT("P", 0, (vec(1, 2), XS)), (np.arange(4, dtype=np.float32)[::2], XS))),
}


@pytest.mark.parametrize("case", sorted(ODD))
def test_arguments_the_edge_declines_give_the_python_tiers_answer(exe, case):
    name, args = ODD[case]
    (got, want), native = both_answers(exe, name, args)
    assert not isinstance(want, Exception), want
    assert_same(got, want)
    assert native.general >= 1


def test_shared_nodes_and_any_typed_fields():
    """A list whose tail is shared, and fields of a type variable holding tuples and arrays of
    other dtypes, are taken by the edge."""
    exe = build(prelude.parse("""
        def @main[a](%xs: List[a], %ys: List[a]) -> Tensor[(), int64] { @length(@concat(%xs, %ys)) }
        def @ints(%xs: List[(Tensor[(?), int64], Tensor[(), bool])]) -> Tensor[(), int64] { @length(%xs) }"""))
    shared = to_list([vec(1), vec(2)])
    native, python = Counting(exe), VirtualMachine(exe, tier="python")
    pairs = to_list([(np.arange(3), np.array(True))] * 5)
    for name, args in (("ints", (pairs,)), ("ints", (pairs,))):
        assert int(native.invoke(name, *args)) == int(python.invoke(name, *args)) == 5
    assert native.general <= 1
    assert int(native.invoke("main", shared, ADT("Cons", 0, (vec(0), shared)))) == 5


def test_a_long_list_grows_the_arena_then_takes_the_edge(exe):
    xs = to_list([vec(k, -k) for k in range(20_000)])
    native, python = Counting(exe), VirtualMachine(exe, tier="python")
    want = python.invoke("main", xs)
    assert_same(native.invoke("main", xs), want)        # the general path: the arena grows
    general = native.general
    got = native.invoke("main", xs)
    assert native.general == general
    assert [a.tolist() for a in from_list(got)[:2]] == [[19999, -19999], [19998, -19998]]
    assert_same(got, want)


SCALAR = prelude.parse("""
def @main(%s: Tensor[(), float32], %n: Tensor[(), int64], %b: Tensor[(), bool]) -> Tensor[(), float32] {
  if (%b) { multiply(%s, cast(%n, dtype="float32")) } else { %s }
}
""")


def test_numpy_scalars_of_the_parameters_dtype_take_the_edge():
    exe = build(SCALAR)
    native, python = Counting(exe), VirtualMachine(exe, tier="python")
    args = (np.float32(1.5), np.int64(4), np.bool_(True))
    native.invoke("main", *args)        # the first call on a thread takes its stack bounds
    general = native.general
    for args in (args, (np.float32(-2), np.int64(3), np.bool_(False)), (np.array(1.5, np.float32), np.int64(2), np.array(True))):
        assert_same(native.invoke("main", *args), python.invoke("main", *args))
    assert native.general == general
    assert float(native.invoke("main", np.float32(1.5), np.int64(4), np.bool_(True))) == 6.0


@pytest.mark.parametrize("args", [(np.float64(1.5), np.int64(4), np.bool_(True)),
                                  (np.float32(1.5), np.int32(4), np.bool_(True)),
                                  (1.5, 4, True),
                                  (np.float32(1.5), np.float32(4), np.bool_(True)),
                                  (np.float32(1.5), np.int64(4), np.int64(1))])
def test_other_scalars_give_the_general_paths_answer(args):
    exe = build(SCALAR)
    (got, want), native = both_answers(exe, "main", args)
    if isinstance(want, Exception):
        assert type(got) is type(want) and str(got) == str(want)
    else:
        assert_same(got, want)
    assert native.general >= 1
