"""Prompt templates: literal text with `{column}` placeholders (`{{` and `}}` for literal braces)."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from coldbatch.errors import UsageError


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: alternating literal pieces and column names."""

    source: str
    pieces: tuple[str | tuple[str], ...]  # str = literal, (name,) = column

    @property
    def columns(self) -> list[str]:
        return [p[0] for p in self.pieces if isinstance(p, tuple)]

    def render(self, row: dict[str, object]) -> str:
        """Reference implementation used by tests and the slow path (None renders as '')."""
        out = []
        for p in self.pieces:
            if isinstance(p, tuple):
                v = row.get(p[0])
                out.append("" if v is None else str(v))
            else:
                out.append(p)
        return "".join(out)


def parse(source: str) -> Template:
    """Parse a template. Raises UsageError on a malformed one (unbalanced braces, format specs)."""
    pieces: list[str | tuple[str]] = []
    try:
        parsed = list(string.Formatter().parse(source))
    except ValueError as exc:
        raise UsageError(f"Bad prompt template {source!r}: {exc}. Use {{{{ and }}}} for literal braces.") from exc
    for literal, name, spec, conv in parsed:
        if literal:
            pieces.append(literal)
        if name is None:
            continue
        if not name or spec or conv:
            raise UsageError(f"Bad placeholder in prompt template {source!r}: use plain {{column}} names.")
        pieces.append((name,))
    return Template(source, tuple(pieces))


def check_columns(template: Template, available: Sequence[str], *, file: str, option: str) -> None:
    """Raise a UsageError naming each missing column and the available ones."""
    missing = [c for c in template.columns if c not in available]
    if missing:
        raise UsageError(
            f"{option} uses column(s) {', '.join(repr(m) for m in missing)} that {file} does not "
            f"have; available columns: {', '.join(available)}"
        )
