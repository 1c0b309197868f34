"""ONNX op -> dynvm IR: the one table of converters, `CONVERTERS`.

A converter is registered with `@converter("OpType", attrs="names it understands")` and called
as `fn(cx, ins, a)`: `cx` the importer's Context (opset, node, types and constant values of
expressions), `ins` the node's input expressions (None for an omitted optional input), `a` its
attributes. It returns the output expression, or a list of them (None for an output it cannot
produce). A node carrying an attribute the converter does not list is unsupported; so is a form
the converter rejects by raising `Unsupported`. Ops without a dynvm counterpart are built from
the existing ones (e.g. Gelu from erf, itself a polynomial/exp decomposition; Pad from take).
"""
from __future__ import annotations

import math
import string
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx import TensorProto

from dynvm.compiler import ir, op
from dynvm.frontend.onnx.importer import Unsupported, dtype_of
from dynvm.vm.errors import PerformanceWarning


@dataclass(frozen=True)
class Converter:
    fn: Callable
    attrs: frozenset


CONVERTERS: dict[str, Converter] = {}


def converter(*op_types, attrs: str = ""):
    def register(fn):
        for name in op_types:
            assert name not in CONVERTERS, name
            CONVERTERS[name] = Converter(fn, frozenset(attrs.split()))
        return fn
    return register


# ---------------------------------------------------------------------------------------------
# helpers


def const(value, dtype):
    return ir.const(value, dtype)


def like(cx, x, value):
    """A scalar constant of x's dtype."""
    return ir.const(value, cx.type_of(x).dtype)


def rank(cx, x) -> int:
    return cx.type_of(x).rank


def constant_value(cx, e, what: str) -> np.ndarray:
    """The value of an input the converter needs at import time (axes, pads, sizes...)."""
    value = cx.value_of(e)
    if value is None:
        source = f"graph input {e.name!r}" if isinstance(e, ir.Var) else "computed at run time"
        raise Unsupported(f"{what} must be a constant (an initializer or a Constant node); "
                          f"it is {source}")
    return np.asarray(value)


def ints(cx, e, what: str) -> list:
    """The values of a constant integer tensor input as Python ints."""
    return [int(v) for v in constant_value(cx, e, what).reshape(-1)]


def scalar_value(cx, e, what: str):
    return constant_value(cx, e, what).reshape(-1)[0].item()


def input_or_attr(cx, ins, index, a, name, what=None):
    """An int list given as attribute `name` (older opsets) or constant input `index`; None when
    neither is given."""
    if name in a:
        return list(a[name])
    if len(ins) > index and ins[index] is not None:
        return ints(cx, ins[index], what or name)
    return None


def axis_of(cx, x, axis: int, extra: int = 0) -> int:
    """`axis` normalised against rank(x) + extra."""
    r = rank(cx, x) + extra
    if not -r <= axis < max(r, 1):
        raise Unsupported(f"axis {axis} is out of range for rank {r}")
    return axis % r if r else 0


def dim(cx, x, i):
    """Dim i of x: an int when static, else an int64 scalar expression."""
    d = cx.type_of(x).shape[i]
    if not ir.is_any(d):
        return d
    return op.take(op.shape_of(x), const(i, "int64"))


def dims_product(cx, x, axes):
    """The product of dims `axes` of x: an int when they are static, else an int64 scalar."""
    static, dynamic = 1, None
    for i in axes:
        d = dim(cx, x, i)
        if isinstance(d, int):
            static *= d
        else:
            dynamic = d if dynamic is None else op.multiply(dynamic, d)
    if dynamic is None:
        return static
    return dynamic if static == 1 else op.multiply(dynamic, const(static, "int64"))


def as_vector(v):
    """An int (or an int64 scalar expression) as a 1-element int64 vector expression."""
    if isinstance(v, int):
        return const([v], "int64")
    return op.reshape(v, [1])


def shape_vector(parts):
    """A 1-D int64 shape expression from ints and int64 scalar expressions."""
    if all(isinstance(p, int) for p in parts):
        return [int(p) for p in parts]
    return op.concatenate([as_vector(p) for p in parts], 0)


def reshape(x, parts):
    return op.reshape(x, shape_vector(parts))


def to_scalar(x):
    """A one-element tensor as a rank-0 tensor."""
    return op.reshape(x, [])


def per_channel(cx, v, x_rank: int):
    """A (C,) vector shaped to broadcast over dim 1 of a rank-`x_rank` tensor: (C, 1, ..., 1)."""
    return op.expand_dims(v, 1, x_rank - 2) if x_rank > 2 else v


def fold(name, xs):
    out = xs[0]
    for x in xs[1:]:
        out = getattr(op, name)(out, x)
    return out


def not_(x):
    return op.equal(x, const(False, "bool"))


def abs_(cx, x):
    return op.where(op.less(x, like(cx, x, 0)), op.negative(x), x)


def select_tuple(call, n):
    return [ir.TupleGetItem(call, i) for i in range(n)]


def split_last(e, n):
    """e split into n equal parts along its last axis."""
    return select_tuple(op.split(e, n, axis=-1), n)


# ---------------------------------------------------------------------------------------------
# elementwise

BINARY = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide", "Equal": "equal",
          "Less": "less", "Greater": "greater", "And": "logical_and"}
UNARY = {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Tanh": "tanh", "Sigmoid": "sigmoid",
         "Relu": "relu", "Neg": "negative"}
VARIADIC = {"Max": "maximum", "Min": "minimum", "Sum": "add"}


def _register_elementwise():
    for onnx_name, name in BINARY.items():
        converter(onnx_name)(lambda cx, ins, a, n=name: getattr(op, n)(ins[0], ins[1]))
    for onnx_name, name in UNARY.items():
        converter(onnx_name)(lambda cx, ins, a, n=name: getattr(op, n)(ins[0]))
    for onnx_name, name in VARIADIC.items():
        converter(onnx_name)(lambda cx, ins, a, n=name: fold(n, ins))


_register_elementwise()


@converter("Mean")
def mean_(cx, ins, a):
    return op.divide(fold("add", ins), like(cx, ins[0], len(ins)))


@converter("Pow")
def pow_(cx, ins, a):
    x, y = ins
    dtype = cx.type_of(x).dtype
    return op.power(x, y if cx.type_of(y).dtype == dtype else op.cast(y, dtype))


@converter("Not")
def not_op(cx, ins, a):
    return not_(ins[0])


@converter("Or")
def or_(cx, ins, a):
    return op.where(ins[0], const(True, "bool"), ins[1])


@converter("Xor")
def xor_(cx, ins, a):
    return not_(op.equal(ins[0], ins[1]))


@converter("LessOrEqual", "GreaterOrEqual")
def compare_or_equal(cx, ins, a):
    strict = op.less if cx.node.op_type == "LessOrEqual" else op.greater
    return op.where(strict(*ins), const(True, "bool"), op.equal(*ins))


@converter("Abs")
def abs_op(cx, ins, a):
    return abs_(cx, ins[0])


@converter("Sign")
def sign(cx, ins, a):
    x = ins[0]
    return op.where(op.greater(x, like(cx, x, 0)), like(cx, x, 1),
                    op.where(op.less(x, like(cx, x, 0)), like(cx, x, -1), like(cx, x, 0)))


@converter("Reciprocal")
def reciprocal(cx, ins, a):
    return op.divide(like(cx, ins[0], 1), ins[0])


def floor_(cx, x):
    """floor(x) = t - (t > x) with t = x truncated; |x| >= 2**52 (and inf, NaN) are already
    integral and pass through."""
    dtype = cx.type_of(x).dtype
    if dtype not in ("float32", "float64"):
        return x
    t = op.cast(op.cast(x, "int64"), dtype)
    floored = op.subtract(t, op.cast(op.greater(t, x), dtype))
    return op.where(op.less(abs_(cx, x), like(cx, x, 2.0 ** 52)), floored, x)


@converter("Floor")
def floor_op(cx, ins, a):
    return floor_(cx, ins[0])


@converter("Ceil")
def ceil_op(cx, ins, a):
    return op.negative(floor_(cx, op.negative(ins[0])))


ERF_SERIES = [2 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
              for n in range(6)]
ERF_AS = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # A&S 7.1.26
ERF_P = 0.3275911


def erf_(cx, x):
    """erf: its Taylor series below |x| = 0.5 (keeps the relative accuracy near 0), Abramowitz
    and Stegun 7.1.26 above (absolute error < 1.5e-7)."""
    c = lambda v: like(cx, x, v)  # noqa: E731
    x2 = op.multiply(x, x)
    series = c(ERF_SERIES[-1])
    for coeff in reversed(ERF_SERIES[:-1]):
        series = op.add(op.multiply(series, x2), c(coeff))
    series = op.multiply(series, x)
    ax = abs_(cx, x)
    t = op.divide(c(1.0), op.add(c(1.0), op.multiply(c(ERF_P), ax)))
    poly = c(ERF_AS[-1])
    for coeff in reversed(ERF_AS[:-1]):
        poly = op.add(op.multiply(poly, t), c(coeff))
    tail = op.subtract(c(1.0), op.multiply(op.multiply(poly, t), op.exp(op.negative(x2))))
    signed = op.where(op.less(x, c(0.0)), op.negative(tail), tail)
    return op.where(op.less(ax, c(0.5)), series, signed)


@converter("Erf")
def erf_op(cx, ins, a):
    return erf_(cx, ins[0])


SIN_TERMS = 9          # Taylor terms of sin on [-pi/2, pi/2]: error below 1e-15 (float64)


def in_float64(cx, x, compute):
    """compute(x as float64), cast back to x's dtype: the decomposed functions keep float64's
    digits for float32 inputs (dtypes other than float32/float64 are unsupported)."""
    dtype = cx.type_of(x).dtype
    if dtype not in ("float32", "float64"):
        raise Unsupported(f"{cx.node.op_type} of {dtype}")
    return op.cast(compute(op.cast(x, "float64")), dtype)


def sin_(cx, x, shift=0.0):
    """sin(x + shift), computed in float64: x reduced to r in [-pi, pi] (x - 2 pi round(x / 2
    pi)), folded into [-pi/2, pi/2] (sin(r) = sin(pi - r)), then its Taylor series."""
    c = lambda v: const(v, "float64")  # noqa: E731

    def sine(x):
        x = op.add(x, c(shift))
        r = op.subtract(x, op.multiply(c(2 * math.pi),
                                       floor_(cx, op.add(op.multiply(x, c(0.5 / math.pi)), c(0.5)))))
        r = op.where(op.greater(r, c(math.pi / 2)), op.subtract(c(math.pi), r),
                     op.where(op.less(r, c(-math.pi / 2)), op.subtract(c(-math.pi), r), r))
        r2 = op.multiply(r, r)
        series = c((-1) ** (SIN_TERMS - 1) / math.factorial(2 * SIN_TERMS - 1))
        for n in reversed(range(SIN_TERMS - 1)):
            series = op.add(op.multiply(series, r2), c((-1) ** n / math.factorial(2 * n + 1)))
        return op.multiply(series, r)
    return in_float64(cx, x, sine)


@converter("Sin")
def sin(cx, ins, a):
    return sin_(cx, ins[0])


@converter("Cos")
def cos(cx, ins, a):
    return sin_(cx, ins[0], shift=math.pi / 2)


@converter("Gelu", attrs="approximate")
def gelu(cx, ins, a):
    x = ins[0]
    c = lambda v: like(cx, x, v)  # noqa: E731
    if a.get("approximate", "none") == "tanh":
        inner = op.multiply(c(math.sqrt(2 / math.pi)),
                            op.add(x, op.multiply(c(0.044715), op.multiply(x, op.multiply(x, x)))))
        gate = op.add(c(1.0), op.tanh(inner))
    else:
        gate = op.add(c(1.0), erf_(cx, op.multiply(x, c(1 / math.sqrt(2)))))
    return op.multiply(op.multiply(c(0.5), x), gate)


def softplus_(cx, x):
    """log(1 + e**x) = relu(x) + log(1 + e**-|x|): no overflow for large x."""
    return op.add(op.relu(x), op.log(op.add(like(cx, x, 1.0), op.exp(op.negative(abs_(cx, x))))))


@converter("Softplus")
def softplus(cx, ins, a):
    return softplus_(cx, ins[0])


@converter("Swish", attrs="alpha")
def swish(cx, ins, a):
    x = ins[0]
    return op.multiply(x, op.sigmoid(op.multiply(x, like(cx, x, a.get("alpha", 1.0)))))


@converter("Round")
def round_(cx, ins, a):
    """Half to even: floor(x), plus one above the half, or at the half when floor(x) is odd."""
    x = ins[0]
    f = floor_(cx, x)
    up = op.add(f, like(cx, x, 1.0))
    frac = op.subtract(x, f)
    half = like(cx, x, 0.5)
    even = op.equal(floor_(cx, op.multiply(f, half)), op.multiply(f, half))
    return op.where(op.greater(frac, half), up,
                    op.where(op.less(frac, half), f, op.where(even, f, up)))


@converter("Mod", attrs="fmod")
def mod(cx, ins, a):
    """fmod=1: C's fmod (the sign of x, exact); fmod=0: the sign of y, as numpy's mod: fmod,
    plus y when the remainder is non-zero and its sign is not y's (floats: x finite and y
    infinite gives x, or y when their signs differ; a zero result has y's sign)."""
    x, y = ins
    rem = op.fmod(x, y)
    if a.get("fmod", 0):
        return rem
    zero = like(cx, x, 0)
    wrong_sign = op.logical_and(not_(op.equal(rem, zero)),
                                not_(op.equal(op.less(rem, zero), op.less(y, zero))))
    rem = op.where(wrong_sign, op.add(rem, y), rem)
    if cx.type_of(x).dtype in ("float32", "float64"):     # -0.0 as a product: constants fold it
        sign_of_y = op.where(op.less(y, zero), like(cx, x, -1), like(cx, x, 1))
        rem = op.where(op.equal(rem, zero), op.multiply(zero, sign_of_y), rem)
    return rem


@converter("Shrink", attrs="bias lambd")
def shrink(cx, ins, a):
    x = ins[0]
    lambd, bias = a.get("lambd", 0.5), a.get("bias", 0.0)
    return op.where(op.less(x, like(cx, x, -lambd)), op.add(x, like(cx, x, bias)),
                    op.where(op.greater(x, like(cx, x, lambd)), op.subtract(x, like(cx, x, bias)),
                             like(cx, x, 0)))


@converter("IsNaN")
def is_nan(cx, ins, a):
    return not_(op.equal(ins[0], ins[0]))


@converter("IsInf", attrs="detect_negative detect_positive")
def is_inf(cx, ins, a):
    x = ins[0]
    out = const(False, "bool")
    if a.get("detect_positive", 1):
        out = op.equal(x, like(cx, x, np.inf))
    if a.get("detect_negative", 1):
        out = op.where(op.equal(x, like(cx, x, -np.inf)), const(True, "bool"), out)
    return op.logical_and(out, op.equal(x, x))


@converter("Softsign")
def softsign(cx, ins, a):
    x = ins[0]
    return op.divide(x, op.add(like(cx, x, 1.0), abs_(cx, x)))


@converter("Mish")
def mish(cx, ins, a):
    return op.multiply(ins[0], op.tanh(softplus_(cx, ins[0])))


@converter("Elu", attrs="alpha")
def elu(cx, ins, a):
    x = ins[0]
    neg = op.multiply(like(cx, x, a.get("alpha", 1.0)), op.subtract(op.exp(x), like(cx, x, 1.0)))
    return op.where(op.less(x, like(cx, x, 0.0)), neg, x)


@converter("Celu", attrs="alpha")
def celu(cx, ins, a):
    x, alpha = ins[0], a.get("alpha", 1.0)
    neg = op.multiply(like(cx, x, alpha),
                      op.subtract(op.exp(op.divide(x, like(cx, x, alpha))), like(cx, x, 1.0)))
    return op.add(op.relu(x), op.minimum(like(cx, x, 0.0), neg))


@converter("Selu", attrs="alpha gamma")
def selu(cx, ins, a):
    x = ins[0]
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    neg = op.multiply(like(cx, x, alpha), op.subtract(op.exp(x), like(cx, x, 1.0)))
    return op.multiply(like(cx, x, gamma), op.where(op.greater(x, like(cx, x, 0.0)), x, neg))


@converter("LeakyRelu", attrs="alpha")
def leaky_relu(cx, ins, a):
    x = ins[0]
    return op.where(op.less(x, like(cx, x, 0.0)), op.multiply(x, like(cx, x, a.get("alpha", 0.01))), x)


@converter("PRelu")
def prelu(cx, ins, a):
    x, slope = ins
    return op.where(op.less(x, like(cx, x, 0)), op.multiply(x, slope), x)


@converter("ThresholdedRelu", attrs="alpha")
def thresholded_relu(cx, ins, a):
    x = ins[0]
    return op.where(op.greater(x, like(cx, x, a.get("alpha", 1.0))), x, like(cx, x, 0.0))


def hard_sigmoid_(cx, x, alpha, beta):
    lin = op.add(op.multiply(x, like(cx, x, alpha)), like(cx, x, beta))
    return op.maximum(like(cx, x, 0.0), op.minimum(like(cx, x, 1.0), lin))


@converter("HardSigmoid", attrs="alpha beta")
def hard_sigmoid(cx, ins, a):
    return hard_sigmoid_(cx, ins[0], a.get("alpha", 0.2), a.get("beta", 0.5))


@converter("HardSwish")
def hard_swish(cx, ins, a):
    return op.multiply(ins[0], hard_sigmoid_(cx, ins[0], 1 / 6, 0.5))


@converter("Clip", attrs="min max")
def clip(cx, ins, a):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else (
        like(cx, x, a["min"]) if "min" in a else None)
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else (
        like(cx, x, a["max"]) if "max" in a else None)
    if lo is not None:
        x = op.maximum(x, lo)
    if hi is not None:
        x = op.minimum(x, hi)
    return x


@converter("Where")
def where(cx, ins, a):
    return op.where(*ins)


@converter("Cast", attrs="to saturate")
def cast(cx, ins, a):
    return op.cast(ins[0], dtype_of(a["to"], "the target type"))


@converter("CastLike", attrs="saturate")
def cast_like(cx, ins, a):
    return op.cast(ins[0], cx.type_of(ins[1]).dtype)


@converter("Identity")
def identity(cx, ins, a):
    return ins[0]


@converter("Dropout", attrs="seed ratio is_test")
def dropout(cx, ins, a):
    """Inference, or training with a ratio of 0: the identity, and a mask of ones."""
    if len(ins) > 2 and ins[2] is not None and scalar_value(cx, ins[2], "training_mode"):
        ratio = scalar_value(cx, ins[1], "ratio") if len(ins) > 1 and ins[1] is not None else 0.5
        if ratio != 0:
            raise Unsupported("training_mode=True with a ratio above 0 (a random mask)")
    x = ins[0]
    return [x, op.ones(op.shape_of(x), dtype="bool")]


# ---------------------------------------------------------------------------------------------
# constants and creation


@converter("Constant", attrs="value value_float value_floats value_int value_ints")
def constant(cx, ins, a):
    if "value" in a:
        return a["value"]
    for key, dtype in (("value_float", "float32"), ("value_floats", "float32"),
                       ("value_int", "int64"), ("value_ints", "int64")):
        if key in a:
            return const(a[key], dtype)
    raise Unsupported("Constant without a supported value attribute")


@converter("ConstantOfShape", attrs="value")
def constant_of_shape(cx, ins, a):
    value = a["value"].data.reshape(()) if "value" in a else np.float32(0)
    fill = ir.const(value)
    shape = cx.value_of(ins[0])
    return op.full(fill, [int(d) for d in shape] if shape is not None else ins[0])


@converter("Range")
def range_(cx, ins, a):
    return op.arange(*(to_scalar(x) for x in ins), dtype=cx.type_of(ins[0]).dtype)


@converter("Shape", attrs="start end")
def shape(cx, ins, a):
    t = cx.type_of(ins[0])
    dims = range(t.rank)[slice(a.get("start", 0), a.get("end"))]
    if all(not ir.is_any(t.shape[i]) for i in dims):
        return ir.Constant(np.array([t.shape[i] for i in dims], np.int64))
    s = op.shape_of(ins[0])
    if len(dims) == t.rank:
        return s
    return op.strided_slice(s, [dims.start], [dims.stop])


@converter("Size")
def size(cx, ins, a):
    n = dims_product(cx, ins[0], range(rank(cx, ins[0])))
    return const(n, "int64") if isinstance(n, int) else n


@converter("EyeLike", attrs="dtype k")
def eye_like(cx, ins, a):
    x = ins[0]
    dtype = dtype_of(a["dtype"], "dtype") if "dtype" in a else cx.type_of(x).dtype
    rows = counting(dim(cx, x, 0))
    cols = counting(dim(cx, x, 1))
    diag = op.equal(op.subtract(cols, op.expand_dims(rows, 1)), const(a.get("k", 0), "int64"))
    return op.cast(diag, dtype)


def as_int64(d):
    return const(d, "int64") if isinstance(d, int) else d


# ---------------------------------------------------------------------------------------------
# shapes and data movement


@converter("Reshape", attrs="allowzero")
def reshape_op(cx, ins, a):
    x, s = ins
    value = cx.value_of(s)
    if value is None:
        if a.get("allowzero", 0):       # a 0 is an empty dim, not a copy: then no elements
            zeros = op.sum(op.cast(op.equal(s, const(0, "int64")), "int64"))
            return ir.If(op.greater(zeros, const(0, "int64")), empty_like_shape(cx, x, s),
                         op.reshape(x, s))
        parts = shape_parts(cx, s)
        if parts is None or parts.count(None) != 1 or -1 in parts or 0 in parts:
            return op.reshape(x, s)
        value = [-1 if d is None else d for d in parts]    # the one run-time dim is inferred
    newshape = [int(d) for d in value]
    if a.get("allowzero", 0) and 0 in newshape:
        # a 0 is an empty dim, not a copy: the result has no elements
        return op.zeros(newshape, dtype=cx.type_of(x).dtype)
    return op.reshape(x, newshape)


def empty_like_shape(cx, x, s):
    """zeros of shape `s` (which holds a 0), when x has no elements either; else an error at
    run time (x's element count as an index into an axis of 1)."""
    check = wrapped(cx, as_int64(dims_product(cx, x, range(rank(cx, x)))), 1)   # 0, or an error
    dtype = cx.type_of(x).dtype
    return op.add(op.zeros(s, dtype=dtype), op.cast(check, dtype))


def shape_parts(cx, s):
    """The entries of a run-time 1-D shape built by Concat of constants and one-element
    run-time parts (as exported models build Reshape's shape): ints, None for a run-time
    entry; None when s is not such a Concat. A Reshape whose only run-time entry is inferred
    (-1) from the element count is a static reshape: the result's other dims stay static."""
    if not (isinstance(s, ir.Call) and isinstance(s.callee, ir.Op) and s.callee.name == "concatenate"
            and isinstance(s.args[0], ir.Tuple)):
        return None
    parts = []
    for part in s.args[0].fields:
        value = cx.value_of(part)
        if value is not None:
            parts += [int(d) for d in np.ravel(value)]
        elif cx.type_of(part).shape == (1,):
            parts.append(None)
        else:
            return None
    return parts


@converter("Flatten", attrs="axis")
def flatten(cx, ins, a):
    x = ins[0]
    r = rank(cx, x)
    axis = a.get("axis", 1)
    axis = axis + r if axis < 0 else axis
    outer = dims_product(cx, x, range(axis))
    inner = dims_product(cx, x, range(axis, r))
    if isinstance(outer, int) and outer > 0:
        return op.reshape(x, [outer, -1])
    if isinstance(inner, int) and inner > 0:
        return op.reshape(x, [-1, inner])
    return reshape(x, [outer, inner])


@converter("Transpose", attrs="perm")
def transpose(cx, ins, a):
    return op.transpose(ins[0], a.get("perm"))


@converter("Squeeze", attrs="axes")
def squeeze(cx, ins, a):
    axes = input_or_attr(cx, ins, 1, a, "axes")
    return op.squeeze(ins[0], axis=axes if axes else None)


@converter("Unsqueeze", attrs="axes")
def unsqueeze(cx, ins, a):
    x = ins[0]
    axes = input_or_attr(cx, ins, 1, a, "axes")
    out_rank = rank(cx, x) + len(axes)
    for axis in sorted(a % out_rank for a in axes):
        x = op.expand_dims(x, axis)
    return x


@converter("Concat", attrs="axis")
def concat(cx, ins, a):
    parts = [x for x in ins if x is not None]
    return op.concatenate(parts, a["axis"])


@converter("Split", attrs="axis split num_outputs")
def split(cx, ins, a):
    x = ins[0]
    axis = axis_of(cx, x, a.get("axis", 0))
    n = len(cx.node.output)
    sizes = input_or_attr(cx, ins, 1, a, "split", "split sizes")
    d = cx.type_of(x).shape[axis]
    if sizes is None and "num_outputs" in a and not ir.is_any(d):
        chunk = -(-d // n)
        sizes = [min(chunk, d - i * chunk) for i in range(n)]
    if sizes is None:
        parts = op.split(x, n, axis)
    else:
        parts = op.split(x, list(np.cumsum(sizes[:-1]).tolist()), axis)
    return select_tuple(parts, n)


@converter("Slice", attrs="starts ends axes")
def slice_(cx, ins, a):
    """Constant starts/ends/steps: strided_slice; run-time ones: dyn.strided_slice (axes must
    be constant either way)."""
    x = ins[0]
    if "starts" in a:  # opset < 10: attributes
        return op.strided_slice(x, a["starts"], a["ends"], None, axes=a.get("axes"))
    starts, ends = ins[1], ins[2]
    steps = ins[4] if len(ins) > 4 else None
    r = rank(cx, x)
    n = cx.type_of(starts).shape[0]
    if len(ins) > 3 and ins[3] is not None:
        axes = [v % r for v in ints(cx, ins[3], "Slice axes")]
    elif ir.is_any(n):
        raise Unsupported("Slice starts of unknown length")
    else:
        axes = list(range(n))
    values = [cx.value_of(e) if e is not None else None for e in (starts, ends, steps)]
    if all(v is not None or e is None for v, e in zip(values, (starts, ends, steps))):
        begin, end, stride = ([int(i) for i in v] if v is not None else None for v in values)
        return op.strided_slice(x, begin, end, stride, axes=axes)
    as64 = lambda v: v if cx.type_of(v).dtype == "int64" else op.cast(v, "int64")  # noqa: E731
    stride = as64(steps) if steps is not None else [1] * len(axes)
    return op.strided_slice(x, as64(starts), as64(ends), stride, axes=axes)


@converter("Gather", attrs="axis")
def gather(cx, ins, a):
    data, indices = ins
    axis = axis_of(cx, data, a.get("axis", 0))
    idx = cx.value_of(indices)
    if idx is not None and isinstance(data, ir.Call) and isinstance(data.callee, ir.Op) \
            and data.callee.name == "shape_of":      # static dims of a run-time shape: constants
        dims = cx.type_of(data.args[0]).shape
        picked = np.take(np.arange(len(dims)), idx, mode="wrap") if dims else None
        if picked is not None and not any(ir.is_any(dims[i]) for i in np.ravel(picked)):
            return ir.const(np.array([dims[i] for i in np.ravel(picked)], np.int64).reshape(picked.shape))
    return op.take(data, indices, axis=axis, mode="raise")


def coordinate(cx, like_x, d, r):
    """arange(dim d of like_x), shaped (n, 1, ..., 1) to broadcast along dim d of rank r."""
    c = counting(dim(cx, like_x, d))
    return op.expand_dims(c, 1, r - 1 - d) if r - 1 - d else c


def wrapped(cx, idx, size):
    """int64 indices with negative ones counted from the end of an axis of `size`; one outside
    [-size, size) is an error at run time (a take of arange(size) in mode "raise")."""
    idx = op.cast(idx, "int64") if cx.type_of(idx).dtype != "int64" else idx
    return op.take(counting(size), idx, mode="raise")


def counting(n):
    """arange(n) in int64 (n an int or an int64 scalar expression)."""
    return op.arange(const(0, "int64"), as_int64(n), const(1, "int64"), dtype="int64")


@converter("GatherElements", attrs="axis")
def gather_elements(cx, ins, a):
    """out[i..] = data[i.. with indices[i..] on axis]: a take from the flattened data."""
    data, indices = ins
    flat = flat_positions(cx, data, indices, axis_of(cx, data, a.get("axis", 0)))
    return op.take(op.reshape(data, [-1]), flat, mode="wrap")


def flat_positions(cx, data, indices, axis):
    """Positions in the flattened `data` of each element of `indices` (an index on `axis`,
    negative ones wrapped; its own coordinate on every other axis)."""
    r = rank(cx, data)
    return linear_position(cx, data, [
        wrapped(cx, indices, dim(cx, data, axis)) if d == axis else coordinate(cx, indices, d, r)
        for d in range(r)])


@converter("GatherND", attrs="batch_dims")
def gather_nd(cx, ins, a):
    data, indices = ins
    batch = a.get("batch_dims", 0)
    k, flat = nd_positions(cx, data, indices, batch)
    r = rank(cx, data)
    rows = reshape(data, [-1] + [dim(cx, data, d) for d in range(batch + k, r)])
    return op.take(rows, flat, axis=0, mode="wrap")


def nd_positions(cx, data, indices, batch=0):
    """(k, the row of data[:batch + k] flattened that each index tuple indices[..., :k] names,
    within its own position on the `batch` leading dims that data and indices share)."""
    k = cx.type_of(indices).shape[-1]
    if ir.is_any(k):
        raise Unsupported("indices whose last dim is dynamic")
    positions = rank(cx, indices) - 1
    coords = [coordinate(cx, indices, d, positions) for d in range(batch)]
    coords += [wrapped(cx, op.take(indices, const(j, "int64"), axis=-1), dim(cx, data, batch + j))
               for j in range(k)]
    return k, linear_position(cx, data, coords)


def linear_position(cx, data, coords):
    """The position of coordinates `coords` (one per leading dim of `data`) in those dims
    flattened, row-major."""
    flat = None
    for j, c in enumerate(coords):
        stride = dims_product(cx, data, range(j + 1, len(coords)))
        term = op.multiply(c, as_int64(stride)) if stride != 1 else c
        flat = term if flat is None else op.add(flat, term)
    return flat


def scatter_rows(cx, data, rows, width, flat, updates, reduction):
    """data viewed as `rows` rows of `width` elements, with update row k written to (or
    combined into, by `reduction`) row flat[k]: dynvm's scatter_rows op."""
    if reduction != "none" and cx.type_of(data).dtype == "bool":
        raise Unsupported(f"reduction {reduction!r} on bool")
    return op.scatter_rows(reshape(data, [rows, width]), flat, reshape(updates, [-1, width]),
                           reduction=reduction)


@converter("ScatterElements", "Scatter", attrs="axis reduction")
def scatter_elements(cx, ins, a):
    """Each update to data[i.. with indices[i..] on axis]: flat positions as in GatherElements,
    then scatter_rows over the flattened data."""
    data, indices, updates = ins
    r = rank(cx, data)
    flat = flat_positions(cx, data, indices, axis_of(cx, data, a.get("axis", 0)))
    out = scatter_rows(cx, data, dims_product(cx, data, range(r)), 1, op.reshape(flat, [-1]),
                       updates, a.get("reduction", "none"))
    return reshape(out, [dim(cx, data, d) for d in range(r)])


@converter("ScatterND", attrs="reduction")
def scatter_nd(cx, ins, a):
    """Each update slice to data[indices[j]]: flat row positions as in GatherND, then
    scatter_rows over data viewed as (prod(dims[:k]), prod(dims[k:]))."""
    data, indices, updates = ins
    k, flat = nd_positions(cx, data, indices)
    r = rank(cx, data)
    out = scatter_rows(cx, data, dims_product(cx, data, range(k)),
                       dims_product(cx, data, range(k, r)), op.reshape(flat, [-1]), updates,
                       a.get("reduction", "none"))
    return reshape(out, [dim(cx, data, d) for d in range(r)])


def scaled(d, k, divide=False):
    """A dim times (or divided by) the int k: an int, or an int64 scalar expression."""
    if isinstance(d, int):
        return d // k if divide else d * k
    return (op.divide if divide else op.multiply)(d, const(k, "int64"))


@converter("DepthToSpace", attrs="blocksize mode")
def depth_to_space(cx, ins, a):
    x, b = ins[0], a["blocksize"]
    n, c, h, w = (dim(cx, x, i) for i in range(4))
    depth = scaled(c, b * b, divide=True)
    if a.get("mode", "DCR") == "DCR":
        parts, perm = [n, b, b, depth, h, w], [0, 3, 4, 1, 5, 2]
    else:
        parts, perm = [n, depth, b, b, h, w], [0, 1, 4, 2, 5, 3]
    moved = op.transpose(reshape(x, parts), perm)
    return reshape(moved, [n, depth, scaled(h, b), scaled(w, b)])


@converter("SpaceToDepth", attrs="blocksize mode")
def space_to_depth(cx, ins, a):
    x, b = ins[0], a["blocksize"]
    n, c, h, w = (dim(cx, x, i) for i in range(4))
    hb, wb = scaled(h, b, divide=True), scaled(w, b, divide=True)
    perm = [0, 3, 5, 1, 2, 4] if a.get("mode", "DCR") == "DCR" else [0, 1, 3, 5, 2, 4]
    moved = op.transpose(reshape(x, [n, c, hb, b, wb, b]), perm)
    return reshape(moved, [n, scaled(c, b * b), hb, wb])


@converter("Expand")
def expand(cx, ins, a):
    x, s = ins
    value = cx.value_of(s)
    dtype = cx.type_of(x).dtype
    ones = op.ones([int(d) for d in value] if value is not None else s, dtype=dtype)
    return op.logical_and(x, ones) if dtype == "bool" else op.multiply(x, ones)


@converter("Tile")
def tile(cx, ins, a):
    x = ins[0]
    repeats = ints(cx, ins[1], "Tile repeats")
    for axis, r in enumerate(repeats):
        if r == 0:
            x = op.strided_slice(x, [0], [0], axes=[axis])
        elif r > 1:
            x = op.concatenate([x] * r, axis)
    return x


@converter("Pad", attrs="mode pads value")
def pad(cx, ins, a):
    """Each padded axis is a `take` of clipped (edge), mirrored (reflect) or wrapped source
    indices; constant mode then fills the out-of-range positions."""
    x = ins[0]
    r = rank(cx, x)
    mode = a.get("mode", "constant")
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise Unsupported(f"mode {mode!r}")
    pads = input_or_attr(cx, ins, 1, a, "pads", "pads")
    value = a.get("value", 0.0)
    if len(ins) > 2 and ins[2] is not None:
        value = ins[2]
    fill = op.cast(to_scalar(value), cx.type_of(x).dtype) if isinstance(value, ir.Expr) \
        else like(cx, x, value)
    axes = ints(cx, ins[3], "Pad axes") if len(ins) > 3 and ins[3] is not None else range(r)
    axes = [v % r for v in axes]
    k = len(axes)
    for axis, before, after in zip(axes, pads[:k], pads[k:]):
        if before or after:
            x = _pad_axis(cx, x, axis, before, after, mode, fill, r)
    return x


def _pad_axis(cx, x, axis, before, after, mode, fill, r):
    n = as_int64(dim(cx, x, axis))
    one = const(1, "int64")
    idx = op.arange(const(-before, "int64"), op.add(n, const(after, "int64")), one, dtype="int64")
    last = op.subtract(n, one)
    if mode == "reflect":
        mirrored = op.where(op.less(idx, const(0, "int64")), op.negative(idx), idx)
        src = op.where(op.greater(mirrored, last),
                       op.subtract(op.multiply(const(2, "int64"), last), mirrored), mirrored)
    elif mode == "wrap":
        src = idx
    else:
        src = op.maximum(const(0, "int64"), op.minimum(idx, last))
    out = op.take(x, src, axis=axis, mode="wrap")
    if mode != "constant":
        return out
    inside = op.logical_and(op.greater(idx, const(-1, "int64")), op.less(idx, n))
    if r - axis - 1:
        inside = op.expand_dims(inside, 1, r - axis - 1)
    return op.where(inside, out, fill)


# coordinate_transformation_mode -> the source coordinate of output positions y (floats) for
# input size n, output size m, scale s (n * s, unrounded, is the spec's "length_resized")
SOURCE_COORDINATES = {
    "half_pixel": lambda y, n, m, s: (y + 0.5) / s - 0.5,
    "half_pixel_symmetric": lambda y, n, m, s: n / 2 * (1 - m / (n * s)) + (y + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda y, n, m, s: (y + 0.5) / s - 0.5 if n * s != 1 else 0 * y - 0.5,
    "align_corners": lambda y, n, m, s: y * (n - 1) / (n * s - 1) if n * s != 1 else 0 * y,
    "asymmetric": lambda y, n, m, s: y / s,
}
NEAREST = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
           "floor": np.floor, "ceil": np.ceil}
RESIZE_MODES = ("nearest", "linear", "cubic")


def cubic_kernel(d, a):
    """Keys' cubic convolution kernel with parameter `a` at distances d."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def resize_taps(mode, source, n, scale, a):
    """(indices (m, K) into [0, n), weights (m, K)) of each output position's source taps.
    The taps of a coordinate x are the K positions nearest to it, ties to the left (the window
    starts at ceil(x) - K/2); linear and cubic weigh them by their kernel at the distance,
    scaled by the scale when antialiasing a downsampling (the window widened to match, the
    weights normalised). Taps outside the input read its edge, or with `exclude_outside` get
    weight 0 (the others renormalised)."""
    if mode == "nearest":
        index = NEAREST[a.get("nearest_mode", "round_prefer_floor")](source)
        return np.clip(index, 0, n - 1).astype(np.int64)[:, None], np.ones((len(source), 1))
    antialias = bool(a.get("antialias", 0))
    shrink = min(scale, 1.0) if antialias else 1.0
    reach = 1 if mode == "linear" else 2
    first = int(np.floor(-reach / shrink) + 1)                 # the leftmost tap's offset
    offsets = np.arange(first, 2 - first)
    left = np.ceil(source) - 1                                 # a coordinate on a tap: its left
    ratio = source - left
    distance = shrink * (offsets[None, :] - ratio[:, None])
    if mode == "linear":
        weights = np.clip(1 - np.abs(distance), 0, 1)
    else:
        weights = cubic_kernel(distance, a.get("cubic_coeff_a", -0.75))
    index = left.astype(np.int64)[:, None] + offsets[None, :]
    if a.get("exclude_outside", 0):
        weights = np.where((index < 0) | (index >= n), 0.0, weights)
    if antialias or a.get("exclude_outside", 0):
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(index, 0, n - 1), weights


@converter("Resize", "Upsample", attrs="mode coordinate_transformation_mode nearest_mode axes "
                                        "antialias keep_aspect_ratio_policy cubic_coeff_a "
                                        "exclude_outside extrapolation_value scales")
def resize(cx, ins, a):
    """Nearest, linear and cubic resizing (antialias, exclude_outside, every coordinate mode,
    tf_crop_and_resize's region and extrapolation value, the aspect-ratio policies) of static
    dims with constant scales, sizes and region: per resized axis, the taps of each output
    position (source indices and weights) computed at import time, then one `take` per tap and
    their weighted sum."""
    x, t = ins[0], cx.type_of(ins[0])
    mode = a.get("mode", "nearest")
    legacy = cx.node.op_type == "Upsample" or cx.opset < 11      # scales input 1, asymmetric
    coords = "asymmetric" if legacy else a.get("coordinate_transformation_mode", "half_pixel")
    if mode not in RESIZE_MODES:
        raise Unsupported(f"mode {mode!r} (supported: {', '.join(RESIZE_MODES)})")
    if coords not in SOURCE_COORDINATES and coords != "tf_crop_and_resize":
        raise Unsupported(f"coordinate_transformation_mode {coords!r}")
    if mode != "nearest" and t.dtype not in ("float32", "float64"):
        raise Unsupported(f"{mode} Resize of {t.dtype}")
    if legacy:
        a = dict(a, nearest_mode="floor")
    axes = [axis % t.rank for axis in a.get("axes", range(t.rank))]
    if any(ir.is_any(t.shape[axis]) for axis in axes):
        raise Unsupported("Resize of a dynamic dim")
    scales, sizes = resize_scales(cx, ins, a, legacy, [t.shape[axis] for axis in axes])
    roi = resize_region(cx, ins, len(axes), coords)
    for k, axis in enumerate(axes):
        n, m = t.shape[axis], sizes[k]
        if m == n and scales[k] == 1.0 and roi is None:
            continue
        y = np.arange(m, dtype=np.float64)
        if roi is not None:       # tf_crop_and_resize: the region [start, end] of the input
            start, end = roi[k], roi[len(axes) + k]
            source = (end - start) * (n - 1) / 2 + 0 * y if m == 1 else y * (end - start) * (n - 1) / (m - 1)
            source = source + start * (n - 1)
        else:
            source = SOURCE_COORDINATES[coords](y, n, m, scales[k])
        x = resize_axis(cx, x, axis, *resize_taps(mode, source, n, scales[k], a))
        if roi is not None and ((source < 0) | (source > n - 1)).any():
            shape = [1] * t.rank
            shape[axis] = m
            outside = const(((source < 0) | (source > n - 1)).reshape(shape), "bool")
            x = op.where(outside, like(cx, x, a.get("extrapolation_value", 0.0)), x)
    return x


def resize_scales(cx, ins, a, legacy, dims):
    """(scale, output size) per resized axis, from the scales or the sizes (with the
    aspect-ratio policy)."""
    scales_in, sizes_in = (ins[1], None) if legacy else (ins[2] if len(ins) > 2 else None,
                                                         ins[3] if len(ins) > 3 else None)
    if "scales" in a or (scales_in is not None and cx.type_of(scales_in).shape[0] != 0):
        scales = list(a["scales"]) if "scales" in a else [
            float(v) for v in constant_value(cx, scales_in, "Resize scales").reshape(-1)]
        return scales, [int(math.floor(n * s)) for n, s in zip(dims, scales)]
    sizes = ints(cx, sizes_in, "Resize sizes")
    policy = a.get("keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        return [m / n if n else 1.0 for n, m in zip(dims, sizes)], list(sizes)
    pick = {"not_larger": min, "not_smaller": max}.get(policy)
    if pick is None:
        raise Unsupported(f"keep_aspect_ratio_policy {policy!r}")
    scale = pick(m / n for n, m in zip(dims, sizes))
    return [scale] * len(dims), [int(scale * n + 0.5) for n in dims]


def resize_region(cx, ins, count, coords):
    """tf_crop_and_resize's region (starts, then ends, of the resized axes), else None."""
    if coords != "tf_crop_and_resize":
        return None
    if len(ins) < 2 or ins[1] is None:
        raise Unsupported("tf_crop_and_resize without a region")
    roi = [float(v) for v in constant_value(cx, ins[1], "Resize roi").reshape(-1)]
    if len(roi) != 2 * count:
        raise Unsupported(f"a region of {len(roi)} values for {count} resized axes")
    return roi


def resize_axis(cx, x, axis, index, weights):
    """The weighted sum over taps of `take`s of x along `axis` (taps of weight 0 skipped)."""
    t = cx.type_of(x)
    shape = [1] * t.rank
    shape[axis] = len(index)
    out = None
    for k in range(index.shape[1]):
        if not weights[:, k].any():
            continue
        tap = op.take(x, const(index[:, k], "int64"), axis=axis)
        if not (weights[:, k] == 1).all():
            tap = op.multiply(tap, const(weights[:, k].reshape(shape), t.dtype))
        out = tap if out is None else op.add(out, tap)
    return out if out is not None else op.multiply(op.take(x, const(index[:, 0], "int64"), axis=axis),
                                                   like(cx, x, 0))


@converter("NonZero")
def nonzero(cx, ins, a):
    return op.transpose(op.argwhere(ins[0]))


@converter("OneHot", attrs="axis")
def one_hot(cx, ins, a):
    indices, depth, values = ins
    out_rank = rank(cx, indices) + 1
    axis = a.get("axis", -1) % out_rank
    depth = op.cast(to_scalar(depth), "int64")
    idx = op.cast(indices, "int64")
    idx = op.where(op.less(idx, const(0, "int64")), op.add(idx, depth), idx)
    classes = counting(depth)
    if out_rank - 1 - axis:
        classes = op.expand_dims(classes, 1, out_rank - 1 - axis)
    hit = op.equal(op.expand_dims(idx, axis), classes)
    off = op.take(values, const(0, "int64"))
    on = op.take(values, const(1, "int64"))
    return op.where(hit, on, off)


@converter("Compress", attrs="axis")
def compress(cx, ins, a):
    """The slices along `axis` (of the flattened input without one) whose condition is true;
    a condition shorter than the axis leaves the rest out."""
    x, condition = ins
    if "axis" not in a:
        x, axis = op.reshape(x, [-1]), 0
    else:
        axis = axis_of(cx, x, a["axis"])
    n = as_int64(dim(cx, x, axis))
    within = op.less(counting(dim(cx, condition, 0)), n)
    kept = op.reshape(op.argwhere(op.logical_and(condition, within)), [-1])
    return op.take(x, kept, axis=axis, mode="clip")


@converter("ReverseSequence", attrs="batch_axis time_axis")
def reverse_sequence(cx, ins, a):
    """Each batch entry's first lens[b] steps reversed along the time axis, the rest kept: a
    gather along the time axis of len - 1 - t where t < len, else t."""
    x, lens = ins
    r = rank(cx, x)
    time, batch = a.get("time_axis", 0), a.get("batch_axis", 1)
    t = coordinate(cx, x, time, r)
    steps = op.add(as_int64(dim(cx, x, time)), const(1, "int64"))
    lens = op.cast(lens, "int64")
    # a length outside [0, T] is an error (a negative one is made T + 1, outside the axis)
    lens = wrapped(cx, op.where(op.less(lens, const(0, "int64")), steps, lens), steps)
    if r - 1 - batch:
        lens = op.expand_dims(lens, 1, r - 1 - batch)
    source = op.where(op.less(t, lens), op.subtract(op.subtract(lens, const(1, "int64")), t), t)
    source = op.add(source, op.zeros(op.shape_of(x), dtype="int64"))      # x's full shape
    return op.take(op.reshape(x, [-1]), flat_positions(cx, x, source, time), mode="wrap")


@converter("LpNormalization", attrs="axis p")
def lp_normalization(cx, ins, a):
    """x over its L1 or L2 norm along `axis` (0 where the norm is 0)."""
    x = ins[0]
    axis, p = axis_of(cx, x, a.get("axis", -1)), a.get("p", 2)
    if p not in (1, 2):
        raise Unsupported(f"p={p} (1 or 2)")
    norm = op.sum(abs_(cx, x) if p == 1 else op.multiply(x, x), axis=[axis], keepdims=True)
    norm = norm if p == 1 else op.sqrt(norm)
    zero = like(cx, x, 0.0)
    return op.where(op.equal(norm, zero), zero,
                    op.divide(x, op.where(op.equal(norm, zero), like(cx, x, 1.0), norm)))


# window functions: the cosine terms (coefficient, multiple of 2 pi n / N) after a constant
WINDOWS = {"HannWindow": (0.5, [(-0.5, 1)]), "HammingWindow": (25 / 46, [(-(1 - 25 / 46), 1)]),
           "BlackmanWindow": (0.42, [(-0.5, 1), (0.08, 2)])}


@converter(*WINDOWS, attrs="output_datatype periodic")
def window(cx, ins, a):
    """constant + sum of c cos(2 pi k n / N) for n < size, N = size (periodic) or size - 1;
    cos(t) as 1 - 2 sin(t / 2)^2, exactly 1 at t = 0 (so Hann's first value is 0, not -2e-14)."""
    size = as_int64(to_scalar(op.cast(ins[0], "int64")))
    n = op.cast(counting(size), "float64")
    span = op.cast(size if a.get("periodic", 1) else op.subtract(size, const(1, "int64")), "float64")
    base, terms = WINDOWS[cx.node.op_type]
    out = const(base, "float64")
    for coefficient, k in terms:
        half = sin_(cx, op.divide(op.multiply(n, const(math.pi * k, "float64")), span))
        cosine = op.subtract(const(1.0, "float64"), op.multiply(const(2.0, "float64"), op.multiply(half, half)))
        out = op.add(out, op.multiply(const(coefficient, "float64"), cosine))
    return op.cast(out, dtype_of(a.get("output_datatype", TensorProto.FLOAT), "output_datatype"))


def float64_with_series(cx, x, exact, series):
    """exact(x) in float64 (`in_float64`), and for |x| < 1e-3 the odd series
    sum(c x^(2k+1)) of `series` instead: the closed forms subtract nearly equal numbers there
    (sinh(1e-8) would be 0). Four terms leave an error below 1e-19 relative."""
    def either(x):
        x2 = op.multiply(x, x)
        poly = const(series[-1], "float64")
        for c in reversed(series[:-1]):
            poly = op.add(op.multiply(poly, x2), const(c, "float64"))
        small = op.less(op.maximum(x, op.negative(x)), const(1e-3, "float64"))
        return op.where(small, op.multiply(poly, x), exact(x))
    return in_float64(cx, x, either)


@converter("Sinh", "Cosh")
def hyperbolic(cx, ins, a):
    """(e^x -+ e^-x) / 2 (Sinh through its series near 0)."""
    def closed(x):
        up, down = op.exp(x), op.exp(op.negative(x))
        both = op.subtract(up, down) if cx.node.op_type == "Sinh" else op.add(up, down)
        return op.multiply(both, const(0.5, "float64"))
    if cx.node.op_type == "Cosh":
        return in_float64(cx, ins[0], closed)
    return float64_with_series(cx, ins[0], closed, (1.0, 1 / 6, 1 / 120, 1 / 5040))


def atan_(x):
    """atan(x) of a float64 x: |x| > 1 as pi/2 - atan(1/|x|) with x's sign, then two halvings
    of the angle (atan(y) = 2 atan(y / (1 + sqrt(1 + y^2)))) to below tan(pi/16), then its
    Taylor series (13 terms: far below float64's precision there)."""
    c = lambda v: const(v, "float64")  # noqa: E731
    size = op.maximum(x, op.negative(x))
    big = op.greater(size, c(1.0))
    y = op.where(big, op.divide(c(1.0), op.where(big, size, c(1.0))), size)
    for _ in range(2):
        y = op.divide(y, op.add(c(1.0), op.sqrt(op.add(c(1.0), op.multiply(y, y)))))
    y2 = op.multiply(y, y)
    series = c((-1) ** 12 / 25)
    for n in reversed(range(12)):
        series = op.add(op.multiply(series, y2), c((-1) ** n / (2 * n + 1)))
    angle = op.multiply(op.multiply(series, y), c(4.0))
    angle = op.where(big, op.subtract(c(math.pi / 2), angle), angle)
    return op.where(op.less(x, c(0.0)), op.negative(angle), angle)


@converter("Atan", "Asin", "Acos")
def inverse_trigonometric(cx, ins, a):
    """atan (atan_); asin(x) = atan(x / sqrt(1 - x^2)) (NaN outside [-1, 1]); acos = pi/2 - asin;
    in float64 (`in_float64`)."""
    if cx.node.op_type == "Atan":
        return in_float64(cx, ins[0], atan_)

    def arcsine(x):
        one = const(1.0, "float64")
        root = op.sqrt(op.subtract(one, op.multiply(x, x)))
        ratio = op.divide(x, op.where(op.equal(root, const(0.0, "float64")), one, root))
        angle = op.where(op.equal(root, const(0.0, "float64")),
                         op.multiply(x, const(math.pi / 2, "float64")), atan_(ratio))
        angle = op.where(op.equal(root, root), angle, root)            # |x| > 1: NaN
        if cx.node.op_type == "Acos":
            angle = op.subtract(const(math.pi / 2, "float64"), angle)
        return angle
    return in_float64(cx, ins[0], arcsine)


@converter("Asinh", "Acosh", "Atanh")
def inverse_hyperbolic(cx, ins, a):
    """Logarithms, in float64: asinh(x) = sign(x) log(|x| + sqrt(x^2 + 1)) (odd, so large
    negative x keeps its digits), acosh(x) = log(x + sqrt(x^2 - 1)), atanh(x) =
    log((1 + x) / (1 - x)) / 2; asinh and atanh through their series near 0."""
    one = const(1.0, "float64")
    if cx.node.op_type == "Acosh":
        return in_float64(cx, ins[0], lambda x: op.log(op.add(x, op.sqrt(op.subtract(
            op.multiply(x, x), one)))))
    if cx.node.op_type == "Atanh":
        return float64_with_series(cx, ins[0], lambda x: op.multiply(
            op.log(op.divide(op.add(one, x), op.subtract(one, x))), const(0.5, "float64")),
            (1.0, 1 / 3, 1 / 5, 1 / 7))

    def asinh(x):
        size = op.maximum(x, op.negative(x))
        magnitude = op.log(op.add(size, op.sqrt(op.add(op.multiply(x, x), one))))
        return op.where(op.less(x, const(0.0, "float64")), op.negative(magnitude), magnitude)
    return float64_with_series(cx, ins[0], asinh, (1.0, -1 / 6, 3 / 40, -15 / 336))


@converter("Tan")
def tan(cx, ins, a):
    return op.divide(sin_(cx, ins[0]), sin_(cx, ins[0], shift=math.pi / 2))


@converter("Trilu", attrs="upper")
def trilu(cx, ins, a):
    x = ins[0]
    k = op.cast(to_scalar(ins[1]), "int64") if len(ins) > 1 and ins[1] is not None \
        else const(0, "int64")
    r = rank(cx, x)
    one, zero = const(1, "int64"), const(0, "int64")
    rows = op.arange(zero, as_int64(dim(cx, x, r - 2)), one, dtype="int64")
    cols = op.arange(zero, as_int64(dim(cx, x, r - 1)), one, dtype="int64")
    offset = op.subtract(cols, op.expand_dims(rows, 1))  # column - row
    keep = not_(op.less(offset, k)) if a.get("upper", 1) else not_(op.greater(offset, k))
    return op.where(keep, x, like(cx, x, 0))


# ---------------------------------------------------------------------------------------------
# linear algebra and networks


@converter("MatMul")
def matmul(cx, ins, a):
    x, w = ins
    ra, rb = rank(cx, x), rank(cx, w)
    if ra == 1 or rb == 1:
        xe = op.expand_dims(x, 0) if ra == 1 else x
        we = op.expand_dims(w, 1) if rb == 1 else w
        out = matmul_nd(cx, xe, we)
        if ra == 1:
            out = op.squeeze(out, axis=[rank(cx, out) - 2])
        if rb == 1:
            out = op.squeeze(out, axis=[rank(cx, out) - 1])
        return out
    return matmul_nd(cx, x, w)


def transposed_weight(cx, w):
    """w (K, N) transposed for dense: a constant (an initializer) transposed once, at import
    (build() then packs it for the kernels), else a transpose op."""
    value = cx.value_of(w)
    return op.transpose(w) if value is None else ir.const(np.ascontiguousarray(value.T))


def matmul_nd(cx, x, w):
    """x @ w over broadcast batches. A 2-D weight is dense's (transposed; an initializer once,
    at import, so build() packs it), except against a 2-D run-time weight, which matmul takes
    as it is."""
    ra, rb = rank(cx, x), rank(cx, w)
    if rb == 2:
        if ra == 2 and cx.value_of(w) is None:
            return op.matmul(x, w)
        return op.dense(x, transposed_weight(cx, w))
    if ra < rb:
        x, ra = op.expand_dims(x, 0, rb - ra), rb
    elif rb < ra:
        w, rb = op.expand_dims(w, 0, ra - rb), ra
    x, w = broadcast_batches(cx, x, w)
    batch = [dim(cx, x, i) for i in range(ra - 2)]
    x3 = x if ra == 3 else reshape(x, [-1, dim(cx, x, ra - 2), dim(cx, x, ra - 1)])
    wt = transposed_operand(cx, w)
    if wt is not None:       # B^T costs the same one transpose as B: the (N, K) layout
        w3, transpose_b = wt if rb == 3 else reshape(wt, [-1, dim(cx, wt, rb - 2), dim(cx, wt, rb - 1)]), True
    else:
        w3 = w if rb == 3 else reshape(w, [-1, dim(cx, w, rb - 2), dim(cx, w, rb - 1)])
        transpose_b = False
    out = op.batch_matmul(x3, w3, transpose_b=transpose_b)
    return out if ra == 3 else reshape(out, batch + [dim(cx, x, ra - 2), dim(cx, w, rb - 1)])


def broadcast_batches(cx, x, w):
    """x and w (of one rank >= 3) with their batch dims broadcast to each other's, when some
    pair of static batch dims differs (one of them 1): each times `ones` of the other's batch
    dims. Batch dims equal or known only at run time are left to batch_matmul."""
    r = rank(cx, x)
    bx, bw = ([dim(cx, e, i) for i in range(r - 2)] for e in (x, w))
    if not any(isinstance(p, int) and isinstance(q, int) and p != q for p, q in zip(bx, bw)):
        return x, w
    dtype = cx.type_of(x).dtype
    return (op.multiply(x, op.ones(shape_vector(bw + [1, 1]), dtype=dtype)),
            op.multiply(w, op.ones(shape_vector(bx + [1, 1]), dtype=dtype)))


def transposed_operand(cx, w):
    """B^T (its last two dims swapped) when B is a Transpose whose source can be read the
    other way for the same price and batch_matmul's dot form fits better: the contraction K
    at least as long as the output columns N (a run-time dim counts as long). The dot form
    runs along K, the plain form along N; with a short K (attention's Q K^T, K = head size)
    the plain form is faster, with a short N (attention's P V) the dot form, by up to 7x."""
    if not (isinstance(w, ir.Call) and isinstance(w.callee, ir.Op) and w.callee.name == "transpose"):
        return None
    k, n = cx.type_of(w).shape[-2:]
    if ir.is_any(n) or not (ir.is_any(k) or k >= n):
        return None
    source = w.args[0]
    axes = w.attrs.get("axes") or list(reversed(range(rank(cx, source))))
    axes = [a % len(axes) for a in axes]
    return op.transpose(source, axes[:-2] + [axes[-1], axes[-2]])


@converter("Einsum", attrs="equation")
def einsum(cx, ins, a):
    """One or two operands: an ellipsis stands for upper-case letters (its dims, aligned from
    the right); a letter twice in one operand takes that diagonal first; the letters of one
    operand only and not in the output are summed away; two operands are then one
    batch_matmul of (batch letters, left letters, contracted letters) by (batch, contracted,
    right letters), reshaped and transposed into the output's order."""
    equation = a["equation"].replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ins) or len(terms) > 2:
        raise Unsupported("Einsum with more than two operands")
    terms, out, implicit = expand_ellipsis(cx, terms, ins, out if arrow else None)
    if not arrow:
        out = implicit + "".join(sorted(c for c in set("".join(terms)) - set(implicit)
                                        if "".join(terms).count(c) == 1))
    diagonals = [take_diagonals(cx, t, x) for t, x in zip(terms, ins)]
    terms, ins = [t for t, _ in diagonals], [x for _, x in diagonals]
    sizes = {c: dim(cx, x, i) for t, x in zip(terms, ins) for i, c in enumerate(t)}
    for t, x in zip(terms, ins):
        if any(isinstance(sizes[c], int) and isinstance(dim(cx, x, i), int) and sizes[c] != dim(cx, x, i)
               for i, c in enumerate(t)):
            raise Unsupported("Einsum whose operands broadcast a dim")
    if any(d == 0 for d in sizes.values()):
        raise Unsupported("Einsum with a dim of size 0")
    xs = []
    for k, (t, x) in enumerate(zip(terms, ins)):
        kept = "".join(terms[:k] + terms[k + 1:]) + out
        summed = [i for i, c in enumerate(t) if c not in kept]
        if summed:
            x, t = op.sum(x, axis=summed), "".join(c for c in t if c in kept)
        xs.append((t, x))
    if len(xs) == 1:
        t, x = xs[0]
        return x if t == out else op.transpose(x, [t.index(c) for c in out])
    (ta, xa), (tb, xb) = xs
    batch = [c for c in ta if c in tb and c in out]
    contracted = [c for c in ta if c in tb and c not in out]
    left, right = [c for c in ta if c not in tb], [c for c in tb if c not in ta]

    def grouped(x, t, groups):
        order = [t.index(c) for g in groups for c in g]
        if order != list(range(len(t))):
            x = op.transpose(x, order)
        return reshape(x, [product(sizes, g) for g in groups])
    c3 = op.batch_matmul(grouped(xa, ta, [batch, left, contracted]),
                         grouped(xb, tb, [batch, contracted, right]), transpose_b=False)
    result = batch + left + right
    c = reshape(c3, [sizes[ch] for ch in result]) if result else to_scalar(c3)
    order = [result.index(ch) for ch in out]
    return c if order == list(range(len(order))) else op.transpose(c, order)


def expand_ellipsis(cx, terms, ins, out):
    """(terms, output, the ellipsis letters) with each "..." replaced by upper-case letters, one
    per dim it covers, the same letters for the same dims counted from the right."""
    covered = [rank(cx, x) - len(t.replace("...", "")) if "..." in t else 0
               for t, x in zip(terms, ins)]
    if any(n < 0 for n in covered):
        raise Unsupported("an Einsum term with more letters than its operand's rank")
    letters = "".join(sorted(set(string.ascii_uppercase) - set("".join(terms))))[:max(covered)]
    ellipsis = letters[len(letters) - max(covered):]

    def expand(t, n):
        return t.replace("...", ellipsis[len(ellipsis) - n:]) if "..." in t else t
    terms = [expand(t, n) for t, n in zip(terms, covered)]
    return terms, expand(out, len(ellipsis)) if out is not None else None, ellipsis


def take_diagonals(cx, t, x):
    """(t, x) with each letter that appears twice in t reduced to its diagonal: the two axes
    moved last, merged, and every (n + 1)-th element taken; the letter then comes last."""
    while len(set(t)) != len(t):
        c = next(ch for ch in t if t.count(ch) > 1)
        p, q = t.index(c), t.index(c, t.index(c) + 1)
        n = dim(cx, x, p)
        if not isinstance(n, int):
            raise Unsupported("an Einsum diagonal of a dynamic dim")
        rest = [i for i in range(len(t)) if i not in (p, q)]
        x = op.transpose(x, rest + [p, q])
        x = reshape(x, [dim(cx, x, i) for i in range(len(rest))] + [n * n])
        x = op.take(x, const(np.arange(n, dtype=np.int64) * (n + 1), "int64"), axis=len(rest))
        t = "".join(t[i] for i in rest) + c
    return t, x


def product(sizes, letters):
    """The product of the letters' dims: an int when static, else an int64 scalar."""
    static, dynamic = 1, None
    for c in letters:
        if isinstance(sizes[c], int):
            static *= sizes[c]
        else:
            dynamic = sizes[c] if dynamic is None else op.multiply(dynamic, sizes[c])
    if dynamic is None:
        return static
    return dynamic if static == 1 else op.multiply(dynamic, const(static, "int64"))


@converter("Gemm", attrs="alpha beta transA transB")
def gemm(cx, ins, a):
    x, w = ins[0], ins[1]
    if a.get("transA", 0):
        x = op.transpose(x)
    out = op.dense(x, w if a.get("transB", 0) else transposed_weight(cx, w))
    if a.get("alpha", 1.0) != 1.0:
        out = op.multiply(out, like(cx, out, a["alpha"]))
    if len(ins) > 2 and ins[2] is not None:
        c = ins[2]
        if a.get("beta", 1.0) != 1.0:
            c = op.multiply(c, like(cx, c, a["beta"]))
        out = op.add(out, c)
    return out


@converter("Conv", attrs="auto_pad dilations group kernel_shape pads strides")
def conv(cx, ins, a):
    x, w = ins[0], ins[1]
    r = rank(cx, x)
    if r not in (3, 4):
        raise Unsupported(f"Conv on rank {r} inputs (1-D and 2-D convolutions are supported)")
    n = r - 2
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    pads = _conv_pads(cx, x, cx.type_of(w).shape[2:], a, strides, dilations)
    if n == 1:
        x, w = op.expand_dims(x, 2), op.expand_dims(w, 2)
        strides, dilations, pads = [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
    out = op.conv2d(x, w, strides=strides, padding=pads, dilation=dilations,
                    groups=a.get("group", 1))
    if n == 1:
        out = op.squeeze(out, axis=[2])
    if len(ins) > 2 and ins[2] is not None:
        out = op.add(out, per_channel(cx, ins[2], r))
    return out


@converter("ConvTranspose",
           attrs="auto_pad dilations group kernel_shape output_padding output_shape pads strides")
def conv_transpose(cx, ins, a):
    """Per group a batch_matmul of the weight (as (C/g, O/g * KH * KW), transposed) with the
    input (as (N, C/g, H * W)) gives every tap's contribution of every input cell; col2im adds
    them into the output: out = (in - 1) * s + dilated window + output_padding - pads per dim.
    The weight's shape must be static. (Measured 3-6x faster than conv2d of the input spread
    out by the strides, which multiplies the multiply-adds by the strides' product.)"""
    x, w = ins[0], ins[1]
    r = rank(cx, x)
    if r not in (3, 4):
        raise Unsupported(f"ConvTranspose on rank {r} inputs (1-D and 2-D are supported)")
    if any(ir.is_any(d) for d in cx.type_of(w).shape):
        raise Unsupported("ConvTranspose with a weight of dynamic shape")
    n, groups = r - 2, a.get("group", 1)
    cin, og, *kernel = cx.type_of(w).shape
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    extra = list(a.get("output_padding", [0] * n))
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    pads = _conv_transpose_pads(cx, x, a, strides, spans, extra)
    if n == 1:
        x, w = op.expand_dims(x, 2), op.expand_dims(w, 2)
        strides, dilations, kernel = [1] + strides, [1] + dilations, [1] + kernel
        extra, pads = [0] + extra, [0, pads[0], 0, pads[1]]
    batch, h, wd = dim(cx, x, 0), dim(cx, x, 2), dim(cx, x, 3)
    cg, taps = cin // groups, og * kernel[0] * kernel[1]
    flat = reshape(x, [batch, cin, dims_product(cx, x, [2, 3])])
    parts = []
    for g in range(groups):
        wg = w if groups == 1 else op.strided_slice(w, [g * cg], [(g + 1) * cg], [1], axes=[0])
        xg = flat if groups == 1 else op.strided_slice(flat, [g * cg], [(g + 1) * cg], [1],
                                                       axes=[1])
        parts.append(op.batch_matmul(reshape(wg, [1, cg, taps]), xg, transpose_a=True,
                                     transpose_b=False))
    cols = parts[0] if groups == 1 else op.concatenate(parts, 1)
    cols = reshape(cols, [batch, groups * og, *kernel, h, wd])
    out = op.col2im(cols, strides=strides, dilation=dilations, padding=pads, output_padding=extra)
    if n == 1:
        out = op.squeeze(out, axis=[2])
    if len(ins) > 2 and ins[2] is not None:
        out = op.add(out, per_channel(cx, ins[2], r))
    return out


def _conv_transpose_pads(cx, x, a, strides, spans, extra) -> list:
    """[begins..., ends...]: pads, or from output_shape / auto_pad SAME_* the total padding
    in + (in - 1) * s + span + output_padding - out, its odd cell at the end for SAME_UPPER and
    at the beginning otherwise (ONNX's rule)."""
    n = len(strides)
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" not in a and auto in ("NOTSET", "VALID"):
        return list(a.get("pads", [0] * 2 * n)) if auto == "NOTSET" else [0] * 2 * n
    sizes = cx.type_of(x).shape[2:]
    if any(ir.is_any(d) for d in sizes):
        raise Unsupported("ConvTranspose output_shape or auto_pad SAME with dynamic spatial dims")
    wanted = list(a.get("output_shape", [size * s for size, s in zip(sizes, strides)]))[-n:]
    total = [s * (size - 1) + e + sp - want
             for s, size, e, sp, want in zip(strides, sizes, extra, spans, wanted)]
    small, big = [t // 2 for t in total], [t - t // 2 for t in total]
    return small + big if auto == "SAME_UPPER" else big + small


def _conv_pads(cx, x, kernel, a, strides, dilations) -> list:
    """[begins..., ends...] of a window op from pads / auto_pad; kernel: the window's extents."""
    n = len(strides)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        return list(a.get("pads", [0] * 2 * n)) if auto == "NOTSET" else [0] * 2 * n
    xs, ws = cx.type_of(x).shape[2:], list(kernel)
    if any(ir.is_any(d) for d in list(xs) + ws):
        raise Unsupported(f"auto_pad={auto} with dynamic spatial dims")
    begin, end = [], []
    for size, k, s, d in zip(xs, ws, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


@converter("Softmax", "LogSoftmax", attrs="axis")
def softmax(cx, ins, a):
    x = ins[0]
    r = rank(cx, x)
    log = cx.node.op_type == "LogSoftmax"
    if cx.opset >= 13:
        out = op.softmax(x, axis=a.get("axis", -1))
    else:  # the input is coerced to 2-D at axis
        axis = a.get("axis", 1) % r
        flat = x if axis == r - 1 else reshape(x, [dims_product(cx, x, range(axis)), -1])
        out = op.softmax(flat, axis=-1)
        if axis != r - 1:
            out = op.reshape(out, op.shape_of(x))
    return op.log(out) if log else out


def moments(cx, x, axes, epsilon):
    """(mean, x - mean, 1 / sqrt(variance + epsilon)) over axes, kept as size-1 dims."""
    mean = op.mean(x, axis=axes, keepdims=True)
    centred = op.subtract(x, mean)
    var = op.mean(op.multiply(centred, centred), axis=axes, keepdims=True)
    return mean, centred, op.divide(like(cx, x, 1.0), op.sqrt(op.add(var, like(cx, x, epsilon))))


def normalise(cx, x, axes, epsilon):
    _, centred, inv_std = moments(cx, x, axes, epsilon)
    return op.multiply(centred, inv_std)


@converter("LayerNormalization", attrs="axis epsilon stash_type")
def layer_normalization(cx, ins, a):
    """dynvm's layer_norm for the common case (the last axis, 1-D scale and bias, only Y
    wanted); otherwise mean / variance over axes [axis, rank), with the Mean and InvStdDev
    outputs."""
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    r = rank(cx, x)
    axis = a.get("axis", -1) % r
    eps = a.get("epsilon", 1e-5)
    only_y = not any(cx.node.output[1:])
    if only_y and axis == r - 1 and rank(cx, scale) == 1 and (bias is None or rank(cx, bias) == 1):
        beta = bias if bias is not None else op.multiply(scale, like(cx, scale, 0.0))
        return op.layer_norm(x, scale, beta, axis=-1, epsilon=eps)
    mean, centred, inv_std = moments(cx, x, list(range(axis, r)), eps)
    y = op.multiply(op.multiply(centred, inv_std), scale)
    return [op.add(y, bias) if bias is not None else y, mean, inv_std]


@converter("RMSNormalization", attrs="axis epsilon stash_type")
def rms_normalization(cx, ins, a):
    """x / sqrt(mean(x^2 over axes [axis, rank)) + epsilon) * scale."""
    x, scale = ins
    r = rank(cx, x)
    square_mean = op.mean(op.multiply(x, x), axis=list(range(a.get("axis", -1) % r, r)), keepdims=True)
    rms = op.sqrt(op.add(square_mean, like(cx, x, a.get("epsilon", 1e-5))))
    return op.multiply(op.multiply(x, op.divide(like(cx, x, 1.0), rms)), scale)


@converter("BatchNormalization", attrs="epsilon momentum training_mode spatial")
def batch_normalization(cx, ins, a):
    if a.get("training_mode", 0):
        raise Unsupported("training_mode=1 (only inference is supported)")
    x, scale, bias, mean, var = ins
    r = rank(cx, x)
    eps = a.get("epsilon", 1e-5)
    values = [cx.value_of(e) for e in (scale, bias, mean, var)]
    if all(v is not None for v in values):
        s, b, m, v = values
        mul = (s / np.sqrt(v + np.asarray(eps, v.dtype))).astype(s.dtype)
        mul_e, add_e = ir.const(mul), ir.const((b - m * mul).astype(s.dtype))
    else:
        mul_e = op.divide(scale, op.sqrt(op.add(var, like(cx, var, eps))))
        add_e = op.subtract(bias, op.multiply(mean, mul_e))
    return op.add(op.multiply(x, per_channel(cx, mul_e, r)), per_channel(cx, add_e, r))


@converter("InstanceNormalization", attrs="epsilon")
def instance_normalization(cx, ins, a):
    x, scale, bias = ins
    r = rank(cx, x)
    out = normalise(cx, x, list(range(2, r)), a.get("epsilon", 1e-5))
    return op.add(op.multiply(out, per_channel(cx, scale, r)), per_channel(cx, bias, r))


@converter("LRN", attrs="alpha beta bias size")
def lrn(cx, ins, a):
    """x / (bias + alpha / size * square sum)^beta, the square sum over a window of `size`
    channels ((size - 1) // 2 before, the rest after, clipped at the edges): an average pool
    of x^2 over the channel axis, moved among the spatial ones, whose padding counts (so the
    average is the sum / size)."""
    x = ins[0]
    r = rank(cx, x)
    if r not in (3, 4):
        raise Unsupported("LRN on data of rank 3 or 4 (N, C and 1 or 2 spatial dims) only")
    size = a["size"]
    window = [size] + [1] * (r - 2)
    before = [(size - 1) // 2] + [0] * (r - 2)
    after = [size // 2] + [0] * (r - 2)         # ceil((size - 1) / 2)
    squares = op.expand_dims(op.multiply(x, x), 1)                       # (N, 1, C, spatial...)
    mean = op.pool(squares, mode="avg", pool_size=window, strides=[1] * (r - 1),
                   dilation=[1] * (r - 1), padding=before + after, ceil_mode=False,
                   count_include_pad=True)
    scale = op.add(like(cx, x, a.get("bias", 1.0)),
                   op.multiply(like(cx, x, a.get("alpha", 1e-4)), op.squeeze(mean, axis=[1])))
    return op.divide(x, op.power(scale, like(cx, x, a.get("beta", 0.75))))


@converter("GlobalAveragePool", "GlobalMaxPool")
def global_pool(cx, ins, a):
    x = ins[0]
    reduce = op.mean if cx.node.op_type == "GlobalAveragePool" else op.max
    return reduce(x, axis=list(range(2, rank(cx, x))), keepdims=True)


# ---------------------------------------------------------------------------------------------
# reductions

def _log_sum_exp(x, axes, keepdims):
    m = op.max(x, axis=axes, keepdims=True)
    s = op.log(op.sum(op.exp(op.subtract(x, m)), axis=axes, keepdims=keepdims))
    return op.add(s, m if keepdims else op.max(x, axis=axes, keepdims=False))


REDUCTIONS = {
    "ReduceSum": lambda cx, x, ax, k: op.sum(x, axis=ax, keepdims=k),
    "ReduceMean": lambda cx, x, ax, k: op.mean(x, axis=ax, keepdims=k),
    "ReduceMax": lambda cx, x, ax, k: _extreme(cx, x, ax, k, reverse=False),
    "ReduceMin": lambda cx, x, ax, k: _extreme(cx, x, ax, k, reverse=True),
    "ReduceL1": lambda cx, x, ax, k: op.sum(abs_(cx, x), axis=ax, keepdims=k),
    "ReduceL2": lambda cx, x, ax, k: op.sqrt(op.sum(op.multiply(x, x), axis=ax, keepdims=k)),
    "ReduceSumSquare": lambda cx, x, ax, k: op.sum(op.multiply(x, x), axis=ax, keepdims=k),
    "ReduceLogSum": lambda cx, x, ax, k: op.log(op.sum(x, axis=ax, keepdims=k)),
    "ReduceLogSumExp": lambda cx, x, ax, k: _log_sum_exp(x, ax, k),
    "ReduceProd": lambda cx, x, ax, k: _product(cx, x, ax, k),
}


def reversed_order(cx, x):
    """A tensor ordered exactly as x reversed: -x for floats, -1 - x (that is ~x, which does
    not overflow at the smallest integer as -x does) for integers."""
    if cx.type_of(x).dtype in ("float32", "float64"):
        return op.negative(x)
    return op.subtract(like(cx, x, -1), x)


def _extreme(cx, x, axes, keepdims, reverse):
    """max (or min, through reversed_order) of x; bools as int32."""
    dtype = cx.type_of(x).dtype
    if dtype == "bool":
        return op.cast(_extreme(cx, op.cast(x, "int32"), axes, keepdims, reverse), "bool")
    if not reverse:
        return op.max(x, axis=axes, keepdims=keepdims)
    return reversed_order(cx, op.max(reversed_order(cx, x), axis=axes, keepdims=keepdims))


def _product(cx, x, axes, keepdims):
    """The product of floats, in float64: 0 if a factor is 0, else the sign (from the count of
    negative factors) times exp(sum(log|x|))."""
    dtype = cx.type_of(x).dtype
    if dtype not in ("float32", "float64"):
        raise Unsupported(f"ReduceProd of {dtype}")
    x = op.cast(x, "float64")
    zero, one = const(0.0, "float64"), const(1.0, "float64")
    count = lambda mask: op.sum(op.cast(mask, "float64"), axis=axes, keepdims=keepdims)  # noqa: E731
    negatives = count(op.less(x, zero))
    odd = op.subtract(negatives, op.multiply(const(2.0, "float64"),
                                             floor_(cx, op.multiply(negatives, const(0.5, "float64")))))
    sign = op.subtract(one, op.multiply(const(2.0, "float64"), odd))
    size = op.exp(op.sum(op.log(abs_(cx, op.where(op.equal(x, zero), one, x))), axis=axes,
                         keepdims=keepdims))
    product = op.where(op.greater(count(op.equal(x, zero)), zero), zero, op.multiply(sign, size))
    return op.cast(product, dtype)


@converter(*REDUCTIONS, attrs="axes keepdims noop_with_empty_axes")
def reduce(cx, ins, a):
    x = ins[0]
    axes = input_or_attr(cx, ins, 1, a, "axes")
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = None
    keepdims = bool(a.get("keepdims", 1))
    empty = empty_reduction(cx, x, axes, keepdims)
    if empty is not None:
        return empty
    return REDUCTIONS[cx.node.op_type](cx, x, axes, keepdims)


def empty_value(op_type, dtype):
    """ONNX's value of an empty max / min (the dtype's lowest / highest) or float
    log-sum-exp (-inf); None for other reductions (dynvm's max rejects an empty axis)."""
    highest = op_type == "ReduceMin"
    if op_type not in ("ReduceMax", "ReduceMin", "ReduceLogSumExp"):
        return None
    if dtype in ("float32", "float64"):
        return np.inf if highest else -np.inf
    if op_type == "ReduceLogSumExp":
        return None
    if dtype == "bool":
        return highest
    return np.iinfo(dtype).max if highest else np.iinfo(dtype).min


def empty_reduction(cx, x, axes, keepdims):
    """The result of a max / min / log-sum-exp over a statically empty axis, else None."""
    t = cx.type_of(x)
    value = empty_value(cx.node.op_type, t.dtype)
    reduced = range(t.rank) if axes is None else [v % t.rank for v in axes]
    if value is None or not any(t.shape[i] == 0 for i in reduced):
        return None
    shape = [1 if i in reduced else d for i, d in enumerate(t.shape) if keepdims or i not in reduced]
    if any(ir.is_any(d) for d in shape):
        return None
    return op.full(like(cx, x, value), shape)


@converter("ArgMax", "ArgMin", attrs="axis keepdims select_last_index")
def arg_reduce(cx, ins, a):
    x = ins[0] if cx.node.op_type == "ArgMax" else reversed_order(cx, ins[0])
    axis = axis_of(cx, x, a.get("axis", 0))
    keepdims = bool(a.get("keepdims", 1))
    if not a.get("select_last_index", 0):
        return op.argmax(x, axis=axis, keepdims=keepdims)
    # the last extreme: the first one of the reversed axis, counted from the end
    first = op.argmax(op.strided_slice(x, [-1], [-(1 << 62)], [-1], axes=[axis]), axis=axis,
                      keepdims=keepdims)
    return op.subtract(op.subtract(as_int64(dim(cx, x, axis)), const(1, "int64")), first)


@converter("CumSum", "CumProd", attrs="exclusive reverse")
def cumulative(cx, ins, a):
    """dynvm's cumulative op along the (constant) axis."""
    x = ins[0]
    axis = int(scalar_value(cx, ins[1], f"{cx.node.op_type} axis")) % rank(cx, x)
    return op.cumulative(x, axis=axis, mode="sum" if cx.node.op_type == "CumSum" else "prod",
                         exclusive=bool(a.get("exclusive", 0)), reverse=bool(a.get("reverse", 0)))


@converter("MaxPool", "AveragePool",
           attrs="auto_pad ceil_mode count_include_pad dilations kernel_shape pads "
                 "storage_order strides")
def pool(cx, ins, a):
    """dynvm's pool op over the 1, 2 or 3 spatial dims (MaxPool's Indices output is not
    produced; storage_order only matters for it)."""
    mode = "max" if cx.node.op_type == "MaxPool" else "avg"
    return pool_op(cx, ins[0], a, mode, bool(a.get("count_include_pad", 0)))


def pool_op(cx, x, a, mode, count_include_pad):
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    if n not in (1, 2, 3) or rank(cx, x) != 2 + n:
        raise Unsupported("pooling over 1, 2 or 3 spatial dims only")
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    return op.pool(x, mode=mode, pool_size=kernel, strides=strides, dilation=dilations,
                   padding=_conv_pads(cx, x, kernel, a, strides, dilations),
                   ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=count_include_pad)


@converter("LpPool", attrs="auto_pad ceil_mode dilations kernel_shape p pads strides")
def lp_pool(cx, ins, a):
    """(sum of |x|^p over each window)^(1/p): an average pool of |x|^p counting the padding
    (where |x|^p is 0), times the window's size (so not with ceil_mode, whose last windows
    may have fewer cells)."""
    x = ins[0]
    if a.get("ceil_mode", 0):
        raise Unsupported("LpPool with ceil_mode")
    p = a.get("p", 2)
    powered = op.multiply(x, x) if p == 2 else op.power(abs_(cx, x), like(cx, x, float(p)))
    total = op.multiply(pool_op(cx, powered, a, "avg", True),
                        like(cx, x, float(np.prod(a["kernel_shape"]))))
    return op.sqrt(total) if p == 2 else op.power(total, like(cx, x, 1.0 / p))


@converter("Hardmax", attrs="axis")
def hardmax(cx, ins, a):
    """1 at the first largest element along axis, 0 elsewhere (opset >= 13)."""
    if cx.opset < 13:
        raise Unsupported("Hardmax before opset 13 (2-D coercion)")
    x = ins[0]
    r = rank(cx, x)
    axis = axis_of(cx, x, a.get("axis", -1))
    top = op.argmax(x, axis=axis, keepdims=True)
    return op.cast(op.equal(coordinate(cx, x, axis, r), top), cx.type_of(x).dtype)


# ---------------------------------------------------------------------------------------------
# selection and detection


@converter("TopK", attrs="axis largest sorted")
def topk(cx, ins, a):
    x, k = ins
    axis = axis_of(cx, x, a.get("axis", -1))
    ascend = not a.get("largest", 1)
    kv = cx.value_of(k)
    if kv is not None and int(kv.reshape(-1)[0]) >= 1:
        return select_tuple(op.topk(x, k=int(kv.reshape(-1)[0]), axis=axis, is_ascend=ascend), 2)
    # a run-time k: sort the whole axis, then keep the first k
    both = select_tuple(op.topk(x, k=0, axis=axis, is_ascend=ascend), 2)
    # (a kernel's output, not a reshape: the native tier needs its static length)
    end = op.take(op.reshape(k, [-1]), const([0], "int64"), axis=0)
    return [op.strided_slice(t, const([0], "int64"), end, const([1], "int64"), axes=[axis])
            for t in both]


@converter("Unique", attrs="sorted axis")
def unique(cx, ins, a):
    """Without axis: Y and counts from dynvm's unique (sorted, NaNs as one); indices (first
    occurrence) and inverse_indices from the (K, n) table of which element equals which
    distinct value, so they cost O(n * K). sorted=0 reorders the distinct values by first
    occurrence. With axis: `_unique_slices`."""
    if "axis" in a:
        return _unique_slices(cx, ins[0], axis_of(cx, ins[0], a["axis"]), a.get("sorted", 1))
    flat = op.reshape(ins[0], [-1])
    values, counts = select_tuple(op.unique(flat, return_counts=True), 2)
    ordered = a.get("sorted", 1)
    if ordered and not any(name for name in cx.node.output[1:3]):
        return [values, None, None, counts]
    same = op.cast(op.equal(op.expand_dims(values, 1), op.expand_dims(flat, 0)), "int32")
    first, inverse = op.argmax(same, axis=[1]), op.argmax(same, axis=[0])
    if not ordered:
        order = op.argsort(first)
        values, first, counts = (op.take(t, order, axis=0) for t in (values, first, counts))
        inverse = op.take(op.argsort(order), inverse, axis=0)
    return [values, first, inverse, counts]


def _unique_slices(cx, x, axis, ordered):
    """Unique slices along `axis` from (A, A) tables over the A slices (as rows of R values):
    `same` (the rows are equal), the first differing column of each pair and from it
    `below` (row i sorts before row j, lexicographically). A row is kept when no earlier row
    equals it (argwhere: appearance order); sorted, the kept rows go in the order of how many
    kept rows sort below them. O(A^2 * R) work: meant for the small tables Unique sees."""
    r = rank(cx, x)
    perm = [axis] + [d for d in range(r) if d != axis]
    moved = op.transpose(x, perm) if axis else x
    rows = reshape(moved, [dim(cx, x, axis), dims_product(cx, x, perm[1:])])
    differ = op.subtract(const(1, "int32"), op.cast(op.equal(op.expand_dims(rows, 1),
                                                             op.expand_dims(rows, 0)), "int32"))
    apart = op.max(differ, axis=[2])                                               # (A, A)
    same = op.equal(apart, const(0, "int32"))
    first_of = op.argmax(op.cast(same, "int32"), axis=[1])                         # (A,)
    count = as_int64(dim(cx, x, axis))
    index = counting(count)
    kept = op.reshape(op.argwhere(op.equal(first_of, index)), [-1])                # (K,)
    if ordered:
        column = op.argmax(differ, axis=[2])                                       # (A, A)
        width = as_int64(dims_product(cx, x, perm[1:]))
        flat = op.reshape(rows, [-1])
        at_i = op.take(flat, op.add(op.multiply(op.expand_dims(index, 1), width), column))
        at_j = op.take(flat, op.add(op.multiply(op.expand_dims(index, 0), width), column))
        below = op.logical_and(op.greater(apart, const(0, "int32")), op.less(at_i, at_j))
        smaller = op.sum(op.cast(op.take(below, kept, axis=0), "int64"), axis=[0])  # (A,)
        kept = op.take(kept, op.argsort(op.take(smaller, kept, axis=0)), axis=0)
    y = op.take(moved, kept, axis=0)
    if axis:
        y = op.transpose(y, [int(i) for i in np.argsort(perm)])
    hits = op.equal(op.expand_dims(first_of, 1), op.expand_dims(kept, 0))        # (A, K)
    inverse = op.argmax(op.cast(hits, "int32"), axis=[1])
    counts = op.sum(op.cast(hits, "int64"), axis=[0])
    return [y, kept, inverse, counts]


@converter("RoiAlign", attrs="coordinate_transformation_mode mode output_height output_width "
                               "sampling_ratio spatial_scale")
def roi_align(cx, ins, a):
    """dynvm's roi_align; before opset 16 RoiAlign had no coordinate_transformation_mode and
    behaved as output_half_pixel."""
    default = "half_pixel" if cx.opset >= 16 else "output_half_pixel"
    return op.roi_align(ins[0], ins[1], op.cast(ins[2], "int64"), mode=a.get("mode", "avg"),
                        output_height=a.get("output_height", 1),
                        output_width=a.get("output_width", 1),
                        sampling_ratio=a.get("sampling_ratio", 0),
                        spatial_scale=float(a.get("spatial_scale", 1.0)),
                        coordinate_transformation_mode=a.get("coordinate_transformation_mode",
                                                             default))


@converter("NonMaxSuppression", attrs="center_point_box")
def non_max_suppression(cx, ins, a):
    """Per (batch, class) pair, dynvm's nms on that slice; rows [batch, class, box]."""
    boxes, scores = ins[0], ins[1]
    if a.get("center_point_box", 0):  # [x_center, y_center, width, height] -> corners
        xc, yc, w, h = split_last(boxes, 4)
        half_w, half_h = op.multiply(w, like(cx, w, 0.5)), op.multiply(h, like(cx, h, 0.5))
        boxes = op.concatenate([op.subtract(yc, half_h), op.subtract(xc, half_w),
                                op.add(yc, half_h), op.add(xc, half_w)], -1)
    opt = lambda i: ins[i] if len(ins) > i and ins[i] is not None else None  # noqa: E731
    max_out = int(scalar_value(cx, opt(2), "max_output_boxes_per_class")) if opt(2) is not None else 0
    iou = float(scalar_value(cx, opt(3), "iou_threshold")) if opt(3) is not None else 0.0
    score = float(scalar_value(cx, opt(4), "score_threshold")) if opt(4) is not None else None
    b, c, _ = cx.type_of(scores).shape
    if ir.is_any(b) or ir.is_any(c):
        raise Unsupported("NonMaxSuppression with a dynamic batch or class count")
    blocks = []
    for i in range(b):
        bx = op.take(boxes, const(i, "int64"), axis=0)
        for j in range(c):
            sc = op.take(op.take(scores, const(i, "int64"), axis=0), const(j, "int64"), axis=0)
            sel = op.nms(bx, sc, max_output=max_out, iou_threshold=iou, score_threshold=score)
            zero = op.multiply(sel, const(0, "int64"))
            cols = [op.add(zero, const(i, "int64")), op.add(zero, const(j, "int64")), sel]
            blocks.append(op.concatenate([op.expand_dims(col, 1) for col in cols], 1))
    return blocks[0] if len(blocks) == 1 else op.concatenate(blocks, 0)


# ---------------------------------------------------------------------------------------------
# control flow


@converter("If", attrs="then_branch else_branch")
def if_(cx, ins, a):
    """An IR `If`; branch results whose dims differ get Any dims."""
    cond = to_scalar(ins[0])
    mark = len(cx.captures)
    then, other = cx.subgraph(a["then_branch"], []), cx.subgraph(a["else_branch"], [])
    if len(then) == 1:
        return cx.bind_captures(mark, ir.If(cond, then[0], other[0]))
    return select_tuple(cx.bind_captures(mark, ir.If(cond, ir.Tuple(then), ir.Tuple(other))),
                        len(then))


def widen(old: ir.TensorType, new: ir.TensorType) -> ir.TensorType:
    """The loop-variable type holding both: dims that change become Any."""
    if old.dtype != new.dtype or old.rank != new.rank:
        raise Unsupported(f"a loop-carried value changes type from {old} to {new}")
    return ir.TensorType(tuple(o if o == n else ir.Any() for o, n in zip(old.shape, new.shape)),
                         old.dtype)


def settled_body(cx, body, types, bindings):
    """Convert loop body `body` with carried values of `types` until the carried types settle:
    (carried vars, body outputs). `bindings(carried vars)` lists the body's inputs; the body's
    outputs start with the carried values' new values (after `skip` leading outputs). Only the
    last conversion's captures are kept."""
    mark = len(cx.captures)
    for _ in range(4):
        del cx.captures[mark:]
        carried = [ir.var(f"v{k}", t) for k, t in enumerate(types)]
        outs, skip = bindings(carried)
        new = [widen(t, cx.type_of(o)) for t, o in zip(types, outs[skip:skip + len(types)])]
        if new == types:
            return carried, outs
        types = new
    raise Unsupported("the loop-carried types do not settle")


def scan_accumulators(cx, elements):
    """For each per-iteration output: a carried (Any, ...) tensor starting empty, and its value
    after one more iteration."""
    accs, inits, grown = [], [], []
    for k, e in enumerate(elements):
        t = cx.type_of(e)
        if not t.is_static:
            raise Unsupported("a scan output whose dims are not static")
        acc = ir.var(f"scan{k}", ir.TensorType((ir.Any(),) + t.shape, t.dtype))
        accs.append(acc)
        inits.append(op.zeros([0, *t.shape], dtype=t.dtype))
        grown.append(op.concatenate([acc, op.expand_dims(e, 0)], 0))
    return accs, inits, grown


@converter("Loop", attrs="body")
def loop(cx, ins, a):
    """`for (i = 0; i < M && cond; i++) (cond, v...) = body(i, cond, v...)` as `ir.while_loop`
    over (i, cond, v..., scan accumulators...). A loop-carried value whose dims change between
    iterations gets Any dims there (the body is converted again until the types settle); each
    scan output is a carried tensor that grows by one row per iteration."""
    body = a["body"]
    mark = len(cx.captures)
    trip = cx.capture(to_scalar(ins[0])) if ins[0] is not None else None
    cond0 = to_scalar(ins[1]) if len(ins) > 1 and ins[1] is not None else const(True, "bool")
    inits = list(ins[2:])
    n = len(inits)
    i, c = ir.var("i", ir.TensorType((), "int64")), ir.var("cond", ir.TensorType((), "bool"))
    carried, outs = settled_body(cx, body, [cx.type_of(e) for e in inits],
                                 lambda vs: (cx.subgraph(body, [i, c, *vs]), 1))
    accs, acc_inits, grown = scan_accumulators(cx, outs[1 + n:])
    keep_going = c if trip is None else op.logical_and(c, op.less(i, trip))
    step = [op.add(i, const(1, "int64")), to_scalar(outs[0]), *outs[1:1 + n], *grown]
    loop_vars = [(i, const(0, "int64")), (c, cond0), *zip(carried, inits), *zip(accs, acc_inits)]
    result = cx.bind_captures(mark, ir.while_loop(lambda *_: keep_going, lambda *_: step,
                                                  loop_vars, name="onnx_loop"))
    return [ir.TupleGetItem(result, 2 + k) for k in range(n + len(accs))]


@converter("Scan", attrs="body num_scan_inputs scan_input_axes scan_input_directions "
                          "scan_output_axes scan_output_directions")
def scan(cx, ins, a):
    """Scan (opset >= 9) along axis 0, forwards: a while_loop over t < len(first scan input)
    whose body gets the states and row t of each scan input."""
    if cx.opset < 9:
        raise Unsupported("Scan before opset 9 (batched form)")
    for key in ("scan_input_axes", "scan_input_directions", "scan_output_axes",
                "scan_output_directions"):
        if any(a.get(key, [])):
            raise Unsupported(f"{key} other than 0")
    body, m = a["body"], a["num_scan_inputs"]
    mark = len(cx.captures)
    inits, xs = list(ins[:len(ins) - m]), list(ins[len(ins) - m:])
    n = len(inits)
    t = ir.var("t", ir.TensorType((), "int64"))
    rows_t = [op.take(cx.capture(x), t, axis=0) for x in xs]
    carried, outs = settled_body(cx, body, [cx.type_of(e) for e in inits],
                                 lambda vs: (cx.subgraph(body, [*vs, *rows_t]), 0))
    accs, acc_inits, grown = scan_accumulators(cx, outs[n:])
    length = cx.capture(as_int64(dim(cx, xs[0], 0)))
    step = [op.add(t, const(1, "int64")), *outs[:n], *grown]
    loop_vars = [(t, const(0, "int64")), *zip(carried, inits), *zip(accs, acc_inits)]
    result = cx.bind_captures(mark, ir.while_loop(lambda *_: op.less(t, length),
                                                  lambda *_: step, loop_vars, name="onnx_scan"))
    return [ir.TupleGetItem(result, 1 + k) for k in range(n + len(accs))]


# ---------------------------------------------------------------------------------------------
# recurrent layers: one `recurrent` kernel call per direction (compiler/op/rnn.py), after
# one GEMM projecting the input of every step; an LSTM with peepholes, which the kernel does not
# cover, runs one while_loop per direction instead (and says so in a PerformanceWarning)

ACTIVATIONS = {"Sigmoid": op.sigmoid, "Tanh": op.tanh, "Relu": op.relu}
RNN_ATTRS = "activations clip direction hidden_size layout"


def rows(e, lo, hi):
    """e[lo:hi] along axis 0 (sliced at import time when e is a constant)."""
    if isinstance(e, ir.Constant):
        return ir.const(np.ascontiguousarray(e.data[lo:hi]))
    return op.strided_slice(e, [lo], [hi], axes=[0])


def direction_of(cx, e, d):
    """Slice d of a per-direction weight (num_directions, ...)."""
    value = cx.value_of(e)
    return ir.const(value[d]) if value is not None else op.take(e, const(d, "int64"), axis=0)


def activations(a, defaults, directions):
    """The activation names of each direction."""
    names = a.get("activations", defaults * directions)
    unknown = sorted(set(names) - set(ACTIVATIONS))
    if unknown:
        raise Unsupported(f"activation(s) {', '.join(unknown)}")
    k = len(defaults)
    return [list(names[d * k:(d + 1) * k]) for d in range(directions)]


def optional(ins, i):
    return ins[i] if len(ins) > i else None


def recurrent(cx, ins, a, cell, gates, defaults, loop_cell=None):
    """Shared by RNN, GRU and LSTM: [Y, Y_h(, Y_c)] with ONNX's shapes. Per direction, the input
    projection X W^T is one GEMM over every step; then either one `recurrent` call runs every
    step, or (`loop_cell` given: a form the kernel does not cover) `time_loop` does."""
    x = ins[0]
    if a.get("layout", 0):
        x = op.transpose(x, [1, 0, 2])
    mode = a.get("direction", "forward")
    dirs = [False, True] if mode == "bidirectional" else [mode == "reverse"]
    names = activations(a, list(defaults), len(dirs))
    hidden = a["hidden_size"]
    seq, batch = as_int64(dim(cx, x, 0)), dim(cx, x, 1)
    dtype = cx.type_of(x).dtype
    lens = optional(ins, 4)
    if loop_cell is not None and lens is not None:
        lens = constant_value(cx, lens, "sequence_lens of a layer that runs as a loop")
        if ir.is_any(cx.type_of(x).shape[0]) or (lens != cx.type_of(x).shape[0]).any():
            raise Unsupported("sequence_lens other than the full length of every sequence, "
                              "in a layer that runs as a loop")
    if lens is None:
        lens = op.full(seq, shape_vector([batch]))
    with_c = cell == "lstm"
    features = cx.type_of(x).shape[2]
    # X seen as 2-D for one GEMM for both directions (not when a static batch is 0: nothing
    # then tells the 2-D product's rows apart)
    flat = x if ir.is_any(features) or batch == 0 else op.reshape(x, [-1, features])
    outs, finals = [], []
    for d, reverse in enumerate(dirs):
        xw = input_projection(cx, flat, ins, d, gates, hidden, seq, batch, loop_cell is not None)
        states0 = [initial_state(cx, optional(ins, i), d, batch, hidden, dtype, loop_cell)
                   for i in (5, 6)[:1 + with_c]]
        if loop_cell is None:
            y, states = recurrent_call(cx, ins, a, d, xw, states0, lens, cell, gates, names[d],
                                       reverse)
        else:
            acts = [ACTIVATIONS[n] for n in names[d]]
            y, states = time_loop(cx, xw, states0, seq, reverse,
                                  lambda x_t, st, d=d, acts=acts: loop_cell(cx, d, acts, x_t, st))
        outs.append(op.expand_dims(y, 1))
        finals.append(states)
    y = outs[0] if len(outs) == 1 else op.concatenate(outs, 1)
    if a.get("layout", 0):
        y = op.transpose(y, [2, 0, 1, 3])
    per_state = []
    for k in range(1 + with_c):
        s = op.concatenate([op.expand_dims(f[k], 0) for f in finals], 0)
        per_state.append(op.transpose(s, [1, 0, 2]) if a.get("layout", 0) else s)
    return [y, *per_state]


def input_projection(cx, flat, ins, d, gates, hidden, seq, batch, loop):
    """X W^T of every step, (seq, batch, gates * hidden), plus every bias for a `loop` (the
    recurrent kernel adds them itself): one GEMM on X seen as 2-D (seq * batch, features) when
    its features are static (`flat`), which the matmul kernels run faster than the 3-D form
    (and faster than with a bias epilogue)."""
    xw = op.dense(flat, direction_of(cx, ins[1], d))
    bias = optional(ins, 3)
    if loop and bias is not None:
        xw = op.add(xw, input_bias(cx, direction_of(cx, bias, d), gates, hidden))
    if cx.type_of(flat).rank == 3:
        return xw
    if isinstance(batch, int):
        return reshape(xw, [-1, batch, gates * hidden])
    # a run-time batch: reshape's 0 copies a dim, so an empty sequence or batch gets an empty
    # tensor instead
    shape = shape_vector([seq, batch, gates * hidden])
    return ir.If(op.equal(op.multiply(seq, batch), const(0, "int64")),
                 op.zeros(shape, dtype=cx.type_of(xw).dtype), op.reshape(xw, shape))


def initial_state(cx, given, d, batch, hidden, dtype, loop_cell):
    if given is not None:
        return direction_of(cx, given, d)
    state = op.zeros(shape_vector([batch, hidden]), dtype=dtype)
    if loop_cell is not None and isinstance(batch, int) and not cx.type_of(state).is_static:
        state = op.reshape(state, [batch, hidden])      # static states: a native loop
    return state


def recurrent_call(cx, ins, a, d, xw, states0, lens, cell, gates, names, reverse):
    """(Y, final states) of one direction by one `recurrent` call."""
    r = direction_of(cx, ins[2], d)
    value = cx.value_of(r)
    r_t = ir.const(np.ascontiguousarray(value.T)) if value is not None else op.transpose(r, [1, 0])
    width = gates * a["hidden_size"]
    bias = optional(ins, 3)
    if bias is not None:
        b = direction_of(cx, bias, d)
        w_bias, r_bias = rows(b, 0, width), rows(b, width, 2 * width)
    else:
        w_bias = r_bias = ir.const(np.zeros(width, cx.type_of(xw).dtype))
    h0 = states0[0]
    c0 = states0[1] if len(states0) > 1 else h0
    clip = a.get("clip")
    result = op.recurrent(xw, w_bias, r_t, r_bias, h0, c0, lens, cell=cell, activations=names,
                          reverse=reverse,
                          linear_before_reset=bool(a.get("linear_before_reset", 0)),
                          clip=None if clip is None else float(clip))
    return ir.TupleGetItem(result, 0), [ir.TupleGetItem(result, 1 + k) for k in range(len(states0))]


def time_loop(cx, xw, states0, seq, reverse, step):
    """Run `step(x_t, states) -> states` over t (backwards when reverse); (Y, final states)
    with Y (seq, batch, hidden) in time order. Y is allocated once and each step writes its row
    with `set_row`, which a native loop does in place."""
    mark = len(cx.captures)
    xw, seq = cx.capture(xw), cx.capture(seq)
    t = ir.var("t", ir.TensorType((), "int64"))
    states = [ir.var(f"s{k}", cx.type_of(s)) for k, s in enumerate(states0)]
    h_type = cx.type_of(states0[0])
    acc = ir.var("y", ir.TensorType((ir.Any(),) + h_type.shape, h_type.dtype))
    acc0 = op.zeros(shape_vector([seq, *(dim(cx, states0[0], i) for i in range(2))]),
                    dtype=h_type.dtype)
    new = step(op.take(xw, t, axis=0), states)
    one = const(1, "int64")
    if reverse:
        t0, nxt, go = op.subtract(seq, one), op.subtract(t, one), op.greater(t, const(-1, "int64"))
    else:
        t0, nxt, go = const(0, "int64"), op.add(t, one), op.less(t, seq)
    result = cx.bind_captures(mark, ir.while_loop(
        lambda *_: go, lambda *_: [nxt, *new, op.set_row(acc, t, new[0])],
        [(t, t0), *zip(states, states0), (acc, acc0)], name="onnx_rnn"))
    n = len(states)
    return ir.TupleGetItem(result, n + 1), [ir.TupleGetItem(result, 1 + k) for k in range(n)]


def input_bias(cx, b, gates, hidden):
    """Wb + Rb (gates * hidden,): a loop adds every bias once, with the input projection."""
    wb, rb = rows(b, 0, gates * hidden), rows(b, gates * hidden, 2 * gates * hidden)
    if isinstance(wb, ir.Constant) and isinstance(rb, ir.Constant):
        return ir.const(wb.data + rb.data)
    return op.add(wb, rb)


@converter("RNN", attrs=RNN_ATTRS)
def rnn(cx, ins, a):
    return recurrent(cx, ins, a, "rnn", 1, ("Tanh",))


@converter("GRU", attrs=RNN_ATTRS + " linear_before_reset")
def gru(cx, ins, a):
    return recurrent(cx, ins, a, "gru", 3, ("Sigmoid", "Tanh"))


@converter("LSTM", attrs=RNN_ATTRS)
def lstm(cx, ins, a):
    peep = optional(ins, 7)
    if peep is None:
        return recurrent(cx, ins, a, "lstm", 4, ("Sigmoid", "Tanh", "Tanh"))
    if "clip" in a:
        raise Unsupported("clip together with peepholes")
    hidden = a["hidden_size"]

    def cell(cx, d, acts, x_t, st):
        """One step with peepholes: every bias is already in x_t."""
        f, g, h_act = acts
        h, c = st
        pre = op.add(x_t, op.dense(h, direction_of(cx, ins[2], d)))
        i, o, fg, cand = split_last(pre, 4)
        pi, po, pf = (rows(direction_of(cx, peep, d), k * hidden, (k + 1) * hidden)
                      for k in range(3))
        i, fg = op.add(i, op.multiply(pi, c)), op.add(fg, op.multiply(pf, c))
        c_new = op.add(op.multiply(f(fg), c), op.multiply(f(i), g(cand)))
        o = op.add(o, op.multiply(po, c_new))
        return [op.multiply(f(o), h_act(c_new)), c_new]
    warnings.warn(f"LSTM node {cx.node.name or '(unnamed)'!r}: peepholes are not covered by the "
                  f"recurrent kernel; the layer runs as a loop of kernel calls, one per time step",
                  PerformanceWarning, stacklevel=2)
    return recurrent(cx, ins, a, "lstm", 4, ("Sigmoid", "Tanh", "Tanh"), loop_cell=cell)
