"""Arrow columns built from Python lists through polars, not `pa.array`.

`pa.array(list)` asks pandas whether the list is "array-like", and that first question imports pandas
(0.3-0.5 s and 44 MB of a `coldbatch run` that never uses it; issue 11, a lighter client). polars, which
OUTPUT's writer has imported already, builds the same column without it; the cast gives the exact type.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

_POLARS = {
    pa.string(): pl.String,
    pa.binary(): pl.Binary,
    pa.float64(): pl.Float64,
    pa.float32(): pl.Float32,
    pa.int32(): pl.Int32,
    pa.int64(): pl.Int64,
}


def column(values: list[Any], type_: pa.DataType) -> pa.Array:
    """`pa.array(values, type_)` for the scalar types above and lists of them."""
    dtype = pl.List(_POLARS[type_.value_type]) if pa.types.is_list(type_) else _POLARS[type_]
    arr = pl.Series(values=values, dtype=dtype).to_arrow(compat_level=pl.CompatLevel.oldest())
    return arr.cast(type_)
