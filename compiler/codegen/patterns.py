"""Exhaustiveness of match clauses (a compile-time warning; at run time a Fatal).

The classic "usefulness" check over pattern matrices (Maranget): the clauses are exhaustive
when a wildcard row is not useful after them, i.e. no value escapes every clause.
"""
from __future__ import annotations

import warnings

from dynvm.compiler.ir import expr as E

WILD = E.PatternWildcard()


class NonExhaustiveMatchWarning(UserWarning):
    """A match may find no clause for some value; that value raises VMError at run time."""


def _head(pattern):
    """(key, arity) of a constructor-like pattern, or None for wildcards and variables."""
    if isinstance(pattern, E.PatternConstructor):
        return (pattern.constructor.name, len(pattern.patterns))
    if isinstance(pattern, E.PatternTuple):
        return ("()", len(pattern.patterns))
    return None


def _specialize(rows, key, arity):
    out = []
    for row in rows:
        head = _head(row[0])
        if head is None:
            out.append([WILD] * arity + row[1:])
        elif head[0] == key:
            out.append(list(row[0].patterns) + row[1:])
    return out


class _Checker:
    def __init__(self, type_definitions):
        self.type_definitions = type_definitions

    def all_heads(self, column):
        """Every (key, arity) of the column's type when the column names all of them, else None."""
        heads = {_head(p) for p in column} - {None}
        if not heads:
            return None
        some = next(p for p in column if _head(p) is not None)
        if isinstance(some, E.PatternTuple):
            return list(heads)
        ctors = self.type_definitions[some.constructor.belongs_to].constructors
        complete = [(c.name, len(c.inputs)) for c in ctors]
        return complete if {k for k, _ in heads} >= {k for k, _ in complete} else None

    def useful(self, rows, width) -> bool:
        """Whether a row of `width` wildcards matches some value no row in `rows` matches."""
        if width == 0:
            return not rows
        heads = self.all_heads([row[0] for row in rows])
        if heads is not None:
            return any(self.useful(_specialize(rows, key, arity), arity + width - 1)
                       for key, arity in heads)
        return self.useful([row[1:] for row in rows if _head(row[0]) is None], width - 1)


def check_exhaustive(node: E.Match, where: str, type_definitions: dict) -> bool:
    """Whether every value of the matched type fits some clause; warns
    (NonExhaustiveMatchWarning) when not."""
    rows = [[clause.pattern] for clause in node.clauses]
    if _Checker(type_definitions).useful(rows, 1):
        warnings.warn(f"non-exhaustive match in @{where}: some values match no clause "
                      "(they raise VMError at run time)", NonExhaustiveMatchWarning, stacklevel=2)
        return False
    return True
