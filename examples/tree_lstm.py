"""The child-sum Tree-LSTM of `dynvm.models.tree_lstm` (recursion over the prelude's rose tree):
one executable for random trees of 1..200 nodes, checked against numpy and timed.

    python examples/tree_lstm.py [--tiny]
"""
import sys

from dynvm import VirtualMachine, build
from dynvm.models import check_and_time, tiny_mode
from dynvm.models.tree_lstm import build_module, random_tree, reference, to_adt, weights


def main(argv=None) -> int:
    tiny = tiny_mode(argv, __doc__)
    w = weights()
    vm = VirtualMachine(build(build_module(w)))
    trees = {nodes: random_tree(nodes, seed=nodes) for nodes in ((1, 4) if tiny else (1, 10, 100, 200))}
    cases = [(nodes, [to_adt(t)], reference(t, w)[0]) for nodes, t in trees.items()]
    return check_and_time(vm, "nodes", cases, rtol=1e-5, atol=1e-5, repeats=2 if tiny else 5)


if __name__ == "__main__":
    sys.exit(main())
