"""The one way to run, resume and cancel a job, for the CLI and Python callers alike (issue 11, item 5).

`run_job` creates a job in the ledger (COLDBATCH_HOME) and drives it to its end; `resume_job` continues one
after a crash (nothing paid for is sent again); `cancel_job` cancels its batches and writes OUTPUT with what
finished. Each returns a `JobReport`. Driving a job means: take its lock (one process per job), open its
provider (the embedded server when no base_url), check the target serves the model, pick batch or sync mode
once, run the Runner and translate an SDK's API error into a ProviderError with `resume` advice. The CLI
(cli/jobs.py) adds only its flags, its progress display, its confirmation question and its exit codes; it
lives above the runner because it composes it with the embedded server (the runner never imports the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldbatch.builder.spec import RequestSpec
from coldbatch.core.unit_state import JobStatus
from coldbatch.errors import InputError, ProviderError, UsageError
from coldbatch.providers import choose
from coldbatch.providers import kinds as K
from coldbatch.runner import examples as EX
from coldbatch.runner import home as H
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.options import RunOptions, new_job_id
from coldbatch.runner.orchestrator import Runner
from coldbatch.runner.output_spec import output_kind
from coldbatch.runner.report import JobReport
from coldbatch.runner.sync_mode import route

if TYPE_CHECKING:
    from coldbatch.hotpath.client import SyncClient

#: what a caller is told along the way (the CLI: a line on stderr); the library default says nothing
Notice = Callable[[str], None]
#: asked once before a fresh job sends anything, with its runner and estimate; raises to refuse
Confirm = Callable[[Runner, JobEstimate], None]


def _quiet(_: str) -> None:
    """The library's default Notice: a Python caller reads the report, not stderr."""


def _budget_only(runner: Runner, est: JobEstimate) -> None:
    """The library's default Confirm: calling run_job is the consent; only max_cost can refuse."""
    runner.check_budget(est)


def ledger() -> Ledger:
    return Ledger(H.home() / "ledger.sqlite3")


@contextlib.contextmanager
def _provider(opts: RunOptions, base_url: str | None, api_key: str | None, engine: str) -> Iterator[Any]:
    """The job's provider adapter (`opts.provider_kind`: openai, azure, anthropic, gemini; providers/kinds.py)."""
    root = H.home()
    if opts.provider == "embedded":
        from coldbatch.server.embedded import EmbeddedServer  # only a job on the embedded default pays for it

        with EmbeddedServer(root / "server", engine=engine) as srv:
            yield K.make(
                opts.provider_kind,
                base_url=srv.base_url,
                key=K.api_key(opts.provider_kind, "embedded"),
                state_dir=root / "providers",
            )
    else:
        yield K.make(
            opts.provider_kind,
            base_url=base_url or opts.provider,
            key=K.api_key(opts.provider_kind, api_key),
            state_dir=root / "providers",
        )


class JobLock:
    """One process drives a job at a time (two would both submit its planned units): an advisory lock on
    jobs/<id>/lock, released by the OS when the process ends, however it ends (kill -9 included)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "lock"
        self.fh = self.path.open("a+")

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return True

    def holder(self) -> str:
        self.fh.seek(0)
        return self.fh.read().strip() or "?"

    def release(self) -> None:
        self.fh.close()


def _held_elsewhere(lg: Ledger, lock: JobLock, job_id: str, cancel: bool, notice: Notice) -> None:
    """Another process drives the job: refuse to run it twice; a cancel asks that process to cancel."""
    holder = lock.holder()
    lock.release()
    try:
        if not cancel:
            raise UsageError(
                f"Job {job_id} is being run by another process (pid {holder}); wait for it, or "
                f"stop it and run `coldbatch resume {job_id}`."
            )
        lg.set_job(job_id, status=JobStatus.CANCELLING)
    finally:
        lg.close()
    notice(f"job {job_id} is running in process {holder}: asked it to cancel its batches and finish.")


@dataclass(frozen=True)
class _Drive:
    """How one drive of a job talks to its caller and reaches its provider."""

    base_url: str | None
    api_key: str | None
    engine: str
    cancel: bool
    confirm: Confirm
    notice: Notice
    on_event: Callable[..., Any] | None


def drive(
    job_id: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    engine: str = "llama-cpp",
    cancel: bool = False,
    confirm: Confirm = _budget_only,
    notice: Notice = _quiet,
    on_event: Callable[..., Any] | None = None,
) -> JobReport | None:
    """Run (or cancel) a job to its end and return the runner's report; None when another process drives it
    (a cancel then asks that process to cancel)."""
    lg = ledger()
    job = lg.job(job_id)
    if job is None:
        lg.close()
        raise InputError(f"No job named {job_id!r}; see `coldbatch jobs`.")
    lock = JobLock(H.job_dir(H.home(), job_id))
    if not lock.acquire():
        _held_elsewhere(lg, lock, job_id, cancel, notice)
        return None
    if cancel and job.status in (JobStatus.DONE, JobStatus.CANCELLED):
        lock.release()
        lg.close()
        raise UsageError(f"Job {job_id} has already finished ({job.status}); nothing to cancel.")
    how = _Drive(base_url, api_key, engine, cancel, confirm, notice, on_event)
    try:
        return asyncio.run(_go(lg, job_id, RunOptions.from_json(job.options, job_id), how))
    finally:
        lg.close()
        lock.release()


async def _go(lg: Ledger, job_id: str, opts: RunOptions, how: _Drive) -> JobReport:
    """The drive itself, inside the job's lock: its provider open for exactly as long as it runs."""
    from coldbatch.runner import preflight  # the target check, one rule for both modes (imports openai)

    with _provider(opts, how.base_url, how.api_key, how.engine) as provider:
        runner = Runner(
            lg, provider, job_id, H.home(), on_event=how.on_event, sync_client=_sync_clients(provider, how.api_key)
        )
        try:
            if how.cancel:
                await runner.cancel()
            else:
                await preflight.check_target(lg, provider, opts, job_id, how.notice)
            if opts.examples and not how.cancel:
                await _companion(lg, provider, EX.child_id(job_id), how)
            est = runner.prepare()
            fresh = not how.cancel and lg.job_status(job_id) == JobStatus.PREPARED
            runner, est = _routed(lg, runner, est, fresh, how)
            if fresh:
                how.confirm(runner, est)
            return await runner.run()
        except choose.api_errors() as exc:  # evaluated when matched: the SDKs imported by then
            raise ProviderError(
                f"the Batch API at {provider.name} failed: {type(exc).__name__}: {exc}. "
                f"Nothing sent is lost: `coldbatch resume {job_id}` continues the job."
            ) from exc
        finally:
            await provider.aclose()


async def _companion(lg: Ledger, provider: Any, job_id: str, how: _Drive) -> None:
    """Run an --examples job's companion (the examples' embeddings) to its end first; no question asked (a few
    hundred embeddings), and nothing to do once it is done."""
    job = lg.job(job_id)
    if job is None or job.status in (JobStatus.DONE, JobStatus.CANCELLED):
        return
    how.notice(f"examples: embedding them first (job {job_id})")
    runner = Runner(
        lg, provider, job_id, H.home(), on_event=how.on_event, sync_client=_sync_clients(provider, how.api_key)
    )
    est = runner.prepare()
    runner, est = _routed(lg, runner, est, lg.job_status(job_id) == JobStatus.PREPARED, how)
    await runner.run()
    summary = lg.summary(job_id)
    if not summary["succeeded"]:  # e.g. a provider without /v1/embeddings: say so before the rows are sent
        raise UsageError(
            f"no example could be embedded ({summary['failed_by_code'] or 'no answer'}; see "
            f"`coldbatch status {job_id}`): the rows cannot be labelled with --examples here"
        )


def _routed(lg: Ledger, runner: Runner, est: JobEstimate, fresh: bool, how: _Drive) -> tuple[Runner, JobEstimate]:
    """Resolve mode auto on a fresh job (the runner then picks its mode strategy from the options, once,
    when it runs: sync mode and a --deadline rescue open their client through `_sync_clients`)."""
    if fresh and runner.opts.mode == "auto":
        runner, est = _route(lg, runner, est, how.notice)
    return runner, est


def _sync_clients(provider: Any, api_key: str | None) -> Callable[[RunOptions], SyncClient]:
    """What the runner opens a sync client with, for the job's options, when its mode needs one."""
    return lambda o: _sync_client(o, provider, api_key)


def _sync_client(o: RunOptions, provider: Any, api_key: str | None) -> SyncClient:
    """Sync calls go to sync_base_url, else the provider's own /v1/<endpoint> (the embedded server's hot path)."""
    from coldbatch.hotpath.client import SyncClient  # httpx: only a run that sends sync requests loads it
    from coldbatch.providers.openai_compat import OpenAIProvider  # the one adapter with a sync API here

    assert isinstance(provider, OpenAIProvider)
    if o.sync_base_url:
        base, key = o.sync_base_url, os.environ.get("COLDBATCH_SYNC_API_KEY") or api_key
    else:
        base, key = str(provider.client.base_url), "embedded" if o.provider == "embedded" else api_key
    return SyncClient(
        base,
        key,
        rpm=o.rpm,
        tpm=o.tpm,
        window=o.rate_window,
        max_attempts=o.max_attempts,
        timeout=o.request_timeout,
        concurrency=o.concurrency,
    )


def _route(lg: Ledger, runner: Runner, est: JobEstimate, notice: Notice) -> tuple[Runner, JobEstimate]:
    """Mode auto: pick sync or batch from the requests to send, say why, and store the choice (so `resume`
    continues in that mode); returns a runner that sees it, and the estimate with the choice."""
    choice = route(est, runner.opts.sync_threshold)
    notice(f"mode: {choice['mode']} ({choice['reason']})")
    opts = replace(runner.opts, mode=choice["mode"])
    est = est.routed(choice)
    lg.set_job(runner.job_id, options=opts.to_json(), estimate=est.to_json())
    ctx = runner.ctx
    return Runner(lg, ctx.provider, ctx.job_id, ctx.root, on_event=ctx.emit, sync_client=runner.sync_client), est


def create_job(
    job_id: str,
    input_path: Path,
    output: Path,
    opts: RunOptions,
    companion: tuple[RequestSpec, dict[str, Any]] | None = None,
) -> None:
    """Write a new job (and an --examples job's companion) into the ledger, ready to be driven."""
    lg = ledger()
    try:
        lg.create_job(job_id, str(input_path.resolve()), str(output.resolve()), opts.to_json())
        if companion:
            ex_spec, ex = companion
            lg.create_job(
                EX.child_id(job_id),
                ex["file"],
                str(Path(ex["file"]).with_suffix(".embedded.csv")),
                replace(opts, spec=ex_spec.describe(), examples=None).to_json(),
            )
    finally:
        lg.close()


def run_job(
    input_path: str | Path,
    output: str | Path,
    spec: RequestSpec,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    engine: str = "llama-cpp",
    name: str | None = None,
    mode: str = "auto",
    **options: Any,
) -> JobReport:
    """Run a whole job: rows of INPUT → requests of `spec` → the Batch API at `base_url` (default: the embedded
    server with `engine`) or the sync API (mode auto/sync) → OUTPUT. `options` are RunOptions fields
    (max_cost, poll_interval, max_attempts, deadline as unix time, ...). Raises what the CLI reports."""
    from coldbatch.runner import preflight  # imports the openai SDK: not on `import coldbatch`

    input_path, output = Path(input_path), Path(output)
    output_kind(output)
    if not input_path.is_file():
        raise InputError(f"{input_path}: no such file")
    given = RunOptions(spec=spec.describe(), **options)
    kind, limits, mode = choose.resolve(
        options.pop("provider_kind", None), base_url, spec, given.limits, mode, deadline=given.deadline is not None
    )
    opts = replace(given, limits=limits, provider_kind=kind, mode=mode, provider=base_url or "embedded")
    preflight.check_output_columns(input_path, opts.fmt, spec, opts.output_prefix, None)  # before anything is sent
    job_id = new_job_id(name)
    create_job(job_id, input_path, output, opts)
    return _report(drive(job_id, base_url=base_url, api_key=api_key, engine=engine))


def resume_job(
    job_id: str, *, base_url: str | None = None, api_key: str | None = None, engine: str = "llama-cpp"
) -> JobReport:
    """Continue a job after a crash or interruption (or collect a finished one's OUTPUT again): nothing paid
    for is sent again."""
    return _report(drive(job_id, base_url=base_url, api_key=api_key, engine=engine))


def cancel_job(
    job_id: str, *, base_url: str | None = None, api_key: str | None = None, engine: str = "llama-cpp"
) -> JobReport | None:
    """Cancel a job's running batches, keep what finished and write OUTPUT; None when another process drives
    the job (it was asked to cancel)."""
    return drive(job_id, base_url=base_url, api_key=api_key, engine=engine, cancel=True)


def _report(report: JobReport | None) -> JobReport:
    if report is None:  # only a cancel returns None; a run or resume held elsewhere raised UsageError
        raise UsageError("the job is driven by another process")
    return report
