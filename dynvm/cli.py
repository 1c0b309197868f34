"""The `dynvm` command: `dynvm demo` compiles and runs a small dynamic program, `dynvm ops`
lists the operator registry (which ops run native kernels and which are VM instructions),
`dynvm explain model.dvm` says which functions run in the native tier and why others do not,
`dynvm compile model.onnx -o model.dvm` compiles an ONNX model, `dynvm run model.dvm --input
x=x.npy` runs a compiled file, `dynvm bench` times the example models on the VM, the static
runtime, numpy, PyTorch and ONNX Runtime."""
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


def parse_shape(text: str):
    """`name=2,?,4` -> ("name", (2, None, 4)); `?` (or -1) leaves a dim dynamic."""
    name, sep, dims = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=dims (e.g. x=1,?,16), got {text!r}")
    try:
        shape = tuple(None if d.strip() in ("?", "-1") else int(d) for d in dims.split(",") if d)
    except ValueError:
        raise argparse.ArgumentTypeError(f"dims must be ints or ?, got {dims!r}") from None
    return name, shape


def parse_input(text: str):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=file.npy, got {text!r}")
    return name, path


def describe_type(ty) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in ty["shape"])
    return f"{ty['dtype']}[{dims}]"


def compile_onnx(args, out=sys.stdout) -> int:
    import time

    from dynvm.compiler import build
    from dynvm.frontend.onnx import UnsupportedOnnxError, from_onnx
    start = time.perf_counter()
    print(f"importing {args.model}", file=out, flush=True)
    try:
        mod = from_onnx(args.model, shapes=dict(args.shape))
    except UnsupportedOnnxError as e:
        print(f"dynvm compile: {e}", file=sys.stderr)
        return 1
    print("compiling kernels (cached ones load from the kernel cache)", file=out, flush=True)
    exe = build(mod)
    exe.save(args.output)
    main_fn = exe.functions[exe.function_index("main")]
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes, "
          f"{time.perf_counter() - start:.1f} s)", file=out)
    print("inputs:", file=out)
    for name, ty in zip(main_fn.params, main_fn.param_types):
        print(f"  {name}: {describe_type(ty)}", file=out)
    print("tiers:", file=out)
    print("  " + exe.explain().replace("\n", "\n  "), file=out)
    return 0


def run_file(args, out=sys.stdout) -> int:
    from dynvm.vm import Executable, VirtualMachine
    exe = Executable.load(args.path)
    main_fn = exe.functions[exe.function_index("main")]
    given = dict(args.input)
    unknown = sorted(set(given) - set(main_fn.params))
    missing = [p for p in main_fn.params if p not in given]
    if unknown or missing:
        print(f"dynvm run: main takes {', '.join(main_fn.params) or 'no inputs'}"
              + (f"; missing {', '.join(missing)}" if missing else "")
              + (f"; unknown {', '.join(unknown)}" if unknown else ""), file=sys.stderr)
        return 2
    result = VirtualMachine(exe).invoke("main", *(np.load(given[p]) for p in main_fn.params))
    outputs = list(result) if isinstance(result, tuple) else [result]
    for i, value in enumerate(outputs):
        value = np.asarray(value)
        print(f"output{i}: {value.dtype}{list(value.shape)}", file=out)
        print(np.array2string(value, precision=4, threshold=20), file=out)
    if args.output:
        np.savez(args.output, **{f"output{i}": np.asarray(v) for i, v in enumerate(outputs)})
        print(f"wrote {args.output}", file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dynvm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="compile, save, load and run a small dynamic program")
    sub.add_parser("ops", help="list the operator registry")
    explain = sub.add_parser("explain", help="say which functions of a .dvm file run in the native "
                             "tier, and why the others do not")
    explain.add_argument("path", help="a file saved by Executable.save")
    comp = sub.add_parser("compile", help="compile an ONNX model to a .dvm file (needs the onnx "
                          "package: pip install dynvm[onnx])")
    comp.add_argument("model", help="an .onnx file")
    comp.add_argument("-o", "--output", required=True, help="the .dvm file to write")
    comp.add_argument("--shape", action="append", type=parse_shape, default=[],
                      metavar="NAME=DIMS", help="pin an input's dims, e.g. x=1,?,16 (? stays "
                      "dynamic); repeatable")
    run = sub.add_parser("run", help="run the main function of a .dvm file on .npy inputs")
    run.add_argument("path", help="a file saved by Executable.save or dynvm compile")
    run.add_argument("--input", action="append", type=parse_input, default=[],
                     metavar="NAME=FILE.npy", help="one input of main; repeatable")
    run.add_argument("--output", help="write the results to this .npz file (output0, ...)")
    from dynvm.bench import run as bench
    bench.add_arguments(sub.add_parser("bench", help="time the example models: dynamic VM vs static "
                                       "runtime, numpy, PyTorch, ONNX Runtime",
                                       description=bench.__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main_from_args(args)
    if args.command == "explain":
        return explain_file(args.path)
    if args.command == "compile":
        return compile_onnx(args)
    if args.command == "run":
        return run_file(args)
    return {"demo": run_demo, "ops": list_ops}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
