"""The request schemas as pydantic-core validators: the fast yes/no of `core/bodies.py`, in Rust.

A JSON Schema node becomes the core schema that accepts exactly what the reporting checks
(`schema_checks.py`) accept: strict types (no "5" for 5, no true for 1), objects as typed dicts that
ignore unknown keys, a union of objects told apart by a constant member as a tagged union, ranges as
ge/le, `$ref`s as definitions. A property test holds the two in agreement (tests/unit/test_bodies.py).
pydantic-core is already installed with pydantic (a runtime dependency); `isinstance_python` answers
without building errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_core import SchemaValidator, core_schema

from coldbatch.core.schema_checks import _Compiler

_SCALARS: dict[str, Callable[[], Any]] = {
    "string": core_schema.str_schema,
    "boolean": core_schema.bool_schema,
    "null": core_schema.none_schema,
}


def validator(schema: dict[str, Any]) -> SchemaValidator:
    """A strict validator of `schema` (a document with `$defs`)."""
    conv = _Convert(schema)
    root = conv.node(schema)
    defs = [conv.node(d) | {"ref": name} for name, d in schema.get("$defs", {}).items()]
    return SchemaValidator(core_schema.definitions_schema(root, defs))  # (called with strict=True)


class _Convert(_Compiler):
    """JSON Schema node → core schema (reuses the compiler's `resolve`, `_kinds` and `_tagged` analysis)."""

    def node(self, s: dict[str, Any]) -> Any:
        if "$ref" in s:
            return core_schema.definition_reference_schema(s["$ref"].rsplit("/", 1)[-1])
        if "anyOf" in s or "oneOf" in s:
            return self.union(s.get("anyOf") or s["oneOf"])
        if "allOf" in s and len(s["allOf"]) == 1:
            return self.node(s["allOf"][0])
        if "const" in s or "enum" in s:
            return core_schema.literal_schema([s["const"]] if "const" in s else list(s["enum"]))
        kind = s.get("type")
        kinds = tuple(kind) if isinstance(kind, list) else (kind,) if kind else ()
        if len(kinds) > 1:
            return core_schema.union_schema([self.node({**s, "type": k}) for k in kinds])
        if not kinds:
            return core_schema.any_schema()
        return self.typed(kinds[0], s)

    def typed(self, kind: str, s: dict[str, Any]) -> Any:
        if kind == "object":
            return self.obj(s)
        if kind == "array":
            items = self.node(s["items"]) if s.get("items") else core_schema.any_schema()
            return core_schema.list_schema(items, min_length=s.get("minItems"), max_length=s.get("maxItems"))
        if kind == "integer":
            return core_schema.int_schema(ge=s.get("minimum"), le=s.get("maximum"))
        if kind == "number":
            return core_schema.float_schema(ge=s.get("minimum"), le=s.get("maximum"), allow_inf_nan=True)
        if kind == "string":
            return core_schema.str_schema(
                min_length=s.get("minLength"), max_length=s.get("maxLength"), pattern=s.get("pattern")
            )
        return _SCALARS[kind]()

    def obj(self, s: dict[str, Any]) -> Any:
        props = s.get("properties") or {}
        extra = s.get("additionalProperties")
        values = self.node(extra) if isinstance(extra, dict) and extra else None
        if not props:
            return core_schema.dict_schema(core_schema.str_schema(), values)
        required = set(s.get("required") or ())
        fields = {
            k: core_schema.typed_dict_field(self.node(v) if v else core_schema.any_schema(), required=k in required)
            for k, v in props.items()
        }
        if values is None:
            return core_schema.typed_dict_schema(fields, extra_behavior="ignore")
        return core_schema.typed_dict_schema(fields, extra_behavior="allow", extras_schema=values)

    def union(self, options: list[dict[str, Any]]) -> Any:
        opts = [o for o in options if o != {"type": "null"}]
        nullable = len(opts) < len(options)
        tagged = self._tagged(opts) if len(opts) > 1 else None
        inner: Any
        if tagged is not None and tagged[2] is None:
            key = tagged[0]
            choices = {tag: self.node(self._branch(opts, key, tag)) for tag in tagged[1]}
            inner = core_schema.tagged_union_schema(choices, key)
        elif len(opts) == 1:
            inner = self.node(opts[0])
        else:
            inner = core_schema.union_schema([self.node(o) for o in opts])
        return core_schema.nullable_schema(inner) if nullable else inner

    def _branch(self, opts: list[dict[str, Any]], key: str, tag: Any) -> dict[str, Any]:
        for o in opts:
            prop = self.resolve((self.resolve(o).get("properties") or {}).get(key) or {})
            if tag in ([prop["const"]] if "const" in prop else prop.get("enum") or []):
                return o
        raise KeyError(tag)
