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
