"""The ONNX graph walk: model -> IRModule.

Each ONNX value name maps to an IR expression (a scope per graph; a subgraph sees its enclosing
graphs' names). Graph inputs become the parameters of `main` (dims without a fixed size become
`Any`), initializers become constants, and every node goes through its converter in
`converters.CONVERTERS`; a node of an op without one whose ONNX schema defines it as a
function (a body of other ops) is replaced by that body (`function_nodes`). A node that cannot be converted (no converter, an attribute the
converter does not handle, an unsupported dtype or form) is recorded and the walk goes on, so
one `UnsupportedOnnxError` names every offending node; nodes that only consume an offender's
outputs are skipped without being blamed.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dynvm.compiler import ir
from dynvm.compiler.typing import infer_expr_type
from dynvm.vm.errors import DynVMError

# ONNX element type -> dynvm dtype; every other element type is unsupported
DTYPES = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64",
          TensorProto.INT32: "int32", TensorProto.INT64: "int64", TensorProto.BOOL: "bool"}
ONNX_DOMAINS = ("", "ai.onnx")

# Shape arithmetic: a node of these ops whose inputs are all small integer (or bool) constants
# is evaluated at import time (onnx's reference implementation), so shape computations on
# static dims (Shape -> Gather -> Concat -> Reshape in exported models) become constants.
FOLDABLE = frozenset("""Shape Size Gather Slice Concat Unsqueeze Squeeze Reshape Cast Range Add
    Sub Mul Div Mod Equal Less Greater LessOrEqual GreaterOrEqual Where Not And Or Max Min Abs
    Neg Sign Identity ReduceProd ReduceSum ReduceMax ReduceMin ConstantOfShape Expand Tile
    Transpose Flatten Split Clip CumSum""".split())
FOLD_MAX_ELEMENTS = 4096


class UnsupportedOnnxError(DynVMError):
    """The model has nodes dynvm cannot convert; `offenders` lists each as
    (node name, op type, opset, reason)."""

    def __init__(self, offenders):
        self.offenders = list(offenders)
        lines = [f"  {name or '<unnamed>'} ({op_type}, opset {opset}): {reason}"
                 for name, op_type, opset, reason in self.offenders]
        super().__init__(f"the ONNX model has {len(self.offenders)} unsupported node(s):\n"
                         + "\n".join(lines))


class Unsupported(Exception):
    """Raised by a converter: this node (its attributes, dtypes or form) is not supported."""


def dtype_of(elem_type: int, what: str) -> str:
    if elem_type not in DTYPES:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise Unsupported(f"{what} has element type {name} (supported: float, double, int32, "
                          "int64, bool)")
    return DTYPES[elem_type]


def tensor_constant(proto, what: str) -> ir.Constant:
    dtype = dtype_of(proto.data_type, what)
    return ir.const(numpy_helper.to_array(proto), dtype)


def input_type(value_info, pinned) -> ir.TensorType:
    """The IR type of a graph input: unknown or symbolic dims are Any unless `pinned` (a
    sequence of ints, None for Any) fixes them."""
    t = value_info.type
    if t.WhichOneof("value") != "tensor_type":
        raise Unsupported(f"input {value_info.name!r} is not a tensor")
    dtype = dtype_of(t.tensor_type.elem_type, f"input {value_info.name!r}")
    if not t.tensor_type.HasField("shape"):
        if pinned is None:
            raise Unsupported(f"input {value_info.name!r} has no rank; pin its shape")
        dims = [None] * len(pinned)
    else:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
    if pinned is not None:
        if len(pinned) != len(dims):
            raise DynVMError(f"shapes[{value_info.name!r}] has rank {len(pinned)}, the model's "
                             f"input has rank {len(dims)}")
        dims = list(pinned)
    return ir.TensorType(tuple(ir.Any() if d is None or d < 0 else int(d) for d in dims), dtype)


def attributes(node) -> dict:
    """Node attributes as Python values (strings decoded, tensors as constants, graphs kept)."""
    out = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = tensor_constant(a.t, f"attribute {a.name}")
        elif a.type == onnx.AttributeProto.GRAPH:
            out[a.name] = a.g
        else:
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode() for v in value]
            out[a.name] = value
    return out


def function_nodes(node, opset: int, input_types) -> tuple | None:
    """(nodes, their opset) of the ONNX function that defines `node`'s op at `opset`: the
    schema's function body, or the one it builds for the node's input types
    (`input_types`: TypeProtos), renamed into the node's graph: the function's inputs and
    outputs are the node's, its own values get a prefix of their own, attribute references
    become the node's attributes (or the schema's defaults). None when the op has no function
    or its body holds subgraphs."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    versions = [v for v in schema.function_opset_versions if v <= opset]
    dependent = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if versions:
        text = schema.get_function_with_opset_version(max(versions))
    elif dependent:
        text = schema.get_context_dependent_function_with_opset_version(
            max(dependent), node.SerializeToString(), [t.SerializeToString() for t in input_types])
    else:
        return None
    function = onnx.FunctionProto()
    function.ParseFromString(text)
    given = {a.name: a for a in node.attribute}
    given.update({name: attr.default_value for name, attr in schema.attributes.items()
                  if name not in given and attr.default_value.type})
    prefix = f"{node.output[0]}/{node.op_type}/"
    names = dict(zip(function.input, list(node.input) + [""] * len(function.input)))
    names.update((name, given_name) for name, given_name in zip(function.output, node.output)
                 if given_name)          # an output the node leaves unnamed stays the body's own
    rename = lambda name: names.get(name, prefix + name) if name else ""   # noqa: E731
    nodes = []
    for inner in function.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in inner.attribute):
            return None
        out = onnx.NodeProto()
        out.CopyFrom(inner)
        out.input[:] = [rename(n) for n in inner.input]
        out.output[:] = [rename(n) for n in inner.output]
        del out.attribute[:]
        for a in inner.attribute:
            if not a.ref_attr_name:
                out.attribute.append(a)
            elif a.ref_attr_name in given:
                value = onnx.AttributeProto()
                value.CopyFrom(given[a.ref_attr_name])
                value.name = a.name
                out.attribute.append(value)
        nodes.append(out)
    own = [imp.version for imp in function.opset_import if imp.domain in ONNX_DOMAINS]
    return nodes, own[0] if own else opset


def type_proto(t: ir.TensorType):
    """The ONNX TypeProto of an IR tensor type (Any dims unnamed)."""
    elem = next(e for e, name in DTYPES.items() if name == t.dtype)
    return helper.make_tensor_type_proto(elem, [None if ir.is_any(d) else d for d in t.shape])


class Scope:
    """The values of one graph, falling back to the enclosing graph's.

    A subgraph's scope is a boundary: an enclosing graph's computed value (not a variable or a
    constant) that a subgraph uses is *captured*, i.e. replaced by a fresh variable recorded in
    `captures` of the outermost boundary crossed, which the converter of the node owning the
    subgraph binds by a `Let` outside it (`Context.bind_captures`). Otherwise a Loop body
    would recompute the value in every iteration: IR expressions are trees, and a loop is a
    local function."""

    def __init__(self, parent=None, boundary=False):
        self.values: dict = {}
        self.parent = parent
        self.boundary = boundary
        self.captures: list = []           # (variable, the enclosing graph's expression)

    def lookup(self, name):
        scope, crossed = self, None
        while scope is not None:
            if name in scope.values:
                value = scope.values[name]
                if crossed is None or value is None or isinstance(value, (ir.Var, ir.Constant)):
                    return value
                var = ir.var(f"outer{len(crossed.captures)}", infer_expr_type(value))
                crossed.values[name] = var
                crossed.captures.append((var, value))
                return var
            if scope.boundary:
                crossed = scope
            scope = scope.parent
        return None


class Context:
    """What a converter sees: the model's opset, the node being converted, types and constant
    values of IR expressions, and subgraph conversion."""

    def __init__(self, opset: int):
        self.opset = opset
        self.node = None                   # the node being converted, and its graph's scope
        self.scope = None
        # serialized node (unique in a model; stable across a Loop body's re-conversions)
        # -> (name, op type, opset, reason)
        self.offenders: dict = {}
        self.captures: list = []            # of the subgraphs converted, not yet bound

    def type_of(self, expr) -> ir.TensorType:
        t = infer_expr_type(expr)
        if not isinstance(t, ir.TensorType):
            raise Unsupported(f"expected a tensor, got {t}")
        return t

    @staticmethod
    def value_of(expr):
        """The numpy value of a constant expression, else None."""
        return expr.data if isinstance(expr, ir.Constant) else None

    def offend(self, node, reason: str):
        self.offenders.setdefault(node.SerializeToString(),
                                  (node.name, node.op_type, self.opset, reason))

    def convert_graph(self, graph, scope: Scope) -> list:
        """Convert `graph`'s nodes in `scope`; its output expressions (None for a failed one)."""
        for init in graph.initializer:
            try:
                scope.values[init.name] = tensor_constant(init, f"initializer {init.name!r}")
            except Unsupported as e:
                self.offenders.setdefault(init.SerializeToString(),
                                          (init.name, "initializer", self.opset, str(e)))
        self.convert_nodes(graph.node, scope)
        return [scope.lookup(v.name) for v in graph.output]

    def convert_nodes(self, nodes, scope: Scope):
        from dynvm.frontend.onnx.converters import CONVERTERS
        for node in nodes:
            ins = [scope.lookup(name) if name else None for name in node.input]
            if any(e is None and name for e, name in zip(ins, node.input)):
                continue  # an input failed upstream (or is undefined): that node is the offender
            conv = CONVERTERS.get(node.op_type) if node.domain in ONNX_DOMAINS else None
            if conv is None:
                if node.domain not in ONNX_DOMAINS:
                    self.offend(node, f"domain {node.domain!r} is not supported")
                else:
                    self.expand(node, ins, scope)
                continue
            outs = self.folded(node, ins) or self.convert_node(node, conv, ins, scope)
            if outs is None:
                continue
            for name, expr in zip(node.output, outs):
                if name:
                    scope.values[name] = expr

    def expand(self, node, ins, scope: Scope):
        """Convert `node` as the nodes of its op's ONNX function; the node is the offender when
        there is none or a node of it cannot be converted."""
        try:
            body = function_nodes(node, self.opset, [type_proto(self.type_of(e)) if e is not None
                                                    else onnx.TypeProto() for e in ins])
        except Exception as e:  # noqa: BLE001  (a schema's function builder may reject the node)
            self.offend(node, f"its ONNX function cannot be built: {str(e).splitlines()[0]}")
            return
        if body is None:
            self.offend(node, "no converter for this op")
            return
        nodes, opset = body
        before, outer_opset = dict(self.offenders), self.opset
        self.opset = opset
        try:
            self.convert_nodes(nodes, scope)
        finally:
            self.opset = outer_opset
        inner = [reason for key, reason in self.offenders.items() if key not in before]
        if inner:
            self.offenders = before
            name, op_type, _, reason = inner[0]
            self.offend(node, f"in its ONNX function, {op_type}: {reason}")

    def folded(self, node, ins):
        """The node's outputs as constants when it is shape arithmetic on small integer
        constants (see FOLDABLE), else None."""
        if node.op_type not in FOLDABLE or not ins or not all(
                isinstance(e, ir.Constant) and e.data.dtype.kind in "iub"
                and e.data.size <= FOLD_MAX_ELEMENTS for e in ins if e is not None):
            return None
        from onnx.reference import ReferenceEvaluator
        feeds = {name: e.data for name, e in zip(node.input, ins) if name}
        try:
            values = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
            return [tensor_constant(numpy_helper.from_array(np.asarray(v)), "a folded value")
                    for v in values]
        except Exception:  # noqa: BLE001  (not foldable here: the converter handles the node)
            return None

    def subgraph(self, graph, bindings) -> list:
        """The outputs of subgraph `graph` (of the node being converted) with its inputs bound
        to `bindings`; its nodes see the enclosing graphs' values."""
        scope = Scope(self.scope, boundary=True)
        for vi, value in zip(graph.input, bindings):
            scope.values[vi.name] = value
        outs = self.convert_graph(graph, scope)
        self.captures.extend(scope.captures)
        if any(o is None for o in outs):
            raise Unsupported(f"its subgraph {graph.name!r} has unsupported nodes")
        return outs

    def capture(self, expr):
        """A variable for `expr` (a value computed outside the loop being built, used inside
        it), bound by the converter's `bind_captures`; variables and constants stay as they
        are."""
        if isinstance(expr, (ir.Var, ir.Constant)):
            return expr
        var = ir.var(f"outer{len(self.captures)}", self.type_of(expr))
        self.captures.append((var, expr))
        return var

    def bind_captures(self, mark: int, expr):
        """`expr` inside Lets binding the values captured by the subgraphs converted since
        `len(self.captures)` was `mark`."""
        for var, value in reversed(self.captures[mark:]):
            expr = ir.Let(var, value, expr)
        del self.captures[mark:]
        return expr

    def convert_node(self, node, conv, ins, scope):
        attrs = attributes(node)
        extra = sorted(set(attrs) - conv.attrs)
        if extra:
            self.offend(node, f"attribute(s) {', '.join(extra)} not supported")
            return None
        outer = (self.node, self.scope)
        self.node, self.scope = node, scope
        try:
            outs = conv.fn(self, ins, attrs)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            outs += [None] * (len(node.output) - len(outs))
            missing = [i for i, name in enumerate(node.output) if name and outs[i] is None]
            if missing:
                raise Unsupported(f"output(s) {missing} are not supported")
            for e in outs:
                if e is not None:
                    self.type_of(e)  # a type error is this node's
            return outs
        except Unsupported as e:
            self.offend(node, str(e))
        except DynVMError as e:
            self.offend(node, f"{str(e).splitlines()[0]} ({type(e).__name__})")
        finally:
            self.node, self.scope = outer
        return None


def model_opset(model):
    """The model's ai.onnx opset version (None if it imports none: then every node is from
    another domain, and unsupported)."""
    for imp in model.opset_import:
        if imp.domain in ONNX_DOMAINS:
            return imp.version
    return None


def from_onnx(model_or_path, shapes: dict | None = None) -> ir.IRModule:
    """An IRModule whose `main` computes the ONNX model's outputs from its inputs.

    `model_or_path`: an `onnx.ModelProto` or a path to a .onnx file. `shapes` maps input names
    to shapes (ints, None for a dim left dynamic) to pin dims the model leaves open; every other
    symbolic or unknown dim becomes `ir.Any()`. `main` takes the inputs in the graph's order
    (initializers listed as inputs are constants, not parameters) and returns the single output,
    or a tuple of them. Raises `UnsupportedOnnxError` naming every node that cannot be converted.
    """
    model = onnx.load(model_or_path) if not isinstance(model_or_path, onnx.ModelProto) \
        else model_or_path
    shapes = dict(shapes or {})
    graph = model.graph
    cx = Context(model_opset(model))
    initialized = {init.name for init in graph.initializer}
    scope, params = Scope(), []
    for vi in graph.input:
        if vi.name in initialized:
            continue
        try:
            var = ir.var(vi.name, input_type(vi, shapes.pop(vi.name, None)))
        except Unsupported as e:
            cx.offenders.setdefault(vi.SerializeToString(),
                                    (vi.name, "graph input", cx.opset, str(e)))
            continue
        scope.values[vi.name] = var
        params.append(var)
    if shapes:
        raise DynVMError(f"shapes names no input of the model: {sorted(shapes)}")
    outs = cx.convert_graph(graph, scope)
    if cx.offenders:
        raise UnsupportedOnnxError(cx.offenders.values())
    if any(o is None for o in outs):
        missing = [v.name for v, o in zip(graph.output, outs) if o is None]
        raise DynVMError(f"the ONNX graph's output(s) {missing} are not computed by any node")
    body = outs[0] if len(outs) == 1 else ir.Tuple(outs)
    return ir.IRModule.from_expr(ir.Function(params, body))

