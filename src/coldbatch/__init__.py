"""coldbatch: the cold path of LLM work — prepare, validate, estimate, run and serve batch jobs.

Public API (the CLI is a thin layer over these):

    from coldbatch import RequestSpec, prepare, validate_file, estimate
"""

from __future__ import annotations

__version__ = "0.1.0"

from coldbatch import _alloc  # noqa: F401  (must run before polars is imported)
from coldbatch.builder.api import PrepareResult, prepare
from coldbatch.builder.spec import RequestSpec
from coldbatch.errors import ColdbatchError, InputError, LineError, UsageError, ValidationFailed
from coldbatch.protocol.limits import Limits

__all__ = [
    "ColdbatchError",
    "Estimate",
    "InputError",
    "Limits",
    "LineError",
    "PrepareResult",
    "RequestSpec",
    "UsageError",
    "ValidationFailed",
    "__version__",
    "estimate",
    "prepare",
    "validate_file",
]
