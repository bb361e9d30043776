"""Engines by name. Built-ins are registered through our own `coldbatch.engines` entry points, the same
way a third-party package adds one; `COLDBATCH_PLUGINS=a,b` (read by the CLI) limits which load."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from coldbatch.engines.base import Engine
from coldbatch.errors import ConfigError

GROUP = "coldbatch.engines"


def available(only: Collection[str] | None = None) -> dict[str, EntryPoint]:
    """The engines that may load, by name, as entry points (not loaded yet)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if only is None or ep.name in only or ep.value.startswith("coldbatch."):
            found[ep.name] = ep  # loaded lazily: a missing extra only matters when chosen
    return found


def load(name: str, only: Collection[str] | None = None) -> Callable[..., Engine]:
    """The factory (class) of the engine called `name`. Raises ConfigError naming the choices or the extra."""
    eps = available(only)
    if name not in eps:
        raise ConfigError(f"Unknown engine {name!r}; available: {', '.join(sorted(eps)) or 'none'}")
    try:
        factory: Callable[..., Engine] = eps[name].load()
        return factory
    except ImportError as exc:
        raise ConfigError(
            f"The {name!r} engine cannot be loaded ({exc}); install its extra, e.g. pip install 'coldbatch[local]'"
        ) from exc


def check_options(name: str, factory: Callable[..., Engine], options: dict[str, Any]) -> None:
    """Refuse options the engine's constructor does not take, naming the ones it does (before any worker
    process starts, so a typo is one clear line, not a traceback from a child)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = sorted(
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"The {name!r} engine has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(known) or 'none'}"
        )


def create(name: str, only: Collection[str] | None = None, **options: Any) -> Engine:
    """Build the engine called `name` in this process. Raises ConfigError (unknown engine/option, extra)."""
    factory = load(name, only)
    check_options(name, factory, options)
    return factory(**options)
