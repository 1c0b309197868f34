"""The list program of `dynvm.models.list_ops` (the prelude's map and foldl over tensors of
different lengths): checked against numpy and timed.

    python examples/list_ops.py [--tiny]
"""
import sys

import numpy as np

from dynvm import VirtualMachine, build
from dynvm.models import median_seconds, tiny_mode
from dynvm.models.list_ops import build_module, make_input, reference
from dynvm.vm.convert import from_list, to_list


def main(argv=None) -> int:
    tiny = tiny_mode(argv, __doc__)
    vm = VirtualMachine(build(build_module()))
    ok = True
    scale = np.float32(0.5)
    for lengths in ([3], [5, 1, 9]) + (() if tiny else (list(range(1, 40)),)):
        xs = make_input(lengths)
        out, energy = vm.invoke("main", to_list(xs), scale)
        expected, expected_energy = reference(xs, scale)
        got = from_list(out)
        good = (len(got) == len(expected)
                and all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, expected))
                and np.isclose(energy, expected_energy, rtol=1e-4))
        ok &= good
        seconds = median_seconds(lambda: vm.invoke("main", to_list(xs), scale), 2 if tiny else 5)
        print(f"{len(xs):>3} tensors: {1e3 * seconds:7.3f} ms  {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
