"""coldbatch: the cold path of LLM work — prepare, validate, estimate, run and serve batch jobs.

Public API (the CLI is a thin layer over these):

    from coldbatch import RequestSpec, prepare, validate_file, estimate
    from coldbatch import run_job, resume_job, cancel_job, JobReport

Names are imported on first use (PEP 562), so `import coldbatch` and `coldbatch --version` do not pay
for polars, pyarrow or numpy (issue 11: a start under 0.3 s). `estimate` is the function, although a
subpackage has the same name: the package refuses the import system's binding of the subpackage over
it (`_Package.__setattr__`); `from coldbatch.estimate.api import …` works as before.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from coldbatch import _alloc  # noqa: F401  (must run before polars is imported)
from coldbatch.errors import ColdbatchError, InputError, LineError, UsageError, ValidationFailed
from coldbatch.protocol.limits import Limits

if TYPE_CHECKING:
    from coldbatch.builder.api import PrepareResult, prepare
    from coldbatch.builder.spec import RequestSpec
    from coldbatch.estimate.api import Estimate, estimate
    from coldbatch.job import JobReport, cancel_job, resume_job, run_job
    from coldbatch.validation import validate_file

#: public name -> the module that defines it, imported when the name is first read
_LAZY: dict[str, str] = {
    "PrepareResult": "coldbatch.builder.api",
    "prepare": "coldbatch.builder.api",
    "RequestSpec": "coldbatch.builder.spec",
    "Estimate": "coldbatch.estimate.api",
    "estimate": "coldbatch.estimate.api",
    "validate_file": "coldbatch.validation",
    "JobReport": "coldbatch.job",
    "run_job": "coldbatch.job",
    "resume_job": "coldbatch.job",
    "cancel_job": "coldbatch.job",
}

__all__ = [
    "ColdbatchError",
    "Estimate",
    "InputError",
    "JobReport",
    "Limits",
    "LineError",
    "PrepareResult",
    "RequestSpec",
    "UsageError",
    "ValidationFailed",
    "__version__",
    "cancel_job",
    "estimate",
    "prepare",
    "resume_job",
    "run_job",
    "validate_file",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coldbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package module, keeping its public functions over same-named subpackages."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return  # importing `coldbatch.estimate` must not turn `coldbatch.estimate` into the subpackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
