"""Random programs survive the text format and save/load with identical results, matching numpy."""
import numpy as np
from hypothesis import given, settings, strategies as st

from dynvm.compiler import build, ir, op
from dynvm.vm import Executable, VirtualMachine

UNARY = {"negative": np.negative, "exp": lambda a: np.exp(np.clip(a, -20, 20)), "tanh": np.tanh,
         "sigmoid": lambda a: 1 / (1 + np.exp(-a)), "relu": lambda a: np.maximum(a, 0)}
BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
          "maximum": np.maximum, "minimum": np.minimum}


@st.composite
def random_program(draw):
    """A random DAG over inputs x: (?, 3) and y: (3,), as (IR function, numpy evaluator)."""
    x = ir.var("x", ir.TensorType((ir.Any(), 3), "float32"))
    y = ir.var("y", ir.TensorType((3,), "float32"))
    nodes = [(x, lambda env: env["x"]), (y, lambda env: env["y"])]
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(UNARY)))
            expr, ref = draw(st.sampled_from(nodes))
            if name == "exp":
                expr = op.minimum(op.maximum(expr, ir.const(-20.0)), ir.const(20.0))
            nodes.append((getattr(op, name)(expr), lambda env, f=UNARY[name], r=ref: f(r(env))))
        else:
            name = draw(st.sampled_from(sorted(BINARY)))
            (a, ra), (b, rb) = draw(st.sampled_from(nodes)), draw(st.sampled_from(nodes))
            nodes.append((getattr(op, name)(a, b),
                          lambda env, f=BINARY[name], ra=ra, rb=rb: f(ra(env), rb(env))))
    out, ref = nodes[-1]
    if draw(st.booleans()):
        out, ref = op.sum(out, axis=[0]), (lambda env, r=ref: np.sum(r(env), axis=0))
    return ir.Function([x, y], ir.Tuple([out, x])), (lambda env, r=ref: r(env))


@settings(max_examples=12, deadline=None)
@given(program=random_program(), rows=st.sampled_from([0, 1, 4, 9]))
def test_random_program_survives_text_and_save_load(program, rows, tmp_path_factory):
    func, reference = program
    mod = ir.IRModule.from_expr(func)
    reparsed = ir.parse(str(mod))
    assert ir.structural_equal(mod, reparsed)
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 3)).astype(np.float32)
    y = rng.standard_normal(3).astype(np.float32)
    exe = build(mod)
    path = tmp_path_factory.mktemp("exe") / "prog.dvm"
    exe.save(str(path))
    outs = [VirtualMachine(e).invoke("main", x, y)[0]
            for e in (exe, Executable.load(str(path)), build(reparsed))]
    expected = reference({"x": x.astype(np.float64), "y": y.astype(np.float64)})
    np.testing.assert_allclose(outs[0], expected, rtol=1e-4, atol=1e-5)
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])
