"""The ONNX frontend hands dense its initializer weights as constants, which build() packs:
Gemm with transB = 0 and MatMul of a 2-D input transpose the initializer at import (no
transpose op), a run-time weight keeps the transpose (Gemm) or stays matmul's (MatMul); all
compute what ONNX Runtime does."""
import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx import helper  # noqa: E402

from dynvm.compiler import build, ir  # noqa: E402
from dynvm.frontend.onnx import from_onnx  # noqa: E402
from dynvm.vm import VirtualMachine  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402


def ops_in(mod):
    found, stack = [], [mod["main"].body]
    while stack:
        node = stack.pop()
        if isinstance(node, ir.Let):
            stack += [node.value, node.body]
        elif isinstance(node, ir.Tuple):
            stack += node.fields
        elif isinstance(node, ir.Call):
            if isinstance(node.callee, ir.Op):
                found.append(node)
            stack += node.args
    return found


@pytest.mark.parametrize("initializer", [True, False])
def test_gemm_without_trans_b(initializer):
    rng = np.random.default_rng(0)
    w, bias = rng.standard_normal((8, 5), np.float32), rng.standard_normal(5, np.float32)
    inputs = [helper.make_tensor_value_info("x", M.F, [None, 8])]
    if not initializer:
        inputs.append(helper.make_tensor_value_info("w", M.F, [8, 5]))
    m = M.model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], inputs,
                [helper.make_tensor_value_info("y", M.F, [None, 5])],
                {"w": w, "b": bias} if initializer else {"b": bias})
    mod = from_onnx(m)
    calls = ops_in(mod)
    dense = next(c for c in calls if c.callee.name == "dense")
    assert isinstance(dense.args[1], ir.Constant) == initializer
    assert any(c.callee.name == "transpose" for c in calls) != initializer
    x = rng.standard_normal((3, 8), np.float32)
    args = (x,) if initializer else (x, w)
    got = VirtualMachine(build(mod)).invoke("main", *args)
    np.testing.assert_allclose(got, M.ort_run(m, *args)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("initializer", [True, False])
def test_matmul_of_a_2d_input(initializer):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 40), np.float32)
    inputs = [helper.make_tensor_value_info("x", M.F, [None, 8])]
    if not initializer:
        inputs.append(helper.make_tensor_value_info("w", M.F, [8, 40]))
    m = M.model([helper.make_node("MatMul", ["x", "w"], ["y"])], inputs,
                [helper.make_tensor_value_info("y", M.F, [None, 40])],
                {"w": w} if initializer else {})
    mod = from_onnx(m)
    names = [c.callee.name for c in ops_in(mod)]
    assert names == (["dense"] if initializer else ["matmul"])
    exe = build(mod)
    if initializer:     # packed at build time: (ceil(40 / NR), 8, NR)
        (packed,) = [c.shape for c in exe.constants if c.ndim == 3]
        assert packed[:2] == (-(-40 // packed[2]), 8)
    for rows in (0, 1, 3, 17):
        x = rng.standard_normal((rows, 8), np.float32)
        args = (x,) if initializer else (x, w)
        got = VirtualMachine(exe).invoke("main", *args)
        np.testing.assert_allclose(got, M.ort_run(m, *args)[0], rtol=1e-5, atol=1e-5)
