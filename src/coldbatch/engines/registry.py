"""Engines by name. Built-ins are registered through our own `coldbatch.engines` entry points, the same
way a third-party package adds one; `COLDBATCH_PLUGINS=a,b` (read by the CLI) limits which load."""

from __future__ import annotations

from collections.abc import Callable, Collection
from importlib.metadata import entry_points
from typing import Any

from coldbatch.engines.base import Engine
from coldbatch.errors import ConfigError

GROUP = "coldbatch.engines"


def available(only: Collection[str] | None = None) -> dict[str, Callable[..., Engine]]:
    found: dict[str, Callable[..., Engine]] = {}
    for ep in entry_points(group=GROUP):
        if only is None or ep.name in only or ep.value.startswith("coldbatch."):
            found[ep.name] = ep  # loaded lazily: a missing extra only matters when chosen
    return found


def create(name: str, only: Collection[str] | None = None, **options: Any) -> Engine:
    """Build the engine called `name`. Raises ConfigError naming the choices or the missing extra."""
    eps = available(only)
    if name not in eps:
        raise ConfigError(f"Unknown engine {name!r}; available: {', '.join(sorted(eps)) or 'none'}")
    factory: Any = eps[name]
    try:
        factory = factory.load()
    except ImportError as exc:
        raise ConfigError(f"The {name!r} engine cannot be loaded ({exc}); install its extra, e.g. "
                          f"pip install 'coldbatch[local]'") from exc
    return factory(**options)  # type: ignore[no-any-return]
