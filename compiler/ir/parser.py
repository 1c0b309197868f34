"""Reads the text format written by `compiler/ir/printer.py` back into an IRModule.

A hand-written tokenizer and a recursive-descent parser whose expression methods are
generators run on an explicit stack (compiler/ir/walk.py), so nesting depth in the text does not
use Python stack. The module is read in three steps so
order in the file does not matter: (1) a scan collects the names of all `type`s and `def`s (the
globals are registered first, so recursion and mutual recursion resolve); (2) type definitions
are parsed, creating the constructors; (3) function bodies are parsed. A graph binding `%N = e;`
names a node for sharing (it is not a Let). Every error is an IRParseError saying where and what
was expected.
"""
from __future__ import annotations

import json
import re
from types import GeneratorType

import numpy as np

from dynvm.vm.dtypes import DTYPES
from dynvm.vm.errors import DynVMError, IRParseError

from dynvm.compiler.ir.expr import (Call, Clause, Constant, Constructor, Function, If, Let, Match, Op,
                              PatternConstructor, PatternTuple, PatternVar, PatternWildcard, Tuple,
                              TupleGetItem, TypeData, Var)
from dynvm.compiler.ir.module import IRModule
from dynvm.compiler.ir.walk import run
from dynvm.compiler.ir.types import Any, FuncType, TensorType, TupleType, TypeCall, TypeVar

SUFFIX_DTYPE = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64"}
_NUM = r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?"
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+|//[^\n]*)
  | (?P<SCALAR>-?(?:%(num)s|nan|inf)(?:f32|f64|i32|i64)(?![A-Za-z0-9_]))
  | (?P<FLOAT>-?(?:\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|(?:nan|inf)(?![A-Za-z0-9_])))
  | (?P<INT>-?\d+)
  | (?P<LOCAL>%%(?:[A-Za-z_][A-Za-z0-9_]*|\d+))
  | (?P<GLOBAL>@(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\\n]|\\.)*"))
  | (?P<STRING>"(?:[^"\\\n]|\\.)*")
  | (?P<IDENT>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<PUNCT>->|=>|[()\[\]{},:;=?.])
""" % {"num": _NUM}, re.VERBOSE)
_DIGITS = re.compile(r"\d+")


class Token:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind, text, line, col):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def describe(self) -> str:
        return "end of input" if self.kind == "EOF" else repr(self.text)


def tokenize(text: str) -> list:
    tokens, pos, line, line_start = [], 0, 1, 0
    after_dot = False
    while pos < len(text):
        col = pos - line_start + 1
        m = _DIGITS.match(text, pos) if after_dot else None   # `%t.0.1`: indices after a dot
        kind = "INT" if m else None
        if m is None:
            m = _TOKEN.match(text, pos)
            if m is None:
                raise IRParseError(f"line {line}, col {col}: unexpected character {text[pos]!r}")
            kind = m.lastgroup
        piece = m.group()
        if kind != "ws":
            tokens.append(Token(kind, piece, line, col))
            after_dot = kind == "PUNCT" and piece == "."
        newlines = piece.count("\n")
        if newlines:
            line += newlines
            line_start = pos + piece.rindex("\n") + 1
        pos = m.end()
    tokens.append(Token("EOF", "", line, pos - line_start + 1))
    return tokens


def parse(text: str) -> IRModule:
    """Parse module text (as printed by `str(mod)`) into an IRModule."""
    return _Parser(text).module()


def _ops():
    """The op registry, with every op family registered (imported lazily: compiler.op imports ir)."""
    import dynvm.compiler.op  # noqa: F401
    from dynvm.compiler.op.registry import OPS
    return OPS


class _Parser:
    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.pos = 0
        self.mod = IRModule()
        self.scopes: list[dict] = []        # "%name" -> Var or shared node
        self.type_scopes: list[set] = []    # declared type variable names
        self.type_names: set[str] = set()
        self.global_names: set[str] = set()
        self.constructors: dict[str, Constructor] = {}

    # ---- token helpers
    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.pos + k, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.pos += 1
        return tok

    def at(self, text: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.text == text and tok.kind in ("PUNCT", "IDENT")

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.pos += 1
            return True
        return False

    def error(self, expected: str, tok: Token | None = None) -> IRParseError:
        tok = tok or self.peek()
        return IRParseError(f"line {tok.line}, col {tok.col}: expected {expected}, got {tok.describe()}")

    def fail(self, message: str, tok: Token) -> IRParseError:
        return IRParseError(f"line {tok.line}, col {tok.col}: {message}")

    def expect(self, text: str, what: str | None = None) -> Token:
        if not self.at(text):
            raise self.error(what or repr(text))
        return self.next()

    def expect_kind(self, kind: str, what: str) -> Token:
        if self.peek().kind != kind:
            raise self.error(what)
        return self.next()

    def comma_list(self, close: str, item):
        """Items separated by commas up to `close` (a trailing comma is allowed). A generator
        (see below); `item()` may return a generator too (an item that holds expressions)."""
        items = []
        while not self.at(close):
            value = item()
            if isinstance(value, GeneratorType):
                value = yield value
            items.append(value)
            if not self.accept(","):
                break
        self.expect(close, f"',' or {close!r}")
        return items

    def items(self, close: str, item):
        """`comma_list` of items that hold no expressions (types, patterns, attrs, ...)."""
        return run(self.comma_list(close, item))

    # ---- module
    def module(self) -> IRModule:
        self.scan_names()
        defs = []
        while self.peek().kind != "EOF":
            if self.at("type"):
                self.type_definition()
            elif self.at("def"):
                defs.append(self.pos)
                self.skip_def()
            else:
                raise self.error("'def' or 'type'")
        for start in defs:
            self.pos = start
            self.definition()
        return self.mod

    def scan_names(self):
        depth = 0
        for i, tok in enumerate(self.tokens[:-1]):
            if tok.kind == "PUNCT" and tok.text in "{}":
                depth += 1 if tok.text == "{" else -1
            elif depth == 0 and tok.kind == "IDENT" and tok.text in ("type", "def"):
                name_tok = self.tokens[i + 1]
                if tok.text == "type" and name_tok.kind == "IDENT":
                    if name_tok.text in self.type_names:
                        raise self.fail(f"type {name_tok.text} is defined twice", name_tok)
                    self.type_names.add(name_tok.text)
                elif tok.text == "def" and name_tok.kind == "GLOBAL":
                    name = self.global_name(name_tok)
                    if name in self.global_names:
                        raise self.fail(f"@{name} is defined twice", name_tok)
                    self.global_names.add(name)
                    self.mod.get_global_var(name)

    def skip_def(self):
        start = self.peek()
        while not self.at("{"):
            if self.peek().kind == "EOF":
                raise self.error("'{' starting the function body")
            self.next()
        depth = 0
        while True:
            tok = self.next()
            if tok.kind == "EOF":
                raise self.fail("unclosed '{' of the function body", start)
            if tok.kind == "PUNCT" and tok.text == "{":
                depth += 1
            elif tok.kind == "PUNCT" and tok.text == "}":
                depth -= 1
                if depth == 0:
                    return

    def global_name(self, tok: Token) -> str:
        body = tok.text[1:]
        return json.loads(body) if body.startswith('"') else body

    def type_definition(self):
        self.expect("type")
        name = self.expect_kind("IDENT", "a type name").text
        tvars = self.type_params()
        self.type_scopes.append(set(tvars))
        self.expect("{", "'{' starting the constructors")
        ctors = self.items("}", self.constructor_decl)
        self.type_scopes.pop()
        self.mod.add_type(TypeData(name, tvars, ctors))

    def constructor_decl(self) -> Constructor:
        tok = self.expect_kind("IDENT", "a constructor name")
        if tok.text in self.constructors:
            raise self.fail(f"constructor {tok.text} is defined twice", tok)
        inputs = self.items(")", self.type) if self.accept("(") else []
        ctor = Constructor(tok.text, inputs, "")
        self.constructors[tok.text] = ctor
        return ctor

    def type_params(self) -> list:
        if not self.accept("["):
            return []
        return self.items("]", lambda: self.expect_kind("IDENT", "a type variable").text)

    def definition(self):
        self.expect("def")
        name = self.global_name(self.expect_kind("GLOBAL", "a global name such as @main"))
        self.mod[name] = run(self.function_rest())

    # The methods that parse expressions are generators run by `walk.run`: where they would
    # call each other they `yield` the call, so deeply nested text uses no Python stack.
    def function_rest(self):
        """`[tparams](params, attrs) -> ret { body }` after `def @name` or `fn`."""
        tparams = self.type_params()
        self.type_scopes.append(set(tparams))
        self.expect("(", "'(' starting the parameters")
        self.scopes.append({})
        params, attrs = [], {}

        def item():
            if self.at_attr():
                key, value = self.attr()
                attrs[key] = value
            else:
                params.append(self.binder())
        self.items(")", item)
        ret = self.type() if self.accept("->") else None
        body = yield self.block()
        self.scopes.pop()
        self.type_scopes.pop()
        return Function(params, body, ret, [TypeVar(t) for t in tparams], attrs)

    def binder(self) -> Var:
        """`%name` or `%name: Type`, declared in the innermost scope."""
        tok = self.expect_kind("LOCAL", "a variable such as %x")
        if tok.text[1:].isdigit():
            raise self.fail(f"{tok.text} is a graph binding name, not a variable name", tok)
        ann = self.type() if self.accept(":") else None
        v = Var(tok.text[1:], ann)
        self.scopes[-1][tok.text] = v
        return v

    # ---- blocks and statements
    def block(self):
        self.expect("{", "'{'")
        self.scopes.append({})
        lets = []
        while True:
            tok = self.peek()
            if self.at("let"):
                self.next()
                value_scope = self.scopes[-1]
                self.scopes.append({})            # the let var is not visible in its value
                var_tok = self.peek()
                var = self.binder()
                self.scopes.pop()
                self.expect("=", "'=' after the let variable")
                value = yield self.expr()
                self.expect(";", "';' after the let value")
                value_scope[var_tok.text] = var
                lets.append((var, value))
            elif tok.kind == "LOCAL" and tok.text[1:].isdigit() and self.at("=", 1):
                self.pos += 2
                value = yield self.expr()
                self.expect(";", "';' after the graph binding")
                self.scopes[-1][tok.text] = value
            else:
                result = yield self.expr()
                break
        self.expect("}", "'}' closing the block (or ';' ending a statement)")
        self.scopes.pop()
        for var, value in reversed(lets):
            result = Let(var, value, result)
        return result

    # ---- expressions
    def expr(self):
        e = yield self.primary()
        while True:
            if self.at("("):
                self.next()
                args, attrs = yield self.call_args()
                e = Call(e, args, attrs)
            elif self.at("."):
                self.next()
                e = TupleGetItem(e, int(self.expect_kind("INT", "a tuple index").text))
            else:
                return e

    def call_args(self):
        """After '(': positional args then `key=value` attrs, up to ')'."""
        args, attrs = [], {}

        def item():
            if self.at_attr():
                key, value = self.attr()
                if key in attrs:
                    raise self.fail(f"attribute {key} given twice", self.tokens[self.pos - 3])
                attrs[key] = value
            elif attrs:
                raise self.error("an attribute `name=value` (positional arguments come first)")
            else:
                args.append((yield self.expr()))
        yield self.comma_list(")", item)
        return args, attrs

    def primary(self):
        tok = self.peek()
        if tok.kind == "PUNCT":
            if tok.text == "(":
                return (yield self.paren_expr())
            if tok.text == "{":
                return (yield self.block())
        elif tok.kind == "LOCAL":
            self.next()
            for scope in reversed(self.scopes):
                if tok.text in scope:
                    return scope[tok.text]
            what = "graph binding" if tok.text[1:].isdigit() else "variable"
            raise self.fail(f"undefined {what} {tok.text}", tok)
        elif tok.kind == "GLOBAL":
            self.next()
            name = self.global_name(tok)
            if name not in self.global_names:
                raise self.fail(f"undefined global @{name}", tok)
            return self.mod.get_global_var(name)
        elif tok.kind == "SCALAR":
            self.next()
            return self.scalar(tok)
        elif tok.kind in ("INT", "FLOAT"):
            raise self.error("an expression (scalar constants need a dtype suffix, e.g. 1f32, 2i64)")
        elif tok.kind == "IDENT":
            return (yield self.word())
        raise self.error("an expression")

    def paren_expr(self):
        self.expect("(")
        if self.accept(")"):
            return Tuple([])
        first = yield self.expr()
        if self.accept(")"):
            return first
        self.expect(",", "',' or ')'")
        return Tuple([first] + (yield self.comma_list(")", self.expr)))

    def word(self):
        tok = self.peek()
        word = tok.text
        keyword = {"True": self.bool_const, "False": self.bool_const, "if": self.if_expr,
                   "match": self.match_expr, "fn": self.fn_expr, "const": self.const_expr,
                   "ctor": self.ctor_ref}.get(word)
        if keyword is not None:
            value = keyword()
            return (yield value) if isinstance(value, GeneratorType) else value
        if word == "let":
            raise self.fail("`let` starts a statement; inside an expression write { let ...; ... }", tok)
        self.next()
        if word in self.constructors:
            ctor = self.constructors[word]
            if self.at("(") or ctor.inputs:
                return ctor                  # called by the postfix loop, or a function value
            return Call(ctor, [])
        return (yield self.op_call(tok))

    def op_call(self, tok: Token):
        ops = _ops()
        if tok.text not in ops:
            raise self.fail(f"unknown op {tok.text!r} (not a registered op or constructor)", tok)
        if not self.at("("):
            return Op(tok.text)
        self.next()
        args, attrs = yield self.call_args()
        opdef = ops[tok.text]
        if len(args) != len(opdef.args):
            raise self.fail(f"op {tok.text} takes {len(opdef.args)} argument(s) "
                            f"({', '.join(opdef.args)}), got {len(args)}", tok)
        try:
            attrs = opdef.normalize_attrs(attrs)
        except DynVMError as exc:
            raise self.fail(str(exc), tok) from None
        return Call(Op(tok.text), args, attrs)

    def bool_const(self):
        return Constant(np.array(self.next().text == "True"))

    def ctor_ref(self):
        self.next()
        self.expect("(")
        tok = self.expect_kind("IDENT", "a constructor name")
        if tok.text not in self.constructors:
            raise self.fail(f"unknown constructor {tok.text}", tok)
        self.expect(")")
        return self.constructors[tok.text]

    def if_expr(self):
        self.expect("if")
        self.expect("(", "'(' after if")
        cond = yield self.expr()
        self.expect(")", "')' after the condition")
        then_b = yield self.block()
        self.expect("else", "'else'")
        return If(cond, then_b, (yield self.block()))

    def fn_expr(self):
        self.expect("fn")
        return (yield self.function_rest())

    def match_expr(self):
        self.expect("match")
        complete = not self.accept("?")
        self.expect("(", "'(' after match")
        data = yield self.expr()
        self.expect(")", "')' after the matched value")
        self.expect("{", "'{' starting the clauses")
        return Match(data, (yield self.comma_list("}", self.clause)), complete)

    def clause(self) -> Clause:
        self.scopes.append({})
        pattern = self.pattern()
        self.expect("=>", "'=>' after the pattern")
        rhs = yield self.expr()
        self.scopes.pop()
        return Clause(pattern, rhs)

    def pattern(self):
        tok = self.peek()
        if tok.kind == "LOCAL":
            return PatternVar(self.binder())
        if self.accept("("):
            return PatternTuple(self.items(")", self.pattern))
        if tok.kind == "IDENT":
            self.next()
            if tok.text == "_":
                return PatternWildcard()
            if tok.text not in self.constructors:
                raise self.fail(f"unknown constructor {tok.text} in pattern", tok)
            subs = self.items(")", self.pattern) if self.accept("(") else []
            return PatternConstructor(self.constructors[tok.text], subs)
        raise self.error("a pattern (_, %var, Constructor(...) or a tuple)")

    # ---- constants and attrs
    def scalar(self, tok: Token) -> Constant:
        text, dtype = tok.text[:-3], SUFFIX_DTYPE[tok.text[-3:]]
        return Constant(np.array(self.number(text, dtype, tok), dtype=DTYPES[dtype][0]))

    def number(self, text: str, dtype: str, tok: Token):
        if dtype == "bool":
            raise self.fail(f"expected True or False for bool, got {text!r}", tok)
        if dtype.startswith("float"):
            return float(text)
        if not re.fullmatch(r"-?\d+", text):
            raise self.fail(f"expected an integer for {dtype}, got {text!r}", tok)
        info = np.iinfo(DTYPES[dtype][0])
        value = int(text)
        if not info.min <= value <= info.max:
            raise self.fail(f"{text} is out of range for {dtype}", tok)
        return value

    def const_expr(self):
        start = self.next()
        self.expect("(", "'(' after const")
        dtype_tok = self.expect_kind("IDENT", "a dtype")
        if dtype_tok.text not in DTYPES:
            raise self.fail(f"unknown dtype {dtype_tok.text!r}", dtype_tok)
        dtype = dtype_tok.text
        self.expect(",")
        self.expect("(", "'(' starting the shape")
        shape = [int(t.text) for t in self.items(")", lambda: self.expect_kind("INT", "a dim"))]
        self.expect(",")
        self.expect("[", "'[' starting the values")
        values = self.items("]", lambda: self.element(dtype))
        self.expect(")")
        if any(d < 0 for d in shape) or len(values) != int(np.prod(shape, dtype=np.int64)):
            raise self.fail(f"const has {len(values)} values for shape {tuple(shape)}", start)
        return Constant(np.array(values, dtype=DTYPES[dtype][0]).reshape(shape))

    def element(self, dtype: str):
        tok = self.next()
        if dtype == "bool":
            if tok.text not in ("True", "False"):
                raise self.error("True or False", tok)
            return tok.text == "True"
        if tok.kind not in ("INT", "FLOAT"):
            raise self.error(f"a {dtype} value", tok)
        return self.number(tok.text, dtype, tok)

    def at_attr(self) -> bool:
        """`name=` or `"name"=` starts an attribute (names that are not identifiers are quoted)."""
        return self.peek().kind in ("IDENT", "STRING") and self.at("=", 1)

    def attr(self):
        tok = self.next()
        key = json.loads(tok.text) if tok.kind == "STRING" else tok.text
        self.expect("=")
        return key, self.attr_value()

    def attr_value(self):
        tok = self.next()
        if tok.kind == "INT":
            return int(tok.text)
        if tok.kind == "FLOAT":
            return float(tok.text)
        if tok.kind == "STRING":
            return json.loads(tok.text)
        if tok.kind == "IDENT" and tok.text in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[tok.text]
        if tok.kind == "PUNCT" and tok.text in "[(":
            return self.items("]" if tok.text == "[" else ")", self.attr_value)
        raise self.error("an attribute value (number, string, True, False, None or [list])", tok)

    # ---- types
    def type(self):
        tok = self.peek()
        if self.accept("("):
            if self.accept(")"):
                return TupleType(())
            first = self.type()
            if self.accept(")"):
                return first
            self.expect(",", "',' or ')'")
            return TupleType([first] + self.items(")", self.type))
        if tok.kind != "IDENT":
            raise self.error("a type")
        self.next()
        if tok.text == "Tensor":
            return self.tensor_type()
        if tok.text == "fn":
            self.expect("(", "'(' starting the argument types")
            args = self.items(")", self.type)
            self.expect("->", "'->' and the return type")
            return FuncType(args, self.type())
        if tok.text == "_":
            return None
        if self.accept("["):
            return TypeCall(tok.text, self.items("]", self.type))
        if any(tok.text in s for s in self.type_scopes) or tok.text not in self.type_names:
            return TypeVar(tok.text)
        return TypeCall(tok.text, ())

    def tensor_type(self) -> TensorType:
        self.expect("[", "'[' after Tensor")
        self.expect("(", "'(' starting the shape")

        def dim():
            if self.accept("?"):
                return Any()
            return int(self.expect_kind("INT", "a dim (integer or ?)").text)
        shape = self.items(")", dim)
        self.expect(",", "',' and the dtype")
        dtype_tok = self.expect_kind("IDENT", "a dtype")
        if dtype_tok.text not in DTYPES:
            raise self.fail(f"unknown dtype {dtype_tok.text!r}", dtype_tok)
        self.expect("]")
        if any(d != Any() and d < 0 for d in shape):
            raise self.fail("negative dim", dtype_tok)
        return TensorType(shape, dtype_tok.text)
