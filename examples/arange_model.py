"""The position embeddings of `dynvm.models.arange_model` (`x + take(table, arange(rows(x)))`, a
data-dependent length): one executable for every sequence length, checked against numpy and
timed against it.

    python examples/arange_model.py [--tiny]
"""
import sys

import numpy as np

from dynvm import VirtualMachine, build
from dynvm.models import median_seconds, tiny_mode
from dynvm.models.arange_model import build_module, make_input, position_table, reference


def main(argv=None) -> int:
    tiny = tiny_mode(argv, __doc__)
    table = position_table()
    vm = VirtualMachine(build(build_module(table)))
    ok = True
    repeats = 2 if tiny else 50
    print(f"{'length':>7} {'dynvm µs':>10} {'numpy µs':>10}  check")
    for length in ((0, 7) if tiny else (0, 1, 7, 64, 128, 500)):
        x = make_input(length)
        good = np.allclose(vm.invoke("main", x), reference(x, table), rtol=1e-6)
        ok &= good
        t_vm = median_seconds(lambda: vm.invoke("main", x), repeats) * 1e6
        t_np = median_seconds(lambda: reference(x, table), repeats) * 1e6
        print(f"{length:>7} {t_vm:>10.1f} {t_np:>10.1f}  {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
