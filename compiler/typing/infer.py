"""Type inference: gives every expression of a module its `checked_type`.

Op types come from each op's type relation in the registry; `Any` dims flow through them.
Global functions must annotate their parameters; a function called recursively must also
annotate its return type (its type is needed before its body is inferred). Errors are
`TypeInferenceError`s that quote the offending expression in the text format. The inference
is a walk (compiler/ir/walk.py), so it needs no recursion however deep the program nests.
"""
from __future__ import annotations

from dynvm.vm.errors import TypeInferenceError

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.printer import expr_text
from dynvm.compiler.ir.walk import MISSING, Walker, each
from dynvm.compiler.ir.types import Any, FuncType, TensorType, TupleType, TypeCall, TypeVar, is_any
from dynvm.compiler.op.registry import get_op


def join_types(a, b, where):
    """The least type both `a` and `b` fit: differing dims become Any (If/Match results)."""
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype != b.dtype or a.rank != b.rank:
            raise TypeInferenceError(f"branches have different types {a} and {b}\n  in: {where()}")
        return TensorType([x if x == y else Any() for x, y in zip(a.shape, b.shape)], a.dtype)
    if isinstance(a, TupleType) and isinstance(b, TupleType) and len(a.fields) == len(b.fields):
        return TupleType([join_types(x, y, where) for x, y in zip(a.fields, b.fields)])
    if isinstance(a, TypeCall) and isinstance(b, TypeCall) and a.name == b.name:
        return TypeCall(a.name, [join_types(x, y, where) for x, y in zip(a.args, b.args)])
    if isinstance(a, TypeVar):
        return b
    if isinstance(b, TypeVar) or a == b:
        return a
    raise TypeInferenceError(f"branches have different types {a} and {b}\n  in: {where()}")


def fits(actual, declared) -> bool:
    """Whether a value of type `actual` may be passed where `declared` is expected."""
    if isinstance(actual, TensorType) and isinstance(declared, TensorType):
        return (actual.dtype == declared.dtype and actual.rank == declared.rank and
                all(is_any(x) or is_any(y) or x == y for x, y in zip(actual.shape, declared.shape)))
    if isinstance(actual, TupleType) and isinstance(declared, TupleType):
        return len(actual.fields) == len(declared.fields) and all(
            fits(x, y) for x, y in zip(actual.fields, declared.fields))
    if isinstance(declared, TypeVar) or isinstance(actual, TypeVar):
        return True
    if isinstance(actual, TypeCall) and isinstance(declared, TypeCall):
        return actual.name == declared.name and len(actual.args) == len(declared.args) and all(
            fits(x, y) for x, y in zip(actual.args, declared.args))
    return actual == declared


def match_type(declared, actual, binding: dict) -> None:
    """Bind the type variables of `declared` to the matching parts of `actual` (one way)."""
    if isinstance(declared, TypeVar):
        if declared not in binding and not isinstance(actual, TypeVar):
            binding[declared] = actual
    elif isinstance(declared, TupleType) and isinstance(actual, TupleType):
        for d, a in zip(declared.fields, actual.fields):
            match_type(d, a, binding)
    elif isinstance(declared, FuncType) and isinstance(actual, FuncType):
        for d, a in zip(declared.arg_types, actual.arg_types):
            match_type(d, a, binding)
        match_type(declared.ret_type, actual.ret_type, binding)
    elif isinstance(declared, TypeCall) and isinstance(actual, TypeCall):
        for d, a in zip(declared.args, actual.args):
            match_type(d, a, binding)


def substitute(t, binding: dict):
    """`t` with its bound type variables replaced."""
    if isinstance(t, TypeVar):
        return binding.get(t, t)
    if isinstance(t, TupleType):
        return TupleType([substitute(f, binding) for f in t.fields])
    if isinstance(t, FuncType):
        return FuncType([substitute(a, binding) for a in t.arg_types], substitute(t.ret_type, binding))
    if isinstance(t, TypeCall):
        return TypeCall(t.name, [substitute(a, binding) for a in t.args])
    return t


def instantiate(func_type: FuncType, arg_types) -> FuncType:
    """A polymorphic function type specialised to the argument types of one call."""
    binding = {}
    for d, a in zip(func_type.arg_types, arg_types):
        match_type(d, a, binding)
    return substitute(func_type, binding) if binding else func_type


class _Inferencer(Walker):
    """A walk (compiler/ir/walk.py) whose result for a node is its type, stored as the node's
    `checked_type`. `env` maps the variables bound at the current point to their types; a
    scope records what it bound in an undo list and restores it on exit (no copying)."""

    def __init__(self, mod, free_vars_annotated=False):
        super().__init__()
        self.mod = mod
        self.free_vars_annotated = free_vars_annotated
        self.global_types: dict[str, FuncType] = {}
        self.in_progress: set[str] = set()
        self.env: dict = {}

    def lookup(self, node):
        if node.checked_type is not None and not isinstance(node, (E.Var, E.Function)):
            return node.checked_type
        return MISSING

    def remember(self, node, result):
        node.checked_type = result

    def bind(self, var, t, undo: list) -> None:
        undo.append((var, self.env.get(var, MISSING)))
        self.env[var] = t

    def unbind(self, undo: list) -> None:
        for var, old in reversed(undo):
            if old is MISSING:
                del self.env[var]
            else:
                self.env[var] = old

    # -- globals ---------------------------------------------------------------------------
    def global_type(self, name: str, where):
        """The type of global @name, inferring its body first if needed (a walk generator)."""
        if name in self.global_types:
            return self.global_types[name]
        if name not in self.mod.functions:
            raise TypeInferenceError(f"call of undefined global @{name}\n  in: {where()}")
        func = self.mod.functions[name]
        if name in self.in_progress:
            if func.ret_type is None:
                raise TypeInferenceError(
                    f"recursive function @{name} needs a return type annotation")
            return FuncType([p.type_annotation for p in func.params], func.ret_type)
        yield self.infer_global(name)
        return self.global_types[name]

    def infer_global(self, name: str):
        """Infer global @name in an empty environment (a walk generator)."""
        func = self.mod.functions[name]
        for p in func.params:
            if p.type_annotation is None:
                raise TypeInferenceError(f"parameter %{p.name} of @{name} needs a type annotation")
        self.in_progress.add(name)
        outer_env, self.env = self.env, {}
        try:
            self.global_types[name] = yield func
        finally:
            self.env = outer_env
            self.in_progress.discard(name)

    # -- expressions -----------------------------------------------------------------------
    def visit_Function(self, func):
        undo = []
        for p in func.params:
            if p.type_annotation is None:
                raise TypeInferenceError(f"parameter %{p.name} needs a type annotation\n"
                                         f"  in: {expr_text(func)}")
            p.checked_type = p.type_annotation
            self.bind(p, p.type_annotation, undo)
        body_type = yield func.body
        self.unbind(undo)
        if func.ret_type is not None:
            if not fits(body_type, func.ret_type):
                raise TypeInferenceError(f"function body has type {body_type} but the declared "
                                         f"return type is {func.ret_type}\n  in: {expr_text(func)}")
            body_type = func.ret_type
        return FuncType([p.type_annotation for p in func.params], body_type)

    def visit_Var(self, node):
        if node in self.env:
            return self.env[node]
        if self.free_vars_annotated and node.type_annotation is not None:
            return node.type_annotation
        raise TypeInferenceError(f"variable %{node.name} is not bound here")

    def visit_Constant(self, node):
        return TensorType(node.data.shape, node.data.dtype.name)

    def visit_Tuple(self, node):
        return TupleType((yield from each(node.fields)))

    def visit_TupleGetItem(self, node):
        tup = yield node.tuple_value
        if not isinstance(tup, TupleType):
            raise TypeInferenceError(f"indexing a non-tuple of type {tup}\n  in: {expr_text(node)}")
        if not 0 <= node.index < len(tup.fields):
            raise TypeInferenceError(f"tuple index {node.index} out of range for {tup}\n"
                                     f"  in: {expr_text(node)}")
        return tup.fields[node.index]

    def visit_Let(self, node):
        undo = []
        chain = []
        while isinstance(node, E.Let):  # iterate: let chains can be very long
            if isinstance(node.value, E.Function) and node.value.ret_type is not None:
                self.bind(node.var, node.value.func_type, undo)   # the function may call itself
            value_type = yield node.value
            declared = node.var.type_annotation
            if declared is not None and not fits(value_type, declared):
                raise TypeInferenceError(f"let %{node.var.name} is declared {declared} but its "
                                         f"value has type {value_type}\n  in: {expr_text(node.value)}")
            node.var.checked_type = declared or value_type
            self.bind(node.var, node.var.checked_type, undo)
            chain.append(node)
            node = node.body
        body_type = yield node
        self.unbind(undo)
        for let in chain:
            let.checked_type = body_type
        return body_type

    def visit_If(self, node):
        cond = yield node.cond
        if not (isinstance(cond, TensorType) and cond.rank == 0):
            raise TypeInferenceError(f"if condition must be a scalar tensor, got {cond}\n"
                                     f"  in: {expr_text(node.cond)}")
        then_type = yield node.true_branch
        else_type = yield node.false_branch
        return join_types(then_type, else_type, lambda: expr_text(node))

    def visit_GlobalVar(self, node):
        return self.global_type(node.name, lambda: f"@{node.name}")

    def visit_Call(self, node):
        where = lambda: expr_text(node)  # noqa: E731
        arg_types = yield from each(node.args)
        callee = node.callee
        if isinstance(callee, E.Op):
            return self.op_call(node, arg_types)
        if isinstance(callee, E.Constructor):
            return self.constructor_call(callee, arg_types, where)
        callee_type = yield callee
        if not isinstance(callee_type, FuncType):
            raise TypeInferenceError(f"calling a value of non-function type {callee_type}\n"
                                     f"  in: {where()}")
        callee_type = instantiate(callee_type, arg_types)
        self.check_args(callee_type.arg_types, arg_types, where)
        return callee_type.ret_type

    def op_call(self, node, arg_types):
        opdef = get_op(node.callee.name)
        try:
            return opdef.type_rel(arg_types, node.attrs)
        except TypeInferenceError as err:
            raise TypeInferenceError(f"{err}\n  in: {expr_text(node)}") from None

    def check_args(self, declared, actual, where):
        if len(declared) != len(actual):
            raise TypeInferenceError(f"expected {len(declared)} argument(s), got {len(actual)}\n"
                                     f"  in: {where()}")
        for i, (d, a) in enumerate(zip(declared, actual)):
            if not fits(a, d):
                raise TypeInferenceError(f"argument {i} has type {a} but {d} is expected\n"
                                         f"  in: {where()}")

    def constructor_call(self, ctor, arg_types, where):
        td = self.mod.type_definitions.get(ctor.belongs_to)
        if td is None:
            raise TypeInferenceError(f"constructor {ctor.name} belongs to undeclared type "
                                     f"{ctor.belongs_to}\n  in: {where()}")
        binding = {}
        for declared, actual in zip(ctor.inputs, arg_types):
            match_type(declared, actual, binding)
        self.check_args([substitute(t, binding) for t in ctor.inputs], arg_types, where)
        return TypeCall(td.name, [binding.get(v, v) for v in td.type_vars])

    def visit_Constructor(self, node):
        td = self.mod.type_definitions.get(node.belongs_to)
        args = td.type_vars if td is not None else []
        return FuncType(node.inputs, TypeCall(node.belongs_to, args))

    def visit_Match(self, node):
        data_type = yield node.data
        result = None
        for clause in node.clauses:
            undo = []
            self.bind_pattern(clause.pattern, data_type, undo, node)
            rhs = yield clause.rhs
            self.unbind(undo)
            result = rhs if result is None else join_types(result, rhs, lambda: expr_text(node))
        if result is None:
            raise TypeInferenceError(f"match without clauses\n  in: {expr_text(node)}")
        return result

    def bind_pattern(self, pattern, t, undo, where):
        if isinstance(pattern, E.PatternVar):
            pattern.var.checked_type = t
            self.bind(pattern.var, t, undo)
        elif isinstance(pattern, E.PatternTuple):
            if not isinstance(t, TupleType) or len(t.fields) != len(pattern.patterns):
                raise TypeInferenceError(f"tuple pattern of {len(pattern.patterns)} fields does not "
                                         f"fit type {t}\n  in: {expr_text(where)}")
            for p, ft in zip(pattern.patterns, t.fields):
                self.bind_pattern(p, ft, undo, where)
        elif isinstance(pattern, E.PatternConstructor):
            ctor = pattern.constructor
            td = self.mod.type_definitions.get(ctor.belongs_to)
            if not isinstance(t, TypeCall) or td is None or t.name != td.name:
                raise TypeInferenceError(f"constructor {ctor.name} cannot match a value of type {t}"
                                         f"\n  in: {expr_text(where)}")
            if len(pattern.patterns) != len(ctor.inputs):
                raise TypeInferenceError(f"{ctor.name} has {len(ctor.inputs)} field(s), the pattern "
                                         f"gives {len(pattern.patterns)}\n  in: {expr_text(where)}")
            binding = dict(zip(td.type_vars, t.args))
            for p, ft in zip(pattern.patterns, ctor.inputs):
                self.bind_pattern(p, substitute(ft, binding), undo, where)


def infer_expr_type(expr, mod=None):
    """The type of a stand-alone expression whose free variables carry type annotations
    (used by builders such as `ir.while_loop`). Sets checked_type on the nodes it visits."""
    from dynvm.compiler.ir.module import IRModule
    return _Inferencer(mod or IRModule(), free_vars_annotated=True).visit(expr)


def infer_types(mod):
    """Annotate every expression of `mod` with its checked_type; returns `mod`."""
    inferencer = _Inferencer(mod)
    for name in mod.functions:
        if name not in inferencer.global_types:
            inferencer.drive(inferencer.infer_global(name))
    return mod
