"""The dynvm IR: types, expressions, modules, the text format."""
from dynvm.compiler.ir.types import (Any, FuncType, TensorType, TupleType, Type, TypeCall, TypeVar,
                               is_any, scalar_type)
from dynvm.compiler.ir.expr import (Call, Clause, Constant, Constructor, Expr, Function, GlobalVar, If,
                              Let, Match, Op, Pattern, PatternConstructor, PatternTuple, PatternVar,
                              PatternWildcard, Tuple, TupleGetItem, TypeData, Var, const, var)
from dynvm.compiler.ir.module import IRModule
from dynvm.compiler.ir.printer import expr_text, module_text
from dynvm.compiler.ir.parser import parse
from dynvm.compiler.ir.equality import structural_equal
from dynvm.compiler.ir.loops import while_loop
