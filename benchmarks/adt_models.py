"""The ADT and closure models on both dynvm tiers (not a test): the Tree-LSTM
(dynvm.models.tree_lstm) next to PyTorch eager, and the list program (dynvm.models.list_ops).

    python benchmarks/adt_models.py [--reps 20] [--tiny]

Per size: the median invoke time of each dynvm tier (`TIERS`) and of PyTorch eager when it is
installed (1 thread, the same recursion in Python), interleaved; the input is converted
(`to_adt`, `to_list`, torch tensors) outside the timed region, so the time includes invoke's
checks and the native tier's import of the ADT. Every output is checked against the numpy
reference first. The load average is printed: the machine may be shared.

The Tree-LSTM rows also give the native tier's VM cost per node: the per-node time of the same
program with 1-wide tensors (`tree_lstm.weights(input_size=1, hidden=1)`), whose nine kernels a
node calls do one multiply-add each. That is the VM's work per node (the edge's import of the
tree, match, closures, allocation, the calls) plus nine kernel-call floors: an upper bound.
(Subtracting the profiled Python tier's kernel times from the native time does not work: the
kernels run cache-cold between Python handlers, slower than between native instructions.)
"""
import argparse

import numpy as np

from dynvm.bench import peers
from dynvm.bench.harness import cpu_lines, fmt_time, measure, optional_import
from dynvm.compiler import build
from dynvm.models import list_ops, tree_lstm
from dynvm.vm import VirtualMachine
from dynvm.vm.convert import from_list, to_list

TIERS = {"python": {"tier": "python"}, "native": {"tier": "native"}}


def tree_lstm_rows(sizes, reps):
    w = tree_lstm.weights()
    exe = build(tree_lstm.build_module(w))
    vms = {name: VirtualMachine(exe, **kw) for name, kw in TIERS.items()}
    torch, _ = optional_import("torch")
    if torch is not None:
        torch.set_num_threads(1)
        model = peers.torch_tree_lstm(torch, w)
    tiny_w = tree_lstm.weights(input_size=1, hidden=1)
    tiny = VirtualMachine(build(tree_lstm.build_module(tiny_w))), tiny_w
    print(f"\nTree-LSTM (nodes): {'  '.join(f'{n:>10}' for n in TIERS)}  {'torch':>10}  torch/native"
          "  VM cost/node")
    for nodes in sizes:
        t = tree_lstm.random_tree(nodes, seed=nodes)
        adt, want = tree_lstm.to_adt(t), tree_lstm.reference(t, w)[0]
        fns = {}
        for name, vm in vms.items():
            np.testing.assert_allclose(vm.invoke("main", adt), want, rtol=1e-4, atol=1e-5)
            fns[name] = lambda vm=vm: vm.invoke("main", adt)
        if torch is not None:
            tt = peers.to_torch_tree(torch, t)
            np.testing.assert_allclose(model(tt).numpy(), want, rtol=1e-4, atol=1e-5)
            fns["torch"] = lambda: model(tt)
        times = measure(fns, reps)
        ratio = f"{times['torch'] / times['native']:.2f}x" if "torch" in times else ""
        print(f"{nodes:>17}: " + "  ".join(f"{fmt_time(times[n]):>10}" for n in TIERS)
              + f"  {fmt_time(times.get('torch')):>10}  {ratio:>12}  {vm_cost_per_node(*tiny, nodes, reps) * 1e6:>9.2f} us")


def vm_cost_per_node(vm, w, nodes, reps):
    """Seconds per node of the native 1-wide Tree-LSTM (`vm`, weights `w`) on a tree of `nodes`."""
    t = tree_lstm.random_tree(nodes, seed=nodes, input_size=1)
    adt = tree_lstm.to_adt(t)
    np.testing.assert_allclose(vm.invoke("main", adt), tree_lstm.reference(t, w)[0], rtol=1e-4, atol=1e-5)
    return measure({"native": lambda: vm.invoke("main", adt)}, reps)["native"] / nodes


def list_ops_rows(sizes, reps):
    exe = build(list_ops.build_module())
    vms = {name: VirtualMachine(exe, **kw) for name, kw in TIERS.items()}
    scale = np.float32(0.5)
    print(f"\nlist_ops (tensors): {'  '.join(f'{n:>10}' for n in TIERS)}  python/native")
    for n in sizes:
        xs = list_ops.make_input([1 + (7 * k) % 40 for k in range(n)])
        arg = to_list(xs)
        want, _ = list_ops.reference(xs, scale)
        fns = {}
        for name, vm in vms.items():
            got = from_list(vm.invoke("main", arg, scale)[0])
            assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, want))
            fns[name] = lambda vm=vm: vm.invoke("main", arg, scale)
        times = measure(fns, reps)
        print(f"{n:>18}: " + "  ".join(f"{fmt_time(times[t]):>10}" for t in TIERS)
              + f"  {times['python'] / times['native']:.1f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    print("\n".join(cpu_lines()))
    reps = 3 if args.tiny else args.reps
    tree_lstm_rows([1, 4] if args.tiny else [1, 10, 50, 100, 200], reps)
    list_ops_rows([3] if args.tiny else [1, 3, 10, 39, 200], reps)
    print("\n" + cpu_lines()[-1])


if __name__ == "__main__":
    main()
