"""The BERT-style encoder of `dynvm.models.bert_varlen` (2 layers, hidden 256, 4 heads, FFN
1024): one executable for every sequence length, checked against numpy and timed.

    python examples/bert_varlen.py [--tiny]
"""
import sys

from dynvm import VirtualMachine, build
from dynvm.models import check_and_time, tiny_mode
from dynvm.models.bert_varlen import build_module, make_input, reference, weights


def main(argv=None) -> int:
    tiny = tiny_mode(argv, __doc__)
    w = weights()
    vm = VirtualMachine(build(build_module(w)))
    inputs = {seq: make_input(seq) for seq in ((1, 5) if tiny else (1, 16, 64, 128))}
    return check_and_time(vm, "seq", [(seq, [x], reference(x, w)) for seq, x in inputs.items()],
                          rtol=1e-4, atol=1e-4, repeats=2 if tiny else 10)


if __name__ == "__main__":
    sys.exit(main())
