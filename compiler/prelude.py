"""The prelude: ADTs and list functions every program may use, written in the text format.

    List[a] = Cons(a, List[a]) | Nil        Option[a] = Some(a) | Nothing
    Tree[a] = Rose(a, List[Tree[a]])        (a rose tree: a value and a list of children)

Functions: map, foldl (a loop: tail-recursive), foldr, length, nth (index out of range raises
VMError at run time), concat, rev, zip, iterate (the list [x, f(x), f(f(x)), ...] of length n),
tree_size.

Use from Python: `mod = prelude.module()` gives a fresh IRModule holding the prelude, to which
you add your own functions (`mod.get_global_var("map")`, `mod.constructor("Cons")`); from the
text format: `prelude.parse(text)` parses `text` with the prelude's names in scope.
"""
from __future__ import annotations

PRELUDE = """
type List[a] {
  Cons(a, List[a]),
  Nil,
}

type Option[a] {
  Some(a),
  Nothing,
}

type Tree[a] {
  Rose(a, List[Tree[a]]),
}

def @map[a, b](%f: fn (a) -> b, %l: List[a]) -> List[b] {
  match (%l) {
    Cons(%h, %t) => Cons(%f(%h), @map(%f, %t)),
    Nil => Nil,
  }
}

def @foldl[a, b](%f: fn (a, b) -> a, %acc: a, %l: List[b]) -> a {
  match (%l) {
    Cons(%h, %t) => @foldl(%f, %f(%acc, %h), %t),
    Nil => %acc,
  }
}

def @foldr[a, b](%f: fn (a, b) -> b, %acc: b, %l: List[a]) -> b {
  match (%l) {
    Cons(%h, %t) => %f(%h, @foldr(%f, %acc, %t)),
    Nil => %acc,
  }
}

def @length_from[a](%n: Tensor[(), int64], %l: List[a]) -> Tensor[(), int64] {
  match (%l) {
    Cons(_, %t) => @length_from(add(%n, 1i64), %t),
    Nil => %n,
  }
}

def @length[a](%l: List[a]) -> Tensor[(), int64] {
  @length_from(0i64, %l)
}

def @nth[a](%l: List[a], %n: Tensor[(), int64]) -> a {
  match? (%l) {
    Cons(%h, %t) => if (equal(%n, 0i64)) { %h } else { @nth(%t, subtract(%n, 1i64)) },
  }
}

def @concat[a](%x: List[a], %y: List[a]) -> List[a] {
  match (%x) {
    Cons(%h, %t) => Cons(%h, @concat(%t, %y)),
    Nil => %y,
  }
}

def @rev_onto[a](%l: List[a], %acc: List[a]) -> List[a] {
  match (%l) {
    Cons(%h, %t) => @rev_onto(%t, Cons(%h, %acc)),
    Nil => %acc,
  }
}

def @rev[a](%l: List[a]) -> List[a] {
  @rev_onto(%l, Nil)
}

def @zip[a, b](%x: List[a], %y: List[b]) -> List[(a, b)] {
  match ((%x, %y)) {
    (Cons(%h1, %t1), Cons(%h2, %t2)) => Cons((%h1, %h2), @zip(%t1, %t2)),
    _ => Nil,
  }
}

def @iterate[a](%f: fn (a) -> a, %x: a, %n: Tensor[(), int64]) -> List[a] {
  if (less(%n, 1i64)) { Nil } else { Cons(%x, @iterate(%f, %f(%x), subtract(%n, 1i64))) }
}

def @tree_size[a](%t: Tree[a]) -> Tensor[(), int64] {
  match (%t) {
    Rose(_, %children) => @foldl(fn (%n: Tensor[(), int64], %c: Tree[a]) -> Tensor[(), int64] {
      add(%n, @tree_size(%c))
    }, 1i64, %children),
  }
}
"""


def parse(text: str = ""):
    """Parse `text` (text format) with the prelude's types and functions in scope."""
    from dynvm.compiler.ir.parser import parse as parse_text
    return parse_text(PRELUDE + "\n" + text)


def module():
    """A fresh IRModule holding only the prelude."""
    return parse()
