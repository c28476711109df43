"""No test skips when one of the project's own modules fails to import: a broken import of
mage, harness or reports must fail the suite, never turn tests into skips.

Reads every test file's syntax tree for the three ways a test can hide one:
``pytest.importorskip("mage...")``, an import of the project inside ``try`` with an
``except ImportError`` / ``ModuleNotFoundError``, and ``importlib.util.find_spec("mage...")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FIRST_PARTY = ("mage", "harness", "reports")
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _first_party(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in FIRST_PARTY


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _hidden_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) in ("importorskip", "find_spec"):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and _first_party(str(arg.value)):
                found.append((node.lineno, f"{_called(node)}({arg.value!r})"))
        if isinstance(node, ast.Try):
            caught = set()
            for handler in node.handlers:
                names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                caught |= {getattr(n, "id", None) for n in names}
            if not caught & IMPORT_ERRORS:
                continue
            for inner in (n for stmt in node.body for n in ast.walk(stmt)):
                modules = []
                if isinstance(inner, ast.ImportFrom):
                    modules = [inner.module]
                elif isinstance(inner, ast.Import):
                    modules = [alias.name for alias in inner.names]
                hits = [m for m in modules if _first_party(m)]
                found += [(inner.lineno, f"try: import {m} / except ImportError") for m in hits]
    return sorted(found)


def test_the_scan_finds_each_way_of_hiding_an_import():
    source = (
        "import pytest, importlib.util\n"
        "vision = pytest.importorskip('mage.vision')\n"
        "try:\n    from harness.store import x\nexcept (ImportError, OSError):\n    pass\n"
        "if importlib.util.find_spec('reports.load') is None:\n    pytest.skip('no')\n"
        "ray = pytest.importorskip('ray')\n"
    )
    assert [line for line, _ in _hidden_imports(ast.parse(source))] == [2, 4, 7]


def test_no_test_skips_on_a_broken_first_party_import():
    hidden = [
        f"{path.relative_to(TESTS)}:{line}: {what}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve()
        for line, what in _hidden_imports(ast.parse(path.read_text()))
    ]
    assert not hidden, "tests that would skip on a broken import:\n" + "\n".join(hidden)
