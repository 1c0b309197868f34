"""docs/design.md cannot silently fall behind the code: every opcode of the table is in its
opcode table (with its number), every error class is named in its errors section, and the
README speaks only of things a reader of the repository can see."""
import inspect
import re
from pathlib import Path

from dynvm.vm import bytecode, errors

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "docs" / "design.md").read_text()
README = (ROOT / "README.md").read_text()


def section(text: str, title: str) -> str:
    """The body of the `## title` section (up to the next `## `)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/design.md has no section '## {title}'"
    return match.group(1)


def test_every_opcode_is_in_the_design_opcode_table_with_its_number():
    rows = re.findall(r"^\| (\d+) \| (\w+) \|", section(DESIGN, "Bytecode"), re.M)
    documented = {name: int(code) for code, name in rows}
    table = {spec.name: spec.code for spec in bytecode.OPCODES}
    assert documented == table


def test_every_error_class_is_named_in_the_errors_section():
    text = section(DESIGN, "Errors")
    classes = [name for name, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, BaseException) and cls.__module__ == errors.__name__]
    assert "DynVMError" in classes and "CompileError" in classes
    missing = [name for name in classes if f"`{name}`" not in text]
    assert not missing, f"error classes missing from the errors section: {missing}"


def test_readme_links_the_design_and_names_no_outside_files_or_issue_numbers():
    assert "(docs/design.md)" in README
    assert "../" not in README
    assert not re.search(r"\bissues?\s*#?\d+", README, re.I)


def test_the_api_reference_is_current_and_documents_every_entry():
    """docs/api.md is what `python -m dynvm.apidoc` writes from the docstrings, and no public
    class, method, IR constructor, op or error lacks one."""
    from dynvm import apidoc
    undocumented = [heading for _, items in apidoc.entries() for heading, doc in items
                    if not (doc or "").strip()]
    assert undocumented == []
    assert (ROOT / "docs" / "api.md").read_text() == apidoc.markdown(), \
        "docs/api.md is stale: run python -m dynvm.apidoc > docs/api.md"
