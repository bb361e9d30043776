"""`RequestSpec`: everything that turns one row into one request, and the static JSON around it.

A request line is `PREFIX + json(custom_id) + MIDDLE + json(content) + SUFFIX`, where only the two
json(...) parts vary per row. The static parts are serialized once here with orjson, so the per-row
work is string concatenation that polars does in bulk (see `build.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from coldbatch.core import template as tpl
from coldbatch.errors import UsageError
from coldbatch.protocol import limits as L

DEFAULT_LABEL_SYSTEM = (
    'Classify the user\'s text. Answer with JSON {{"label": ...}} where label is exactly one of: {labels}.'
)


@dataclass(frozen=True)
class RequestSpec:
    """How rows become requests. `prompt` is a template such as `"Sentiment of: {text}"`."""

    model: str
    endpoint: str = L.CHAT
    prompt: str | None = None
    system: str | None = None
    input_column: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    labels: tuple[str, ...] = ()
    body: dict[str, Any] = field(default_factory=dict)
    id_column: str | None = None
    on_duplicate_id: str = "error"
    schema: dict[str, Any] | None = None  #: a JSON schema the answer must match (structured outputs)
    schema_name: str = "response"
    confidence: bool = True  #: a --labels job asks for logprobs, for OUTPUT's `confidence` (see `logprobs`)

    def __post_init__(self) -> None:
        if self.schema is not None and not isinstance(self.schema, dict):  # a pydantic model class
            object.__setattr__(self, "schema", _schema_of(self.schema))
        if self.schema is not None and self.labels:
            raise UsageError("--labels and --schema cannot be combined: labels are a one-field schema already")
        if self.schema is not None and self.endpoint != L.CHAT:
            raise UsageError("--schema only applies to /v1/chat/completions")
        if self.endpoint not in (L.CHAT, L.EMBEDDINGS):
            raise UsageError(f"--endpoint must be {L.CHAT} or {L.EMBEDDINGS}; got {self.endpoint!r}")
        if self.endpoint == L.EMBEDDINGS and not (self.input_column or self.prompt):
            raise UsageError("--endpoint /v1/embeddings needs --input-column (or a --prompt template)")
        if self.endpoint == L.CHAT and not (self.prompt or self.input_column):
            raise UsageError("chat requests need --prompt TEMPLATE (or --input-column COLUMN)")
        if self.labels and self.endpoint != L.CHAT:
            raise UsageError("--labels only applies to /v1/chat/completions")
        if self.on_duplicate_id not in ("error", "suffix"):
            raise UsageError("--on-duplicate-id must be 'error' or 'suffix'")
        if len(set(self.labels)) != len(self.labels) or any(not x for x in self.labels):
            raise UsageError(f"--labels must be distinct non-empty names; got {', '.join(self.labels)!r}")
        reserved = {"model", "messages", "input"} & set(self.body)
        if reserved:
            raise UsageError(f"--body-json may not set {', '.join(sorted(reserved))}: use the dedicated options")

    @property
    def template(self) -> tpl.Template:
        if not self.prompt or (self.endpoint == L.EMBEDDINGS and self.input_column):
            return tpl.Template("{" + str(self.input_column) + "}", ((str(self.input_column),),))
        return tpl.parse(self.prompt)

    @property
    def system_text(self) -> str | None:
        if self.system is not None:
            return self.system
        if self.labels:
            return DEFAULT_LABEL_SYSTEM.format(labels=", ".join(self.labels))
        return None

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON schema an answer must match (labels are the one-field schema {"label": enum})."""
        if self.schema is not None:
            return self.schema
        if self.labels:
            return {
                "type": "object",
                "properties": {"label": {"type": "string", "enum": list(self.labels)}},
                "required": ["label"],
                "additionalProperties": False,
            }
        return None

    def response_format(self) -> dict[str, Any] | None:
        if self.schema is not None:
            return {
                "type": "json_schema",
                "json_schema": {"name": self.schema_name, "strict": True, "schema": self.schema},
            }
        if not self.labels:
            return None
        return {
            "type": "json_schema",
            "json_schema": {
                "name": "label",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"label": {"type": "string", "enum": list(self.labels)}},
                    "required": ["label"],
                    "additionalProperties": False,
                },
            },
        }

    @property
    def effective_temperature(self) -> float | None:
        """The temperature sent: `temperature`, else 0 for a categorization job (--labels, --schema).

        Why: the API default is 1, and sampling a label makes two identical runs disagree (42 of 100 review
        sentences did) and costs accuracy (84 % -> 56-60 % there); a label or a schema answer is wanted once, as
        the model's best. A `temperature` in `body` (--body-json) is left alone.
        """
        if self.temperature is not None or "temperature" in self.body:
            return self.temperature
        return 0.0 if self.answer_schema is not None else None

    def extra_body(self) -> dict[str, Any]:
        """Generation parameters after the content, in a fixed order."""
        extra: dict[str, Any] = {}
        if self.max_tokens is not None:
            extra["max_tokens"] = self.max_tokens
        if self.effective_temperature is not None:
            extra["temperature"] = self.effective_temperature
        rf = self.response_format()
        if rf is not None:
            extra["response_format"] = rf
        extra.update(self.logprobs)
        extra.update(self.body)
        return extra

    @property
    def logprobs(self) -> dict[str, Any]:
        """What a --labels job asks for so OUTPUT can say how sure each label is (runner/confidence.py).

        The label's share is read from the alternatives at its first token, so a few more than there are
        labels are asked for (OpenAI allows 20); --no-confidence, or a `logprobs` in --body-json, turns it off
        (for a model that refuses logprobs, as OpenAI's reasoning models do).
        """
        if not self.labels or not self.confidence or "logprobs" in self.body:
            return {}
        return {"logprobs": True, "top_logprobs": min(20, len(self.labels) + 3)}

    def frame(self) -> tuple[str, str, str]:
        """(PREFIX, MIDDLE, SUFFIX) of every request line."""
        prefix = '{"custom_id":'
        head = '"method":"POST","url":' + _j(self.endpoint) + ',"body":{"model":' + _j(self.model)
        extra = self.extra_body()
        tail = ("," + _j(extra)[1:-1]) if extra else ""
        if self.endpoint == L.EMBEDDINGS:
            return prefix, "," + head + ',"input":', tail + "}}"
        system = self.system_text
        messages = '"messages":['
        if system is not None:
            messages += '{"role":"system","content":' + _j(system) + "},"
        messages += '{"role":"user","content":'
        return prefix, "," + head + "," + messages, "}]" + tail + "}}"

    def describe(self) -> dict[str, Any]:
        """The options as recorded in manifest.json."""
        return {
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "system": self.system,
            "input_column": self.input_column,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "labels": list(self.labels),
            "body": self.body,
            "id_column": self.id_column,
            "on_duplicate_id": self.on_duplicate_id,
            **({} if self.confidence else {"confidence": False}),
            **({"schema": self.schema, "schema_name": self.schema_name} if self.schema is not None else {}),
        }


def _schema_of(model: Any) -> dict[str, Any]:
    """A pydantic model class → its JSON schema, closed (no extra keys), as strict structured outputs need."""
    if not hasattr(model, "model_json_schema"):
        raise UsageError("schema must be a JSON schema dict or a pydantic model class")
    schema: dict[str, Any] = model.model_json_schema()
    schema.setdefault("additionalProperties", False)
    schema.setdefault("required", list(schema.get("properties", {})))
    return schema


def _j(value: Any) -> str:
    return orjson.dumps(value).decode()
