"""The whole exception tree of coldbatch. This module imports nothing from the package.

    ColdbatchError
    ├── UsageError          bad options or arguments (CLI exit code 2)
    ├── InputError          a dataset or batch file that cannot be used as given (exit code 1);
    │                       names the file, the row or line, and the field
    ├── ValidationFailed    a batch file broke the provider's rules; carries the LineErrors
    ├── ConfigError         a missing extra, model file or price entry
    ├── ProviderError       the remote Batch API failed in a way retries did not fix (exit code 3)
    ├── BudgetExceeded      the job would cost more than --max-cost
    └── ApiError            an HTTP API error in OpenAI's envelope (server side)
    LineTooLarge (ValueError)     one line alone is larger than a whole shard may be (core/shard.py)
    EngineClosed (RuntimeError)   an engine was closed or its worker died; the request is retried

`LineError` is the one record of "what is wrong where" shared by `coldbatch validate`, `prepare`'s
reject list and (later) the server's `errors.data`; it lives here so every layer can raise it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem at one line of one file. `line` is 1-based; None means the whole file."""

    line: int | None
    code: str
    message: str
    param: str | None = None
    file: str | None = None

    def render(self) -> str:
        """`FILE:LINE: code: message` as printed by `coldbatch validate`."""
        where = self.file or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        param = f" [{self.param}]" if self.param else ""
        return f"{where}: {self.code}: {self.message}{param}"

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "code": self.code, "param": self.param, "message": self.message}


class ColdbatchError(Exception):
    """Something coldbatch could not do."""

    exit_code = 1


class UsageError(ColdbatchError):
    """The options or arguments do not make sense together."""

    exit_code = 2


class InputError(ColdbatchError):
    """An input file cannot be used as given."""


class ConfigError(ColdbatchError):
    """A required extra, model file or price entry is missing."""


class ProviderError(ColdbatchError):
    """The remote Batch API failed in a way retries did not fix."""

    exit_code = 3


class BudgetExceeded(ColdbatchError):
    """The job would cost more than --max-cost."""


class LineTooLarge(ValueError):
    """One line alone is larger than a whole shard may be. A ValueError, not a ColdbatchError: the
    builder rejects such a row before the shard planner sees it, so this one is a bug if it escapes."""

    def __init__(self, index: int, size: int, limit: int) -> None:
        self.index, self.size, self.limit = index, size, limit
        super().__init__(f"line {index} is {size:,} bytes; a shard may hold at most {limit:,}")


class EngineClosed(RuntimeError):
    """The engine was closed (or its worker died); the request should be retried after a restart."""


class ValidationFailed(ColdbatchError):
    """A batch file broke the provider's rules."""

    def __init__(self, errors: list[LineError], total: int) -> None:
        self.errors = errors
        self.total = total
        first = errors[0].render() if errors else ""
        super().__init__(f"{total} validation error(s); first: {first}")


class ApiError(ColdbatchError):
    """An HTTP API error in OpenAI's shape: `{"error": {message, type, param, code}}` with a status.

    Raised by the server's handlers and protocol checks; `server.app` is the one place that turns it
    into a response. `should_retry=False` adds `x-should-retry: false` (the SDK otherwise retries 409s).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.should_retry = should_retry

    def envelope(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(kind: str, obj_id: str) -> ApiError:
    return ApiError(404, f"No {kind} found with id '{obj_id}'.", param="id", code=None)
