"""Options shared by the commands that build requests (prepare, estimate, run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from coldbatch.builder.spec import RequestSpec
from coldbatch.dataset.rows import headerless_format
from coldbatch.errors import UsageError
from coldbatch.protocol import limits as L

F = Callable[..., Any]

_REQUEST_OPTIONS: list[Callable[[F], F]] = [
    click.option("--model", "-m", help="Model for every request (one model per shard)."),
    click.option("--prompt", "-p", help="User message template with {column} placeholders; {{ }} for braces."),
    click.option("--system", "-s", help="System message (default with --labels: an instruction naming the labels)."),
    click.option("--endpoint", type=click.Choice([L.CHAT, L.EMBEDDINGS]), default=L.CHAT),
    click.option("--input-column", help="Column sent as-is: the embeddings input, or the whole user message."),
    click.option("--max-tokens", type=click.IntRange(min=1), help="max_tokens for each request."),
    click.option(
        "--temperature",
        type=click.FloatRange(0, 2),
        help="temperature for each request (default: 0 with --labels or --schema, so a categorization "
        "is deterministic; else the provider's default, 1 for OpenAI).",
    ),
    click.option(
        "--labels", help="Comma-separated labels: adds a JSON-schema response_format whose answer must be one of them."
    ),
    click.option(
        "--confidence/--no-confidence",
        default=True,
        help="With --labels: ask for logprobs and add OUTPUT's `confidence` column, the probability of "
        "the chosen label (default on; --no-confidence for a model that refuses logprobs).",
    ),
    click.option(
        "--schema",
        "schema_file",
        type=click.Path(exists=True, dir_okay=False),
        help="JSON schema file the answer must match (structured outputs); its properties become OUTPUT columns.",
    ),
    click.option("--body-json", help="Extra JSON object merged into every request body, e.g. '{\"seed\": 1}'."),
    click.option("--id-column", help="Column holding each row's custom_id (default: 'row-N', N = 1-based row)."),
    click.option(
        "--on-duplicate-id",
        type=click.Choice(["error", "suffix"]),
        default="error",
        help="Repeated ids: fail listing them, or send the n-th repeat as 'ID~n'.",
    ),
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["csv", "tsv", "jsonl", "parquet"]),
        help="Input format (default: from the extension). TSV has no quoting: a quote is text, a line is a row.",
    ),
    click.option(
        "--columns",
        "columns",
        metavar="A,B,...",
        help="CSV/TSV without a header line: its columns' names (the first line is data).",
    ),
    click.option(
        "--no-header", is_flag=True, help="CSV/TSV without a header line: columns are named column1, column2, ..."
    ),
]


def request_options(fn: F) -> F:
    for opt in reversed(_REQUEST_OPTIONS):
        fn = opt(fn)
    return fn


def input_format(opts: dict[str, Any]) -> str | None:
    """The readers' `fmt` for --format, --columns and --no-header (dataset.read.split_format)."""
    return headerless_format(opts.get("fmt"), opts.get("columns"), bool(opts.get("no_header")))


def spec_from(opts: dict[str, Any]) -> RequestSpec:
    """Build a RequestSpec from the shared options; raises UsageError with the flag's name."""
    if not opts.get("model"):
        raise UsageError(
            "--model is required to build requests: the model every request names, e.g. gpt-4o-mini "
            "for OpenAI (`coldbatch run` without --base-url needs none: the embedded engine's own)"
        )
    body: dict[str, Any] = {}
    if opts.get("body_json"):
        try:
            body = orjson.loads(opts["body_json"])
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"--body-json is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise UsageError("--body-json must be a JSON object")
    labels = tuple(x.strip() for x in opts["labels"].split(",")) if opts.get("labels") else ()
    schema, schema_name = None, "response"
    if opts.get("schema_file"):
        path = Path(opts["schema_file"])
        try:
            schema = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"--schema {path}: not valid JSON: {exc}") from exc
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise UsageError(f"--schema {path}: must be a JSON schema of type 'object'")
        schema_name = "".join(c if c.isalnum() or c in "_-" else "_" for c in path.stem)[:64] or "response"
    return RequestSpec(
        model=opts["model"],
        endpoint=opts["endpoint"],
        prompt=opts.get("prompt"),
        system=opts.get("system"),
        input_column=opts.get("input_column"),
        max_tokens=opts.get("max_tokens"),
        temperature=opts.get("temperature"),
        labels=labels,
        body=body,
        id_column=opts.get("id_column"),
        on_duplicate_id=opts["on_duplicate_id"],
        schema=schema,
        schema_name=schema_name,
        confidence=opts.get("confidence", True),
    )


def limit_options(fn: F) -> F:
    fn = click.option(
        "--max-line-bytes",
        type=click.IntRange(min=1),
        default=L.MAX_LINE_BYTES,
        help="Largest single request line (coldbatch's guard, not an OpenAI rule).",
    )(fn)
    fn = click.option(
        "--max-bytes",
        type=click.IntRange(min=1),
        default=L.MAX_FILE_BYTES,
        help="Largest file in bytes (OpenAI: 200 MB).",
    )(fn)
    fn = click.option(
        "--max-requests",
        type=click.IntRange(min=1),
        default=L.MAX_REQUESTS,
        help="Most requests per file (OpenAI: 50,000; Azure: 100,000).",
    )(fn)
    return fn


def limits_from(opts: dict[str, Any]) -> L.Limits:
    return L.Limits(
        max_requests=opts["max_requests"], max_bytes=opts["max_bytes"], max_line_bytes=opts["max_line_bytes"]
    )
