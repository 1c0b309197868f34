"""The `dynvm` command: `dynvm demo` compiles and runs a small dynamic program, `dynvm ops`
lists the operator registry (which ops run native kernels and which are VM instructions),
`dynvm explain model.dvm` says which functions run in the native tier and why others do not,
`dynvm bench` times the example models on the VM, the static runtime, numpy, PyTorch and ONNX
Runtime."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np


def demo_module():
    """y = exp(x + 1) * w over x of shape (?, 4), plus positions arange(rows) as a second result."""
    from dynvm.compiler import ir, op
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    w = ir.const(np.linspace(0.5, 2.0, 4, dtype=np.float32))
    y = op.multiply(op.exp(op.add(x, ir.const(1.0, "float32"))), w)
    rows = op.take(op.shape_of(x), ir.const(0, "int64"))
    positions = op.arange(ir.const(0, "int64"), rows, ir.const(1, "int64"), dtype="int64")
    return ir.IRModule.from_expr(ir.Function([x], ir.Tuple([y, positions])))


def run_demo(out=sys.stdout) -> int:
    from dynvm.compiler import build
    from dynvm.vm import Executable, VirtualMachine
    mod = demo_module()
    print("== program (text format) ==", file=out)
    print(mod, file=out)
    exe = build(mod)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "demo.dvm")
        exe.save(path)
        size = os.path.getsize(path)
        exe = Executable.load(path)
    print(f"== bytecode (saved and reloaded: {size} bytes) ==", file=out)
    print(exe.disassemble(), file=out)
    vm = VirtualMachine(exe)
    w = np.linspace(0.5, 2.0, 4, dtype=np.float32)
    ok = True
    for rows in (3, 1, 0):
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 10
        y, positions = vm.invoke("main", x)
        good = (np.allclose(y, np.exp(x + 1) * w, rtol=1e-5) and
                np.array_equal(positions, np.arange(rows)))
        ok &= good
        print(f"== main(x: {x.shape}) -> y {y.shape}, positions {positions.tolist()} "
              f"[{'matches numpy' if good else 'MISMATCH'}] ==", file=out)
        print(np.array2string(y, precision=4), file=out)
    return 0 if ok else 1


def list_ops(out=sys.stdout) -> int:
    from dynvm.compiler.op import OPS
    rows = [(d.name, d.kernel, d.shape_mode, d.pattern) for d in OPS.values()]
    print(f"{'op':<20} {'kernel':<9} {'shape mode':<17} pattern", file=out)
    for row in sorted(rows):
        print(f"{row[0]:<20} {row[1]:<9} {row[2]:<17} {row[3]}", file=out)
    counts = {k: sum(1 for r in rows if r[1] == k) for k in ("compiled", "vm")}
    print(f"\n{counts['compiled']} compiled, "
          f"{counts['vm']} lowered to VM instructions", file=out)
    return 0


def explain_file(path, out=sys.stdout) -> int:
    from dynvm.vm import Executable
    print(Executable.load(path).explain(), file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dynvm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="compile, save, load and run a small dynamic program")
    sub.add_parser("ops", help="list the operator registry")
    explain = sub.add_parser("explain", help="say which functions of a .dvm file run in the native "
                             "tier, and why the others do not")
    explain.add_argument("path", help="a file saved by Executable.save")
    from dynvm.bench import run as bench
    bench.add_arguments(sub.add_parser("bench", help="time the example models: dynamic VM vs static "
                                       "runtime, numpy, PyTorch, ONNX Runtime",
                                       description=bench.__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main_from_args(args)
    if args.command == "explain":
        return explain_file(args.path)
    return {"demo": run_demo, "ops": list_ops}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
