"""Allocator settings that must be in place before polars and pyarrow are imported.

polars allocates through jemalloc and pyarrow through mimalloc; both keep freed pages for a while by
default. `prepare` frees tens of MB per batch, so RSS would climb to several hundred MB while live
data stays near 50 MB. Returning pages promptly keeps a 2.4 M-row prepare under 300 MB.

"Promptly" is not "at once": with mimalloc's purge delay at 0 every freed Arrow buffer went back to
the kernel and the next batch faulted the same pages in again, zeroed: 270,000 page faults and
0.5 s of system time per 2.4 M rows, a fifth of the run on 2 cores. 250 ms keeps the pages of the
batch in flight for the next one (faults 270 k -> 110-130 k, RSS +25 MB). OpenBLAS's idle threads
spin in sched_yield after numpy starts them; coldbatch's numpy work is elementwise, so one BLAS
thread (measured: 0.2 s user + sys fewer per prepare). Values the user set win; if the user imported
polars, pyarrow or numpy before coldbatch, their defaults stay (docs/benchmarks.md, issue 11).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:200,muzzy_decay_ms:0")
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "250")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

#: inputs up to this size (about one 16,384-row read batch of short texts) take Arrow's system pool
SMALL_INPUT_BYTES = 4 << 20


def small_input_pool(path: str | os.PathLike[str]) -> bool:
    """Give a small input's Arrow buffers the system allocator instead of mimalloc; True when it did.

    mimalloc reserves and keeps whole segments for the few MB a small job allocates: 1,000 tweets
    (235 KB) peaked 18 MB higher with it than with glibc's malloc (187 vs 169 MB; 11 MB of that in
    the CSV read alone). A large input keeps mimalloc, whose purge delay above is tuned for prepare's
    batches. Call before the first Arrow allocation (buffers made earlier stay in their pool, which
    is safe but keeps its pages). A pool the user chose by ARROW_DEFAULT_MEMORY_POOL wins.

    Before pyarrow is imported the choice is made through that variable (pyarrow reads it at its first
    allocation): a small CSV/TSV/JSONL prepare never imports pyarrow at all (`builder.small`), and
    importing it here only to pick a pool cost 0.13 s and ~40 MB."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return False
    try:
        if os.path.getsize(path) > SMALL_INPUT_BYTES:
            return False
    except OSError:
        return False  # the command reports a missing input itself
    if "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        return True
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    return True
