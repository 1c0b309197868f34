"""Loading and running an executable needs no compiler: in a fresh process, loading a .dvm built
for this machine and invoking it in the Python tier imports no compiler module, no kernel builder
or family and no IR toolkit (llvmlite.binding itself still imports llvmlite.ir internally). The
native tier translates the bytecode on this machine, so it imports the shape-function tracer
and the IR toolkit it builds on, and nothing else of the code generator."""
import pytest
import json
import subprocess
import sys

import numpy as np

from dynvm import build, ir, op
from dynvm.kernels.family import FAMILY_MODULES

RUN = """
import json, sys
import numpy as np
from dynvm.vm import Executable, VirtualMachine
vm = VirtualMachine(Executable.load(sys.argv[1]), tier=sys.argv[2])
out = vm.invoke("main", np.arange(6, dtype=np.float32).reshape(3, 2))
print(json.dumps({"out": out.tolist(), "modules": sorted(m for m in sys.modules if m.startswith("dynvm"))}))
"""
CODE_GENERATOR = ({"dynvm.compiler", "dynvm.kernels.builder", "dynvm.kernels.family",
                   "dynvm.kernels.llvm_util", "dynvm.kernels.llvm_math"}
                  | {f"dynvm.kernels.{m}" for m in FAMILY_MODULES})
NATIVE_TIER_NEEDS = {"dynvm.kernels.shape", "dynvm.kernels.sort", "dynvm.kernels.family",
                     "dynvm.kernels.builder", "dynvm.kernels.llvm_util"}


def saved_program(tmp_path):
    """exp(x) + arange(rows) per row: a compiled kernel and a data-dependent shape function."""
    x = ir.var("x", ir.TensorType((ir.Any(), 2), "float32"))
    rows = op.take(op.shape_of(x), ir.const(0, "int64"))
    positions = op.cast(op.arange(ir.const(0, "int64"), rows, ir.const(1, "int64"), dtype="int64"),
                        "float32")
    y = op.add(op.exp(x), op.expand_dims(positions, axis=1))
    path = tmp_path / "model.dvm"
    build(ir.IRModule.from_expr(ir.Function([x], y))).save(str(path))
    return path


@pytest.mark.parametrize("tier", ["python", "native"])
def test_loading_and_invoking_imports_no_code_generator(tmp_path, tier):
    path = saved_program(tmp_path)
    proc = subprocess.run([sys.executable, "-c", RUN, str(path), tier], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(result["out"], np.exp(x) + np.arange(3)[:, None], rtol=1e-6)
    loaded = set(result["modules"])
    assert "dynvm.kernels.runtime" in loaded          # the kernels really were loaded
    assert not {m for m in loaded if m.split(".")[:2] == ["dynvm", "compiler"]}
    allowed = NATIVE_TIER_NEEDS if tier == "native" else set()
    assert not loaded & CODE_GENERATOR - allowed


def test_importing_dynvm_loads_the_compiler_only_when_asked():
    code = ("import sys, dynvm; before = 'dynvm.compiler' in sys.modules; dynvm.build; "
            "print(before, 'dynvm.compiler' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "True"], proc.stderr
