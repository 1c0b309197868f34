"""Type relations of the registered ops: static dims, Any dims, and every error they report."""
import pytest

from dynvm.compiler import ir, op
from dynvm.compiler.ir.types import Any, TensorType as T, TupleType
from dynvm.compiler.op import OPS, get_op
from dynvm.vm.errors import DynVMError, TypeInferenceError

A = Any()
F = "float32"


def infer(name, *arg_types, **attrs):
    opdef = get_op(name)
    return opdef.type_rel(list(arg_types), opdef.normalize_attrs(attrs))


def fails(phrase, name, *arg_types, **attrs):
    with pytest.raises(TypeInferenceError, match=phrase):
        infer(name, *arg_types, **attrs)


# ------------------------------------------------------------------ registry

def test_every_op_has_doc_type_rel_and_shape_function():
    from dynvm import shape_funcs
    for name, opdef in OPS.items():
        assert opdef.doc and callable(opdef.type_rel), name
        assert shape_funcs.lookup(name).name == name


def test_elementwise_ops_give_kernel_expressions():
    assert get_op("add").expr([["in", 0], ["in", 1]], {}) == ["add", ["in", 0], ["in", 1]]
    assert get_op("exp").expr([["in", 0]], {}) == ["exp", ["in", 0]]
    assert get_op("cast").expr([["in", 0]], {"dtype": "int32"}) == ["cast", ["in", 0], "int32"]
    assert get_op("where").kernel == "compiled" and get_op("where").pattern == "broadcast"


def test_kinds_and_modes_follow_the_op_family():
    assert get_op("shape_of").lowering == "shape_of" and get_op("shape_of").shape_mode == "static"
    assert get_op("reshape").lowering == "reshape" and get_op("reshape").kernel == "vm"
    assert get_op("dyn.reshape").shape_mode == "data_dependent"
    assert get_op("arange").shape_mode == "data_dependent"
    assert get_op("dense").pattern == "out_elemwise_fusable"
    assert get_op("softmax").pattern == "opaque"


# ------------------------------------------------------------------ constructors

def test_reshape_by_list_is_static_and_by_tensor_is_dyn_reshape():
    x = ir.var("x", T((A, 4), F))
    assert op.reshape(x, [-1, 2]).callee.name == "reshape"
    call = op.reshape(x, op.shape_of(x))
    assert call.callee.name == "dyn.reshape" and len(call.args) == 2 and call.attrs == {}
    assert op.reshape(x, newshape=op.shape_of(x)).callee.name == "dyn.reshape"


def test_zeros_ones_full_pick_static_or_dyn_form():
    s = ir.var("s", T((2,), "int64"))
    assert op.zeros((2, 3)).attrs == {"shape": [2, 3], "dtype": "float32"}
    assert op.ones(s, dtype="int32").callee.name == "dyn.ones"
    full = op.full(ir.const(1.0), s, "float64")
    assert full.callee.name == "dyn.full" and full.attrs == {"dtype": "float64"}
    assert op.full(ir.const(1.0), (2,)).callee.name == "full"


def test_concatenate_accepts_a_python_list_and_positional_axis():
    x = ir.var("x", T((2, 3), F))
    call = op.concatenate([x, x], 1)
    assert isinstance(call.args[0], ir.Tuple) and call.attrs == {"axis": 1}


def test_arange_accepts_python_numbers_as_constants_of_the_dtype():
    call = op.arange(0, 10, 2, dtype="int32")
    assert all(a.data.dtype == "int32" for a in call.args)


def test_constructor_rejects_unknown_attribute_and_wrong_arity():
    x = ir.var("x", T((2,), F))
    with pytest.raises(DynVMError, match="no attribute"):
        op.sum(x, axes=0)
    with pytest.raises(DynVMError, match="takes 2 argument"):
        op.add(x)


# ------------------------------------------------------------------ elementwise

@pytest.mark.parametrize("a, b, out", [
    ((2, 3), (2, 3), (2, 3)),
    ((2, 1), (1, 3), (2, 3)),
    ((3,), (4, 3), (4, 3)),
    ((), (4, 3), (4, 3)),
    ((A, 3), (1, 3), (A, 3)),
    ((A,), (1,), (A,)),
    ((A,), (4,), (4,)),
    ((A, 1), (A, 5), (A, 5)),
    ((0,), (1,), (0,)),
])
def test_binary_ops_broadcast_with_any_dims(a, b, out):
    assert infer("add", T(a, F), T(b, F)) == T(out, F)
    assert infer("less", T(a, F), T(b, F)) == T(out, "bool")


def test_broadcast_of_different_static_dims_fails():
    fails("cannot broadcast dims 3 and 4", "multiply", T((3,), F), T((4,), F))


def test_binary_dtype_mismatch_names_both_dtypes():
    fails("float32 and int32", "add", T((3,), F), T((3,), "int32"))


def test_logical_and_needs_bool_and_arithmetic_rejects_bool():
    assert infer("logical_and", T((2,), "bool"), T((), "bool")) == T((2,), "bool")
    fails("dtype bool", "logical_and", T((2,), F), T((2,), F))
    fails("int32 or int64", "add", T((2,), "bool"), T((2,), "bool"))


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "tanh", "sigmoid"])
def test_float_only_unary_ops_reject_integers(name):
    assert infer(name, T((A, 2), "float64")) == T((A, 2), "float64")
    fails("float32 or float64, got int32", name, T((2,), "int32"))


@pytest.mark.parametrize("name", ["negative", "relu"])
def test_negative_and_relu_accept_integers(name):
    assert infer(name, T((3,), "int64")) == T((3,), "int64")


def test_unary_rejects_a_tuple_argument():
    fails("must be a tensor", "exp", TupleType([T((2,), F)]))


def test_where_broadcasts_three_and_needs_bool_condition():
    assert infer("where", T((A, 1), "bool"), T((3,), F), T((1, 3), F)) == T((A, 3), F)
    fails("condition of dtype bool", "where", T((3,), F), T((3,), F), T((3,), F))
    fails("float32 and int64", "where", T((3,), "bool"), T((3,), F), T((3,), "int64"))


def test_cast_changes_dtype_only():
    assert infer("cast", T((A, 2), F), dtype="int32") == T((A, 2), "int32")
    fails("unsupported dtype", "cast", T((2,), F), dtype="float16")


# ------------------------------------------------------------------ transforms

def test_shape_of_gives_int64_vector_of_rank():
    assert infer("shape_of", T((A, 3, 2), F)) == T((3,), "int64")
    assert infer("shape_of", T((), F)) == T((0,), "int64")


@pytest.mark.parametrize("shape, newshape, out", [
    ((2, 3, 4), [6, 4], (6, 4)),
    ((2, 3, 4), [-1, 4], (6, 4)),
    ((2, 3, 4), [0, -1], (2, 12)),
    ((A, 3, 4), [0, -1], (A, 12)),
    ((A, 3, 4), [-1, 12], (A, 12)),
    ((A, 4), [2, 2, 0 + 1], (2, 2, 1)),
    ((0, 3), [-1, 3], (0, 3)),
    ((3, 0), [-1, 0], (3, 0)),
    ((), [1, 1], (1, 1)),
])
def test_reshape_infers_minus_one_and_copies_zero(shape, newshape, out):
    assert infer("reshape", T(shape, F), newshape=newshape) == T(out, F)


@pytest.mark.parametrize("shape, newshape, phrase", [
    ((2, 3), [4, 2], "cannot reshape 6 elements"),
    ((2, 3), [-1, 4], "cannot reshape 6 elements"),
    ((2, 3), [-1, -1], "more than one -1"),
    ((2, 3), [0, 0, 0], "copies dim 2"),
    ((2, 3), [-2], "unsupported value -2"),
    ((2, 3), [5, -1], "cannot reshape 6 elements"),
])
def test_reshape_errors(shape, newshape, phrase):
    fails(phrase, "reshape", T(shape, F), newshape=newshape)


def test_dyn_reshape_rank_is_static_length_of_shape_tensor():
    assert infer("dyn.reshape", T((A, 4), F), T((3,), "int64")) == T((A, A, A), F)
    fails("static length", "dyn.reshape", T((4,), F), T((A,), "int64"))
    fails("1-D", "dyn.reshape", T((4,), F), T((1, 3), "int64"))
    fails("int32 or int64", "dyn.reshape", T((4,), F), T((2,), F))


def test_expand_dims_inserts_axes_including_negative():
    assert infer("expand_dims", T((A, 3), F), axis=0) == T((1, A, 3), F)
    assert infer("expand_dims", T((A, 3), F), axis=-1, num_newaxis=2) == T((A, 3, 1, 1), F)
    assert infer("expand_dims", T((), F), axis=0) == T((1,), F)
    fails("axis 3 is out of range for rank 3", "expand_dims", T((2, 2), F), axis=3)
    fails("num_newaxis", "expand_dims", T((2,), F), axis=0, num_newaxis=-1)


def test_squeeze_drops_unit_dims_and_checks_axis():
    assert infer("squeeze", T((1, 3, 1), F)) == T((3,), F)
    assert infer("squeeze", T((A, 1, 3), F), axis=[-2]) == T((A, 3), F)
    assert infer("squeeze", T((A, 3), F), axis=0) == T((3,), F)
    fails("has size 3, not 1", "squeeze", T((1, 3), F), axis=1)
    fails("axis=None needs static dims", "squeeze", T((A, 1), F))
    fails("out of range", "squeeze", T((1,), F), axis=2)


def test_transpose_permutes_and_validates_axes():
    assert infer("transpose", T((2, A, 4), F)) == T((4, A, 2), F)
    assert infer("transpose", T((2, A, 4), F), axes=[1, -1, 0]) == T((A, 4, 2), F)
    fails("not a permutation", "transpose", T((2, 3), F), axes=[0, 0])
    fails("not a permutation", "transpose", T((2, 3), F), axes=[0])


def test_concatenate_sums_the_axis_and_unifies_others():
    tup = TupleType([T((2, 3), F), T((A, 3), F), T((4, A), F)])
    assert infer("concatenate", tup, axis=0) == T((A, 3), F)
    tup = TupleType([T((2, 3), F), T((5, 3), F)])
    assert infer("concatenate", tup, axis=-2) == T((7, 3), F)


@pytest.mark.parametrize("fields, axis, phrase", [
    ([T((2, 3), F), T((2, 4), F)], 0, "must match, got 3 and 4"),
    ([T((2, 3), F), T((2,), F)], 0, "same rank"),
    ([T((2, 3), F), T((2, 3), "int32")], 0, "float32 and int32"),
    ([T((2, 3), F)], 2, "out of range"),
    ([], 0, "at least one"),
    ([T((), F)], 0, "scalars"),
])
def test_concatenate_errors(fields, axis, phrase):
    fails(phrase, "concatenate", TupleType(fields), axis=axis)


def test_concatenate_needs_a_tuple():
    fails("tuple of tensors", "concatenate", T((2,), F))


def test_split_by_sections_and_indices():
    out = infer("split", T((6, A), F), indices_or_sections=3)
    assert out == TupleType([T((2, A), F)] * 3)
    out = infer("split", T((A, 6), F), indices_or_sections=[1, 4], axis=-1)
    assert out == TupleType([T((A, 1), F), T((A, 3), F), T((A, 2), F)])
    out = infer("split", T((A,), F), indices_or_sections=2)
    assert out == TupleType([T((A,), F)] * 2)
    out = infer("split", T((3,), F), indices_or_sections=[2, 10])
    assert out == TupleType([T((2,), F), T((1,), F), T((0,), F)])
    fails("does not divide into 4", "split", T((6,), F), indices_or_sections=4)
    fails("must be > 0", "split", T((6,), F), indices_or_sections=0)
    fails("scalar", "split", T((), F), indices_or_sections=1)


@pytest.mark.parametrize("attrs, out", [
    (dict(begin=[1], end=[4]), (3, A, 5)),
    (dict(begin=[0, 0, -2], end=[10, 3, 5]), (6, A, 2)),
    (dict(begin=[5], end=[0], strides=[-2]), (3, A, 5)),
    (dict(begin=[2], end=[1], axes=[2]), (6, A, 0)),
    (dict(begin=[-100], end=[100], axes=[-1], strides=[3]), (6, A, 2)),
    (dict(begin=[1], end=[2], axes=[1]), (6, A, 5)),
])
def test_strided_slice_follows_python_slicing(attrs, out):
    assert infer("strided_slice", T((6, A, 5), F), **attrs) == T(out, F)


def test_strided_slice_errors():
    fails("stride must not be zero", "strided_slice", T((4,), F), begin=[0], end=[2], strides=[0])
    fails("out of range", "strided_slice", T((4,), F), begin=[0], end=[2], axes=[1])
    fails("same length", "strided_slice", T((4,), F), begin=[0, 1], end=[2], axes=[0])
    fails("sliced axes", "strided_slice", T((4,), F), begin=[0, 0], end=[2, 2])


def test_take_shapes():
    data, idx = T((4, A, 3), F), T((2, 5), "int32")
    assert infer("take", data, idx) == T((2, 5), F)
    assert infer("take", data, idx, axis=1) == T((4, 2, 5, 3), F)
    assert infer("take", data, T((), "int64"), axis=-1) == T((4, A), F)
    fails("indices of dtype int32 or int64", "take", data, T((2,), F))
    fails("mode must be", "take", data, idx, mode="fast")
    fails("out of range", "take", data, idx, axis=3)


def test_broadcast_to_checks_compatibility():
    assert infer("broadcast_to", T((A, 1), F), shape=[2, 4, 3]) == T((2, 4, 3), F)
    fails("cannot broadcast", "broadcast_to", T((3,), F), shape=[4])
    fails("rank 2 to rank 1", "broadcast_to", T((1, 1), F), shape=[4])


def test_static_fill_ops():
    assert infer("zeros", shape=[2, 0], dtype="int32") == T((2, 0), "int32")
    assert infer("ones", shape=[]) == T((), F)
    assert infer("full", T((), "int64"), shape=[3]) == T((3,), "int64")
    assert infer("full", T((), "int64"), shape=[3], dtype="float64") == T((3,), "float64")
    fails("must be a scalar", "full", T((1,), F), shape=[3])
    fails("dims must be >= 0", "zeros", shape=[-1])
    fails("unsupported dtype", "ones", shape=[1], dtype="int8")


def test_dyn_fill_ops_take_rank_from_shape_tensor():
    assert infer("dyn.zeros", T((2,), "int64")) == T((A, A), F)
    assert infer("dyn.full", T((), "int32"), T((1,), "int64")) == T((A,), "int32")
    fails("static length", "dyn.ones", T((A,), "int64"))


# ------------------------------------------------------------------ dynamic

def test_arange_and_argwhere_have_any_lengths():
    s = T((), "int32")
    assert infer("arange", s, T((), F), s, dtype="int64") == T((A,), "int64")
    assert infer("argwhere", T((A, 3, 2), "bool")) == T((A, 3), "int64")
    assert infer("argwhere", T((), F)) == T((A, 0), "int64")
    fails("stop must be a scalar", "arange", s, T((2,), "int32"), s)
    fails("step of dtype", "arange", s, s, T((), "bool"))
    fails("numeric", "arange", s, s, s, dtype="bool")


# ------------------------------------------------------------------ reductions

@pytest.mark.parametrize("attrs, out", [
    ({}, ()),
    (dict(axis=1), (2, 4)),
    (dict(axis=[0, -1]), (A,)),
    (dict(axis=1, keepdims=True), (2, 1, 4)),
    (dict(axis=1, exclude=True), (A,)),
    (dict(axis=[], ), (2, A, 4)),
    (dict(keepdims=True), (1, 1, 1)),
])
def test_reductions_drop_or_keep_axes(attrs, out):
    x = T((2, A, 4), F)
    assert infer("sum", x, **attrs) == T(out, F)
    assert infer("argmax", x, **attrs) == T(out, "int64")


def test_reduction_errors():
    fails("out of range", "mean", T((2,), F), axis=1)
    fails("repeated axis", "max", T((2, 2), F), axis=[0, -2])
    fails("dtype", "sum", T((2,), "bool"))


# ------------------------------------------------------------------ nn

def test_dense_matmul_batch_matmul_shapes():
    assert infer("dense", T((A, 5, 3), F), T((7, 3), F)) == T((A, 5, 7), F)
    assert infer("dense", T((A, A), F), T((7, 3), F)) == T((A, 7), F)
    assert infer("matmul", T((A, 3), F), T((3, 4), F)) == T((A, 4), F)
    assert infer("batch_matmul", T((2, A, 3), F), T((1, 5, 3), F)) == T((2, A, 5), F)
    assert infer("batch_matmul", T((2, 3, 4), F), T((2, 3, 5), F),
                 transpose_a=True, transpose_b=False) == T((2, 4, 5), F)


def test_nn_errors():
    fails("reduction dims", "dense", T((2, 3), F), T((4, 5), F))
    fails("rank 2", "dense", T((2, 3), F), T((3,), F))
    fails("float32 and float64", "matmul", T((2, 3), F), T((3, 2), "float64"))
    fails("rank 2", "matmul", T((2, 3, 1), F), T((3, 2), F))
    fails("reduction dims", "batch_matmul", T((2, 3, 4), F), T((2, 5, 3), F))
    fails("cannot broadcast dims 2 and 3", "batch_matmul", T((2, 3, 4), F), T((3, 5, 4), F))


def test_softmax_and_layer_norm():
    x = T((A, 8), F)
    assert infer("softmax", x, axis=0) == x
    assert infer("layer_norm", x, T((8,), F), T((A,), F)) == x
    fails("float32 or float64", "softmax", T((2,), "int32"))
    fails("out of range", "softmax", x, axis=2)
    fails("gamma length", "layer_norm", x, T((7,), F), T((8,), F))
    fails("beta must be 1-D", "layer_norm", x, T((8,), F), T((1, 8), F))
