"""A command's many flags as one frozen dataclass instead of a parameter per flag.

Why: click passes every option as a keyword argument, and a signature listing 25-30 of them made `run` and
`serve` too long to read on one screen (issue 11: functions under 60 lines). The option decorators stay
as they were (names, defaults, help); the dataclass types each flag once and the body reads `f.name`. A
module of its own so that `serve` does not import the request options' readers (pyarrow) to use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def split_flags(cls: type[T], kw: dict[str, Any]) -> tuple[T, dict[str, Any]]:
    """The command's own flags as `cls` (a frozen dataclass whose fields are the flags' parameter names),
    and the rest of click's keyword arguments (shared option groups, e.g. those `options.spec_from` reads)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in kw.items() if k in names}), {k: v for k, v in kw.items() if k not in names}
