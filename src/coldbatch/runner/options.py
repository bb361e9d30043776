"""`RunOptions`: everything a job needs besides its input, and a new job's id.

Stored in the ledger as JSON (`to_json`) when the job is created, and read back (`from_json`) by every run of
it, so a `resume` needs nothing but the job id: those two are the one place the options meet their stored
form. Frozen, its JSON-shaped fields (`spec`, `examples`) read-only dicts (`core/frozen.py`): a caller that adjusts
options before the job exists makes a changed copy (`dataclasses.replace`), and nothing can change them while a
run reads them.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from coldbatch.builder.spec import RequestSpec
from coldbatch.core.frozen import frozen
from coldbatch.errors import InputError
from coldbatch.protocol.limits import Limits


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything a job needs besides its input, stored in the ledger so `resume` needs nothing else."""

    spec: Mapping[str, Any]  #: `RequestSpec.describe()`, read-only (`request_spec()` is the typed spec)
    limits: Limits = field(default_factory=Limits)
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
    examples: Mapping[str, Any] | None = None
    output_prefix: str = ""  #: before every column OUTPUT adds (--output-prefix; runner/output.py)

    def __post_init__(self) -> None:
        """Own and freeze the JSON-shaped fields (a caller's dict is copied, never shared); a `limits` given as
        the stored dict becomes `Limits`."""
        object.__setattr__(self, "spec", frozen(dict(self.spec)))
        if isinstance(self.limits, Mapping):
            object.__setattr__(self, "limits", Limits(**self.limits))
        if self.examples is not None:
            object.__setattr__(self, "examples", frozen(dict(self.examples)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], job_id: str = "?") -> RunOptions:
        """A job's options as the ledger stores them (any coldbatch since the ledger began wrote this shape)."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(
                f"job {job_id}: its stored options have field(s) {', '.join(unknown)} this coldbatch does not "
                "know; was the job created by a newer version?"
            )
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """The options as the ledger stores them: plain JSON values, the field names as keys."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["spec"] = copy.deepcopy(dict(self.spec))
        out["limits"] = asdict(self.limits)
        out["examples"] = None if self.examples is None else copy.deepcopy(dict(self.examples))
        return out

    def request_spec(self) -> RequestSpec:
        """The typed spec, built from a plain copy (the builder may extend a request body it is given)."""
        d = copy.deepcopy(dict(self.spec))
        d["labels"] = tuple(d.get("labels") or ())
        return RequestSpec(**d)


def new_job_id(name: str | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{name or 'job'}-{stamp}-{secrets.token_hex(2)}"
