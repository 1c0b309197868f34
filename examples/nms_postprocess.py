"""The detection post-processing of `dynvm.models.nms_postprocess` (get_valid_counts + non-max
suppression, TVM semantics): one executable for every anchor count, checked against the numpy
reference on seeded random boxes and timed against it.

    python examples/nms_postprocess.py [--tiny]
"""
import sys

import numpy as np

from dynvm import VirtualMachine, build
from dynvm.models import median_seconds, tiny_mode
from dynvm.models.nms_postprocess import build_module, make_input, reference


def main(argv=None) -> int:
    tiny = tiny_mode(argv, __doc__)
    vm = VirtualMachine(build(build_module()))
    ok = True
    print(f"{'anchors':>8} {'dynvm µs':>10} {'numpy ref µs':>13}  check")
    for anchors in ((0, 50) if tiny else (0, 1, 50, 1000, 5000)):
        data = make_input(anchors, seed=anchors)
        good = np.array_equal(vm.invoke("main", data), reference(data))
        ok &= good
        t_vm = median_seconds(lambda: vm.invoke("main", data), 2 if tiny else 30) * 1e6
        t_np = median_seconds(lambda: reference(data), 2 if tiny else 3) * 1e6
        print(f"{anchors:>8} {t_vm:>10.1f} {t_np:>13.1f}  {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
