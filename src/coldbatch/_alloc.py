"""Allocator settings that must be in place before polars and pyarrow are imported.

polars allocates through jemalloc and pyarrow through mimalloc; both keep freed pages for a while by
default. `prepare` frees tens of MB per batch, so RSS would climb to several hundred MB while live
data stays near 50 MB. Returning pages promptly keeps a 2.4 M-row prepare under 300 MB at no
measurable cost (docs/benchmarks.md). Values the user set win; if the user imported polars or
pyarrow before coldbatch, their defaults stay.
"""

from __future__ import annotations

import os

os.environ.setdefault("_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:200,muzzy_decay_ms:0")
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")
