"""IRModule: the global functions and ADT declarations of a program."""
from __future__ import annotations

from dynvm.vm.errors import DynVMError

from dynvm.compiler.ir.expr import Constructor, Function, GlobalVar, TypeData


class IRModule:
    """A program: global functions by name (`mod["f"] = fn`, `mod.get_global_var("f")` to call
    one, also before it is defined: recursion) and ADT definitions; `IRModule.from_expr(fn)` makes
    a module whose entry function is `main`."""

    def __init__(self, functions: dict | None = None, type_definitions=()):
        self.functions: dict[str, Function] = {}
        self.type_definitions: dict[str, TypeData] = {}
        self._global_vars: dict[str, GlobalVar] = {}
        for td in type_definitions:
            self.add_type(td)
        for name, fn in (functions or {}).items():
            self[name] = fn

    @classmethod
    def from_expr(cls, func: Function, type_definitions=()) -> "IRModule":
        """A module whose entry function `main` is `func`."""
        if not isinstance(func, Function):
            raise DynVMError("IRModule.from_expr takes an ir.Function")
        return cls({"main": func}, type_definitions)

    def with_functions(self, functions: dict) -> "IRModule":
        """A module with the same ADTs and GlobalVars but these functions (passes use it)."""
        out = IRModule(type_definitions=self.type_definitions.values())
        out._global_vars = dict(self._global_vars)
        out.functions = dict(functions)
        return out

    def get_global_var(self, name: str) -> GlobalVar:
        """The module's GlobalVar for `name` (created on first use, so recursion can refer to it)."""
        if name not in self._global_vars:
            self._global_vars[name] = GlobalVar(name)
        return self._global_vars[name]

    def __setitem__(self, name, func: Function):
        if isinstance(name, GlobalVar):
            name = name.name
        if not isinstance(func, Function):
            raise DynVMError(f"global {name!r} must be an ir.Function")
        self.get_global_var(name)
        self.functions[name] = func

    def __getitem__(self, name) -> Function:
        if isinstance(name, GlobalVar):
            name = name.name
        return self.functions[name]

    def __contains__(self, name):
        return name in self.functions

    def add_type(self, type_data: TypeData) -> TypeData:
        self.type_definitions[type_data.name] = type_data
        return type_data

    def constructor(self, name: str) -> Constructor:
        for td in self.type_definitions.values():
            for ctor in td.constructors:
                if ctor.name == name:
                    return ctor
        raise KeyError(name)

    def __str__(self):
        from dynvm.compiler.ir.printer import module_text
        return module_text(self)
