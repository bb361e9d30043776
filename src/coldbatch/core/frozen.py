"""`FrozenDict`: the JSON objects a client record holds (a job's options, estimate and report), read-only.

A record is a frozen dataclass, but a frozen dataclass holding a plain dict can still be changed through
the dict, and the change would look stored when it is not (only `LedgerStore.set_job` stores). So the
decoded JSON objects are `FrozenDict`s, all the way down. It stays a `dict` subclass, not a
`MappingProxyType`, so that the JSON encoders (orjson, json), `dataclasses.asdict` and `==` with a plain dict
take it as the JSON object it is; a copy (`dict(d)`, `{**d, k: v}`, `copy.deepcopy(d)`) is a plain dict, to
change and store anew.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn


class FrozenDict(dict[str, Any]):
    """A dict that refuses every change (TypeError); its copies are plain dicts."""

    __slots__ = ()

    def _refuse(self) -> NoReturn:
        raise TypeError("a ledger record's JSON is read-only: change a copy ({**d, key: value}) and store that")

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        self._refuse()

    def __delitem__(self, key: str) -> NoReturn:
        self._refuse()

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        self._refuse()

    def clear(self) -> NoReturn:
        self._refuse()

    def pop(self, *args: Any) -> NoReturn:
        self._refuse()

    def popitem(self) -> NoReturn:
        self._refuse()

    def setdefault(self, *args: Any) -> NoReturn:
        self._refuse()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (dict(self),)


def frozen(value: Any) -> Any:
    """A decoded JSON value with every object in it a `FrozenDict` (arrays stay lists of frozen values)."""
    if isinstance(value, dict):
        return FrozenDict({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return [frozen(v) for v in value]
    return value
