"""The LSTM of `dynvm.models.lstm` (input 128, hidden 256; its time loop one native loop
kernel): one executable for every sequence length, checked against numpy and timed.

    python examples/lstm.py [--tiny]
"""
import sys

from dynvm import VirtualMachine, build
from dynvm.models import check_and_time, tiny_mode
from dynvm.models.lstm import build_module, make_input, reference, weights


def main(argv=None) -> int:
    tiny = tiny_mode(argv, __doc__)
    w = weights()
    vm = VirtualMachine(build(build_module(w)))
    inputs = {steps: make_input(steps) for steps in ((1, 3) if tiny else (1, 8, 32, 128))}
    return check_and_time(vm, "seq", [(n, [x], reference(x, w)) for n, x in inputs.items()],
                          rtol=1e-5, atol=1e-5, repeats=2 if tiny else 10)


if __name__ == "__main__":
    sys.exit(main())
