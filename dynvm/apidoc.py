"""docs/api.md, written from the public API's own docstrings:

    python -m dynvm.apidoc > docs/api.md

The test suite checks that the file is current and that every entry has a docstring, so the
reference cannot drift from the code or leave a public name undocumented."""
from __future__ import annotations

import inspect

CLASSES = ("Executable", "VirtualMachine", "StaticRuntime")
IR_NAMES = ("var", "const", "TensorType", "TupleType", "Any", "Function", "Call", "Let", "If",
            "Tuple", "TupleGetItem", "Var", "IRModule", "while_loop", "parse", "structural_equal")
ERRORS = ("DynVMError", "TypeInferenceError", "IRParseError", "ShapeError", "ExecutableFormatError",
          "KernelError", "InvokeArgumentError", "StaticRuntimeError", "VMError", "VMRecursionError",
          "VMStepLimitError", "VMMemoryError", "PerformanceWarning")
RAY_NAMES = ("ship", "load", "Predictor", "deployment", "Runner", "RowError")


def entries() -> list:
    """[(section title, [(heading, docstring or None)])] of the public API, in reading order."""
    import dynvm
    from dynvm import ir, op
    sections = [("Compile and run", [_function("dynvm.build", dynvm.build)])]
    for name in CLASSES:
        cls = getattr(dynvm, name)
        sections.append((f"`dynvm.{name}`", [_class(cls)] + _members(cls)))
    sections.append(("IR (`dynvm.ir`)", [_object(f"ir.{n}", getattr(ir, n)) for n in IR_NAMES]))
    sections.append(("Operators (`dynvm.op`)", [_op(op, n) for n in dir(op) if n in op.OPS]))
    sections.append(("Errors and warnings", [(f"`dynvm.{n}`", getattr(dynvm, n).__doc__) for n in ERRORS]))
    sections.append(("Scale out on Ray (`dynvm.ray`)", _ray_entries()))
    return sections


def _ray_entries() -> list:
    """dynvm.ray's functions and classes (the module imports without Ray installed)."""
    from dynvm import ray
    out = []
    for name in RAY_NAMES:
        value = getattr(ray, name)
        out.append(_object(f"dynvm.ray.{name}", value))
        if inspect.isclass(value):
            out += _members(value)
    return out


def _function(name, fn):
    return f"`{name}{inspect.signature(fn)}`".replace("(cls, ", "("), fn.__doc__


def _class(cls):
    return f"`{cls.__name__}{inspect.signature(cls.__init__)}`".replace("(self, ", "(").replace("(self)", "()"), \
        cls.__doc__


def _members(cls) -> list:
    out = []
    for name, value in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            out.append((f"`{cls.__name__}.{name}` (property)", value.__doc__))
        elif isinstance(value, (classmethod, staticmethod)):
            out.append(_function(f"{cls.__name__}.{name}", value.__func__))
        elif inspect.isfunction(value):
            text, doc = _function(f"{cls.__name__}.{name}", value)
            out.append((text.replace("(self, ", "(").replace("(self)", "()"), doc))
    return out


def _object(name, value):
    if inspect.isclass(value):
        try:
            signature = str(inspect.signature(value))
        except ValueError:
            signature = ""
        return f"`{name}{signature}`", value.__doc__
    return _function(name, value)


def _op(op, name):
    opdef = op.get_op(name)
    attrs = ", ".join(k if v is op.REQUIRED else f"{k}={v!r}" for k, v in opdef.attrs.items())
    args = ", ".join(list(opdef.args) + ([attrs] if attrs else []))
    return f"`op.{name}({args})`", opdef.doc


def markdown() -> str:
    lines = ["# dynvm API reference", "",
             "Written from the docstrings by `python -m dynvm.apidoc > docs/api.md`; "
             "the design is in docs/design.md.", ""]
    for title, items in entries():
        lines += [f"## {title}", ""]
        for heading, doc in items:
            lines += [f"### {heading}", "", inspect.cleandoc(doc or "(undocumented)"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
