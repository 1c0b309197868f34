"""The one traversal of the compiler: recursive-looking code run on an explicit stack.

Every walk over the IR (type inference, the passes, code generation, the printer, the
parser) is written as generator methods: where recursive code would call
`self.visit(child)`, a walk writes `result = yield child` — or `result = yield helper(...)`
to run another generator of the same walk (a sub-routine that itself visits children), or
`result = yield (other_walker, node)` to visit a node with another walker (a nested walk,
e.g. the body of a lifted function). `Walker.visit` drives these generators with an explicit
stack of suspended frames, so the depth of the IR (a 100 000-deep nested call chain, a deep
nest of ifs, deeply nested functions) never becomes depth of the Python stack, and the order
of evaluation is exactly that of the recursive code it replaces (depth-first, children in the
order they are yielded), so scoped state kept on the walker (an environment saved before a
branch and restored after it) behaves as it would in recursive code.

A `visit_<NodeType>` method may also be a plain function (a leaf: it yields nothing).
Results are memoised per node through `lookup`/`remember` (by default by identity, so a node
shared in the DAG is visited once); a walker whose results depend on context overrides them.
`run(generator)` drives a generator that only yields generators (the parser uses it).
"""
from __future__ import annotations

from types import GeneratorType

MISSING = object()       # `lookup`'s answer for a node not visited yet
_SUB = object()          # frame marker: a helper generator, its result is not memoised


class Walker:
    """Base class of IR walks; see the module docstring for the protocol."""

    def __init__(self):
        self.memo: dict[int, object] = {}
        self.keep: list = []    # the visited nodes, so the ids in `memo` stay unique

    # -- memoisation (override for context-dependent results)
    def lookup(self, node):
        return self.memo.get(id(node), MISSING)

    def remember(self, node, result) -> None:
        self.memo[id(node)] = result
        self.keep.append(node)

    def dispatch(self, node):
        """Start visiting `node`: a generator to drive, or the finished result."""
        handlers = type(self).__dict__.get("_handlers")
        if handlers is None:
            handlers = type(self)._handlers = {}
        kind = type(node)
        if kind not in handlers:
            handlers[kind] = getattr(type(self), "visit_" + kind.__name__, None)
        method = handlers[kind]
        return self.default(node) if method is None else method(self, node)

    def default(self, node):
        """The result for a node type the walker has no method for."""
        return node

    # -- the driver
    def visit(self, node):
        """The result of visiting `node` (with everything it yields), without recursion."""
        return _drive(self, node)

    def drive(self, generator):
        """Drive a generator of this walk (a helper that yields nodes) to its return value."""
        return _drive(self, generator)


def each(children):
    """`results = yield from each(children)` inside a walk: the children's results, in order."""
    results = []
    for child in children:
        results.append((yield child))
    return results


def run(generator):
    """Drive `generator` (which yields only generators) to its return value, without recursion."""
    return _drive(None, generator)


def _drive(walker, item):
    stack: list = []           # (generator, node or _SUB, owning walker) per suspended frame
    while True:
        # start `item`: a generator gets a frame; a node is looked up, or dispatched (a
        # generator result gets a frame, a plain one is finished)
        value = error = None
        if type(item) is GeneratorType:
            stack.append((item, _SUB, walker))
        else:
            if type(item) is tuple:
                walker, item = item
            try:
                value = walker.lookup(item)
                if value is MISSING:
                    value = walker.dispatch(item)
                    if type(value) is GeneratorType:
                        stack.append((value, item, walker))
                        value = None
                    else:
                        walker.remember(item, value)
            except Exception as exc:  # noqa: BLE001 -- raised again in the frame below
                error = exc
        # resume suspended frames until one yields the next item, or the walk is done; an
        # exception leaves its frame and is raised in the frame below, as in recursive code
        while True:
            if not stack:
                if error is not None:
                    raise error
                return value
            generator, node, walker = stack[-1]
            try:
                item = generator.send(value) if error is None else generator.throw(error)
                break
            except StopIteration as stop:
                stack.pop()
                value, error = stop.value, None
                if node is not _SUB:
                    walker.remember(node, value)
            except Exception as exc:  # noqa: BLE001 -- raised again in the frame below
                stack.pop()
                error = exc
