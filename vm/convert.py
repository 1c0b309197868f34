"""Python values <-> the prelude's ADTs (`compiler/prelude.py`): lists and rose trees.

The tags are the constructors' positions in the prelude's declarations (Cons 0, Nil 1; Rose 0);
a test checks they agree with the prelude.
"""
from __future__ import annotations

from dynvm.vm.values import ADT

CONS, NIL, ROSE = ("Cons", 0), ("Nil", 1), ("Rose", 0)


def to_list(items) -> ADT:
    """A prelude List (Cons/Nil) holding `items` in order (built iteratively: long lists are fine)."""
    result = ADT(*NIL, ())
    for item in reversed(list(items)):
        result = ADT(*CONS, (item, result))
    return result


def from_list(value: ADT) -> list:
    """The items of a prelude List value."""
    items = []
    while value.constructor == CONS[0]:
        items.append(value.fields[0])
        value = value.fields[1]
    return items


def tree(value, children=()) -> ADT:
    """A prelude rose tree node: Rose(value, List[Tree])."""
    return ADT(*ROSE, (value, to_list(children)))
