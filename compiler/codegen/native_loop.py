"""Native loops: a loop function whose iterations are straight-line kernel calls becomes one
kernel of the "loop" family (kernels/loop.py) run by one `CallLoop` instruction.

A function qualifies when its body has the shape `while_loop` gives it:

    fn loop(p...) { let ...; if (cond) { let ...; loop(a...) } else { p_i or (p_i, ...) } }

(or with the branches swapped), where every value computed per iteration is a call of a compiled
kernel (an op or a fused primitive) or a static reshape, with a static type; parameters passed
on unchanged (loop invariants) may have `Any` dims, the others (the loop state) must be static
tensors, except a state updated in place: one whose only use in an iteration is a `set_row` of
it giving its next value (a recurrent layer's output, allocated once for the whole sequence).
Such a state is one of the kernel's outputs: the kernel copies its initial value in once and
every `set_row` writes its row there. Everything else (calls of functions, closures, ADTs, data-dependent shapes, nested
control flow) keeps the bytecode loop. The function stays a function: callers `Invoke` it as
before; only its body becomes a CallLoop. `build(mod, native_loops=False)` keeps every loop in
bytecode.
"""
from __future__ import annotations

import math

from dynvm.kernels.loop import root_slot
from dynvm.vm.dtypes import itemsize
from dynvm.vm.errors import NotNative

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.types import TensorType, is_any
from dynvm.compiler.ir.walk import MISSING, Walker, each
from dynvm.compiler.op.registry import get_op
from dynvm.compiler.codegen.primitive import kernel_of
from dynvm.compiler.codegen.types import tensor_leaves

MAX_WORKSPACE = 256 << 20   # bytes; a bigger loop stays in bytecode (its tensors use the pool)
ALIGN = 64


def emit_native_loop(emitter) -> bool:
    """Emit `emitter`'s function as one CallLoop if it qualifies; return whether it did. A loop
    that does not qualify is recorded with the reason in the compiler's `slower_paths`."""
    try:
        _match_loop(emitter.name, emitter.func)
    except NotNative:
        return False            # not a loop at all
    try:
        plan = LoopPlan(emitter.mc, emitter.name, emitter.func)
    except NotNative as e:
        emitter.mc.slower_paths[emitter.name] = \
            f"its loop runs as bytecode, not as one native loop kernel ({e})"
        return False
    plan.emit(emitter)
    return True


def _peel_lets(node):
    lets = []
    while isinstance(node, E.Let):
        lets.append((node.var, node.value))
        node = node.body
    return lets, node


def _exit_params(node, params):
    """The parameters an exit branch returns (a parameter or a tuple of them), or None."""
    fields = node.fields if isinstance(node, E.Tuple) else [node]
    if all(isinstance(f, E.Var) and f in params for f in fields):
        return [params.index(f) for f in fields]
    return None


def _match_loop(name, func):
    """(header lets, the If, body lets, the self call, exit param indices, exit is a tuple,
    exit_when) of a function with the loop shape, else NotNative."""
    params = list(func.params)
    header, node = _peel_lets(func.body)
    if not isinstance(node, E.If):
        raise NotNative("the body is not an if")
    for cont, done, exit_when in ((node.true_branch, node.false_branch, False),
                                  (node.false_branch, node.true_branch, True)):
        body, call = _peel_lets(cont)
        exits = _exit_params(done, params)
        if (exits is not None and isinstance(call, E.Call) and isinstance(call.callee, E.GlobalVar)
                and call.callee.name == name):
            return header, node, body, call, exits, isinstance(done, E.Tuple), exit_when
    raise NotNative("no branch is a self tail call next to an exit returning parameters")


class LoopPlan(Walker):
    """The loop kernel spec of one function (raises NotNative if it does not qualify)."""

    def __init__(self, mc, name, func):
        super().__init__()
        self.mc, self.func = mc, func
        header, branch, body, call, self.exits, self.tuple_result, self.exit_when = \
            _match_loop(name, func)
        params = list(func.params)
        self.carried = [i for i, (p, a) in enumerate(zip(params, call.args)) if a is not p]
        self.in_place = _in_place_states(params, self.carried, header, branch.cond, body, call)
        self.result_params = list(dict.fromkeys([*(i for i in self.exits if i in self.carried),
                                                 *self.in_place]))
        self.slots, self.header, self.body = [], [], []
        # inputs after the parameters, computed before the loop: ("const", constant index) or
        # ("shape", parameter index) for the shape of a loop invariant
        self.extra_inputs = []
        self.workspace = 0
        self.env = {}
        self.bind_params()
        self.calls = self.header            # the calls `value` emits go here
        self.bind_lets(header)
        self.cond = self.visit(branch.cond)
        if self.slots[self.cond][:2] != ["bool", []]:
            raise NotNative("the condition is not a bool scalar")
        self.calls = self.body
        self.bind_lets(body)
        self.next = {i: self.visit(call.args[i]) for i in self.carried}
        for i, nxt in self.next.items():     # e.g. an invariant of shape (?,) passed as a (3,) state
            if isinstance(nxt, list) or self.slots[nxt][:2] != self.slots[self.env[func.params[i]]][:2]:
                raise NotNative(f"the next value of %{func.params[i].name} has another shape")
        states = set(self.state.values())
        self.stages = {i: self.scratch(self.slots[self.next[i]][:2])
                       if root_slot(self.slots, self.next[i]) in states and i not in self.in_place
                       else -1 for i in self.carried}
        if self.workspace > MAX_WORKSPACE:
            raise NotNative(f"workspace of {self.workspace} bytes")

    def bind_params(self):
        """Loop state: a scratch slot each (static tensors only), or an output slot (updated in
        place); invariants: input slots."""
        for i, p in enumerate(self.func.params):
            t = p.checked_type
            if not isinstance(t, TensorType):
                raise NotNative(f"parameter %{p.name} is not a tensor")
            if i in self.in_place:
                shape = [None if is_any(d) else d for d in t.shape]
                self.env[p] = self.new_slot(t.dtype, shape, "output", self.result_params.index(i))
            elif i in self.carried:
                self.env[p] = self.scratch(self._static(t, f"loop state %{p.name}"))
            else:
                shape = [None if is_any(d) else d for d in t.shape]
                self.env[p] = self.new_slot(t.dtype, shape, "input", i)
        self.state = {p: self.env[p] for i, p in enumerate(self.func.params) if i in self.carried}

    def bind_lets(self, lets):
        for var, value in lets:
            self.env[var] = self.visit(value)

    # -- slots -------------------------------------------------------------------------------
    def new_slot(self, dtype, shape, kind, ref) -> int:
        self.slots.append([dtype, list(shape), kind, ref])
        return len(self.slots) - 1

    def scratch(self, dtype_shape) -> int:
        dtype, shape = dtype_shape
        slot = self.new_slot(dtype, shape, "scratch", self.workspace)
        nbytes = math.prod(shape) * itemsize(dtype)
        self.workspace += -(-nbytes // ALIGN) * ALIGN
        return slot

    @staticmethod
    def _static(t, what):
        if not isinstance(t, TensorType) or not t.is_static:
            raise NotNative(f"{what} has type {t}, not a static tensor")
        return [t.dtype, list(t.shape)]

    # -- values: a walk (compiler/ir/walk.py) whose result for a node is the slot (or list of
    # slots, for a tuple) holding its value in an iteration ----------------------------------
    def lookup(self, node):
        return self.env.get(node, MISSING)

    def remember(self, node, slot):
        if not isinstance(node, E.Let):
            self.env[node] = slot

    def default(self, node):
        raise NotNative(f"{type(node).__name__} in the loop body")

    def visit_Let(self, node):
        lets, body = _peel_lets(node)
        for var, value in lets:
            self.env[var] = yield value
        return (yield body)

    def visit_Constant(self, node):
        return self.constant(node)

    def visit_Tuple(self, node):
        return (yield from each(node.fields))

    def visit_TupleGetItem(self, node):
        fields = yield node.tuple_value
        if not isinstance(fields, list):
            raise NotNative("TupleGetItem of a non-tuple")
        return fields[node.index]

    def visit_Call(self, node):
        if not (isinstance(node.callee, E.Op) or isinstance(node.callee, E.Function)
                and node.callee.attrs.get("Primitive")):
            raise NotNative("Call in the loop body")
        return self.call(node)

    def constant(self, node):
        data = node.data
        return self.extra_input(("const", self.mc.add_constant(data)), data.dtype.name, data.shape)

    def extra_input(self, source, dtype, shape) -> int:
        self.extra_inputs.append(source)
        return self.new_slot(dtype, shape, "input", len(self.func.params) + len(self.extra_inputs) - 1)

    def invariant_shape(self, node):
        """shape_of of a loop invariant (e.g. the trip count written in the condition as
        `i < take(shape_of(x), 0)`): the same every iteration, so computed once before the loop
        (a ShapeOf) and passed in as an input (a walk generator)."""
        slot = yield node.args[0]
        if isinstance(slot, list) or self.slots[slot][2] != "input" or \
                self.slots[slot][3] >= len(self.func.params):
            raise NotNative("shape_of of a value computed in the loop")
        rank = len(self.slots[slot][1])
        return self.extra_input(("shape", self.slots[slot][3]), "int64", [rank])

    def call(self, node):
        """The slots of a kernel call's results (a walk generator)."""
        if isinstance(node.callee, E.Op):
            opdef = get_op(node.callee.name)
            if opdef.name == "shape_of":
                return (yield from self.invariant_shape(node))
            if opdef.lowering == "reshape":
                source = yield node.args[0]
                dtype, shape = self._static(node.checked_type, f"reshape of {node.callee.name}")
                if isinstance(source, list) or self.slots[source][2] == "input":
                    raise NotNative("reshape of a loop input")
                return self.new_slot(dtype, shape, "view", source)
            if opdef.lowering != "kernel" or opdef.shape_mode == "upper_bound":
                raise NotNative(f"op {opdef.name} is lowered to {opdef.lowering}")
        inputs = [s for value in (yield from each(node.args)) for s in _flatten(value)]
        if inputs and self.slots[inputs[0]][2] == "output":   # the set_row of an in-place state
            out_slots = [inputs[0]]
        else:
            out_slots = [self.scratch(self._static(t, "a loop value"))
                         for t in tensor_leaves(node.checked_type)]
        kernel, _ = kernel_of(self.mc, node)
        entry = self.mc.kernel_builder.entry(kernel)
        if entry["kind"] != "compiled":
            raise NotNative(f"kernel {entry['name']} is not compiled")
        self.calls.append([entry["symbol"], inputs + out_slots])
        return out_slots if len(out_slots) > 1 or not isinstance(node.checked_type, TensorType) \
            else out_slots[0]

    # -- the spec and the bytecode -----------------------------------------------------------
    def spec(self, steps) -> dict:
        state = self.state
        params = list(self.func.params)
        return {"slots": self.slots, "header": self.header, "body": self.body,
                "cond": self.cond, "exit_when": self.exit_when,
                "carried": [[i, state[params[i]], self.next[i], self.stages[i]] for i in self.carried],
                "results": [state[params[i]] for i in self.result_params],
                "workspace": self.workspace, "steps": steps}

    def emit(self, em):
        """The function's whole body: load the constants, allocate the results and the
        workspace, CallLoop, return the result."""
        params = list(self.func.params)
        spec = self.spec(bytecode_steps(self.mc.bytecode_loop(em.name)))
        extra_regs = [em.emit_to("LoadConst", ref) if kind == "const" else em.emit_to("ShapeOf", em.env[params[ref]])
                      for kind, ref in self.extra_inputs]
        out_types = {i: params[i].checked_type for i in self.result_params}
        out_regs = {i: em.alloc_dynamic(em.emit_to("ShapeOf", em.env[params[i]]), t.dtype)
                    if i in self.in_place else em.alloc_static(t) for i, t in out_types.items()}
        workspace = em.alloc_static(TensorType((self.workspace // 8,), "int64"))
        inputs = [em.env[p] for p in params] + extra_regs
        in_sig = [(p.checked_type.dtype, p.checked_type.rank) for p in params]
        in_sig += [(self.mc.constants[ref].dtype.name, self.mc.constants[ref].ndim) if kind == "const"
                   else ("int64", 1) for kind, ref in self.extra_inputs]
        out_sig = [(out_types[i].dtype, out_types[i].rank) for i in out_types]
        kernel = self.mc.kernel_builder.add_compiled(
            f"loop_{em.name}", "loop", spec, in_sig + [("int64", 0), ("int32", 0)],
            out_sig + [("int64", 1), ("int64", 1)])
        results = [out_regs[i] for i in out_types]
        em.emit("CallLoop", kernel, inputs, results + [workspace])
        fields = [out_regs.get(i, em.env[params[i]]) for i in self.exits]
        em.emit("Ret", em.make_tuple(fields) if self.tuple_result else fields[0])


def _in_place_states(params, carried, header, cond, body, call) -> list:
    """The loop states (parameter indices) updated in place: not static, and used once in an
    iteration, by the `set_row` giving the next value (directly, or through a let variable used
    only there). Nothing else reads the state during an iteration, so writing its row into the
    state's memory is the update `set_row` describes."""
    uses = _var_uses([value for _, value in header + body] + [cond, *call.args])
    lets = dict(body)
    found = []
    for i in carried:
        p, nxt = params[i], call.args[i]
        if isinstance(p.checked_type, TensorType) and p.checked_type.is_static:
            continue
        if isinstance(nxt, E.Var) and uses.get(nxt) == 1:
            nxt = lets.get(nxt, nxt)
        if (isinstance(nxt, E.Call) and isinstance(nxt.callee, E.Op) and nxt.callee.name == "set_row"
                and nxt.args[0] is p and uses.get(p) == 1):
            found.append(i)
    return found


def _var_uses(roots) -> dict:
    """Var -> how many times the expressions `roots` reference it (a let's binder excluded)."""
    uses, stack = {}, list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, E.Var):
            uses[node] = uses.get(node, 0) + 1
        elif isinstance(node, E.Let):
            stack += [node.value, node.body]
        elif isinstance(node, E.Call):
            stack += [node.callee, *node.args]
        elif isinstance(node, E.Tuple):
            stack += node.fields
        elif isinstance(node, E.TupleGetItem):
            stack.append(node.tuple_value)
        elif isinstance(node, E.If):
            stack += [node.cond, node.true_branch, node.false_branch]
    return uses


def _flatten(value):
    return [s for v in value for s in _flatten(v)] if isinstance(value, list) else [value]


def bytecode_steps(code) -> list:
    """[fixed, per_iteration] of a loop function's bytecode: a call that runs n iterations
    executes fixed + n * per_iteration instructions (the VM charges a CallLoop exactly that,
    so max_steps counts the same with and without native loops). Such code is straight-line
    apart from one If (stay or leave) and the self tail call's backward Goto."""
    def path(pc, leave, ifs_left=1):
        """(instructions run from pc to the Ret if `leave`, else through the backward Goto;
        that Goto's target)."""
        count = 0
        while count <= len(code):
            ins = code[pc]
            count += 1
            if ins.name == "Ret":
                return count, None
            if ins.name == "Goto" and ins.args[0] < 0:
                return count, pc + ins.args[0]
            if ins.name == "If":
                if not ifs_left:
                    raise NotNative("the bytecode loop branches more than once")
                then_leaves = path(pc + ins.args[2], True, 0)[1] is None
                pc += ins.args[2] if then_leaves == leave else ins.args[3]
            else:
                pc += ins.args[0] if ins.name == "Goto" else 1
        raise NotNative("the bytecode loop has no exit or back edge")
    fixed, none = path(0, True)
    _, head = path(0, False)
    per_iteration, again = path(head, False) if head is not None else (0, None)
    if none is not None or again != head:
        raise NotNative("the bytecode loop does not have the shape of a while loop")
    return [fixed, per_iteration]
