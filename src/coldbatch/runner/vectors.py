"""OUTPUT's `embedding` column: the vectors of an embeddings job, typed for the file they go into.

Why a typed column: a vector kept as JSON text must be parsed again by every reader, and in Parquet a
`list<float>` column is what pandas, polars and DuckDB read as arrays (and 4 bytes a number, not ~11).
CSV has no list type, so there the vector stays JSON text; JSONL gets a real JSON array.
`vector` needs neither numpy nor pyarrow: the small-input writer (output_rows.py) reads vectors with it too.
"""

from __future__ import annotations

import base64
import sys
from array import array
from typing import TYPE_CHECKING, Any

import orjson

from coldbatch.runner.output_spec import EMBEDDING as COLUMN

if TYPE_CHECKING:
    import pyarrow as pa


def embedding_column(contents: list[str | None], kind: str) -> pa.Array:
    """The column for `contents` (each answer's JSON text, None for a row without one) in an OUTPUT of `kind`.

    Parquet: list<float32> (the model's own precision); JSONL: list<float64>, so each number is written
    with the digits it came with; CSV/TSV: the JSON text as is.
    """
    import pyarrow as pa

    from coldbatch.runner.columns import column

    if kind not in ("parquet", "jsonl"):
        return column(contents, pa.string())
    item = pa.float32() if kind == "parquet" else pa.float64()
    return column([vector(c) for c in contents], pa.list_(item))


def vector(content: str | None) -> list[float] | None:
    """One answer's vector: a JSON array of numbers, or the base64 text of little-endian float32s (an answer
    asked for with `"encoding_format": "base64"`). Anything else (several inputs in one request) is None."""
    if content is None:
        return None
    value: Any = orjson.loads(content)
    if isinstance(value, str):
        floats = array("f", base64.b64decode(value))  # ValueError when not whole float32s, as numpy's
        if sys.byteorder == "big":
            floats.byteswap()
        return floats.tolist()
    if isinstance(value, list) and all(isinstance(x, int | float) for x in value):
        return value
    return None


__all__ = ["COLUMN", "embedding_column", "vector"]
