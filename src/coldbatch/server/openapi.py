"""`GET /openapi.json`: an OpenAPI 3.1 document of the API surface `coldbatch serve` answers.

Written by hand, from what the official SDK sends and parses (the object shapes of `objects.py`, OpenAI's
error envelope), not generated: Starlette has no schema generator, and a generated one would describe our
handlers rather than the contract. A contract test checks that every route is in it and that real responses
match its schemas, so it cannot drift silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from coldbatch import __version__
from coldbatch.protocol import limits as L

_NULL_STR = {"type": ["string", "null"]}
_NULL_INT = {"type": ["integer", "null"]}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NULL_STR,
                "code": _NULL_STR,
            },
        }
    },
}
_FILE = {
    "type": "object",
    "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "file"},
        "bytes": {"type": "integer"},
        "created_at": {"type": "integer"},
        "expires_at": _NULL_INT,
        "filename": {"type": "string"},
        "purpose": {"type": "string"},
        "status": {"type": "string"},
        "status_details": _NULL_STR,
    },
}
_COUNTS = {
    "type": "object",
    "required": ["total", "completed", "failed"],
    "properties": {k: {"type": "integer"} for k in ("total", "completed", "failed")},
}
_BATCH_ERRORS = {
    "type": ["object", "null"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"code": _NULL_STR, "message": _NULL_STR, "param": _NULL_STR, "line": _NULL_INT},
            },
        },
    },
}
_STATUSES = ["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
_BATCH = {
    "type": "object",
    "required": [
        "id",
        "object",
        "endpoint",
        "input_file_id",
        "completion_window",
        "status",
        "created_at",
        "request_counts",
    ],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "batch"},
        "endpoint": {"type": "string"},
        "model": _NULL_STR,
        "errors": _BATCH_ERRORS,
        "input_file_id": {"type": "string"},
        "completion_window": {"type": "string"},
        "status": {"enum": _STATUSES},
        "output_file_id": _NULL_STR,
        "error_file_id": _NULL_STR,
        "created_at": {"type": "integer"},
        **{
            f"{s}_at": _NULL_INT
            for s in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        },
        "expires_at": _NULL_INT,
        "request_counts": _COUNTS,
        "usage": {"type": ["object", "null"]},
        "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    },
}


def _list(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "first_id": _NULL_STR,
            "last_id": _NULL_STR,
            "has_more": {"type": "boolean"},
        },
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    summary: str, ok: dict[str, Any], *errors: int, body: dict[str, Any] | None = None, params: Sequence[str] = ()
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", **ok}}
    for status in (*errors, 401):
        responses[str(status)] = {"description": "Error", **_json({"$ref": "#/components/schemas/Error"})}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    if body is not None:
        op["requestBody"] = body
    return op


_REF = {name: {"$ref": f"#/components/schemas/{name}"} for name in ("File", "Batch", "Error")}
_JSON_BODY = {"required": True, **_json({"type": "object"})}
_CREATE_BATCH = {
    "required": True,
    **_json(
        {
            "type": "object",
            "required": ["input_file_id", "endpoint", "completion_window"],
            "properties": {
                "input_file_id": {"type": "string"},
                "endpoint": {"enum": list(L.ENDPOINTS)},
                "completion_window": {"type": "string"},
                "metadata": {"type": ["object", "null"]},
            },
        }
    ),
}
_UPLOAD = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}},
            }
        }
    },
}
_SYNC = {
    ep: {
        "post": _op(
            f"Synchronous {ep} (what the engine serves)", _json({"type": "object"}), 400, 404, 413, body=_JSON_BODY
        )
    }
    for ep in (L.CHAT, L.EMBEDDINGS, L.COMPLETIONS, L.RESPONSES, L.MODERATIONS)
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "coldbatch serve",
        "version": __version__,
        "description": "OpenAI-compatible Files and Batches API (docs/server.md).",
    },
    "components": {
        "schemas": {"File": _FILE, "Batch": _BATCH, "Error": _ERROR},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/files": {
            "post": _op("Upload a file", _json(_REF["File"]), 400, 413, 507, body=_UPLOAD),
            "get": _op("List files", _json(_list(_REF["File"])), 400),
        },
        "/v1/files/{file_id}": {
            "get": _op("Retrieve a file", _json(_REF["File"]), 404, params=["file_id"]),
            "delete": _op(
                "Delete a file", _json({"type": "object", "required": ["id", "deleted"]}), 404, params=["file_id"]
            ),
        },
        "/v1/files/{file_id}/content": {
            "get": _op(
                "A file's bytes",
                {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                404,
                params=["file_id"],
            )
        },
        "/v1/batches": {
            "post": _op("Create a batch", _json(_REF["Batch"]), 400, 404, 413, body=_CREATE_BATCH),
            "get": _op("List batches", _json(_list(_REF["Batch"])), 400),
        },
        "/v1/batches/{batch_id}": {"get": _op("Retrieve a batch", _json(_REF["Batch"]), 404, params=["batch_id"])},
        "/v1/batches/{batch_id}/cancel": {
            "post": _op("Cancel a batch", _json(_REF["Batch"]), 404, 409, params=["batch_id"])
        },
        **_SYNC,
        "/v1/models": {"get": _op("Models the engine serves", _json(_list({"type": "object"})))},
        "/health": {
            "get": {
                "summary": "Engine workers and storage",
                "security": [],
                "responses": {
                    "200": {"description": "OK", **_json({"type": "object", "required": ["status"]})},
                    "503": {
                        "description": "Unavailable or disk full",
                        **_json({"type": "object", "required": ["status"]}),
                    },
                },
            }
        },
        "/metrics": {"get": _op("Prometheus metrics", {"content": {"text/plain": {"schema": {"type": "string"}}}})},
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OK", **_json({"type": "object"})}},
            }
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
