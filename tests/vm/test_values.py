"""Run-time values: ADT objects, closures and storage blocks."""
import numpy as np
import pytest

from dynvm.vm import ADT, Closure, Storage, VMError
from dynvm.vm.values import values_equal


def test_adt_repr_shows_constructor_and_fields():
    cons = ADT("Cons", 1, (np.array(1.5, np.float32), ADT("Nil", 0)))
    assert repr(cons) == "Cons(1.5, Nil)"
    assert repr(ADT("Some", 1, ((np.arange(2), np.array(True)),))) == "Some(([0 1], True))"


def test_adt_equality_compares_constructor_tag_and_array_contents():
    a = ADT("Some", 1, (np.arange(3),))
    assert a == ADT("Some", 1, (np.arange(3),))
    assert a != ADT("Some", 1, (np.arange(3) + 1,))
    assert a != ADT("Some", 1, (np.arange(3).astype(np.int32),))  # dtype matters
    assert a != ADT("None", 1, (np.arange(3),))
    assert a != ADT("Some", 2, (np.arange(3),))
    assert a != (np.arange(3),)


def test_deep_adt_values_compare_and_print_without_recursion_errors():
    value = ADT("Nil", 0)
    for i in range(50_000):
        value = ADT("Cons", 1, (np.array(i), value))
    assert values_equal(value, value)
    assert repr(value).startswith("Cons(49999, Cons(49998")


def test_closure_is_opaque_but_comparable():
    c = Closure(2, (np.ones(2),))
    assert c == Closure(2, (np.ones(2),)) and c != Closure(1, (np.ones(2),))
    assert "function #2" in repr(c)


@pytest.mark.parametrize("alignment", [1, 16, 64, 4096])
def test_storage_data_is_aligned_and_sized(alignment):
    s = Storage(100, alignment, "float32")
    assert s.data.size == 100
    assert s.data.__array_interface__["data"][0] % alignment == 0


def test_storage_views_are_zero_copy_and_bounded():
    s = Storage(64, 64, "float32")
    a = s.view(0, (2, 3), "float32")
    b = s.view(32, (4,), "int64")
    a[...] = 7
    assert np.all(s.view(0, (6,), "float32") == 7)
    assert a.flags.c_contiguous and b.shape == (4,)
    assert s.view(64, (0,), "float32").size == 0


@pytest.mark.parametrize("offset, shape, dtype, phrase", [
    (0, (17,), "float32", "does not fit"),
    (60, (2,), "float32", "does not fit"),
    (-4, (1,), "float32", "does not fit"),
    (2, (1,), "float32", "aligned to 4"),
    (0, (-1, 2), "float32", "bad tensor shape"),
])
def test_storage_rejects_views_out_of_bounds(offset, shape, dtype, phrase):
    with pytest.raises(VMError, match=phrase):
        Storage(64, 64, "float32").view(offset, shape, dtype)


def test_storage_rejects_bad_size_and_alignment():
    with pytest.raises(VMError, match="size must be >= 0"):
        Storage(-1, 8)
    with pytest.raises(VMError, match="power of two"):
        Storage(8, 12)
    with pytest.raises(VMError, match="power of two"):
        Storage(8, 0)
