"""Generate src/coldbatch/protocol/schemas/*.json from the official SDKs' typed request params.

    .venv/bin/python scripts/gen_body_schemas.py          # write the files
    .venv/bin/python scripts/gen_body_schemas.py --check  # exit 1 if the committed files differ

Each schema is pydantic's `TypeAdapter(<SDK TypedDict>).json_schema()` with titles and descriptions
dropped. The TypedDicts carry no numeric ranges, so RANGES adds the ones the SDK's own field docstring
states (the quoted phrase must be in that docstring, or generation fails: a range the SDK stops stating
is noticed) and a few the API enforces without the SDK saying so (quote None, source named).
The SDKs are dev dependencies only: coldbatch reads the committed files (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

OUT = Path(__file__).resolve().parents[1] / "src" / "coldbatch" / "protocol" / "schemas"
DROP = {"title", "description", "examples", "default"}

# file: (module, TypedDict, sdk)
SOURCES = {
    "chat_completions.json": (
        "openai.types.chat.completion_create_params",
        "CompletionCreateParamsNonStreaming",
        "openai",
    ),
    "completions.json": ("openai.types.completion_create_params", "CompletionCreateParamsNonStreaming", "openai"),
    "embeddings.json": ("openai.types.embedding_create_params", "EmbeddingCreateParams", "openai"),
    "responses.json": ("openai.types.responses.response_create_params", "ResponseCreateParamsNonStreaming", "openai"),
    "messages.json": ("anthropic.types.message_create_params", "MessageCreateParamsNonStreaming", "anthropic"),
}
_PENALTY = (-2, 2, "Number between -2.0 and 2.0")
# file: {field: (minimum, maximum, phrase of the SDK docstring that states it, or None + why)}
RANGES: dict[str, dict[str, tuple[float | None, float | None, str | None]]] = {
    "chat_completions.json": {
        "temperature": (0, 2, "between 0 and 2"),
        "top_logprobs": (0, 20, "between 0 and 20"),
        "frequency_penalty": _PENALTY,
        "presence_penalty": _PENALTY,
        "top_p": (0, 1, None),  # OpenAI API reference: decimal_above_max_value above 1
        "n": (1, 128, None),
        "max_tokens": (1, None, None),
        "max_completion_tokens": (1, None, None),
    },
    "completions.json": {
        "temperature": (0, 2, "between 0 and 2"),
        "frequency_penalty": _PENALTY,
        "presence_penalty": _PENALTY,
        "top_p": (0, 1, None),
        "logprobs": (0, 5, "The maximum value for `logprobs` is 5"),
        "n": (1, 128, None),
        "max_tokens": (0, None, None),
    },
    "responses.json": {
        "temperature": (0, 2, "between 0 and 2"),
        "top_logprobs": (0, 20, "between 0 and 20"),
        "top_p": (0, 1, None),
        "max_output_tokens": (16, None, None),
    },  # API: ">= 16"
    "embeddings.json": {"dimensions": (1, None, None)},
    "messages.json": {"max_tokens": (0, None, "Set to `0` to populate")},
}
MAX_ITEMS = {"messages.json": {"messages": (100_000, "limit of 100,000 messages")}}


def field_docs(module: Any, cls_name: str) -> dict[str, str]:
    """Field name → its attribute docstring, over the TypedDict and its bases in the same module."""
    tree = ast.parse(inspect.getsource(module))
    docs: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for a, b in zip(node.body, node.body[1:], strict=False):
                if (
                    isinstance(a, ast.AnnAssign)
                    and isinstance(a.target, ast.Name)
                    and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                    and isinstance(b.value.value, str)
                ):
                    docs.setdefault(a.target.id, " ".join(b.value.value.split()))
    return docs


def prune(node: Any, names: bool = False) -> Any:
    """Drop annotations (titles, descriptions, ...) from every schema; `names`: node maps names to schemas
    (`properties`, `$defs`), whose keys are kept even when a field is called `title` or `description`."""
    if isinstance(node, dict):
        return {
            k: prune(v, not names and k in ("properties", "$defs")) for k, v in node.items() if names or k not in DROP
        }
    if isinstance(node, list):
        return [prune(v) for v in node]
    return node


def set_range(prop: dict[str, Any], lo: float | None, hi: float | None) -> None:
    """Put minimum/maximum on the number branch of a property (`anyOf [number, null]` or a bare number)."""
    targets = [o for o in prop.get("anyOf", [prop]) if o.get("type") in ("number", "integer")]
    if not targets:
        raise SystemExit(f"no numeric branch to put a range on: {prop}")
    for t in targets:
        if lo is not None:
            t["minimum"] = lo
        if hi is not None:
            t["maximum"] = hi


def build(name: str) -> dict[str, Any]:
    mod_name, cls_name, sdk = SOURCES[name]
    module = __import__(mod_name, fromlist=[cls_name])
    schema = prune(TypeAdapter(getattr(module, cls_name)).json_schema())
    docs = field_docs(module, cls_name)
    for field, (lo, hi, phrase) in RANGES.get(name, {}).items():
        if phrase is not None and phrase not in docs.get(field, ""):
            raise SystemExit(f"{name}: the SDK's docstring of {field!r} no longer says {phrase!r}; review RANGES")
        set_range(schema["properties"][field], lo, hi)
    for field, (most, phrase) in MAX_ITEMS.get(name, {}).items():
        if phrase not in docs.get(field, ""):
            raise SystemExit(f"{name}: the SDK's docstring of {field!r} no longer says {phrase!r}")
        schema["properties"][field]["maxItems"] = most
    schema["$comment"] = f"generated by scripts/gen_body_schemas.py from {sdk} {version(sdk)} {mod_name}.{cls_name}"
    return schema


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    for name in SOURCES:
        text = json.dumps(build(name), indent=1, sort_keys=True) + "\n"
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{path.relative_to(OUT.parents[2])}: {len(text):,} bytes")
    if stale:
        print("out of date (run scripts/gen_body_schemas.py): " + ", ".join(stale), file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
