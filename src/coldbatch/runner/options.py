"""`RunOptions`: everything a job needs besides its input, and a new job's id.

Stored in the ledger as a dict (`asdict`) when the job is created, and read back by every run of it, so a
`resume` needs nothing but the job id. It is a plain (not frozen) dataclass because callers build and adjust
it field by field before the job exists; during a run it sits, unchanged, in the frozen `RunContext`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from coldbatch.builder.spec import RequestSpec
from coldbatch.protocol.limits import Limits


@dataclass
class RunOptions:
    """Everything a job needs besides its input, stored in the ledger so `resume` needs nothing else."""

    spec: dict[str, Any]
    limits: dict[str, int] = field(default_factory=lambda: asdict(Limits()))
    fmt: str | None = None
    max_cost: float | None = None
    max_attempts: int = 3
    max_in_flight: int = 50
    max_enqueued_tokens: int | None = None
    completion_window: str = "24h"
    keep_remote_files: bool = False
    poll_interval: float = 5.0
    max_poll_interval: float = 60.0
    provider: str = "embedded"
    provider_kind: str = "openai"  #: openai | azure | anthropic | gemini: the adapter (providers/kinds.py)
    dedup: bool | None = None  #: None = on, except for sampling requests (temperature/top_p > 0, n > 1)
    cache: bool | None = None  #: None = on, except for sampling requests
    cache_only: bool = False  #: answer only from the cache; never send (never spend)
    cache_max_entries: int | None = None
    cache_max_age_days: float | None = None
    mode: str = "batch"  #: batch | sync | auto (auto is resolved to batch or sync after prepare; see sync_mode.route)
    rpm: float | None = None  #: sync mode: requests per `rate_window` (None: learn from x-ratelimit-* headers)
    tpm: float | None = None  #: sync mode: tokens per `rate_window`
    rate_window: float = 60.0  #: sync mode: the budgets' window in seconds (a minute; tests scale it down)
    request_timeout: float = 600.0  #: sync mode: seconds per attempt
    concurrency: int = 64  #: sync mode: requests in flight at most
    sync_threshold: int = 1000  #: auto mode: sync when at most this many requests are to be sent
    invalid_output_retries: int = 1  #: an answer that misses the labels/schema is asked again this often
    deadline: float | None = None  #: unix time; late batches are cancelled and the rest sent sync (deadline.py)
    sync_base_url: str | None = None  #: where sync mode and a deadline rescue send (default: the provider)
    #: --examples: the job's requests are the rows' embeddings, labelled by a classifier fitted on the examples
    #: (runner/examples.py): {"labels", "file" (the kept examples), "source", "label_column"}
    examples: dict[str, Any] | None = None
    output_prefix: str = ""  #: before every column OUTPUT adds (--output-prefix; runner/output.py)

    def request_spec(self) -> RequestSpec:
        d = dict(self.spec)
        d["labels"] = tuple(d.get("labels") or ())
        return RequestSpec(**d)


def new_job_id(name: str | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{name or 'job'}-{stamp}-{secrets.token_hex(2)}"
