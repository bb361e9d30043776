"""`estimate()`: tokens and cost of a batch job before it is sent.

Prompt tokens are counted exactly with tiktoken for OpenAI models (see `tokens.py` for the offline
source of the BPE files), using OpenAI's chat accounting: 3 tokens per message plus its role and
content (and 1 more for a `name`), plus 3 that prime the reply. Output tokens are unknown before the
job runs: the estimate uses `--expected-output-tokens` when given, else each request's `max_tokens` as
the upper bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from coldbatch import _gc
from coldbatch.builder.api import check_columns
from coldbatch.builder.spec import RequestSpec
from coldbatch.core.canonical import request_key
from coldbatch.errors import InputError
from coldbatch.estimate import prices as P
from coldbatch.estimate import tokens as T
from coldbatch.estimate.accounting import prompt_texts
from coldbatch.protocol import limits as L
from coldbatch.validation import expand_paths, iter_lines

CHUNK = 8192
#: one request waiting in a chunk: where, custom_id, model, token overhead, texts, request key, output
#: tokens (None: unbounded), the parsed request, the line as read (the send plan reuses its bytes)
Pending = tuple[str, str, str, int, list[str], str, int | None, dict[str, Any], bytes]


@dataclass
class ModelTotals:
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    unbounded_output: int = 0  # requests with no max_tokens and no --expected-output-tokens
    sync_cost: Decimal | None = Decimal(0)
    batch_cost: Decimal | None = Decimal(0)
    tokenizer: str = ""
    exact: bool = True
    distinct: int = 0  #: distinct questions (= requests without dedup)
    cache_hits: int = 0
    send_requests: int = 0
    send_input_tokens: int = 0
    send_output_tokens: int = 0
    final_cost: Decimal | None = Decimal(0)  #: batch price of what will actually be sent

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests": self.requests,
            "distinct_requests": self.distinct,
            "cache_hits": self.cache_hits,
            "requests_to_send": self.send_requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_tokens_to_send": self.send_input_tokens,
            "output_tokens_to_send": self.send_output_tokens,
            "unbounded_output_requests": self.unbounded_output,
            "sync_cost_usd": _money(self.sync_cost),
            "batch_cost_usd": _money(self.batch_cost),
            "final_cost_usd": _money(self.final_cost),
            "tokenizer": self.tokenizer,
            "exact_tokens": self.exact,
        }


@dataclass
class Estimate:
    price_table: str
    models: dict[str, ModelTotals] = field(default_factory=dict)
    over_context: list[dict[str, Any]] = field(default_factory=list)
    over_context_total: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        ms = list(self.models.values())
        priced = all(m.sync_cost is not None for m in ms)
        sync = sum((m.sync_cost or Decimal(0) for m in ms), Decimal(0))
        batch = sum((m.batch_cost or Decimal(0) for m in ms), Decimal(0))
        final = sum((m.final_cost or Decimal(0) for m in ms), Decimal(0))
        return {
            "requests": sum(m.requests for m in ms),
            "distinct_requests": sum(m.distinct for m in ms),
            "cache_hits": sum(m.cache_hits for m in ms),
            "requests_to_send": sum(m.send_requests for m in ms),
            "input_tokens": sum(m.input_tokens for m in ms),
            "output_tokens": sum(m.output_tokens for m in ms),
            "input_tokens_to_send": sum(m.send_input_tokens for m in ms),
            "output_tokens_to_send": sum(m.send_output_tokens for m in ms),
            "sync_cost_usd": _money(sync) if priced else None,
            "batch_cost_usd": _money(batch) if priced else None,
            "final_cost_usd": _money(final) if priced else None,
            "saving_usd": _money(sync - final) if priced else None,
            "saving_pct": round(float((sync - final) / sync * 100), 2) if priced and sync else None,
            "batch_only_saving_pct": round(float((sync - batch) / sync * 100), 2) if priced and sync else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "price_table": self.price_table,
            "totals": self.totals,
            "models": [m.to_json() for m in self.models.values()],
            "over_context_total": self.over_context_total,
            "over_context": self.over_context,
            "warnings": self.warnings,
        }


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(round(value, 6))


class _SeenKeys:
    """The questions seen so far, as 64-bit key prefixes (~1e-7 chance of a false repeat at 2.4 M).

    A Python set while there are few (a small job's dedup loads no numpy), moved into `builder.build`'s
    `_SeenHashes` (8 bytes a key instead of ~70) once it would pass `SET_KEYS`: the same answers either way.
    """

    SET_KEYS = 100_000

    def __init__(self) -> None:
        self.small: set[int] | None = set()
        self.big: Any = None

    def firsts(self, keys: list[str]) -> list[int]:
        """Indices (in order) of the keys not seen before, each key's first one; they count as seen now."""
        k64 = [int(k[2:18], 16) for k in keys]
        seen = self.small
        if seen is not None and len(seen) + len(k64) <= self.SET_KEYS:
            first = []
            for i, k in enumerate(k64):
                if k not in seen:
                    seen.add(k)
                    first.append(i)
            return first
        import numpy as np

        if self.big is None:
            from coldbatch.builder.build import _SeenHashes

            self.big = _SeenHashes()
            if seen:
                self.big.add(np.array(sorted(seen), dtype=np.uint64))
            self.small = None
        uniq, idx = np.unique(np.array(k64, dtype=np.uint64), return_index=True)
        new = ~self.big.contains(uniq)
        self.big.add(uniq[new])
        return sorted(idx[new].tolist())


class Accumulator:
    def __init__(
        self, table: P.PriceTable, expected_output: int | None, *, dedup: bool = False, cache: Any = None
    ) -> None:
        self.table = table
        self.expected_output = expected_output
        self.dedup = dedup
        self.cache = cache
        self._seen = _SeenKeys()
        self.result = Estimate(price_table=table.version)
        self._pending: list[Pending] = []
        self._windows: dict[str, int] = {}
        #: called once per flushed chunk with (pending, fate, prompt tokens, cache hits): the send plan
        #: (`runner.plan`) rides on this pass instead of parsing and hashing every line a second time
        self.sink: Callable[[list[Pending], list[int], list[int], dict[str, Any]], None] | None = None

    def add(self, where: str, line: bytes, prompt: int | None = None, key: str | None = None) -> None:
        """Take one request line; `prompt`, `key`: its prompt tokens and request key when computed already
        (`estimate.ahead`)."""
        try:
            req = orjson.loads(line)
        except orjson.JSONDecodeError:
            req = None
        body = req.get("body") if isinstance(req, dict) else None
        if not isinstance(req, dict) or not isinstance(body, dict):
            raise InputError(
                f"{where}: not a batch request line; run `coldbatch validate` on it, or pass "
                "--model and --prompt/--input-column to estimate a dataset"
            )
        model = str(body.get("model", "?"))
        if prompt is None:
            texts, overhead = prompt_texts(body, str(req.get("url", L.CHAT)))
        else:
            texts, overhead = [], prompt
        out = self.expected_output
        if out is None:
            mt = body.get("max_completion_tokens", body.get("max_tokens"))
            out = int(mt) if isinstance(mt, int) else (0 if req.get("url") == L.EMBEDDINGS else None)
        if not (self.dedup or self.cache is not None):
            key = ""
        elif key is None:
            key = request_key(str(req.get("url", L.CHAT)), body)
        self._pending.append((where, str(req.get("custom_id")), model, overhead, texts, key, out, req, line))
        if len(self._pending) >= CHUNK:
            self.flush()

    def _sends(self) -> tuple[list[int], dict[str, Any]]:
        """Per pending request: 1 = sent, 0 = a repeat of an earlier question, 2 = answered from the cache;
        and the cache entries of the hits by key."""
        keys = [p[5] for p in self._pending]
        if not self.dedup:
            fate = [1] * len(keys)
            first = list(range(len(keys)))
        else:
            first = self._seen.firsts(keys)
            fate = [0] * len(keys)
            for i in first:
                fate[i] = 1
        hits: dict[str, Any] = {}
        if self.cache is not None:
            hits = self.cache.get_many([keys[i] for i in first])
            for i in first:
                if keys[i] in hits:
                    fate[i] = 2
        return fate, hits

    def flush(self) -> None:
        fate, hits = self._sends() if self._pending else ([], {})
        prompts = [0] * len(self._pending)
        by_enc: dict[str, list[int]] = {}
        for i, (_, _, model, *_rest) in enumerate(self._pending):
            price = self.table.lookup(model)
            by_enc.setdefault(price.encoding if price else "o200k_base", []).append(i)
        for enc, idxs in by_enc.items():
            flat = [t for i in idxs for t in self._pending[i][4]]
            counter = T.counter(enc, texts=len(flat))  # a small job's estimate loads no full table
            counts = iter(counter.count_many(flat) if flat else ())
            for i in idxs:
                where, cid, model, overhead, texts, _, out, _, _ = self._pending[i]
                prompts[i] = overhead + sum(next(counts) for _ in texts)
                self._record(where, cid, model, prompts[i], out, counter, fate[i])
        if self.sink is not None and self._pending:
            self.sink(self._pending, fate, prompts, hits)
        self._pending.clear()

    def _record(
        self, where: str, cid: str, model: str, prompt: int, out: int | None, counter: T.Counter, fate: int = 1
    ) -> None:
        """Add one request's integers; money is computed once, in `finish` (cost is linear in tokens)."""
        totals = self.result.models.get(model)
        if totals is None:
            totals = self.result.models[model] = ModelTotals(model, tokenizer=counter.name, exact=counter.exact)
            self._windows[model] = (p.context_window if (p := self.table.lookup(model)) else None) or 0
        totals.requests += 1
        totals.input_tokens += prompt
        if out is None:
            totals.unbounded_output += 1
            out = 0
        totals.output_tokens += out
        totals.distinct += fate > 0
        totals.cache_hits += fate == 2
        if fate == 1:
            totals.send_requests += 1
            totals.send_input_tokens += prompt
            totals.send_output_tokens += out
        window = self._windows[model]
        if window and prompt + out > window:
            self.result.over_context_total += 1
            if len(self.result.over_context) < 50:
                self.result.over_context.append(
                    {
                        "where": where,
                        "custom_id": cid,
                        "prompt_tokens": prompt,
                        "max_output_tokens": out,
                        "context_window": window,
                    }
                )

    def finish(self) -> Estimate:
        self.flush()
        for m in self.result.models.values():
            price = self.table.lookup(m.model)
            if price is None:
                m.sync_cost = m.batch_cost = m.final_cost = None
            else:
                m.sync_cost = price.cost(m.input_tokens, m.output_tokens, batch=False)
                m.batch_cost = price.cost(m.input_tokens, m.output_tokens, batch=True)
                m.final_cost = price.cost(m.send_input_tokens, m.send_output_tokens, batch=True)
            if self.table.lookup(m.model) is None:
                self.result.warnings.append(
                    f"no price for model {m.model!r} in price table "
                    f"{self.table.version}; its cost is unknown (pass --prices FILE)"
                )
            if price is not None and price.stand_in and m.exact:
                self.result.warnings.append(
                    f"tokens for {m.model!r} are approximate: {price.encoding} stands in "
                    "for the model's own tokenizer (a local model's counts differ; its "
                    "answers report the real ones)"
                )
            if not m.exact:
                self.result.warnings.append(
                    f"tokens for {m.model!r} are approximate (4 bytes per token): "
                    "no offline BPE file was found for its tokenizer"
                )
            if m.unbounded_output:
                self.result.warnings.append(
                    f"{m.unbounded_output:,} request(s) to {m.model!r} set no max_tokens: "
                    "their output cost is not counted; set --max-tokens"
                )
        return self.result


def request_lines(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    for p in expand_paths(list(paths)):
        for n, line in enumerate(iter_lines(p), 1):
            if line.strip():
                yield f"{p.name}:{n}", line


def _dataset_lines(path: Path, spec: RequestSpec, fmt: str | None) -> Iterator[tuple[str, bytes]]:
    from coldbatch.builder.build import Builder
    from coldbatch.dataset.read import open_dataset

    ds = open_dataset(path, fmt)
    check_columns(ds, spec)
    builder = Builder(spec, file=ds.name, max_line_bytes=L.MAX_LINE_BYTES)
    for start, batch in ds.batches():
        built = builder.build(start, batch)
        for row, line in zip(built.rows, built.lines.to_pylist(), strict=True):
            yield f"row {row}", line.encode()


def estimate(
    sources: Iterable[str | Path],
    *,
    spec: RequestSpec | None = None,
    prices: P.PriceTable | None = None,
    expected_output_tokens: int | None = None,
    fmt: str | None = None,
    dedup: bool = False,
    cache: Any = None,
) -> Estimate:
    """Estimate a job: request files / prepared folders, or (with `spec`) a dataset built on the fly.

    `dedup`: count each distinct question once in what will be sent (`requests_to_send`,
    `final_cost_usd`); `cache` (a `runner.cache.ResultCache`): questions it already answers are not sent.
    The sync and batch costs always cover every request, so `saving_pct` is the whole saving.
    """
    paths = [Path(s) for s in sources]
    acc = Accumulator(prices or P.load(), expected_output_tokens, dedup=dedup, cache=cache)
    if spec is not None:
        lines: Iterable[tuple[str, bytes]] = (x for p in paths for x in _dataset_lines(p, spec, fmt))
    else:
        lines = request_lines(paths)
    return accumulate(acc, lines)


def accumulate(acc: Accumulator, lines: Iterable[tuple[str, bytes]]) -> Estimate:
    add = acc.add
    with _gc.paused():
        for where, line in lines:
            add(where, line)
        return acc.finish()
