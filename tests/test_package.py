"""The installed package: one top-level import name, `dynvm`, and its public API."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_elsewhere(code, tmp_path):
    """Run `code` in a fresh interpreter outside the repository (only installed names import)."""
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_every_packaged_module_lives_under_dynvm():
    tomllib = pytest.importorskip("tomllib")            # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "dynvm" or p.startswith("dynvm.") for p in config["packages"])
    assert set(config["package-dir"]) == {"dynvm", "dynvm.vm", "dynvm.compiler", "dynvm.kernels",
                                          "dynvm.shape_funcs"}


def test_only_dynvm_imports_from_outside_the_repository(tmp_path):
    for name in ("vm", "compiler", "kernels", "shape_funcs"):
        proc = run_elsewhere(f"import {name}", tmp_path)
        assert proc.returncode != 0 and "No module named" in proc.stderr, name
    proc = run_elsewhere("import dynvm.vm, dynvm.compiler, dynvm.kernels, dynvm.shape_funcs; "
                         "print(dynvm.__version__)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __import__("dynvm").__version__


def test_import_dynvm_gives_the_public_api(tmp_path):
    code = ("import numpy as np, dynvm\n"
            "x = dynvm.ir.var('x', dynvm.ir.TensorType((dynvm.ir.Any(),), 'float32'))\n"
            "exe = dynvm.build(dynvm.ir.IRModule.from_expr(dynvm.ir.Function([x], dynvm.op.exp(x))))\n"
            "exe = dynvm.Executable.from_bytes(exe.to_bytes())\n"
            "print(dynvm.VirtualMachine(exe).invoke('main', np.zeros(3, np.float32)).tolist())\n"
            "assert issubclass(dynvm.ExecutableFormatError, dynvm.DynVMError)\n"
            "assert dynvm.StaticRuntime and dynvm.ADT and dynvm.Closure")
    proc = run_elsewhere(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1.0, 1.0, 1.0]"
