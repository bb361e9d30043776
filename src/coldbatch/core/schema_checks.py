"""JSON Schema → nested closures that report what is wrong with a value, with a path and OpenAI's codes.

The reporting half of `core/bodies.py` (which also explains why the schemas are compiled, not interpreted):
a check appends `(param, code, message)` problems for the value it is given. Only a body the fast predicates
(`core/schema_core.py`) refuse is walked by these, so their cost (path strings, messages) is paid by invalid
bodies alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

Problem = tuple[str, str, str]  # (param, code, message)
Check = Callable[[Any, str, list[Problem]], None]

#: endpoint → schema file under protocol/schemas/
MAX_PROBLEMS: Final = 3  #: per body: the first few say what is wrong; the rest is usually the same mistake
_JSON: Final = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
_ARTICLE: Final = {"object": "an object", "array": "an array", "integer": "an integer", "null": "null"}
_PY: Final = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _name(kind: str) -> str:
    return _ARTICLE.get(kind, f"a {kind}")


def _type_of(value: object) -> str:
    return _JSON.get(type(value), type(value).__name__)


def _accepts(kinds: tuple[str, ...], value: object) -> bool:
    t = type(value)
    if t is bool:
        return "boolean" in kinds
    return any(t in _PY[k] for k in kinds)


class _Compiler:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.refs: dict[str, Check] = {}

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.defs[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def ref(self, name: str) -> Check:
        """A definition, compiled once; a definition met again while it compiles (a cycle) is reached through a
        trampoline, every other reference directly."""
        if name in self.refs:
            return self.refs[name]
        slot: list[Check] = []

        def trampoline(v: Any, p: str, e: list[Problem]) -> None:
            slot[0](v, p, e)

        self.refs[name] = trampoline
        slot.append(self.compile(self.defs[name]))
        self.refs[name] = slot[0]
        return slot[0]

    def compile(self, s: dict[str, Any]) -> Check:
        if "$ref" in s:
            return self.ref(s["$ref"].rsplit("/", 1)[-1])
        if "anyOf" in s or "oneOf" in s:
            return self.union(s.get("anyOf") or s["oneOf"])
        if "allOf" in s and len(s["allOf"]) == 1:
            return self.compile(s["allOf"][0])
        if "const" in s or "enum" in s:
            return _enum(s)
        kind = s.get("type")
        kinds = tuple(kind) if isinstance(kind, list) else (kind,) if kind else ()
        if kinds == ("object",):
            return self.obj(s)
        if kinds == ("array",):
            return self.array(s)
        if kinds in (("integer",), ("number",)):
            return _number(s, kinds[0])
        if kinds == ("string",):
            return _string(s)
        if kinds:
            return _types(kinds)
        return _anything

    def obj(self, s: dict[str, Any]) -> Check:
        props = {k: self.compile(v) for k, v in (s.get("properties") or {}).items() if v}
        required = tuple(s.get("required") or ())
        extra = s.get("additionalProperties")
        values = self.compile(extra) if isinstance(extra, dict) and extra else None

        def check(v: Any, p: str, e: list[Problem]) -> None:
            if type(v) is not dict:
                e.append(
                    (p, "invalid_type", f"Invalid type for '{p}': expected an object, but got {_name(_type_of(v))}.")
                )
                return
            for k in required:
                if k not in v:
                    e.append((f"{p}.{k}", "missing_required_parameter", f"Missing required parameter: '{p}.{k}'."))
            for k, item in v.items():
                c = props.get(k, values)
                if c is not None:
                    c(item, f"{p}.{k}", e)

        return check

    def array(self, s: dict[str, Any]) -> Check:
        item = self.compile(s["items"]) if s.get("items") else None
        lo, hi = s.get("minItems"), s.get("maxItems")

        def check(v: Any, p: str, e: list[Problem]) -> None:
            if type(v) is not list:
                e.append(
                    (p, "invalid_type", f"Invalid type for '{p}': expected an array, but got {_name(_type_of(v))}.")
                )
                return
            if lo is not None and len(v) < lo:
                e.append(
                    (
                        p,
                        "array_below_min_length",
                        f"Invalid '{p}': empty array. Expected an array with at least {lo} items, but got {len(v)}.",
                    )
                )
            if hi is not None and len(v) > hi:
                e.append(
                    (
                        p,
                        "array_above_max_length",
                        f"Invalid '{p}': array too long. Expected an array with "
                        f"at most {hi:,} items, but got {len(v):,}.",
                    )
                )
            if item is not None:
                for i, x in enumerate(v):
                    item(x, f"{p}[{i}]", e)
                    if len(e) >= MAX_PROBLEMS:
                        return

        return check

    def union(self, options: list[dict[str, Any]]) -> Check:
        """anyOf: objects told apart by a constant member are dispatched on it; otherwise the branches are
        indexed by the Python types they accept (a bare `{"type": ...}` branch needs no further check), and
        when none of the branches for the value's type passes, the errors of the first one are reported (the
        one the writer most likely meant)."""
        opts = [o for o in options if o != {"type": "null"}]
        nullable = len(opts) < len(options)
        tagged = self._tagged(opts) if len(opts) > 1 else None
        if tagged is not None:
            return _dispatch(*tagged, nullable=nullable)
        by_type: dict[type, list[Check | None]] = {type(None): [None]} if nullable else {}
        for o in opts:
            kinds = self._kinds(o)
            plain = set(self.resolve(o)) == {"type"}
            c = None if plain else self.compile(o)
            for t in (t for k in (kinds or tuple(_PY)) for t in _PY[k]):
                if t is not bool or "boolean" in kinds or not kinds:
                    by_type.setdefault(t, []).append(c)
        names = [k for o in opts for k in self._kinds(o)] + (["null"] if nullable else [])
        expected = " or ".join(_name(k) for k in dict.fromkeys(names))

        def check(v: Any, p: str, e: list[Problem]) -> None:
            fits = by_type.get(type(v))
            if fits is None:
                e.append(
                    (p, "invalid_type", f"Invalid type for '{p}': expected {expected}, but got {_name(_type_of(v))}.")
                )
                return
            if len(fits) == 1:
                if fits[0] is not None:
                    fits[0](v, p, e)
                return
            first: list[Problem] = []
            for c in fits:
                if c is None:
                    return
                trial: list[Problem] = []
                c(v, p, trial)
                if not trial:
                    return
                first = first or trial
            e.extend(first)

        return check

    def _kinds(self, s: dict[str, Any]) -> tuple[str, ...]:
        """The JSON types a schema can accept (empty: any)."""
        s = self.resolve(s)
        if "anyOf" in s or "oneOf" in s:
            subs = [self._kinds(o) for o in s.get("anyOf") or s["oneOf"]]
            return () if any(not k for k in subs) else tuple(dict.fromkeys(k for ks in subs for k in ks))
        if "const" in s or "enum" in s:
            values = [s["const"]] if "const" in s else s["enum"]
            return tuple(dict.fromkeys(_type_of(x) for x in values))
        kind = s.get("type")
        return tuple(kind) if isinstance(kind, list) else (kind,) if kind else ()

    def _tagged(self, opts: list[dict[str, Any]]) -> tuple[str, dict[Any, Check], Check | None] | None:
        """(member, {constant: branch}, fallback) when every option is an object with a required constant member
        of the same name; a branch that accepts any string there (a `str` catch-all) becomes the fallback."""
        resolved = [self.resolve(o) for o in opts]
        if not all(r.get("type") == "object" for r in resolved):
            return None
        for key in resolved[0].get("required") or ():
            table: dict[Any, Check] = {}
            fallback = None
            for o, r in zip(opts, resolved, strict=True):
                prop = self.resolve((r.get("properties") or {}).get(key) or {})
                consts = [prop["const"]] if "const" in prop else prop.get("enum")
                if consts and key in (r.get("required") or ()):
                    for c in consts:
                        table.setdefault(c, self.compile(o))
                elif prop.get("type") == "string" and fallback is None:
                    fallback = self.compile(o)
                else:
                    break
            else:
                return key, table, fallback
        return None


def _dispatch(key: str, table: dict[Any, Check], fallback: Check | None, *, nullable: bool) -> Check:
    allowed = ", ".join(repr(k) for k in table)

    def check(v: Any, p: str, e: list[Problem]) -> None:
        if v is None and nullable:
            return
        if type(v) is not dict:
            e.append((p, "invalid_type", f"Invalid type for '{p}': expected an object, but got {_name(_type_of(v))}."))
            return
        tag = v.get(key)
        c = table.get(tag) if isinstance(tag, str | int) else None
        if c is None:
            c = fallback
        if c is not None:
            c(v, p, e)
        elif key not in v:
            e.append((f"{p}.{key}", "missing_required_parameter", f"Missing required parameter: '{p}.{key}'."))
        else:
            e.append(
                (
                    f"{p}.{key}",
                    "invalid_value",
                    f"Invalid value for '{p}.{key}': {tag!r}. Supported values are: {allowed}.",
                )
            )

    return check


def _anything(v: Any, p: str, e: list[Problem]) -> None:
    return None


def _types(kinds: tuple[str, ...]) -> Check:
    def check(v: Any, p: str, e: list[Problem]) -> None:
        if not _accepts(kinds, v):
            e.append(
                (
                    p,
                    "invalid_type",
                    f"Invalid type for '{p}': expected {' or '.join(map(_name, kinds))}, but got {_name(_type_of(v))}.",
                )
            )

    return check


def _enum(s: dict[str, Any]) -> Check:
    values = [s["const"]] if "const" in s else list(s["enum"])
    allowed = {(type(x), x) for x in values}
    shown = ", ".join(repr(x) for x in values[:12]) + (", ..." if len(values) > 12 else "")

    def check(v: Any, p: str, e: list[Problem]) -> None:
        try:
            ok = (type(v), v) in allowed
        except TypeError:  # an object or array where a constant belongs
            ok = False
        if not ok:
            e.append((p, "invalid_value", f"Invalid value for '{p}': {v!r}. Supported values are: {shown}."))

    return check


def _number(s: dict[str, Any], kind: str) -> Check:
    lo, hi = s.get("minimum"), s.get("maximum")
    word = "integer" if kind == "integer" else "decimal"
    types = _PY[kind]

    def check(v: Any, p: str, e: list[Problem]) -> None:
        if type(v) not in types:
            e.append(
                (p, "invalid_type", f"Invalid type for '{p}': expected {_name(kind)}, but got {_name(_type_of(v))}.")
            )
        elif lo is not None and v < lo:
            e.append(
                (
                    p,
                    f"{word}_below_min_value",
                    f"Invalid '{p}': {word} below minimum value. Expected a value >= {lo}, but got {v} instead.",
                )
            )
        elif hi is not None and v > hi:
            e.append(
                (
                    p,
                    f"{word}_above_max_value",
                    f"Invalid '{p}': {word} above maximum value. Expected a value <= {hi}, but got {v} instead.",
                )
            )

    return check


def _string(s: dict[str, Any]) -> Check:
    lo, hi = s.get("minLength"), s.get("maxLength")
    pattern = re.compile(s["pattern"]) if s.get("pattern") else None

    def check(v: Any, p: str, e: list[Problem]) -> None:
        if type(v) is not str:
            e.append((p, "invalid_type", f"Invalid type for '{p}': expected a string, but got {_name(_type_of(v))}."))
        elif (lo is not None and len(v) < lo) or (hi is not None and len(v) > hi):
            e.append(
                (
                    p,
                    "invalid_length",
                    f"Invalid '{p}': expected a string of {lo or 0} to {hi or 'any'} characters, but got {len(v):,}.",
                )
            )
        elif pattern is not None and not pattern.search(v):
            e.append((p, "invalid_value", f"Invalid '{p}': {v[:80]!r} does not match {pattern.pattern}."))

    return check
