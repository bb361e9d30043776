"""STYLE rule 1: protocol/ and core/ are pure: no I/O library, no higher coldbatch layer, no open()."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import coldbatch

PACKAGE = Path(coldbatch.__file__).parent
FORBIDDEN = {"httpx", "sqlite3", "psycopg", "boto3", "fastapi", "starlette", "uvicorn", "aiofiles", "openai"}
ALLOWED = {
    "protocol": ("coldbatch.errors", "coldbatch.protocol"),
    "core": ("coldbatch.errors", "coldbatch.protocol", "coldbatch.core"),
}
FILES = sorted((layer, p) for layer in ALLOWED for p in (PACKAGE / layer).rglob("*.py"))


def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        return ["." * node.level + (node.module or "")]  # relative imports hide which layer they reach
    if node.module == "coldbatch":
        return [f"coldbatch.{a.name}" for a in node.names]
    return [node.module or ""]


def is_open_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == "open")
        or (isinstance(node.func, ast.Attribute) and node.func.attr == "open")
    )


def violations(tree: ast.AST, allowed: tuple[str, ...]) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if is_open_call(node):
            found.append(f"line {node.lineno}: calls open(")  # type: ignore[attr-defined]
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for name in imported(node):
            top = name.split(".")[0]
            above = top == "coldbatch" and not any(name == a or name.startswith(a + ".") for a in allowed)
            if top in FORBIDDEN or above or name.startswith("."):
                found.append(f"line {node.lineno}: imports {name}")
    return found


def test_there_are_files_to_check() -> None:
    assert {p.name for _, p in FILES} >= {"limits.py", "validate.py", "shard.py", "template.py"}


@pytest.mark.parametrize(("layer", "path"), FILES, ids=[f"{layer}/{p.name}" for layer, p in FILES])
def test_pure_layers_import_nothing_above_them(layer: str, path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert violations(tree, ALLOWED[layer]) == []


@pytest.mark.parametrize(
    ("source", "layer"),
    [
        ("import httpx", "core"),
        ("from sqlite3 import connect", "core"),
        ("import openai.types", "protocol"),
        ("from coldbatch.builder import build", "core"),
        ("from coldbatch import cli", "core"),
        ("import coldbatch.core.validate", "protocol"),
        ("from . import x", "core"),
        ("data = open('f').read()", "core"),
        ("Path('f').open()", "core"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(source: str, layer: str) -> None:
    assert violations(ast.parse(source), ALLOWED[layer])


@pytest.mark.parametrize(
    ("source", "layer"),
    [
        ("import numpy as np", "core"),
        ("from coldbatch.errors import LineError", "protocol"),
        ("from coldbatch.protocol import limits as L", "core"),
        ("from coldbatch.core import template", "core"),
    ],
)
def test_the_checker_allows_what_the_layer_may_use(source: str, layer: str) -> None:
    assert violations(ast.parse(source), ALLOWED[layer]) == []


def test_the_runner_does_not_know_the_server() -> None:
    """The client half reaches a Batch API only by URL; the CLI composes it with the embedded server (issue 11)."""
    found = []
    for path in sorted((PACKAGE / "runner").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                above = [n for n in imported(node) if n.startswith(("coldbatch.server", "coldbatch.engines"))]
                found += [f"{path.name}: {n}" for n in above]
    assert found == []


def absolute_imports(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The modules an import names, relative ones resolved against `package` (the importing module's),
    with each `from X import name` also as `X.name` (it may be a submodule: `from coldbatch import cli`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def cli_imports(tree: ast.AST, package: str = "coldbatch") -> list[str]:
    """Each import of the CLI package (`coldbatch.cli`, `coldbatch.cli.*`, `from coldbatch import cli`), lazy
    ones inside functions included: a library module that needs the CLI's logic needs it moved below."""
    return [
        f"line {node.lineno}: imports {name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in absolute_imports(node, package)
        if name == "coldbatch.cli" or name.startswith("coldbatch.cli.")
    ]


def test_only_the_cli_imports_the_cli() -> None:
    """The CLI imports the library, never the reverse (issue 11): the job API, the runner and the server are
    used from Python without click, and a rule the CLI and `coldbatch.run_job` share lives below both."""
    found = [
        f"{path.relative_to(PACKAGE).as_posix()}: {hit}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in ("cli", "__main__.py")
        for hit in cli_imports(
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path)),
            ".".join(("coldbatch", *path.relative_to(PACKAGE).parts[:-1])),
        )
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from coldbatch.cli import exitcodes", True),
        ("def f():\n    from coldbatch.cli import preflight", True),
        ("import coldbatch.cli.providers as PV", True),
        ("from coldbatch import cli", True),
        ("from . import cli", True),
        ("from .cli.jobs import run", True),
        ("from coldbatch import client_helpers", False),
        ("from .core import status", False),
        ("from coldbatch.core.exit_status import exit_code", False),
    ],
)
def test_the_cli_rule_catches_imports_of_the_cli_only(source: str, caught: bool) -> None:
    assert bool(cli_imports(ast.parse(source))) is caught
