"""Hypothesis strategies shared by the test suite: shapes with 0 and 1 dims, broadcastable pairs,
input layouts (strided, reversed, transposed, stride-0), random programs with a numpy evaluator,
and `examples(n)`, the per-test example count scaled by the loaded profile (tests/conftest.py)."""
import numpy as np
from hypothesis import example, settings, strategies as st

from dynvm.compiler import ir, op

DIM = st.sampled_from([0, 1, 1, 2, 3, 5, 7, 8, 9, 16, 17])

# Shapes every invoke-boundary property pins with @example: empty, one element, and a vector
# tail (17 = 16 lanes + 1 and 4 + 4 + 4 + 4 + 1: the scalar remainder after the vector loop).
PINNED_SIZES = (0, 1, 17)

# Layouts of an input array: "c" (C-contiguous), "step" (every other element of a bigger
# buffer), "reversed" (negative strides), "transpose" (Fortran order) and "broadcast" (stride 0
# along axis 0: np.broadcast_to of the first row; the values change, so compute expectations from
# the view itself).
LAYOUTS = ("c", "step", "reversed", "transpose", "broadcast")
PINNED_LAYOUTS = ("step", "reversed", "broadcast")


def examples(n):
    """`n` examples under the default profile, proportionally more under a longer one."""
    return max(1, n * settings.default.max_examples // 100)


def shapes(min_rank=0, max_rank=3, dim=DIM):
    return st.lists(dim, min_size=min_rank, max_size=max_rank).map(tuple)


def layouts():
    return st.sampled_from(LAYOUTS)


@st.composite
def broadcastable_pair(draw, min_rank=0, max_rank=3):
    """Two shapes that broadcast together under numpy's rules."""
    out = draw(shapes(min_rank, max_rank))
    def operand():
        rank = draw(st.integers(0, len(out)))
        tail = out[len(out) - rank:]
        return tuple(d if draw(st.booleans()) else 1 for d in tail)
    return operand(), operand()


def arrays(shape, dtype, seed, layout="c"):
    """Random values of `shape` and `dtype`, laid out as `layout` (see `laid_out`)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        a = rng.standard_normal(shape).astype(dtype)
    elif np.dtype(dtype).kind == "b":
        a = rng.random(shape) < 0.5
    else:
        a = rng.integers(-50, 50, size=shape).astype(dtype)
    return laid_out(a, layout)


def laid_out(a, layout):
    """A view of `a`'s shape and dtype with real non-unit, negative or zero strides.

    Every layout but "broadcast" keeps the values of `a`; "broadcast" repeats its first row."""
    if layout == "c" or a.ndim == 0:
        return a
    if layout == "step":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "transpose":
        return np.ascontiguousarray(a.T).T
    if layout == "reversed":
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if layout == "broadcast":
        return np.broadcast_to(a[:1], a.shape) if a.shape[0] else a
    raise ValueError(layout)


# ---------------------------------------------------------------- random programs

UNARY = {"negative": np.negative, "exp": lambda a: np.exp(np.clip(a, -20, 20)), "tanh": np.tanh,
         "sigmoid": lambda a: 1 / (1 + np.exp(-a)), "relu": lambda a: np.maximum(a, 0)}
BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
          "maximum": np.maximum, "minimum": np.minimum}


@st.composite
def random_program(draw, rows=None):
    """A random DAG over inputs x: (rows, 3) (rows None: Any) and y: (3,), returning (node, x),
    as (IR function, numpy evaluator of the node from {"x": ..., "y": ...})."""
    x = ir.var("x", ir.TensorType((ir.Any() if rows is None else rows, 3), "float32"))
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


def evaluate(reference, x, y):
    """The numpy evaluator of a random program, in float64."""
    return reference({"x": np.asarray(x, np.float64), "y": np.asarray(y, np.float64)})


def pinned_program(rows=None):
    """A fixed member of the random_program family, for @example pins: sum over rows of
    tanh(x * y + x) - sigmoid(x), returned with x."""
    x = ir.var("x", ir.TensorType((ir.Any() if rows is None else rows, 3), "float32"))
    y = ir.var("y", ir.TensorType((3,), "float32"))
    body = op.sum(op.subtract(op.tanh(op.add(op.multiply(x, y), x)), op.sigmoid(x)), axis=[0])

    def reference(env):
        x_, y_ = env["x"], env["y"]
        return np.sum(np.tanh(x_ * y_ + x_) - 1 / (1 + np.exp(-x_)), axis=0)
    return ir.Function([x, y], ir.Tuple([body, x])), reference


def pin_programs(static_rows=None):
    """Decorator for a property over (program, rows, layout), or (program, layout) when x has
    `static_rows` rows: @example pins of the pinned program at every pinned size in C order and
    in every pinned layout."""
    def pin(test):
        sizes = PINNED_SIZES if static_rows is None else (static_rows,)
        cases = [(r, "c") for r in sizes] + [(sizes[-1], lay) for lay in PINNED_LAYOUTS]
        for r, lay in cases:
            kwargs = {"program": pinned_program(static_rows), "layout": lay}
            test = example(**kwargs if static_rows else dict(kwargs, rows=r))(test)
        return test
    return pin


def program_inputs(rows, layout, seed=0):
    """(x, y) for a random program: x (rows, 3) and y (3,), both laid out as `layout`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)).astype(np.float32)
    y = rng.standard_normal(3).astype(np.float32)
    return laid_out(x, layout), laid_out(y, layout)
