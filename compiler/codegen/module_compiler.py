"""Compiles a typed IRModule into a `vm.Executable`: functions, constants, kernels, shape funcs."""
from __future__ import annotations

import json

import numpy as np

from dynvm.kernels.builder import KernelBuilder
from dynvm.vm.errors import CompileError
from dynvm.vm.executable import TUPLE_CONSTRUCTOR, Executable, VMFunction

from dynvm.compiler.codegen.dce import eliminate_dead_code
from dynvm.compiler.codegen.emitter import FunctionEmitter
from dynvm.compiler.codegen.kill import insert_kills
from dynvm.compiler.codegen.memory_plan import plan_memory
from dynvm.compiler.codegen.regalloc import allocate_registers
from dynvm.compiler.codegen.types import type_desc


class ModuleCompiler:
    def __init__(self, mod, memory_plan: bool = True, native_loops: bool = True):
        self.mod = mod
        self.memory_plan = memory_plan
        self.native_loops = native_loops
        self.func_names = list(mod.functions)
        self.func_ids = {name: i for i, name in enumerate(self.func_names)}
        self.constants: list[np.ndarray] = []
        self.constant_ids: dict[int, int] = {}
        self.kernel_builder = KernelBuilder()
        self.shape_funcs: list[dict] = []
        self.shape_func_ids: dict[str, int] = {}
        self.constructors = [dict(TUPLE_CONSTRUCTOR)]
        self.constructor_ids: dict[str, int] = {}
        self.slower_paths: dict[str, str] = {}      # function -> why part of it runs slower
        for td in mod.type_definitions.values():   # all of them: Python may pass any value in
            for ctor in td.constructors:
                self.constructor_index(ctor)

    def function_index(self, name: str) -> int:
        try:
            return self.func_ids[name]
        except KeyError:
            raise CompileError(f"call of undefined global @{name}") from None

    def add_constant(self, data: np.ndarray) -> int:
        key = id(data)
        if key not in self.constant_ids:
            self.constant_ids[key] = len(self.constants)
            self.constants.append(data)
        return self.constant_ids[key]

    def constructor_index(self, ctor) -> int:
        if ctor.name not in self.constructor_ids:
            self.constructor_ids[ctor.name] = len(self.constructors)
            self.constructors.append({"name": ctor.name, "tag": ctor.tag,
                                      "arity": len(ctor.inputs), "adt": ctor.belongs_to,
                                      "fields": [type_desc(t) for t in ctor.inputs]})
        return self.constructor_ids[ctor.name]

    def add_shape_func(self, name: str, attrs: dict) -> int:
        key = json.dumps([name, attrs], sort_keys=True, default=repr)
        if key not in self.shape_func_ids:
            self.shape_func_ids[key] = len(self.shape_funcs)
            self.shape_funcs.append({"name": name, "attrs": attrs})
        return self.shape_func_ids[key]

    def add_kernel(self, opdef, attrs, in_types, out_types, epilogue=None) -> int:
        """The kernel of one op call (with an optional fused elementwise epilogue)."""
        inputs = [(t.dtype, t.rank) for t in in_types]
        outputs = [(t.dtype, t.rank) for t in out_types]
        if opdef.expr is not None:
            expr = opdef.expr([["in", i] for i in range(len(inputs))], attrs)
            return self.add_elementwise(opdef.name, expr, in_types, out_types[0])
        spec = {"op": opdef.name, **attrs}
        if epilogue is not None:
            spec["epilogue"] = epilogue
        return self.kernel_builder.add_compiled(opdef.name, opdef.family or opdef.name, spec,
                                                inputs, outputs)

    def add_elementwise(self, name, expr, in_types, out_type, perms=()) -> int:
        """An elementwise kernel; `perms` [[input, permutation]] are inputs read transposed."""
        spec = {"expr": expr, "perms": [list(p) for p in perms]} if perms else {"expr": expr}
        return self.kernel_builder.add_compiled(
            name, "elementwise", spec, [(t.dtype, t.rank) for t in in_types],
            [(out_type.dtype, out_type.rank)])

    def lower(self, name: str):
        """(final instructions, register count) of function `name`."""
        func = self.mod.functions[name]
        code, num_regs = FunctionEmitter(self, name, func).run()
        code = eliminate_dead_code(code)
        if self.memory_plan:
            code, _ = plan_memory(code, len(func.params), num_regs)
        code = insert_kills(code, len(func.params))
        return allocate_registers(code, len(func.params))

    def bytecode_loop(self, name: str) -> list:
        """The instructions function `name` gets with native loops off (a native loop charges
        max_steps what they would execute)."""
        native, self.native_loops = self.native_loops, False
        try:
            return self.lower(name)[0]
        finally:
            self.native_loops = native

    def compile_function(self, name: str) -> VMFunction:
        func = self.mod.functions[name]
        code, num_regs = self.lower(name)
        return VMFunction(name=name, params=[p.name for p in func.params],
                          param_types=[type_desc(p.checked_type) for p in func.params],
                          ret_type=type_desc(func.checked_type.ret_type),
                          register_count=num_regs, instructions=code)

    def run(self) -> Executable:
        functions = [self.compile_function(name) for name in self.func_names]
        return Executable(functions=functions, constants=self.constants,
                          constructors=self.constructors, kernels=self.kernel_builder.finish(),
                          shape_funcs=self.shape_funcs)


def compile_module(mod, memory_plan: bool = True, native_loops: bool = True,
                   slower_paths: dict | None = None) -> Executable:
    """Lower a type-checked module to an Executable (with static memory planning and native
    loops unless off). `slower_paths`, if given, receives function -> why a part of it (a loop
    that stays bytecode) runs slower than it could."""
    compiler = ModuleCompiler(mod, memory_plan, native_loops)
    exe = compiler.run()
    if slower_paths is not None:
        slower_paths.update(compiler.slower_paths)
    return exe
