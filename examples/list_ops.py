"""A list of tensors of different lengths, processed with the prelude's map and foldl.

    normalised = map(fn (x) { (x - mean(x)) * scale }, xs)       (a closure capturing `scale`)
    total      = foldl(fn (acc, x) { acc + sum(x * x) }, 0, normalised)

Each list element has its own run-time length. Run as a script to check against numpy.
"""
from __future__ import annotations

import sys

import numpy as np

from dynvm.compiler import build, prelude
from dynvm.vm import VirtualMachine
from dynvm.vm.convert import from_list, to_list
from dynvm.vm.profiler import median_seconds

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


def main() -> int:
    vm = VirtualMachine(build(build_module()))
    ok = True
    for lengths in ([3], [5, 1, 9], list(range(1, 40))):
        xs = make_input(lengths)
        out, energy = vm.invoke("main", to_list(xs), np.float32(0.5))
        expected, expected_energy = reference(xs, np.float32(0.5))
        good = (all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(from_list(out), expected))
                and np.isclose(energy, expected_energy, rtol=1e-4))
        ok &= good
        seconds = median_seconds(lambda: vm.invoke("main", to_list(xs), np.float32(0.5)), 5)
        print(f"{len(xs):>3} tensors: {1e3 * seconds:7.3f} ms  "
              f"{'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
