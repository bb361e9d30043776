"""The same JSON Schema compiled into True/False predicates: the fast path of `core/bodies.py`.

A valid body is the common case, so this path avoids everything the reporting checks pay for: no path
strings and no messages, a field of a bare type is checked inline (`type(v) in types`) without a call, a
union of objects is a dictionary look-up on its constant member, and `X | null` is one look-up by type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from coldbatch.core.schema_checks import _PY, Check, Problem, _Compiler

Pred = Callable[[Any], bool]
Spec = Pred | frozenset[type]  #: a predicate, or the Python types a bare `{"type": ...}` accepts (checked inline)


def _pred(spec: Spec) -> Pred:
    if isinstance(spec, frozenset):
        return lambda v: type(v) in spec
    return spec


class _Fast(_Compiler):
    """The same schema as predicates. A valid body is the common case, so this path avoids everything the
    reporting checks pay for: no path strings, and a field of a bare type is checked inline (`type(v) in
    types`), without a call."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__(schema)
        self.preds: dict[str, Spec] = {}

    def fast_ref(self, name: str) -> Spec:
        if name not in self.preds:
            slot: list[Pred] = []
            self.preds[name] = lambda v: slot[0](v)  # a cycle's trampoline, replaced once compiled
            slot.append(_pred(self.compile(self.defs[name])))  # type: ignore[arg-type]
            self.preds[name] = slot[0]
        return self.preds[name]

    def compile(self, s: dict[str, Any]) -> Spec:  # type: ignore[override]
        if "$ref" in s:
            return self.fast_ref(s["$ref"].rsplit("/", 1)[-1])
        if "anyOf" in s or "oneOf" in s:
            return self.union(s.get("anyOf") or s["oneOf"])
        if "allOf" in s and len(s["allOf"]) == 1:
            return self.compile(s["allOf"][0])
        if "const" in s or "enum" in s:
            allowed = {(type(x), x) for x in ([s["const"]] if "const" in s else s["enum"])}
            return lambda v: _hashable_in((type(v), v), allowed)
        kinds = self._kinds(s)
        if kinds == ("object",):
            return self.obj(s)  # type: ignore[return-value]
        if kinds == ("array",):
            return self.array(s)  # type: ignore[return-value]
        if set(s) == {"type"} or not kinds:
            return frozenset(t for k in (kinds or tuple(_PY)) for t in _PY[k])
        if kinds in (("integer",), ("number",)) and set(s) <= {"type", "minimum", "maximum"}:
            types, lo, hi = _PY[kinds[0]], s.get("minimum", -math.inf), s.get("maximum", math.inf)
            return lambda v: type(v) in types and lo <= v <= hi
        check = super().compile(s)  # numbers with ranges, constrained strings: rare, reuse the checks
        return lambda v: _passes(check, v)

    def obj(self, s: dict[str, Any]) -> Pred:  # type: ignore[override]
        props = {k: self.compile(v) for k, v in (s.get("properties") or {}).items() if v}
        required = tuple(s.get("required") or ())
        extra = s.get("additionalProperties")
        values = self.compile(extra) if isinstance(extra, dict) and extra else None
        if not props and not required and values is None:
            return lambda v: type(v) is dict

        def ok(v: Any) -> bool:
            if type(v) is not dict:
                return False
            for k in required:
                if k not in v:
                    return False
            for k, item in v.items():
                spec = props.get(k, values)
                if spec is None:
                    continue
                if type(spec) is frozenset:
                    if type(item) not in spec:
                        return False
                elif not spec(item):  # type: ignore[operator]
                    return False
            return True

        return ok

    def array(self, s: dict[str, Any]) -> Pred:  # type: ignore[override]
        item = _pred(self.compile(s["items"])) if s.get("items") else None
        lo, hi = s.get("minItems", 0), s.get("maxItems")
        return lambda v: (
            type(v) is list and lo <= len(v) and (hi is None or len(v) <= hi) and (item is None or all(map(item, v)))
        )

    def union(self, options: list[dict[str, Any]]) -> Spec:  # type: ignore[override]
        opts = [o for o in options if o != {"type": "null"}]
        nullable = len(opts) < len(options)
        tagged = self._tagged(opts) if len(opts) > 1 else None
        if tagged is not None:
            key, table, fallback = tagged
            preds = {tag: _pred(self.compile(self._option(opts, key, tag))) for tag in table}
            other = _pred(self.compile(self._fallback(opts, key))) if fallback is not None else None

            def tagged_ok(v: Any) -> bool:
                if type(v) is not dict:
                    return v is None and nullable
                tag = v.get(key)
                p = preds.get(tag) if isinstance(tag, str | int) else None
                p = p or other
                return p is not None and p(v)

            return tagged_ok
        by_type: dict[type, list[Pred | None]] = {type(None): [None]} if nullable else {}
        for o in opts:
            spec = self.compile(o)
            types = (
                spec
                if isinstance(spec, frozenset)
                else frozenset(t for k in (self._kinds(o) or tuple(_PY)) for t in _PY[k])
            )
            for t in types:
                by_type.setdefault(t, []).append(None if isinstance(spec, frozenset) else spec)
        by_type = {t: [None] if None in ps else ps for t, ps in by_type.items()}  # a bare type: always passes
        if all(ps == [None] for ps in by_type.values()):
            return frozenset(by_type)
        single = {t: ps[0] for t, ps in by_type.items() if len(ps) == 1}
        if len(single) == len(by_type):  # one branch per type (`X | null`, `str | list[...]`): one look-up

            def one(v: Any) -> bool:
                p = single.get(type(v), _absent)
                return p is None or (p is not _absent and p(v))  # type: ignore[operator]

            return one

        def ok(v: Any) -> bool:
            ps = by_type.get(type(v))
            if ps is None:
                return False
            return any(p is None or p(v) for p in ps)

        return ok

    def _option(self, opts: list[dict[str, Any]], key: str, tag: Any) -> dict[str, Any]:
        for o in opts:
            prop = self.resolve((self.resolve(o).get("properties") or {}).get(key) or {})
            if tag in ([prop["const"]] if "const" in prop else prop.get("enum") or []):
                return o
        raise KeyError(tag)

    def _fallback(self, opts: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return next(
            o
            for o in opts
            if self.resolve((self.resolve(o).get("properties") or {}).get(key) or {}).get("type") == "string"
            and "const" not in self.resolve((self.resolve(o).get("properties") or {}).get(key) or {})
        )


def _absent(v: Any) -> bool:  # pragma: no cover - a marker, never called
    return False


def _hashable_in(item: tuple[type, Any], allowed: set[tuple[type, Any]]) -> bool:
    try:
        return item in allowed
    except TypeError:  # an object or array where a constant belongs
        return False


def _passes(check: Check, v: Any) -> bool:
    problems: list[Problem] = []
    check(v, "", problems)
    return not problems
