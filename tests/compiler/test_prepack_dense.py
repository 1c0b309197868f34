"""prepack_dense: dense of a constant float weight reads it packed (packed_units), packed once
per weight; other dense calls and the original constant stay; results equal the unpacked
build's and numpy's, bit for bit on 1 and 2 threads, in both VM tiers and after the executable
is saved and loaded."""
import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.compiler.passes import prepack_dense
from dynvm.compiler.typing import infer_types
from dynvm.kernels.matmul import pack_weight, packed_width
from dynvm.shape_funcs import lookup
from dynvm.vm import VirtualMachine
from dynvm.vm.errors import ShapeError, TypeInferenceError
from dynvm.vm.executable import Executable

RNG = np.random.default_rng(0)
W = RNG.standard_normal((37, 24)).astype(np.float32)        # 37: not a multiple of NR
W64 = RNG.standard_normal((5, 24))
WI = RNG.integers(-3, 3, (5, 24)).astype(np.int32)
BIAS = RNG.standard_normal(37).astype(np.float32)


def program():
    """dense(x, W) + bias and dense(y, W) (one weight, two calls), W also summed (another op),
    dense(x, x-dependent weight) (not a constant), a float64 and an int32 constant weight."""
    f32 = ir.TensorType((ir.Any(), 24), "float32")
    x, y, v = ir.var("x", f32), ir.var("y", f32), ir.var("v", ir.TensorType((3, 24), "float32"))
    x64 = ir.var("x64", ir.TensorType((ir.Any(), 24), "float64"))
    xi = ir.var("xi", ir.TensorType((2, 24), "int32"))
    w = ir.const(W)
    out = ir.Tuple([op.add(op.dense(x, w), ir.const(BIAS)), op.dense(y, w), op.sum(w),
                    op.dense(x, v), op.dense(x64, ir.const(W64)), op.dense(xi, ir.const(WI))])
    return ir.IRModule.from_expr(ir.Function([x, y, v, x64, xi], out))


def dense_calls(mod):
    """The dense calls in main's body (a tuple of op calls), in order."""
    calls, stack = [], [mod["main"].body]
    while stack:
        node = stack.pop(0)
        if isinstance(node, ir.Tuple):
            stack += node.fields
        elif isinstance(node, ir.Call):
            if node.callee.name == "dense":
                calls.append(node)
            stack += node.args
    return calls


def test_the_pass_packs_each_constant_float_weight_once():
    calls = dense_calls(prepack_dense(infer_types(program())))
    packed = [c for c in calls if c.attrs["packed_units"]]
    assert len(calls) == 5 and len(packed) == 3
    by_units = {c.attrs["packed_units"]: c.args[1] for c in packed}
    assert sorted(by_units) == [5, 37]
    f32 = [c.args[1] for c in packed if c.args[1].data.dtype == np.float32]
    assert len(f32) == 2 and f32[0] is f32[1]                  # one packed constant
    np.testing.assert_array_equal(f32[0].data, pack_weight(W))
    assert f32[0].data.shape[2] == packed_width("float32")
    assert all(c.attrs["packed_width"] == c.args[1].data.shape[2] for c in packed)
    assert f32[0].checked_type == ir.TensorType(f32[0].data.shape, "float32")
    plain = [c for c in calls if not c.attrs["packed_units"]]
    assert isinstance(plain[0].args[1], ir.Var) and plain[1].args[1].data is WI


def small_program():
    """dense(x, W) + bias, dense(y, W) and dense(x, v) (v a parameter): few kernels to compile."""
    f32 = ir.TensorType((ir.Any(), 24), "float32")
    x, y, v = ir.var("x", f32), ir.var("y", f32), ir.var("v", ir.TensorType((3, 24), "float32"))
    w = ir.const(W)
    out = ir.Tuple([op.add(op.dense(x, w), ir.const(BIAS)), op.dense(y, w), op.dense(x, v)])
    return ir.IRModule.from_expr(ir.Function([x, y, v], out))


def test_packed_build_computes_what_the_unpacked_one_does(tmp_path):
    rng = np.random.default_rng(1)
    x, y, v = (rng.standard_normal((rows, 24)).astype(np.float32) for rows in (7, 40, 3))
    packed, plain = build(small_program()), build(small_program(), prepack=False)
    assert [c.shape for c in packed.constants if c.ndim == 3] == [pack_weight(W).shape]
    assert not any(c.ndim == 3 for c in plain.constants)
    path = tmp_path / "packed.dvm"
    packed.save(path)
    loaded = Executable.load(path)
    want = [x @ W.T + BIAS, y @ W.T, x @ v.T]
    results = [VirtualMachine(exe, threads=t).invoke("main", x, y, v)
               for exe in (packed, loaded) for t in (1, 2)]
    results.append(VirtualMachine(packed, tier="python").invoke("main", x, y, v))
    results.append(VirtualMachine(plain).invoke("main", x, y, v))
    for got in results:
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-4)
    for got in results[1:5]:        # threads, a loaded file and the Python tier: the same bits
        for g, h in zip(got, results[0]):
            assert np.asarray(g).tobytes() == np.asarray(h).tobytes()


def typed_dense(x, weight, units, width=0):
    return infer_types(ir.IRModule.from_expr(ir.Function([x, weight], op.dense(
        x, weight, packed_units=units, packed_width=width))))["main"].body.checked_type


def test_packed_dense_type_relation_and_shape_function():
    x = ir.var("x", ir.TensorType((ir.Any(), 24), "float32"))
    nr = packed_width("float32")
    wp = ir.var("wp", ir.TensorType((3, 24, nr), "float32"))
    assert typed_dense(x, wp, 2 * nr + 1) == ir.TensorType((ir.Any(), 2 * nr + 1), "float32")
    for units, phrase in ((3 * nr + 1, "does not hold"), (2 * nr, "does not hold"),
                          (-1, "int >= 0")):
        with pytest.raises(TypeInferenceError, match=phrase):
            typed_dense(x, wp, units)
    assert typed_dense(x, wp, 2 * nr + 1, nr) == ir.TensorType((ir.Any(), 2 * nr + 1), "float32")
    with pytest.raises(TypeInferenceError, match=f"strips {nr} wide, packed_width={2 * nr}"):
        typed_dense(x, wp, 2 * nr + 1, 2 * nr)
    dense = lookup("dense").fn
    weight = np.zeros((3, 24, nr))
    assert dense([np.zeros((5, 24)), weight], {"packed_units": 2 * nr + 5}) == [(5, 2 * nr + 5)]
    with pytest.raises(ShapeError, match="does not hold"):
        dense([np.zeros((5, 24)), weight], {"packed_units": nr})
