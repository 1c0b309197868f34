"""`while_loop`: a loop written as a recursive local function, the way Relay builds it.

    let %while_loop = fn (%v0, %v1, ...) -> (T0, T1, ...) {
      if (cond(%v0, ...)) { %while_loop(body(%v0, ...)...) } else { (%v0, %v1, ...) }
    };
    %while_loop(init0, init1, ...)

The compiler lifts the function to a global and turns the self call into a jump, so a loop
costs no call frames however long it runs.
"""
from __future__ import annotations

from dynvm.vm.errors import DynVMError

from dynvm.compiler.ir.expr import Call, Function, If, Let, Tuple, Var
from dynvm.compiler.ir.types import FuncType, TupleType


def while_loop(cond, body, init_vars, name: str = "while_loop"):
    """Loop while `cond(*vars)` holds, updating `vars = body(*vars)`; returns the final vars
    as a tuple expression.

    `init_vars` lists the initial values; an item may be an expression (the loop variable
    gets the expression's type, so its static dims must stay the same in every iteration) or a
    pair `(ir.var(name, type), init)` to declare the loop variable's type yourself (e.g. with
    `Any` dims for a value that grows).

    Speed: every loop runs in native code. The fastest form is a body of straight-line kernel
    calls over static shapes (no `if`, no inner loop, no data-dependent shapes): the whole loop
    becomes one native loop kernel, whether the trip count is bound before the loop or computed
    in `cond` (`i < take(shape_of(x), 0)`). Any other loop runs as native bytecode, a few tens
    of nanoseconds per instruction more; `build` says which loops do, and why, in a
    PerformanceWarning.
    """
    from dynvm.compiler.typing import infer_expr_type
    loop_vars, inits = [], []
    for i, item in enumerate(init_vars):
        if isinstance(item, tuple):
            var, init = item
            if var.type_annotation is None:
                raise DynVMError(f"while_loop variable %{var.name} needs a type annotation")
        else:
            init = item
            var = Var(f"v{i}", infer_expr_type(init))
        loop_vars.append(var)
        inits.append(init)
    ret_type = TupleType([v.type_annotation for v in loop_vars])
    loop = Var(name, FuncType([v.type_annotation for v in loop_vars], ret_type))
    updated = list(body(*loop_vars))
    if len(updated) != len(loop_vars):
        raise DynVMError(f"while_loop body returned {len(updated)} values for "
                         f"{len(loop_vars)} loop variables")
    step = If(cond(*loop_vars), Call(loop, updated), Tuple(loop_vars))
    return Let(loop, Function(loop_vars, step, ret_type), Call(loop, inits))
