"""The results log's two ends, one code path for the single-process executor and for scale-out (the
coordinator and its chunk workers), so a batch's result files are the same bytes whichever ran it.

In: `result_row` turns one engine result into the row `ServerStore.record_results` logs. Out:
`write_log` streams a batch's log into its output and error files (input order, then a line for each
request that never ran when the batch expired or was cancelled), and `publish` registers those files
with the final status in one transaction. File keys and never-run ids are derived from the batch, so a
finalize redone after a crash writes the same bytes under the same keys, and nothing half-published is
ever visible.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from itertools import islice
from typing import IO, Any

from coldbatch.core.status import BatchStatus as S
from coldbatch.engines.base import Result
from coldbatch.protocol.batches import FILE_TTL, seq_id
from coldbatch.protocol.lines import encode_never_ran, encode_response
from coldbatch.store.interfaces import BlobStore, ServerStore
from coldbatch.store.records import ResultRow

logger = logging.getLogger(__name__)

EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
CANCELLED = {"code": "batch_cancelled", "message": "This request was cancelled before it could be executed."}
#: log rows written to the result files at a time (memory: about this many output lines)
WRITE_GROUP = 1024


def result_row(line: int, cid: str, res: Result) -> ResultRow:
    """The log row of one finished request: its output line (ids minted now) and, if it succeeded, its
    token usage."""
    data = encode_response(seq_id("batch_req_"), cid, seq_id("req_"), res.status_code, res.body)
    if not res.ok:
        return cid, line, False, data, 0, 0, 0
    u = res.usage
    return (
        cid,
        line,
        True,
        data,
        u.get("prompt_tokens", 0),
        (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
        u.get("completion_tokens", 0),
    )


def never_run_id(batch_id: str, custom_id: str) -> str:
    """The `batch_req_…` id of a request that never ran: derived, so a rebuilt error file is identical."""
    return "batch_req_" + hashlib.blake2b(f"{batch_id}\n{custom_id}".encode(), digest_size=12).hexdigest()


def file_keys(batch_id: str) -> tuple[str, str]:
    """The blob keys of the batch's output and error files (derived from its id: a rerun overwrites)."""
    return f"file-{batch_id[6:]}o", f"file-{batch_id[6:]}e"


def write_log(
    store: ServerStore,
    row: dict[str, Any],
    final: S,
    out: IO[bytes],
    err: IO[bytes],
    never_run: Callable[[set[int]], Iterable[str]],
) -> dict[str, int]:
    """Write the batch's log to `out` (successes) and `err` (failures) in input order; for a batch that
    started and then expired or was cancelled, an error line for each request that never ran
    (`never_run(lines logged)` gives their custom_ids in input order). Returns the counts ok/err/never."""
    bid = row["id"]
    counts = {"ok": 0, "err": 0, "never": 0}
    seen: set[int] = set()
    rows = store.iter_results(bid)
    while group := list(islice(rows, WRITE_GROUP)):  # one write per file and group, not one per line
        seen.update(r[1] for r in group)
        oks = [r[3] for r in group if r[2]]
        errs = [r[3] for r in group if not r[2]] if len(oks) < len(group) else []
        counts["ok"] += len(oks)
        counts["err"] += len(errs)
        for f, lines in ((out, oks), (err, errs)):
            if lines:
                lines.append(b"")  # (the last line's newline)
                f.write(b"\n".join(lines))
    if final in (S.EXPIRED, S.CANCELLED) and row["in_progress_at"] is not None:
        reason = EXPIRED if final == S.EXPIRED else CANCELLED
        for cid in never_run(seen):
            err.write(encode_never_ran(never_run_id(bid, cid), cid, reason) + b"\n")
            counts["never"] += 1
    return counts


def publish(
    store: ServerStore, blobs: BlobStore, row: dict[str, Any], final: S, counts: dict[str, int], now: int
) -> bool:
    """Register the non-empty result files (an empty one's blob is deleted) with the final status and the
    counts, in one transaction; False (logged) if the status changed meanwhile."""
    bid = row["id"]
    ttl = row["output_ttl"] or FILE_TTL
    failed = counts["err"] + counts["never"]
    files, fields = [], {"failed": failed, "completed": counts["ok"]}
    for key, kind, n in zip(file_keys(bid), ("output", "error"), (counts["ok"], failed), strict=True):
        if n:
            files.append(
                {
                    "id": key,
                    "owner": row["owner"],
                    "filename": f"batch_{bid[6:]}_{kind}.jsonl",
                    "purpose": "batch_output",
                    "bytes": blobs.size(key),
                    "created_at": now,
                    "expires_at": now + ttl,
                }
            )
            fields[f"{kind}_file_id"] = key
        else:
            blobs.delete(key)
    if store.transition(bid, final, now, files=files, **fields):
        return True
    logger.warning("batch %s: could not move to %s (status changed meanwhile)", bid, final)
    return False
