"""A list of tensors of different lengths, processed with the prelude's map and foldl.

    normalised = map(fn (x) { (x - mean(x)) * scale }, xs)       (a closure capturing `scale`)
    total      = foldl(fn (acc, x) { acc + sum(x * x) }, 0, normalised)

Each list element has its own run-time length.
"""
from __future__ import annotations

import numpy as np

from dynvm.compiler import prelude

PROGRAM = """
def @normalise(%xs: List[Tensor[(?,), float32]], %scale: Tensor[(), float32]) -> List[Tensor[(?,), float32]] {
  @map(fn (%x: Tensor[(?,), float32]) -> Tensor[(?,), float32] {
    multiply(subtract(%x, mean(%x)), %scale)
  }, %xs)
}

def @energy(%xs: List[Tensor[(?,), float32]]) -> Tensor[(), float32] {
  @foldl(fn (%acc: Tensor[(), float32], %x: Tensor[(?,), float32]) -> Tensor[(), float32] {
    add(%acc, sum(multiply(%x, %x)))
  }, 0.0f32, %xs)
}

def @main(%xs: List[Tensor[(?,), float32]], %scale: Tensor[(), float32]) -> (List[Tensor[(?,), float32]], Tensor[(), float32]) {
  let %normalised = @normalise(%xs, %scale);
  (%normalised, @energy(%normalised))
}
"""


def build_module():
    return prelude.parse(PROGRAM)


def reference(xs, scale):
    normalised = [(x - x.mean()) * scale if len(x) else x.copy() for x in xs]
    return normalised, float(sum((n.astype(np.float64) ** 2).sum() for n in normalised))


def make_input(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in lengths]
