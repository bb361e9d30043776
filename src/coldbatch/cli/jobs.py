"""`coldbatch run | jobs | status | resume | cancel | collect`: the job runner and its ledger."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click

from coldbatch.builder.spec import RequestSpec
from coldbatch.cli import exitcodes, options, preflight
from coldbatch.cli import providers as PV
from coldbatch.cli.progress import ProgressDisplay
from coldbatch.cli.report import print_report, show_estimate
from coldbatch.engines.embedding import DEFAULT_EMBEDDING_MODEL
from coldbatch.errors import InputError, UsageError
from coldbatch.hotpath.client import SyncClient
from coldbatch.providers.openai_compat import OpenAIProvider, ProviderError
from coldbatch.runner import examples as EX
from coldbatch.runner import home as H
from coldbatch.runner.deadline import parse_deadline
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.orchestrator import Runner, RunOptions, new_job_id
from coldbatch.runner.output import output_kind
from coldbatch.runner.sync_mode import MODES, SYNC_THRESHOLD, SyncRunner, route
from coldbatch.server.embedded import EmbeddedServer


def _root() -> Path:
    return H.home()


def _ledger() -> Ledger:
    return Ledger(_root() / "ledger.sqlite3")


@contextlib.contextmanager
def _provider(opts: RunOptions, base_url: str | None, api_key: str | None, engine: str) -> Iterator[Any]:
    """The job's provider adapter (`opts.provider_kind`: openai, azure, anthropic, gemini; providers/kinds.py)."""
    if opts.provider == "embedded":
        with EmbeddedServer(_root() / "server", engine=engine) as srv:
            yield PV.make(opts.provider_kind, srv.base_url, "embedded", _root())
    else:
        yield PV.make(opts.provider_kind, base_url or opts.provider, api_key, _root())


class _JobLock:
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


def _held_elsewhere(ledger: Ledger, lock: _JobLock, job_id: str, cancel: bool) -> None:
    """Another process drives the job: refuse to run it twice; a cancel asks that process to cancel."""
    holder = lock.holder()
    lock.release()
    try:
        if not cancel:
            raise UsageError(
                f"Job {job_id} is being run by another process (pid {holder}); wait for it, or "
                f"stop it and run `coldbatch resume {job_id}`."
            )
        ledger.set_job(job_id, status="cancelling")
    finally:
        ledger.close()
    click.echo(f"job {job_id} is running in process {holder}: asked it to cancel its batches and finish.", err=True)


def _drive(
    job_id: str, *, base_url: str | None, api_key: str | None, engine: str, yes: bool, cancel: bool = False
) -> dict[str, Any] | None:
    """Run (or cancel) a job to its end; None when another process drives it and was asked to cancel."""
    ledger = _ledger()
    job = ledger.job(job_id)
    if job is None:
        ledger.close()
        raise InputError(f"No job named {job_id!r}; see `coldbatch jobs`.")
    opts = RunOptions(**job["options"])
    lock = _JobLock(H.job_dir(_root(), job_id))
    if not lock.acquire():
        _held_elsewhere(ledger, lock, job_id, cancel)
        return None
    if cancel and job["status"] in ("done", "cancelled"):
        lock.release()
        ledger.close()
        raise UsageError(f"Job {job_id} has already finished ({job['status']}); nothing to cancel.")

    display = ProgressDisplay()

    async def go() -> dict[str, Any]:
        with _provider(opts, base_url, api_key, engine) as provider:
            runner = Runner(ledger, provider, job_id, _root(), on_event=display)
            try:
                if cancel:
                    await runner.cancel()
                else:
                    await preflight.check_target(ledger, provider, opts, job_id)
                if opts.examples and not cancel:
                    await _companion(ledger, provider, EX.child_id(job_id), api_key, display)
                est = runner.prepare()
                fresh = not cancel and ledger.job(job_id)["status"] == "prepared"  # type: ignore[index]
                runner, est = _pick_runner(ledger, runner, est, fresh, api_key)
                if fresh:
                    _confirm(runner, est, yes)
                return await runner.run()
            except PV.API_ERRORS as exc:
                raise ProviderError(
                    f"the Batch API at {provider.name} failed: {type(exc).__name__}: {exc}. "
                    f"Nothing sent is lost: `coldbatch resume {job_id}` continues the job."
                ) from exc
            finally:
                if isinstance(runner, SyncRunner):
                    await runner.client.aclose()
                await provider.aclose()

    try:
        return asyncio.run(go())
    finally:
        display.close()  # before anything else is printed: the summary never lands on the progress line
        ledger.close()
        lock.release()


async def _companion(ledger: Ledger, provider: OpenAIProvider, job_id: str, api_key: str | None,
                     display: ProgressDisplay) -> None:
    """Run an --examples job's companion (the examples' embeddings) to its end first; no question asked (a few
    hundred embeddings), and nothing to do once it is done."""
    job = ledger.job(job_id)
    if job is None or job["status"] in ("done", "cancelled"):
        return
    click.echo(f"examples: embedding them first (job {job_id})", err=True)
    runner = Runner(ledger, provider, job_id, _root(), on_event=display)
    est = runner.prepare()
    runner, est = _pick_runner(ledger, runner, est, ledger.job(job_id)["status"] == "prepared", api_key)  # type: ignore[index]
    try:
        await runner.run()
    finally:
        if isinstance(runner, SyncRunner):
            await runner.client.aclose()
    summary = ledger.summary(job_id)
    if not summary["succeeded"]:  # e.g. a provider without /v1/embeddings: say so before the rows are sent
        raise UsageError(f"no example could be embedded ({summary['failed_by_code'] or 'no answer'}; see "
                         f"`coldbatch status {job_id}`): the rows cannot be labelled with --examples here")


def _examples_job(job_id: str, input_path: Path, opts: dict[str, Any], base_url: str | None
                  ) -> tuple[RequestSpec, RequestSpec, dict[str, Any]]:
    """--examples: the rows' embeddings spec (the job's requests), the examples' (its companion's), and what the
    job keeps to label the rows. The examples are read and checked, and those that are rows of INPUT dropped,
    before anything is sent."""
    if not opts.get("labels"):
        raise UsageError("--examples needs --labels: the labels the examples' label column holds")
    model = opts.get("embedding_model") or (EX.DEFAULT_EMBEDDING_MODEL if base_url else DEFAULT_EMBEDDING_MODEL)
    label_spec = options.spec_from({**opts, "model": model})
    path: Path = opts["examples_path"]
    rows = EX.read(path, label_spec, opts["examples_label_column"])
    kept = EX.drop_overlap(rows, input_path, label_spec, options.input_format(opts))
    if kept.dropped:
        click.echo(f"examples: {len(kept.dropped)} of {len(rows)} left out, they are rows being labelled: "
                   + "; ".join(kept.dropped[:5]) + ("; ..." if len(kept.dropped) > 5 else ""), err=True)
    EX.check_labels(kept, label_spec.labels, path)
    file = EX.save(kept, H.job_dir(_root(), job_id))
    counts = ", ".join(f"{label} {sum(e['label'] == label for e in kept.rows)}" for label in label_spec.labels)
    click.echo(f"examples: {len(kept.rows)} from {path} ({counts}); rows and examples embedded with {model}", err=True)
    info = {"labels": list(label_spec.labels), "file": str(file), "source": str(path.resolve()),
            "label_column": opts["examples_label_column"], "kept": len(kept.rows), "dropped": len(kept.dropped)}
    return EX.embedding_spec(label_spec, model), EX.embedding_spec(label_spec, model, examples=True), info


def _confirm(runner: Runner, est: dict[str, Any], yes: bool) -> None:
    show_estimate(est, local=runner.opts.provider == "embedded")
    runner.check_budget(est)
    ask = "Send these requests now (sync)?" if runner.opts.mode == "sync" else "Submit these batches?"
    if not yes and not click.confirm(ask, default=False, err=True):
        raise UsageError(f"Not submitted. Resume later with: coldbatch resume {runner.job_id}")


def _pick_runner(ledger: Ledger, runner: Runner, est: dict[str, Any], fresh: bool,
                 api_key: str | None) -> tuple[Runner, dict[str, Any]]:
    """Resolve --mode auto on a fresh job; sync mode gets a SyncRunner; --deadline arms the sync rescue."""
    if fresh and runner.opts.mode == "auto":
        runner, est = _route(ledger, runner, est)
    if runner.opts.mode == "sync":
        return _sync_runner(runner, api_key), est
    if runner.opts.deadline is not None:
        batch_runner = runner
        runner.make_sync_client = lambda: _sync_client(batch_runner, api_key)
    return runner, est


def _sync_client(runner: Runner, api_key: str | None) -> SyncClient:
    """Sync calls go to --sync-base-url, else the provider's own /v1/<endpoint> (the embedded server's hot path)."""
    o, provider = runner.opts, runner.provider
    assert isinstance(provider, OpenAIProvider)
    if o.sync_base_url:
        base, key = o.sync_base_url, os.environ.get("COLDBATCH_SYNC_API_KEY") or api_key
    else:
        base, key = str(provider.client.base_url), "embedded" if o.provider == "embedded" else api_key
    return SyncClient(base, key, rpm=o.rpm, tpm=o.tpm, window=o.rate_window, max_attempts=o.max_attempts,
                      timeout=o.request_timeout, concurrency=o.concurrency)


def _sync_runner(runner: Runner, api_key: str | None) -> SyncRunner:
    """Sync mode: the job's requests one by one through `_sync_client`."""
    return SyncRunner(runner.ledger, runner.provider, runner.job_id, runner.root, on_event=runner.emit,
                      client=_sync_client(runner, api_key))


def _route(ledger: Ledger, runner: Runner, est: dict[str, Any]) -> tuple[Runner, dict[str, Any]]:
    """`--mode auto`: pick sync or batch from the requests to send, say why, and store the choice (so `resume`
    continues in that mode); returns a runner that sees it, and the estimate with the choice."""
    choice = route(est, runner.opts.sync_threshold)
    click.echo(f"mode: {choice['mode']} ({choice['reason']})", err=True)
    opts = RunOptions(**{**asdict(runner.opts), "mode": choice["mode"]})
    est = {**est, "route": choice}
    ledger.set_job(runner.job_id, options=asdict(opts), estimate=est)
    return Runner(ledger, runner.provider, runner.job_id, runner.root, on_event=runner.emit), est


_provider_options = [
    click.option("--base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible API (default: embedded server)."),
    click.option("--api-key", envvar="OPENAI_API_KEY", help="API key for --base-url."),
    click.option("--engine", default="llama-cpp", help="Engine of the embedded server (when no --base-url)."),
]


def provider_options(fn: Any) -> Any:
    for opt in reversed(_provider_options):
        fn = opt(fn)
    return fn


_fail_on_errors = click.option(
    "--fail-on-errors", type=exitcodes.Threshold(), default="0", show_default=True,
    help="Exit 4 only when more rows than this are unanswered: a count (10) or a share (1%).")


#: `coldbatch run --help`'s examples; tests/acceptance/test_readme_commands.py runs each of them
RUN_EXAMPLES = """\b
Examples:
  coldbatch run reviews.csv --out labelled.csv --prompt "Review: {text}" --labels negative,positive
  coldbatch run sentences.tsv --columns text,label --output-prefix cb_ \\
      --out labelled.csv --prompt "{text}" --labels negative,positive
  coldbatch run reviews.csv --out vectors.parquet --endpoint /v1/embeddings --input-column text
  coldbatch run reviews.csv --out labelled.csv --base-url https://api.openai.com/v1 \\
      --model gpt-4o-mini --prompt "Review: {text}" --labels negative,positive --max-cost 5

"""


@click.command(epilog=RUN_EXAMPLES + exitcodes.HELP)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="OUTPUT file (.csv, .tsv, .jsonl or .parquet): every input row plus the answer.",
)
@options.request_options
@options.limit_options
@provider_options
@click.option("--name", help="Job name (prefix of the job id).")
@click.option("--max-cost", type=float, help="Refuse to submit when the estimated batch cost (USD) exceeds this.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--poll-interval", type=float, default=5.0, help="Seconds between status checks (backs off to 60).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, help="Submissions per request at most.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=50, help="Batches running at once at most.")
@click.option("--max-enqueued-tokens", type=click.IntRange(min=1), help="Per-model cap of prompt tokens in flight.")
@click.option("--completion-window", default="24h", help="Batch completion window (OpenAI: only 24h).")
@click.option("--keep-remote-files", is_flag=True, help="Do not delete uploaded/result files after collection.")
@click.option(
    "--dedup/--no-dedup",
    default=None,
    help="Send each distinct request once and fan the answer out "
    "(default: on, off for sampling requests with temperature/top_p > 0 or n > 1).",
)
@click.option(
    "--cache/--no-cache",
    "use_cache",
    default=None,
    help="Reuse answers cached by earlier jobs and cache "
    "this job's (default: on with dedup, off for sampling requests).",
)
@click.option("--cache-only", is_flag=True, help="Answer only from the cache; send nothing (spend nothing).")
@click.option("--cache-max-entries", type=click.IntRange(min=0), help="Keep at most this many cached answers.")
@click.option("--cache-max-age-days", type=float, help="Ignore and drop cached answers older than this.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    help="batch: the Batch API (half price, minutes to hours); sync: request by request within --rpm/--tpm "
    "(sync prices, seconds to minutes); auto: sync when at most --sync-threshold requests are to be sent.",
)
@click.option(
    "--sync-threshold",
    type=click.IntRange(min=0),
    default=SYNC_THRESHOLD,
    show_default=True,
    help="--mode auto: the most requests to send (after dedup and cache) that go sync.",
)
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Sync mode: requests per minute at most "
              "(default: learned from the provider's x-ratelimit-* headers).")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Sync mode: tokens per minute at most "
              "(default: learned from the provider's headers).")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              help="Sync mode: seconds per attempt.")
@click.option("--concurrency", type=click.IntRange(min=1), default=64, help="Sync mode: requests in flight at most.")
@click.option("--rate-window", type=click.FloatRange(min=0, min_open=True), default=60.0, hidden=True,
              help="Sync mode: the seconds --rpm/--tpm are counted over (tests scale the minute down).")
@click.option("--deadline", help="Batch mode: finish by then (90s, 30m, 2h, or an ISO 8601 time); when the "
              "batches will be late at the observed pace, they are cancelled (keeping what finished) and the "
              "rest is sent through the sync API.")
@click.option("--sync-base-url", envvar="COLDBATCH_SYNC_BASE_URL",
              help="Where sync mode and a deadline rescue send (default: the batch provider's own API).")
@click.option("--sync-api-key", envvar="COLDBATCH_SYNC_API_KEY", help="API key for --sync-base-url.")
@click.option("--examples", "examples_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --labels: a file of labelled examples (the prompt's columns + a label column; a few dozen "
              "to a few hundred a label). Rows and examples are embedded (/v1/embeddings) and a classifier fitted "
              "on the examples labels the rows; `confidence` is its probability. Examples that are rows of INPUT "
              "(same id or text) are left out. --model is then not used.")
@click.option("--examples-label-column", default="label", show_default=True,
              help="--examples: the column holding each example's label.")
@_fail_on_errors
@click.option("--output-prefix", default="", metavar="PREFIX",
              help="Put PREFIX before the name of every column OUTPUT adds (custom_id, response, label, confidence, "
              "error, attempts, prompt_tokens, completion_tokens, embedding, --schema properties). An input column "
              "with one of those names is refused before anything is sent: pass e.g. --output-prefix cb_.")
@PV.provider_option
@click.option("--embedding-model", help="--examples: the embedding model (default: the embedded engine's own, "
              f"{DEFAULT_EMBEDDING_MODEL}; with --base-url, {EX.DEFAULT_EMBEDDING_MODEL}).")
def run(
    input_path: Path,
    output: Path,
    base_url: str | None,
    api_key: str | None,
    engine: str,
    name: str | None,
    max_cost: float | None,
    yes: bool,
    poll_interval: float,
    max_attempts: int,
    max_in_flight: int,
    max_enqueued_tokens: int | None,
    completion_window: str,
    keep_remote_files: bool,
    dedup: bool | None,
    use_cache: bool | None,
    cache_only: bool,
    cache_max_entries: int | None,
    cache_max_age_days: float | None,
    mode: str,
    sync_threshold: int,
    rpm: float | None,
    tpm: float | None,
    request_timeout: float,
    concurrency: int,
    rate_window: float,
    deadline: str | None,
    sync_base_url: str | None,
    sync_api_key: str | None,
    output_prefix: str,
    provider: str | None,
    fail_on_errors: tuple[float, bool],
    **opts: Any,
) -> None:
    """Run a whole job: prepare, estimate, then send it as batches (submit, poll, collect, retry) or request by
    request (--mode sync; auto picks), and write OUTPUT."""
    output_kind(output)
    job_id = new_job_id(name)
    companion: tuple[RequestSpec, dict[str, Any]] | None = None
    if opts.get("examples_path") is not None:
        spec, *companion = _examples_job(job_id, input_path, opts, base_url)  # type: ignore[assignment]
    else:
        spec = options.spec_from(preflight.default_model(opts, base_url, engine, api_key))
    preflight.check_output_columns(input_path, options.input_format(opts), spec, output_prefix, companion)
    kind, limits, mode = PV.resolve(provider, base_url, spec, options.limits_from(opts), mode,
                                    deadline=deadline is not None)
    run_opts = RunOptions(
        spec=spec.describe(),
        limits=asdict(limits),
        provider_kind=kind,
        fmt=options.input_format(opts),
        max_cost=max_cost,
        max_attempts=max_attempts,
        max_in_flight=max_in_flight,
        max_enqueued_tokens=max_enqueued_tokens,
        completion_window=completion_window,
        keep_remote_files=keep_remote_files,
        poll_interval=poll_interval,
        provider=base_url or "embedded",
        dedup=dedup,
        cache=use_cache,
        cache_only=cache_only,
        cache_max_entries=cache_max_entries,
        cache_max_age_days=cache_max_age_days,
        mode=mode,
        rpm=rpm,
        tpm=tpm,
        rate_window=rate_window,
        request_timeout=request_timeout,
        concurrency=concurrency,
        sync_threshold=sync_threshold,
        deadline=parse_deadline(deadline) if deadline else None,
        sync_base_url=sync_base_url,
        examples=companion[1] if companion else None,
        output_prefix=output_prefix,
    )
    if sync_api_key:
        os.environ["COLDBATCH_SYNC_API_KEY"] = sync_api_key  # not stored in the ledger; resume reads it again
    ledger = _ledger()
    ledger.create_job(job_id, str(input_path.resolve()), str(output.resolve()), asdict(run_opts))
    if companion:
        ex_spec, ex = companion
        ledger.create_job(EX.child_id(job_id), ex["file"], str(Path(ex["file"]).with_suffix(".embedded.csv")),
                          asdict(replace(run_opts, spec=ex_spec.describe(), examples=None)))
    ledger.close()
    click.echo(f"job {job_id} (resume with: coldbatch resume {job_id})", err=True)
    _finish(_drive(job_id, base_url=base_url, api_key=api_key, engine=engine, yes=yes), fail_on_errors)


def _is_local(job_id: str) -> bool:
    """Whether the job ran on the embedded server (nothing paid per token: cli/report.py)."""
    ledger = _ledger()
    try:
        job = ledger.job(job_id)
    finally:
        ledger.close()
    return job is not None and job["options"].get("provider") == "embedded"


def _finish(report: dict[str, Any] | None, threshold: tuple[float, bool]) -> None:
    """Print the report, then exit with the documented code (cli/exitcodes.py): 0 only when every row was
    answered (or no more rows than --fail-on-errors allows were not)."""
    print_report(report, local=report is not None and _is_local(report["job"]))
    code = exitcodes.exit_code(report, threshold)
    why = exitcodes.explain(report, code)
    if why:
        click.echo(why, err=True)
    if code:
        sys.exit(code)


@click.command(epilog=exitcodes.HELP)
@click.argument("job_id")
@provider_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_fail_on_errors
def resume(job_id: str, base_url: str | None, api_key: str | None, engine: str, yes: bool,
           fail_on_errors: tuple[float, bool]) -> None:
    """Continue a job after a crash or interruption: nothing paid for is sent again."""
    _finish(_drive(job_id, base_url=base_url, api_key=api_key, engine=engine, yes=yes), fail_on_errors)


@click.command()
@click.argument("job_id")
@provider_options
def cancel(job_id: str, base_url: str | None, api_key: str | None, engine: str) -> None:
    """Cancel a job's running batches, keep what finished, and write OUTPUT."""
    _finish(_drive(job_id, base_url=base_url, api_key=api_key, engine=engine, yes=True, cancel=True), (0, False))


COMMANDS = [run, resume, cancel]
