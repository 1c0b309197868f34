"""An `onnx.backend` Backend for dynvm, and the runner of ONNX's node tests on any backend.

`DynvmBackend.prepare(model)` imports the model (`from_onnx`), builds it and returns a rep whose
`run(inputs)` invokes `main`. `run_case(backend, case)` runs one test case of
`onnx.backend.test.loader.load_model_tests(kind="node")` and compares the outputs the way
ONNX's own runner does (same dtype, `assert_allclose` with the case's rtol/atol).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx
from onnx import numpy_helper
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


NEEDED_INPUT = re.compile(r"must be a constant .*; it is graph input '([^']+)'")


def frozen(case, names):
    """The case's model with graph inputs `names` made initializers holding the data set's
    values (a converter needs them at import time: axes, pads, split sizes...); None when the
    case has several data sets."""
    if len(case.data_sets) != 1:
        return None
    initialized = {i.name for i in case.model.graph.initializer}
    inputs = [vi.name for vi in case.model.graph.input if vi.name not in initialized]
    values = dict(zip(inputs, (np.asarray(v) for v in case.data_sets[0][0])))
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    keep = [vi for vi in model.graph.input if vi.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(numpy_helper.from_array(values[n], n) for n in names)
    data_sets = [([v for n, v in values.items() if n not in names], case.data_sets[0][1])]
    return dataclasses.replace(case, model=model, data_sets=data_sets)


def run_case(backend, case, freeze: bool = True) -> tuple[str, str]:
    """(PASSED | FAILED | SKIPPED, reason) for one node test case on `backend`. SKIPPED means
    the model is not supported (`UnsupportedOnnxError`, or an input that is not a tensor).
    With `freeze`, a case whose converters want a constant where the test feeds a graph input
    runs again with exactly those inputs as initializers (the reason then starts with
    "constant inputs")."""
    original, names, note = case, [], ""
    while True:
        try:
            rep = backend.prepare(case.model, "CPU")
            break
        except UnsupportedOnnxError as e:
            more = sorted(set(NEEDED_INPUT.findall(str(e))) - set(names))
            again = frozen(original, names + more) if freeze and more else None
            if again is None:
                return SKIPPED, joined(note, str(e).splitlines()[-1].strip())
            case, names, note = again, names + more, "constant inputs"
        except Exception as e:  # noqa: BLE001  (any backend's failure is this case's result)
            return FAILED, joined(note, f"{type(e).__name__} in prepare ({first_line(e)})")
    status, reason = run_data_sets(rep, case)
    return status, joined(note, reason)


def joined(*parts) -> str:
    return "; ".join(p for p in parts if p)


def run_data_sets(rep, case) -> tuple[str, str]:
    for inputs, expected in case.data_sets:
        if not all(isinstance(x, (np.ndarray, np.generic)) for x in list(inputs) + list(expected)):
            return SKIPPED, "a non-tensor input or output"
        try:
            outputs = rep.run([np.asarray(x) for x in case_inputs(case, inputs)])
        except Exception as e:  # noqa: BLE001
            return FAILED, f"{type(e).__name__} in run ({first_line(e)})"
        problem = compare(expected, outputs, case.rtol, case.atol)
        if problem:
            return FAILED, problem
    return PASSED, ""


def compare(expected, outputs, rtol, atol) -> str:
    """'' when the outputs match, else what differs."""
    if len(outputs) < len(expected):
        return f"{len(outputs)} outputs, expected {len(expected)}"
    for i, (ref, out) in enumerate(zip(expected, outputs)):
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.dtype != out.dtype:
            return f"output {i}: dtype {out.dtype}, expected {ref.dtype}"
        if ref.shape != out.shape:
            return f"output {i}: shape {out.shape}, expected {ref.shape}"
        if ref.dtype.kind in "OSU":
            if not np.array_equal(out, ref):
                return f"output {i}: values differ"
            continue
        try:
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
        except AssertionError:
            return f"output {i}: values differ beyond rtol={rtol}, atol={atol}"
    return ""


def first_line(e) -> str:
    return str(e).splitlines()[0] if str(e) else ""


# case-name prefixes that abbreviate their op's name
CASE_ABBREVIATIONS = {"nllloss": "NegativeLogLikelihoodLoss", "sce": "SoftmaxCrossEntropyLoss",
                      "mvn": "MeanVarianceNormalization"}


def case_op(case) -> str:
    """The op a node test case tests: its node's op type, or for a multi-node case (a
    function body expanded, "test_<op>_..._expanded") the op its name starts with."""
    ops = {n.op_type for n in case.model.graph.node}
    if len(ops) == 1:
        return ops.pop()
    known = {s.name.lower(): s.name for s in onnx.defs.get_all_schemas()} | CASE_ABBREVIATIONS
    words = case.name[len("test_"):].split("_")
    for k in range(len(words), 0, -1):
        name = "".join(words[:k])
        if name in known:
            return known[name]
    return words[0]


def load_cases(ops=None) -> list:
    """ONNX's node test cases (generated in memory by the installed onnx package): all of them,
    or only those of `ops` (importing just their case modules, which is much faster)."""
    if ops is None:
        from onnx.backend.test.loader import load_model_tests
        return load_model_tests(kind="node")
    import importlib
    import pkgutil

    import onnx.backend.test.case.node as node_cases
    wanted = {o.lower() for o in ops}
    for module in pkgutil.iter_modules(node_cases.__path__):
        name = module.name.replace("_", "")
        if name in wanted or (name.endswith("op") and name[:-2] in wanted):
            importlib.import_module(f"{node_cases.__name__}.{module.name}")
    return [c for c in node_cases._NodeTestCases if case_op(c).lower() in wanted]
