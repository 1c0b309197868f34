"""from_onnx itself: input types, initializers, the one error naming every unsupported node,
constant folding of shape arithmetic."""
import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from dynvm.compiler import build, ir  # noqa: E402
from dynvm.frontend.onnx import UnsupportedOnnxError, from_onnx  # noqa: E402
from dynvm.vm import VirtualMachine  # noqa: E402
from dynvm.vm.errors import DynVMError  # noqa: E402
from tests.frontend import onnx_models as M  # noqa: E402


def info(name, shape, elem=M.F):
    return helper.make_tensor_value_info(name, elem, shape)


def test_unsupported_error_lists_every_offending_node_and_skips_their_consumers():
    nodes = [helper.make_node("Det", ["x"], ["a"], name="first"),          # no converter
             helper.make_node("Relu", ["a"], ["b"], name="consumer"),          # only downstream
             helper.make_node("Gelu", ["x"], ["c"], name="attr", approximate="tanh",
                              foo=1),                                           # unknown attr
             helper.make_node("Cast", ["x"], ["d"], name="half", to=TensorProto.FLOAT16),
             helper.make_node("Add", ["b", "c"], ["y"], name="fine")]
    m = M.model(nodes, [info("x", [2, 3]), info("u8", [2], TensorProto.UINT8)],
                [info("y", [2, 3]), info("d", [2, 3], TensorProto.FLOAT16)], opset=20,
                check=False)  # the checker would reject the made-up attribute
    with pytest.raises(UnsupportedOnnxError) as err:
        from_onnx(m)
    names = [o[0] for o in err.value.offenders]
    assert sorted(names) == ["attr", "first", "half", "u8"]
    text = str(err.value)
    assert "4 unsupported node(s)" in text
    assert "first (Det, opset 20): no converter for this op" in text
    assert "attr (Gelu, opset 20): attribute(s) foo not supported" in text
    assert "half (Cast, opset 20): the target type has element type FLOAT16" in text
    assert "u8 (graph input, opset 20): input 'u8' has element type UINT8" in text
    assert isinstance(err.value, DynVMError)


def test_a_converter_needing_a_constant_names_the_graph_input():
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"])]
    m = M.model(nodes, [info("x", [2, 3]), info("axes", [1], M.I64)], [info("y", [3])])
    with pytest.raises(UnsupportedOnnxError, match="axes must be a constant .* graph input 'axes'"):
        from_onnx(m)


def test_symbolic_and_unknown_dims_are_any_initializers_are_constants():
    nodes = [helper.make_node("Add", ["x", "bias"], ["y"])]
    x = helper.make_tensor_value_info("x", M.F, ["batch", None, 3])
    m = M.model(nodes, [x], [info("y", ["batch", None, 3])], {"bias": np.ones(3, np.float32)})
    fn = from_onnx(m)["main"]
    assert [p.name for p in fn.params] == ["x"]
    assert fn.params[0].type_annotation == ir.TensorType((ir.Any(), ir.Any(), 3), "float32")
    assert isinstance(fn.body.args[1], ir.Constant)


def test_shapes_must_name_inputs_and_match_their_rank():
    with pytest.raises(DynVMError, match="shapes names no input of the model: \\['y'\\]"):
        from_onnx(M.mlp(), shapes={"y": (1, 8)})
    with pytest.raises(DynVMError, match="has rank 1, the model's input has rank 2"):
        from_onnx(M.mlp(), shapes={"x": (8,)})


def test_shape_arithmetic_on_static_dims_folds_to_a_static_reshape():
    m = M.shape_gather_reshape()
    fn = from_onnx(m, shapes={"x": (2, 5, 4)})["main"]
    assert fn.body.callee.name == "reshape" and fn.body.attrs["newshape"] == [2, -1]
    dynamic = from_onnx(m)["main"]
    assert dynamic.body.callee.name == "dyn.reshape"


def test_a_loop_body_computes_the_enclosing_graphs_values_once(tmp_path):
    """The body (and an If inside it) uses x @ w, computed outside the loop: the product runs
    once per call, not once per iteration."""
    inner_then = helper.make_graph([helper.make_node("Add", ["acc_in", "xw"], ["t"])], "then", [],
                                   [info("t", None)])
    inner_else = helper.make_graph([helper.make_node("Sub", ["acc_in", "xw"], ["e"])], "else", [],
                                   [info("e", None)])
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "xw"], ["plus"]),
         helper.make_node("If", ["cond_in"], ["acc_out"], then_branch=inner_then,
                          else_branch=inner_else),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [info("i", [], M.I64), info("cond_in", [], M.B), info("acc_in", [2, 3])],
        [info("cond_out", [], M.B), info("acc_out", [2, 3]), info("plus", [2, 3])])
    m = M.model([helper.make_node("MatMul", ["x", "w"], ["xw"]),
                 helper.make_node("Loop", ["n", "", "x0"], ["acc", "steps"], body=body)],
                [info("n", [], M.I64), info("x", [2, 4]), info("x0", [2, 3])],
                [info("acc", [2, 3]), info("steps", [None, 2, 3])],
                {"w": np.arange(12, dtype=np.float32).reshape(4, 3)})
    vm = VirtualMachine(build(from_onnx(m)), profile=True, tier="python")
    x = np.ones((2, 4), np.float32)
    acc, steps = vm.invoke("main", np.array(5, np.int64), x, np.zeros((2, 3), np.float32))
    want = M.ort_run(m, np.array(5, np.int64), x, np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(acc, want[0])
    np.testing.assert_allclose(steps, want[1])
    products = {k: v["calls"] for k, v in vm.profile()["kernels"].items()
                if "dense" in k or "matmul" in k}
    assert sum(products.values()) == 1, products


def test_a_reshape_with_one_run_time_entry_infers_it_and_keeps_the_other_dims_static():
    """x (n, 6, 4) reshaped to Concat([n, Gather(Shape(x), 1) / 2, 8]): the Gather of the static
    dim folds, the run-time n is inferred (-1), and the result's type keeps (3, 8)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Gather", ["s", "one"], ["m"], axis=0),
             helper.make_node("Div", ["m", "two"], ["half"]),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Unsqueeze", ["half", "axes"], ["h1"]),
             helper.make_node("Concat", ["n1", "h1", "eight"], ["newshape"], axis=0),
             helper.make_node("Reshape", ["x", "newshape"], ["y"])]
    m = M.model(nodes, [info("x", ["n", 6, 4])], [info("y", ["n", 3, 8])],
                {"zero": np.array(0, np.int64), "one": np.array(1, np.int64),
                 "two": np.array(2, np.int64), "axes": np.array([0], np.int64),
                 "eight": np.array([8], np.int64)})
    fn = from_onnx(m)["main"]
    assert fn.body.callee.name == "reshape" and fn.body.attrs["newshape"] == [-1, 3, 8]
    x = np.arange(48, dtype=np.float32).reshape(2, 6, 4)
    np.testing.assert_array_equal(VirtualMachine(build(from_onnx(m))).invoke("main", x),
                                  x.reshape(2, 3, 8))


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("elem,dtype", [(TensorProto.FLOAT, np.float32), (TensorProto.INT64, np.int64)])
def test_mod_is_numpys_mod_or_fmod_bit_for_bit(fmod, elem, dtype):
    """Signed zeros, infinities, NaN and quotients too large for x - trunc(x / y) * y."""
    node = helper.make_node("Mod", ["x", "y"], ["z"], fmod=fmod)
    graph = helper.make_graph([node], "mod", [info("x", [None], elem), info("y", [None], elem)],
                              [info("z", [None], elem)])
    vm = VirtualMachine(build(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))))
    if dtype == np.float32:
        x = np.array([0.0, -0.0, 0.0, -0.0, -3, 3, -1, 1, np.inf, 1, np.nan, 5.5, -5.5, 1e30, 7.25], dtype)
        y = np.array([-2.0, 2, 2, -2, np.inf, -np.inf, -np.inf, 2, 0, 2, -2, 2, 7, -0.5, 3], dtype)
    else:
        x = np.array([-4, 7, 5, 4, -7, 8, 0, -9, np.iinfo(dtype).min], dtype)
        y = np.array([2, -3, 8, -2, 3, 5, 3, 4, 7], dtype)
    with np.errstate(all="ignore"):
        want = np.fmod(x, y) if fmod else np.mod(x, y)
    assert vm.invoke("main", x, y).tobytes() == want.tobytes()


@pytest.mark.parametrize("op_type,elem,dtype", [
    (op_type, TensorProto.INT64, np.int64) for op_type in ("ReduceMin", "ReduceMax", "ArgMin", "ArgMax")
] + [(op_type, TensorProto.BOOL, np.bool_) for op_type in ("ReduceMin", "ReduceMax")])
def test_integer_and_bool_extremes_are_exact(op_type, elem, dtype):
    """The smallest integer has no negation: min and argmin must not negate."""
    node = helper.make_node(op_type, ["x"], ["y"], keepdims=0, **({"axis": 1} if "Arg" in op_type else {"axes": [1]}))
    out = TensorProto.INT64 if "Arg" in op_type else elem
    graph = helper.make_graph([node], "extreme", [info("x", [2, 3], elem)], [info("y", [2], out)])
    vm = VirtualMachine(build(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))))
    low = np.iinfo(np.int64).min
    x = np.array([[low, 5, -1], [7, low + 1, 7]]).astype(dtype) if dtype == np.int64 \
        else np.array([[True, False, True], [False, False, False]])
    want = {"ReduceMin": np.min, "ReduceMax": np.max, "ArgMin": np.argmin, "ArgMax": np.argmax}[op_type](x, axis=1)
    np.testing.assert_array_equal(vm.invoke("main", x), want)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 1, 3, 4), (1, 2, 4, 2)), ((3, 4), (2, 1, 4, 5)),
                                             ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_broadcasts_batch_dims_and_ranks(a_shape, b_shape):
    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "matmul", [info("a", list(a_shape)), info("b", list(b_shape))],
                              [info("c", None)])
    vm = VirtualMachine(build(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))))
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in (a_shape, b_shape))
    np.testing.assert_allclose(vm.invoke("main", a, b), np.matmul(a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("equation,shapes", [
    ("...ii->...i", [(3, 4, 4)]), ("ii", [(5, 5)]), ("iji->j", [(3, 2, 3)]),
    ("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 2)]), ("ij...,jk...", [(3, 4, 2), (4, 5, 2)]),
    ("b...i,bi->b...", [(2, 3, 4), (2, 4)])])
def test_einsum_ellipsis_and_diagonals_match_numpy(equation, shapes):
    names = [f"x{k}" for k in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation)
    graph = helper.make_graph([node], "einsum", [info(n, list(s)) for n, s in zip(names, shapes)],
                              [info("y", None)])
    vm = VirtualMachine(build(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))))
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    np.testing.assert_allclose(vm.invoke("main", *xs), np.einsum(equation, *xs), rtol=1e-5, atol=1e-5)


def function_model(op_type, inputs, opset, **attrs):
    node = helper.make_node(op_type, [name for name, _ in inputs], ["y"], **attrs)
    graph = helper.make_graph([node], op_type, [info(name, list(shape)) for name, shape in inputs],
                              [info("y", None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_op_onnx_defines_as_a_function_converts_through_its_body():
    """MeanVarianceNormalization has no converter: its schema's body (ReduceMean, Sub, Sqrt,
    ...) is converted, with the node's attribute (axes) or the schema's default."""
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    for attrs, axes in (({}, (0, 2, 3)), ({"axes": [1, 3]}, (1, 3))):
        model = function_model("MeanVarianceNormalization", [("x", x.shape)], 18, **attrs)
        mean = x.mean(axis=axes, keepdims=True)
        want = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True))
        got = VirtualMachine(build(from_onnx(model))).invoke("main", x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_context_dependent_function_is_built_for_the_input_types():
    """SoftmaxCrossEntropyLoss's body depends on its inputs: built for them."""
    rng = np.random.default_rng(3)
    scores, labels = rng.standard_normal((4, 5)).astype(np.float32), np.array([0, 4, 2, 1])
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["s", "l"], ["y"], reduction="mean")
    graph = helper.make_graph([node], "sce", [info("s", [4, 5]), info("l", [4], M.I64)], [info("y", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    got = VirtualMachine(build(from_onnx(model))).invoke("main", scores, labels)
    log_p = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got, -log_p[np.arange(4), labels].mean(), rtol=1e-5)


def test_a_function_whose_body_cannot_convert_blames_the_node():
    model = function_model("CenterCropPad", [("x", (None, 4)), ("shape", (2,))], 18)
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(UnsupportedOnnxError, match=r"CenterCropPad, opset 18\): in its ONNX "
                                                   r"function, \w+: .*constant"):
        from_onnx(model)
    model = function_model("Det", [("x", (3, 3))], 18)
    with pytest.raises(UnsupportedOnnxError, match=r"Det, opset 18\): no converter"):
        from_onnx(model)


INVERSE_AND_HYPERBOLIC = {"Atan": (np.arctan, (-1e6, 1e6)), "Asin": (np.arcsin, (-1, 1)),
                          "Acos": (np.arccos, (-1, 1)), "Asinh": (np.arcsinh, (-1e3, 1e3)),
                          "Acosh": (np.arccosh, (1, 1e3)), "Atanh": (np.arctanh, (-0.999, 0.999)),
                          "Sinh": (np.sinh, (-20, 20)), "Cosh": (np.cosh, (-20, 20)),
                          "Tan": (np.tan, (-1.5, 1.5))}


def test_decomposed_functions_match_numpy_in_float64():
    ops = sorted(INVERSE_AND_HYPERBOLIC)
    nodes = [helper.make_node(op_type, [f"x{k}"], [f"y{k}"]) for k, op_type in enumerate(ops)]
    graph = helper.make_graph(nodes, "functions", [info(f"x{k}", [None], TensorProto.DOUBLE) for k in range(len(ops))],
                              [info(f"y{k}", [None], TensorProto.DOUBLE) for k in range(len(ops))])
    vm = VirtualMachine(build(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))))
    xs = [np.concatenate([np.linspace(low, high, 997), [low, high, 0.0]])
          for _, (low, high) in (INVERSE_AND_HYPERBOLIC[op] for op in ops)]
    for op_type, x, got in zip(ops, xs, vm.invoke("main", *xs)):
        np.testing.assert_allclose(got, INVERSE_AND_HYPERBOLIC[op_type][0](x), rtol=1e-13, atol=1e-14,
                                   err_msg=op_type)


def test_odd_functions_keep_their_precision_near_zero_in_float32():
    ops = ["Sinh", "Asinh", "Atanh", "Atan", "Asin", "Tan"]
    nodes = [helper.make_node(op_type, ["x"], [f"y{k}"]) for k, op_type in enumerate(ops)]
    graph = helper.make_graph(nodes, "odd", [info("x", [None])], [info(f"y{k}", [None]) for k in range(len(ops))])
    vm = VirtualMachine(build(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))))
    x = np.array([1e-8, -3e-6, 1e-4, -9e-4, 2e-3, 1e-30], np.float32)
    for op_type, got in zip(ops, vm.invoke("main", x)):
        want = INVERSE_AND_HYPERBOLIC[op_type][0](x.astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=2e-7, err_msg=op_type)


def single_node(op_type, inputs, **attrs):
    """A model of one node: inputs [(name, shape, elem)] -> y, built."""
    node = helper.make_node(op_type, [name for name, _, _ in inputs], ["y"], **attrs)
    graph = helper.make_graph([node], op_type, [info(n, list(s), e) for n, s, e in inputs],
                              [info("y", None)])
    return VirtualMachine(build(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))))


def test_indices_outside_their_axis_are_errors_not_wrapped_rows():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    gather = single_node("Gather", [("x", (2, 3, 4), M.F), ("i", (2,), M.I64)], axis=1)
    np.testing.assert_array_equal(gather.invoke("main", data, np.array([-1, 0])), data[:, [2, 0]])
    gather_nd = single_node("GatherND", [("x", (2, 3, 4), M.F), ("i", (2, 1), M.I64)], batch_dims=1)
    np.testing.assert_array_equal(gather_nd.invoke("main", data, np.array([[2], [-3]])),
                                  np.stack([data[0, 2], data[1, 0]]))
    reverse = single_node("ReverseSequence", [("x", (3, 2), M.F), ("l", (2,), M.I64)])
    for vm, args in ((gather, (data, np.array([3, 0]))), (gather_nd, (data, np.array([[5], [0]]))),
                     (reverse, (data[0, :, :2], np.array([4, 1]))),
                     (reverse, (data[0, :, :2], np.array([-1, 1])))):
        with pytest.raises(DynVMError, match="invalid input value"):
            vm.invoke("main", *args)


def test_compress_ignores_a_condition_past_the_axis():
    vm = single_node("Compress", [("x", (3,), M.F), ("c", (None,), TensorProto.BOOL)], axis=0)
    x = np.array([1, 2, 3], np.float32)
    assert vm.invoke("main", x, np.array([False, False, False, True])).shape == (0,)
    np.testing.assert_array_equal(vm.invoke("main", x, np.array([True, False, True, True])), [1, 3])


def test_reshape_allowzero_with_a_run_time_shape():
    vm = single_node("Reshape", [("x", (None, None), M.F), ("s", (2,), M.I64)], allowzero=1)
    assert vm.invoke("main", np.zeros((0, 3), np.float32), np.array([3, 0])).shape == (3, 0)
    np.testing.assert_array_equal(vm.invoke("main", np.ones((2, 3), np.float32), np.array([3, 2])),
                                  np.ones((3, 2)))
    with pytest.raises(DynVMError, match="invalid input value"):
        vm.invoke("main", np.ones((2, 3), np.float32), np.array([0, 6]))     # 6 elements into 0
    to_scalar = single_node("Reshape", [("x", (None, None), M.F), ("s", (0,), M.I64)], allowzero=1)
    assert to_scalar.invoke("main", np.ones((1, 1), np.float32), np.array([], np.int64)).shape == ()
