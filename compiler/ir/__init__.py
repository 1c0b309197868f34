"""The dynvm IR: types, expressions, modules, the text format."""
from compiler.ir.types import (Any, FuncType, TensorType, TupleType, Type, TypeCall, TypeVar,
                               is_any, scalar_type)
from compiler.ir.expr import (Call, Clause, Constant, Constructor, Expr, Function, GlobalVar, If,
                              Let, Match, Op, Pattern, PatternConstructor, PatternTuple, PatternVar,
                              PatternWildcard, Tuple, TupleGetItem, TypeData, Var, const, var)
from compiler.ir.module import IRModule
from compiler.ir.printer import expr_text, module_text
from compiler.ir.parser import parse
from compiler.ir.equality import structural_equal
from compiler.ir.loops import while_loop
