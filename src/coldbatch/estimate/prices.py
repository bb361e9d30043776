"""The versioned price table: which model costs what, sync vs batch, and which tokenizer it uses."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from coldbatch.errors import ConfigError

MILLION = Decimal(1_000_000)
_FIELDS = ("input", "cached_input", "output", "batch_input", "batch_cached_input", "batch_output")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens."""

    name: str
    encoding: str
    context_window: int | None
    input: Decimal
    cached_input: Decimal
    output: Decimal
    batch_input: Decimal
    batch_cached_input: Decimal
    batch_output: Decimal
    #: the model's own tokenizer is not `encoding` (a local model): its token counts are approximate
    stand_in: bool = False

    def cost(self, input_tokens: int, output_tokens: int, *, batch: bool, cached_tokens: int = 0) -> Decimal:
        fresh = input_tokens - cached_tokens
        if batch:
            total = (
                fresh * self.batch_input + cached_tokens * self.batch_cached_input + output_tokens * self.batch_output
            )
        else:
            total = fresh * self.input + cached_tokens * self.cached_input + output_tokens * self.output
        return total / MILLION


@dataclass(frozen=True)
class PriceTable:
    version: str
    source: str
    models: dict[str, ModelPrice]

    def lookup(self, model: str) -> ModelPrice | None:
        """Exact name, else the longest table name that `model` extends with '-' (dated snapshots)."""
        if model in self.models:
            return self.models[model]
        best = [m for m in self.models if model.startswith(m + "-")]
        return self.models[max(best, key=len)] if best else None


def _parse(data: dict[str, Any], source: str) -> PriceTable:
    models: dict[str, ModelPrice] = {}
    for name, row in (data.get("models") or {}).items():
        try:
            prices = {f: Decimal(str(row[f])) for f in _FIELDS}
        except KeyError as exc:
            raise ConfigError(f"{source}: model {name!r} lacks price field {exc.args[0]!r}") from exc
        models[name] = ModelPrice(
            name=name,
            encoding=str(row.get("encoding", "o200k_base")),
            context_window=row.get("context_window"),
            stand_in=bool(row.get("encoding_stands_in", False)),
            **prices,
        )
    return PriceTable(version=str(data.get("version", "unversioned")), source=source, models=models)


def load(path: str | Path | None = None) -> PriceTable:
    """The bundled table, or the TOML file at `path`."""
    if path is None:
        text = resources.files("coldbatch.data").joinpath("prices.toml").read_text()
        return _parse(tomllib.loads(text), "coldbatch/data/prices.toml")
    p = Path(path)
    try:
        return _parse(tomllib.loads(p.read_text()), str(p))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read price table: {exc}") from exc
