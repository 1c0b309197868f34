"""An `onnx.backend` Backend for dynvm, and the runner of ONNX's node tests on any backend.

`DynvmBackend.prepare(model)` imports the model (`from_onnx`), builds it and returns a rep whose
`run(inputs)` invokes `main`. `run_case(backend, case)` runs one test case of
`onnx.backend.test.loader.load_model_tests(kind="node")` and compares the outputs the way
ONNX's own runner does (same dtype, `assert_allclose` with the case's rtol/atol).
"""
from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend, BackendRep

from dynvm.frontend.onnx.importer import UnsupportedOnnxError, from_onnx

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


class DynvmRep(BackendRep):
    def __init__(self, exe):
        from dynvm.vm import VirtualMachine
        self.vm = VirtualMachine(exe)

    def run(self, inputs, **kwargs):
        out = self.vm.invoke("main", *inputs)
        return tuple(out) if isinstance(out, tuple) else (out,)


class DynvmBackend(Backend):
    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        from dynvm.compiler import build
        return DynvmRep(build(from_onnx(model)))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def case_inputs(case, inputs):
    """The inputs of a data set for the graph's non-initializer inputs, in order."""
    initialized = {i.name for i in case.model.graph.initializer}
    names = [vi.name for vi in case.model.graph.input if vi.name not in initialized]
    return list(inputs)[:len(names)]


def run_case(backend, case) -> tuple[str, str]:
    """(PASSED | FAILED | SKIPPED, reason) for one node test case on `backend`. SKIPPED means
    the model is not supported (`UnsupportedOnnxError`, or an input that is not a tensor)."""
    try:
        rep = backend.prepare(case.model, "CPU")
    except UnsupportedOnnxError as e:
        return SKIPPED, str(e).splitlines()[-1].strip()
    except Exception as e:  # noqa: BLE001  (any backend's failure is this case's result)
        return FAILED, f"prepare: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for inputs, expected in case.data_sets:
        if not all(isinstance(x, np.ndarray) for x in list(inputs) + list(expected)):
            return SKIPPED, "a non-tensor input or output"
        try:
            outputs = rep.run(case_inputs(case, inputs))
        except Exception as e:  # noqa: BLE001
            return FAILED, f"run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        problem = compare(expected, outputs, case.rtol, case.atol)
        if problem:
            return FAILED, problem
    return PASSED, ""


def compare(expected, outputs, rtol, atol) -> str:
    """'' when the outputs match, else what differs."""
    if len(outputs) < len(expected):
        return f"{len(outputs)} outputs, expected {len(expected)}"
    for i, (ref, out) in enumerate(zip(expected, outputs)):
        out = np.asarray(out)
        if ref.dtype != out.dtype:
            return f"output {i}: dtype {out.dtype}, expected {ref.dtype}"
        if ref.shape != out.shape:
            return f"output {i}: shape {out.shape}, expected {ref.shape}"
        try:
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
        except AssertionError:
            return f"output {i}: values differ beyond rtol={rtol}, atol={atol}"
    return ""
