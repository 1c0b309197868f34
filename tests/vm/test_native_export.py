"""How native results cross back into Python: ADT and tuple results are flattened natively and
rebuilt in one pass (`dvm_export`), with the general export for what the flat walk does not
take (closures, nodes of an argument, too many nodes). Both give what the Python tier gives."""
import numpy as np
import pytest

from dynvm.compiler import build, prelude
from dynvm.vm import ADT, Closure, VirtualMachine
from dynvm.vm import native as native_module
from dynvm.vm.convert import from_list, to_list
from tests.vm.test_native_adt import assert_same, both

VEC = "Tensor[(?), float32]"
LIST = f"List[{VEC}]"


def counting_flat_exports(vm):
    """Count the results the VM's flat export built (a wrapper on its native tier)."""
    tier, calls = vm._native, []
    rebuild = tier._rebuild
    tier._rebuild = lambda *a: calls.append(1) or rebuild(*a)
    return calls


def test_mixed_results_export_flat_and_agree_with_the_python_tier():
    """Dtypes, ranks 0-2, a zero-size tensor, argument memory (copied), a large result (its
    block wrapped), nested tuples and an Option."""
    exe = build(prelude.parse(f"""
        def @main(%a: {VEC}, %b: Tensor[(?, ?), int64], %c: Tensor[(), bool], %big: Tensor[(?), float64])
            -> ({LIST}, (Tensor[(?, ?), int64], Tensor[(), bool]), Option[Tensor[(?), float64]], {LIST}) {{
          (Cons(add(%a, %a), Cons(%a, Cons(multiply(%a, 0.0f32), Nil))),
           (add(%b, %b), %c),
           Some(multiply(%big, 2.0f64)),
           Nil)
        }}"""))
    native, python = both(exe)
    calls = counting_flat_exports(native)
    for n in (0, 1, 5, 17):
        args = (np.arange(n, dtype=np.float32), np.arange(2 * n, dtype=np.int64).reshape(n, 2),
                np.array(True), np.linspace(0, 1, 4096))
        got, want = native.invoke("main", *args), python.invoke("main", *args)
        assert_same(got, want)
        arrays = from_list(got[0]) + [got[1][0], got[2].fields[0]]
        assert all(a.flags.writeable for a in arrays)
        arrays[0][...] = 7          # arrays sharing one buffer do not overlap
        assert_same(tuple(from_list(got[0])[1:]), tuple(from_list(want[0])[1:]))
    assert len(calls) == 4


def test_shared_nodes_stay_shared_and_export_in_linear_time():
    """A tree whose two children are the same node, 40 levels deep: 2^40 paths, 41 nodes."""
    exe = build(prelude.parse("""
        def @grow(%n: Tensor[(), int64], %t: Tree[Tensor[(), float32]]) -> Tree[Tensor[(), float32]] {
          if (equal(%n, 0i64)) { %t } else {
            @grow(subtract(%n, 1i64), Rose(@cast_f32(%n), Cons(%t, Cons(%t, Nil))))
          }
        }
        def @cast_f32(%x: Tensor[(), int64]) -> Tensor[(), float32] { cast(%x, dtype="float32") }
        def @main(%n: Tensor[(), int64]) -> (Tree[Tensor[(), float32]], Tree[Tensor[(), float32]]) {
          let %t = @grow(%n, Rose(0.5f32, Nil));
          (%t, %t)
        }"""))
    vm = VirtualMachine(exe)
    assert vm._native is not None and "main: native" in exe.explain()
    calls = counting_flat_exports(vm)
    first, second = vm.invoke("main", np.int64(40))
    assert first is second and len(calls) == 1
    node = first
    for level in range(1, 41):
        assert float(node.fields[0]) == level
        left, right = from_list(node.fields[1])
        assert left is right
        node = left
    assert float(node.fields[0]) == 0.5 and from_list(node.fields[1]) == []


def test_long_results_grow_the_buffers_and_the_largest_take_the_general_export(monkeypatch):
    exe = build(prelude.parse(f"def @main(%xs: {LIST}) -> {LIST} {{ @rev(%xs) }}"))
    native, python = both(exe)
    calls = counting_flat_exports(native)
    for n in (3, 5000, 2):      # more records than the first buffers hold, then fewer bytes
        xs = to_list([np.full(k % 7, k, np.float32) for k in range(n)])
        assert_same(native.invoke("main", xs), python.invoke("main", xs))
    assert len(calls) == 3
    monkeypatch.setattr(native_module, "MAX_EXPORT_RECORDS", 4096)
    fresh = VirtualMachine(exe)
    calls = counting_flat_exports(fresh)
    xs = to_list([np.ones(2, np.float32)] * 5000)
    assert_same(fresh.invoke("main", xs), python.invoke("main", xs))
    assert calls == []


@pytest.mark.parametrize("body, ret", [
    ("%xs", LIST),                                         # the argument's own nodes
    ("Cons(add(%x, %x), %xs)", LIST),                      # a new node over them
    (f"(Cons(%x, Nil), fn (%y: {VEC}) -> {VEC} {{ add(%y, %x) }})", f"({LIST}, fn ({VEC}) -> {VEC})"),
])
def test_results_the_flat_walk_declines_take_the_general_export(body, ret):
    exe = build(prelude.parse(f"def @main(%xs: {LIST}, %x: {VEC}) -> {ret} {{ {body} }}"))
    native, python = both(exe)
    calls = counting_flat_exports(native)
    args = to_list([np.arange(3, dtype=np.float32)] * 3), np.ones(3, np.float32)
    got, want = native.invoke("main", *args), python.invoke("main", *args)
    assert_same(got, want)
    if isinstance(got, tuple):
        assert isinstance(got[1], Closure) and not calls
    assert calls == [] and isinstance(got if isinstance(got, ADT) else got[0], ADT)
