"""Emits the bytecode of one function from its typed IR.

Every primitive call becomes explicit: output storage and tensors are allocated first (static
shapes from the type, `Any` shapes from a `CallShapeFunc`), then `CallKernel` fills them.
Shape-only ops become VM instructions (`ShapeOf`, `ReshapeTensor`). Each value gets its own
register; sub-expressions shared in the DAG are computed once per control-flow scope.
The emitter is a walk (compiler/ir/walk.py): methods that compile a sub-expression are
generators that `yield` it and receive its register.
"""
from __future__ import annotations

import numpy as np

from dynvm.vm.bytecode import Instruction
from dynvm.vm.dtypes import itemsize
from dynvm.vm.errors import CompileError

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.types import TensorType, TupleType
from dynvm.compiler.ir.walk import MISSING, Walker, each
from dynvm.compiler.op.registry import get_op
from dynvm.compiler.codegen.patterns import check_exhaustive
from dynvm.compiler.codegen.native_loop import emit_native_loop
from dynvm.compiler.codegen.primitive import kernel_of
from dynvm.compiler.codegen.types import tensor_leaves
from dynvm import shape_funcs
from dynvm.shape_funcs.registry import UPPER_BOUND_HEADER

ALIGNMENT = 64
TUPLE_CTOR = 0


class FunctionEmitter(Walker):
    def __init__(self, module_compiler, name: str, func: E.Function):
        super().__init__()
        self.mc = module_compiler
        self.name = name
        self.func = func
        self.code: list[Instruction] = []
        self.num_regs = 0
        self.env: dict[E.Expr, int] = {}   # var/shared node -> register
        self.env_log: list = []            # (key, previous register) of every env write
        self.tuple_fields: dict[int, list] = {}   # register of a tuple built here -> field registers
        self.storage_of: dict[int, int] = {}      # static tensor allocated here -> its storage

    # -- helpers ---------------------------------------------------------------------------
    def new_reg(self) -> int:
        self.num_regs += 1
        return self.num_regs - 1

    def emit(self, opcode: str, *operands) -> None:
        self.code.append(Instruction(opcode, *operands))

    def emit_to(self, opcode: str, *operands) -> int:
        """Emit an instruction whose last operand is a fresh destination register."""
        dst = self.new_reg()
        self.emit(opcode, *operands, dst)
        return dst

    # -- the environment -------------------------------------------------------------------
    def bind(self, key, reg: int) -> None:
        self.env_log.append((key, self.env.get(key, MISSING)))
        self.env[key] = reg

    def scoped(self, work):
        """Run `work` (a generator of this walk); the env entries it makes are undone after it,
        so values computed inside a branch are not visible after it."""
        mark = len(self.env_log)
        result = yield work
        while len(self.env_log) > mark:
            key, old = self.env_log.pop()
            if old is MISSING:
                del self.env[key]
            else:
                self.env[key] = old
        return result

    # -- the walk ----------------------------------------------------------------------------
    def lookup(self, node):
        return self.env.get(node, MISSING)

    def remember(self, node, reg):
        if not isinstance(node, (E.Let, E.If)):
            self.bind(node, reg)

    def default(self, node):
        raise CompileError(f"{type(node).__name__} cannot be compiled yet")

    # -- entry -----------------------------------------------------------------------------
    def run(self):
        for p in self.func.params:
            self.bind(p, self.new_reg())
        if not (self.mc.native_loops and emit_native_loop(self)):
            self.drive(self.tail(self.func.body))
        return self.code, self.num_regs

    def tail(self, node: E.Expr):
        """Compile `node` in tail position: every path ends in Ret, or in a Goto back to the
        function start for a self tail call (a loop that reuses the frame)."""
        while isinstance(node, E.Let):
            self.bind(node.var, (yield node.value))
            node = node.body
        if isinstance(node, E.If) and node not in self.env:
            branch_at = yield self.branch_on(node.cond)
            yield self.scoped(self.tail(node.true_branch))
            self.patch_else(branch_at)
            yield self.scoped(self.tail(node.false_branch))
        elif isinstance(node, E.Match) and node not in self.env:
            yield self.match(node, self.tail)
        elif self.is_self_call(node):
            yield self.self_tail_call(node)
        else:
            self.emit("Ret", (yield node))

    def is_self_call(self, node) -> bool:
        return (isinstance(node, E.Call) and isinstance(node.callee, E.GlobalVar)
                and node.callee.name == self.name)

    def self_tail_call(self, node: E.Call) -> None:
        """Parameters := arguments as a parallel move, then jump to pc 0. An argument that is
        another parameter goes through a temporary (its parameter may be overwritten first);
        an unchanged parameter costs nothing."""
        params = [self.env[p] for p in self.func.params]
        args = yield from each(node.args)
        moves = [(p, a) for p, a in zip(params, args) if p != a]
        sources = [self.via_temp(a) if a in params else a for _, a in moves]
        for (param, _), source in zip(moves, sources):
            self.emit("Move", param, source)
        self.emit("Goto", -len(self.code))

    def via_temp(self, reg: int) -> int:
        temp = self.new_reg()
        self.emit("Move", temp, reg)
        return temp

    # -- nodes -----------------------------------------------------------------------------
    def visit_Var(self, node):
        raise CompileError(f"variable %{node.name} is not bound in @{self.name}")

    def visit_Constant(self, node):
        return self.emit_to("LoadConst", self.mc.add_constant(node.data))

    def visit_Tuple(self, node):
        return self.make_tuple((yield from each(node.fields)))

    def make_tuple(self, fields: list) -> int:
        reg = self.emit_to("AllocADT", TUPLE_CTOR, fields)
        self.tuple_fields[reg] = fields
        return reg

    def visit_TupleGetItem(self, node):
        tuple_reg = yield node.tuple_value
        if tuple_reg in self.tuple_fields:          # a tuple built here: use the field directly
            return self.tuple_fields[tuple_reg][node.index]
        return self.emit_to("GetField", tuple_reg, node.index)

    def visit_Let(self, node):
        while isinstance(node, E.Let):
            self.bind(node.var, (yield node.value))
            node = node.body
        return (yield node)

    def visit_If(self, node):
        result = self.new_reg()
        branch_at = yield self.branch_on(node.cond)
        self.emit("Move", result, (yield self.scoped(self.value_of(node.true_branch))))
        goto_at = len(self.code)
        self.emit("Goto", 0)                        # patched below
        self.patch_else(branch_at)
        self.emit("Move", result, (yield self.scoped(self.value_of(node.false_branch))))
        self.code[goto_at] = Instruction("Goto", len(self.code) - goto_at)
        return result

    def visit_Match(self, node):
        result = self.new_reg()
        gotos = []

        def clause_value(rhs):
            self.emit("Move", result, (yield rhs))
            gotos.append(len(self.code))
            self.emit("Goto", 0)                    # to the end, patched below
        yield self.match(node, clause_value)
        for pc in gotos:
            self.code[pc] = Instruction("Goto", len(self.code) - pc)
        return result

    def match(self, node: E.Match, compile_rhs) -> None:
        """Clauses in order: each tests its pattern with GetTag/GetField/If and falls through
        to the next clause on the first failed test; no match at all is a Fatal. When the
        match is exhaustive, a value that failed every other clause fits the last one: its
        pattern only binds (no tests), and nothing can fall through to a Fatal. `compile_rhs`
        makes the generator that compiles a clause body."""
        exhaustive = node.complete and check_exhaustive(node, self.name, self.mc.mod.type_definitions)
        data = yield node.data
        for k, clause in enumerate(node.clauses):
            certain = exhaustive and k == len(node.clauses) - 1
            failures: list[int] | None = None if certain else []
            yield self.scoped(self.clause(clause, data, failures, compile_rhs))
            for pc in failures or ():
                self.patch_else(pc)
        if not exhaustive:
            self.emit("Fatal", f"match in @{self.name}: no clause matches the value")

    def clause(self, clause, data, failures, compile_rhs):
        self.bind_pattern(clause.pattern, data, failures)
        yield compile_rhs(clause.rhs)

    def bind_pattern(self, pattern, reg: int, failures) -> None:
        """Bind the pattern's variables to fields of `reg`; `failures` collects the If pcs of
        its tests (None: the value is known to fit, test nothing)."""
        if isinstance(pattern, E.PatternVar):
            self.bind(pattern.var, reg)
        elif isinstance(pattern, E.PatternConstructor):
            if failures is not None:
                tag = self.emit_to("GetTag", reg)
                expected = self.emit_to("LoadConsti", pattern.constructor.tag)
                self.emit("If", tag, expected, 1, 0)
                failures.append(len(self.code) - 1)
            self.bind_fields(pattern.patterns, reg, failures)
        elif isinstance(pattern, E.PatternTuple):
            self.bind_fields(pattern.patterns, reg, failures)

    def bind_fields(self, patterns, reg, failures):
        for i, sub in enumerate(patterns):
            if not isinstance(sub, E.PatternWildcard):
                self.bind_pattern(sub, self.emit_to("GetField", reg, i), failures)

    def branch_on(self, cond: E.Expr) -> int:
        """Emit `If cond == 1` falling through to the then-code; returns the If's pc (its else
        offset is patched by `patch_else`)."""
        test = yield cond
        one = self.emit_to("LoadConsti", 1)
        self.emit("If", test, one, 1, 0)
        return len(self.code) - 1

    def patch_else(self, branch_at: int) -> None:
        """Make the If at `branch_at` jump here when its test fails."""
        test, target, then_off, _ = self.code[branch_at].args
        self.code[branch_at] = Instruction("If", test, target, then_off, len(self.code) - branch_at)

    def value_of(self, node):
        """The register of `node` (a generator: `scoped` takes one)."""
        return (yield node)

    def visit_Call(self, node):
        callee = node.callee
        if isinstance(callee, E.Op):
            return (yield self.op_call(node))
        if isinstance(callee, E.Function) and callee.attrs.get("Primitive"):
            return (yield self.call_kernel(node))
        args = yield from each(node.args)
        if isinstance(callee, E.GlobalVar):
            func = self.mc.function_index(callee.name)
            if node.attrs.get("closure"):
                return self.emit_to("AllocClosure", func, args)
            return self.emit_to("Invoke", func, args)
        if isinstance(callee, E.Constructor):
            return self.emit_to("AllocADT", self.mc.constructor_index(callee), args)
        return self.emit_to("InvokeClosure", (yield callee), args)

    def visit_GlobalVar(self, node):
        """A global function used as a value: a closure capturing nothing."""
        return self.emit_to("AllocClosure", self.mc.function_index(node.name), [])

    # -- primitive ops ---------------------------------------------------------------------
    def op_call(self, node: E.Call) -> int:
        opdef = get_op(node.callee.name)
        if opdef.lowering == "shape_of":
            return self.emit_to("ShapeOf", (yield node.args[0]))
        if opdef.lowering == "reshape":
            return (yield self.reshape(node))
        if opdef.shape_mode == "upper_bound" and not node.checked_type.is_static:
            return (yield self.upper_bound_call(node, opdef))
        if opdef.name == "split":
            return (yield self.split(node))
        return (yield self.call_kernel(node))

    def flat_inputs(self, node: E.Call):
        """Registers of the tensor leaves of all arguments (tuple arguments are flattened)."""
        regs = yield from each(node.args)
        return [r for arg, reg in zip(node.args, regs) for r in self.leaf_regs(reg, arg.checked_type)]

    def leaf_regs(self, reg: int, t) -> list[int]:
        """The tensor leaves of the value in `reg` of type `t`: fields of a tuple built in this
        function are used directly (its AllocADT is then dead code), others are read with
        GetField."""
        if isinstance(t, TensorType):
            return [reg]
        fields = self.tuple_fields.get(reg)
        out = []
        for i, field in enumerate(t.fields):
            field_reg = fields[i] if fields is not None else self.emit_to("GetField", reg, i)
            out.extend(self.leaf_regs(field_reg, field))
        return out

    def call_kernel(self, node: E.Call) -> int:
        """Allocate the outputs of an op or fused primitive call, then CallKernel fills them."""
        return self.kernel_on(node, (yield self.flat_inputs(node)))

    def kernel_on(self, node: E.Call, inputs: list) -> int:
        """call_kernel on the registers of its inputs."""
        kernel, (shape_func, attrs, shape_inputs) = kernel_of(self.mc, node)
        out_types = tensor_leaves(node.checked_type)
        outputs = self.alloc_outputs(shape_func, attrs, inputs[:shape_inputs], out_types)
        self.emit("CallKernel", kernel, inputs, outputs)
        if isinstance(node.checked_type, TupleType):
            return self.make_tuple(outputs)
        return outputs[0]

    def upper_bound_call(self, node: E.Call, opdef) -> int:
        """One block for the bound behind a header; the kernel fills the bound and writes its
        result's true shape into the header, and the result is a view of the filled part (no
        copy; AllocTensorReg checks that the shape fits the block). The bound is static when
        the op's `static_bound` hook gives one, else `<op>.upper_bound` computes it per call."""
        inputs = yield self.flat_inputs(node)
        in_types = [leaf for a in node.args for leaf in tensor_leaves(a.checked_type)]
        out_type = node.checked_type
        bound_fn = shape_funcs.lookup(f"{opdef.name}.upper_bound").fn
        static = getattr(bound_fn, "static_bound", lambda attrs: None)(node.attrs)
        if static is not None:
            nbytes = UPPER_BOUND_HEADER + int(np.prod(static, dtype=np.int64)) * itemsize(out_type.dtype)
            storage = self.emit_to("AllocStorage", nbytes, ALIGNMENT, out_type.dtype)
        else:
            bound, block = self.new_reg(), self.new_reg()
            sf = self.mc.add_shape_func(f"{opdef.name}.upper_bound", node.attrs)
            self.emit("CallShapeFunc", sf, inputs, [bound, block])
            storage = self.emit_to("AllocStorageReg", block, ALIGNMENT, out_type.dtype)
        shape = self.emit_to("AllocTensor", storage, 0, [out_type.rank], "int64")
        if static is not None:
            full = self.emit_to("AllocTensor", storage, UPPER_BOUND_HEADER, list(static), out_type.dtype)
        else:
            full = self.emit_to("AllocTensorReg", storage, UPPER_BOUND_HEADER, bound, out_type.dtype)
        kernel = self.mc.add_kernel(opdef, node.attrs, in_types,
                                    [out_type, TensorType((out_type.rank,), "int64")])
        self.emit("CallKernel", kernel, inputs, [full, shape])
        return self.emit_to("AllocTensorReg", storage, UPPER_BOUND_HEADER, shape, out_type.dtype)

    def alloc_outputs(self, shape_func, attrs, inputs, out_types) -> list[int]:
        """Output tensors: static shapes from the types, else from the named shape function."""
        if all(t.is_static for t in out_types):
            return [self.alloc_static(t) for t in out_types]
        shapes = [self.new_reg() for _ in out_types]
        sf = self.mc.add_shape_func(shape_func, attrs)
        self.emit("CallShapeFunc", sf, inputs, shapes)
        return [self.alloc_dynamic(shape, t.dtype) for shape, t in zip(shapes, out_types)]

    def alloc_static(self, t: TensorType) -> int:
        nbytes = int(np.prod(t.shape, dtype=np.int64)) * itemsize(t.dtype)
        storage = self.emit_to("AllocStorage", nbytes, ALIGNMENT, t.dtype)
        tensor = self.emit_to("AllocTensor", storage, 0, list(t.shape), t.dtype)
        self.storage_of[tensor] = storage
        return tensor

    def split(self, node: E.Call) -> int:
        """A split whose parts are runs of the input's memory (every dim before the axis is 1:
        a (1, N) tensor along axis 1, any tensor along axis 0) of a static tensor allocated in
        this function: each part is an AllocTensor view of the input's storage at its offset,
        no kernel and no copy. Else the split kernel. (The memory planner leaves a storage with
        several views out of its arena: the parts keep the input's block alive.)"""
        data = yield node.args[0]
        in_type, parts = node.args[0].checked_type, tensor_leaves(node.checked_type)
        storage = self.storage_of.get(data)
        axis = node.attrs["axis"] % max(1, len(in_type.shape)) if in_type.shape else 0
        if storage is None or not all(t.is_static for t in parts) or \
                int(np.prod(in_type.shape[:axis], dtype=np.int64)) != 1:
            return self.kernel_on(node, [data])
        row = int(np.prod(in_type.shape[axis + 1:], dtype=np.int64)) * itemsize(in_type.dtype)
        dim, spec = in_type.shape[axis], node.attrs["indices_or_sections"]
        bounds = [k * dim // spec for k in range(spec + 1)] if isinstance(spec, int) else [0, *spec, dim]
        # where each part starts: split points are Python slice bounds (negative, clamped)
        starts = [range(dim)[a:b].start for a, b in zip(bounds, bounds[1:])]
        return self.make_tuple([self.emit_to("AllocTensor", storage, start * row, list(t.shape), t.dtype)
                                for start, t in zip(starts, parts)])

    def alloc_dynamic(self, shape_reg: int, dtype: str) -> int:
        storage = self.emit_to("AllocStorageReg", shape_reg, ALIGNMENT, dtype)
        return self.emit_to("AllocTensorReg", storage, 0, shape_reg, dtype)

    def reshape(self, node: E.Call) -> int:
        """Zero-copy reshape: the new shape is a constant when static, else a shape function."""
        data = yield node.args[0]
        out_type = node.checked_type
        if out_type.is_static:
            shape = self.emit_to("LoadConst", self.mc.add_constant(
                np.array(out_type.shape, dtype=np.int64)))
        else:
            shape = self.new_reg()
            sf = self.mc.add_shape_func(node.callee.name, node.attrs)
            self.emit("CallShapeFunc", sf, [data] + (yield from each(node.args[1:])), [shape])
        return self.emit_to("ReshapeTensor", data, shape)
