"""`coldbatch run | jobs | status | resume | cancel | collect`: the job runner and its ledger."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from coldbatch import job as J
from coldbatch._alloc import small_input_pool
from coldbatch.builder.spec import RequestSpec
from coldbatch.cli import exitcodes, options, preflight
from coldbatch.cli import providers as PV
from coldbatch.cli.flags import split_flags
from coldbatch.cli.progress import ProgressDisplay
from coldbatch.cli.report import print_report, show_estimate
from coldbatch.engines.names import DEFAULT_EMBEDDING_MODEL
from coldbatch.errors import UsageError
from coldbatch.providers import choose
from coldbatch.runner import examples as EX
from coldbatch.runner import home as H
from coldbatch.runner import preflight as RP
from coldbatch.runner.deadline import parse_deadline
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.options import RunOptions, new_job_id
from coldbatch.runner.orchestrator import Runner
from coldbatch.runner.output_spec import output_kind
from coldbatch.runner.report import JobReport
from coldbatch.runner.sync_mode import MODES, SYNC_THRESHOLD


def _root() -> Path:
    return H.home()


def _ledger() -> Ledger:
    return J.ledger()


def _drive(
    job_id: str, *, base_url: str | None, api_key: str | None, engine: str, yes: bool, cancel: bool = False
) -> JobReport | None:
    """`coldbatch.job.drive` with the CLI's progress display, stderr notices and confirmation question."""
    display = ProgressDisplay()
    try:
        return J.drive(
            job_id,
            base_url=base_url,
            api_key=api_key,
            engine=engine,
            cancel=cancel,
            confirm=lambda runner, est: _confirm(runner, est, yes),
            notice=_say,
            on_event=display,
        )
    finally:
        display.close()  # before anything else is printed: the summary never lands on the progress line


def _say(line: str) -> None:
    click.echo(line, err=True)


def _examples_job(
    job_id: str, input_path: Path, opts: dict[str, Any], base_url: str | None
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
        click.echo(
            f"examples: {len(kept.dropped)} of {len(rows)} left out, they are rows being labelled: "
            + "; ".join(kept.dropped[:5])
            + ("; ..." if len(kept.dropped) > 5 else ""),
            err=True,
        )
    EX.check_labels(kept, label_spec.labels, path)
    file = EX.save(kept, H.job_dir(_root(), job_id))
    counts = ", ".join(f"{label} {sum(e['label'] == label for e in kept.rows)}" for label in label_spec.labels)
    click.echo(f"examples: {len(kept.rows)} from {path} ({counts}); rows and examples embedded with {model}", err=True)
    info = {
        "labels": list(label_spec.labels),
        "file": str(file),
        "source": str(path.resolve()),
        "label_column": opts["examples_label_column"],
        "kept": len(kept.rows),
        "dropped": len(kept.dropped),
    }
    return EX.embedding_spec(label_spec, model), EX.embedding_spec(label_spec, model, examples=True), info


def _confirm(runner: Runner, est: JobEstimate, yes: bool) -> None:
    show_estimate(est, local=runner.opts.provider == "embedded")
    runner.check_budget(est)
    ask = "Send these requests now (sync)?" if runner.opts.mode == "sync" else "Submit these batches?"
    if not yes and not click.confirm(ask, default=False, err=True):
        raise UsageError(f"Not submitted. Resume later with: coldbatch resume {runner.job_id}")


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
    "--fail-on-errors",
    type=exitcodes.Threshold(),
    default="0",
    show_default=True,
    help="Exit 4 only when more rows than this are unanswered: a count (10) or a share (1%).",
)


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
@click.option(
    "--rpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Sync mode: requests per minute at most (default: learned from the provider's x-ratelimit-* headers).",
)
@click.option(
    "--tpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Sync mode: tokens per minute at most (default: learned from the provider's headers).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    help="Sync mode: seconds per attempt.",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=64, help="Sync mode: requests in flight at most.")
@click.option(
    "--rate-window",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    hidden=True,
    help="Sync mode: the seconds --rpm/--tpm are counted over (tests scale the minute down).",
)
@click.option(
    "--deadline",
    help="Batch mode: finish by then (90s, 30m, 2h, or an ISO 8601 time); when the "
    "batches will be late at the observed pace, they are cancelled (keeping what finished) and the "
    "rest is sent through the sync API.",
)
@click.option(
    "--sync-base-url",
    envvar="COLDBATCH_SYNC_BASE_URL",
    help="Where sync mode and a deadline rescue send (default: the batch provider's own API).",
)
@click.option("--sync-api-key", envvar="COLDBATCH_SYNC_API_KEY", help="API key for --sync-base-url.")
@click.option(
    "--examples",
    "examples_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --labels: a file of labelled examples (the prompt's columns + a label column; a few dozen "
    "to a few hundred a label). Rows and examples are embedded (/v1/embeddings) and a classifier fitted "
    "on the examples labels the rows; `confidence` is its probability. Examples that are rows of INPUT "
    "(same id or text) are left out. --model is then not used.",
)
@click.option(
    "--examples-label-column",
    default="label",
    show_default=True,
    help="--examples: the column holding each example's label.",
)
@_fail_on_errors
@click.option(
    "--output-prefix",
    default="",
    metavar="PREFIX",
    help="Put PREFIX before the name of every column OUTPUT adds (custom_id, response, label, confidence, "
    "error, attempts, prompt_tokens, completion_tokens, embedding, --schema properties). An input column "
    "with one of those names is refused before anything is sent: pass e.g. --output-prefix cb_.",
)
@PV.provider_option
@click.option(
    "--embedding-model",
    help="--examples: the embedding model (default: the embedded engine's own, "
    f"{DEFAULT_EMBEDDING_MODEL}; with --base-url, {EX.DEFAULT_EMBEDDING_MODEL}).",
)
def run(input_path: Path, output: Path, **kw: Any) -> None:
    """Run a whole job: prepare, estimate, then send it as batches (submit, poll, collect, retry) or request by
    request (--mode sync; auto picks), and write OUTPUT."""
    small_input_pool(input_path)
    f, opts = split_flags(RunFlags, kw)
    output_kind(output)
    job_id = new_job_id(f.name)
    companion: tuple[RequestSpec, dict[str, Any]] | None = None
    if opts.get("examples_path") is not None:
        spec, *companion = _examples_job(job_id, input_path, opts, f.base_url)  # type: ignore[assignment]
    else:
        spec = options.spec_from(preflight.default_model(opts, f.base_url, f.engine, f.api_key))
    RP.check_output_columns(input_path, options.input_format(opts), spec, f.output_prefix, companion)
    kind, limits, mode = choose.resolve(
        f.provider, f.base_url, spec, options.limits_from(opts), f.mode, deadline=f.deadline is not None
    )
    run_opts = f.run_options(
        spec=spec.describe(),
        limits=limits,
        provider_kind=kind,
        fmt=options.input_format(opts),
        mode=mode,
        examples=companion[1] if companion else None,
    )
    if f.sync_api_key:
        os.environ["COLDBATCH_SYNC_API_KEY"] = f.sync_api_key  # not stored in the ledger; resume reads it again
    J.create_job(job_id, input_path, output, run_opts, companion)
    click.echo(f"job {job_id} (resume with: coldbatch resume {job_id})", err=True)
    _finish(_drive(job_id, base_url=f.base_url, api_key=f.api_key, engine=f.engine, yes=f.yes), f.fail_on_errors)


@dataclass(frozen=True)
class RunFlags:
    """`coldbatch run`'s own flags, typed once (click passes them by keyword; the request and limit options
    stay a dict for `options.spec_from` / `limits_from`)."""

    base_url: str | None
    api_key: str | None
    engine: str
    name: str | None
    max_cost: float | None
    yes: bool
    poll_interval: float
    max_attempts: int
    max_in_flight: int
    max_enqueued_tokens: int | None
    completion_window: str
    keep_remote_files: bool
    dedup: bool | None
    use_cache: bool | None
    cache_only: bool
    cache_max_entries: int | None
    cache_max_age_days: float | None
    mode: str
    sync_threshold: int
    rpm: float | None
    tpm: float | None
    request_timeout: float
    concurrency: int
    rate_window: float
    deadline: str | None
    sync_base_url: str | None
    sync_api_key: str | None
    output_prefix: str
    provider: str | None
    fail_on_errors: tuple[float, bool]

    def run_options(self, **resolved: Any) -> RunOptions:
        """The job's stored options: these flags plus what `run` resolved (spec, limits, kind, mode, ...)."""
        return RunOptions(
            max_cost=self.max_cost,
            max_attempts=self.max_attempts,
            max_in_flight=self.max_in_flight,
            max_enqueued_tokens=self.max_enqueued_tokens,
            completion_window=self.completion_window,
            keep_remote_files=self.keep_remote_files,
            poll_interval=self.poll_interval,
            provider=self.base_url or "embedded",
            dedup=self.dedup,
            cache=self.use_cache,
            cache_only=self.cache_only,
            cache_max_entries=self.cache_max_entries,
            cache_max_age_days=self.cache_max_age_days,
            rpm=self.rpm,
            tpm=self.tpm,
            rate_window=self.rate_window,
            request_timeout=self.request_timeout,
            concurrency=self.concurrency,
            sync_threshold=self.sync_threshold,
            deadline=parse_deadline(self.deadline) if self.deadline else None,
            sync_base_url=self.sync_base_url,
            output_prefix=self.output_prefix,
            **resolved,
        )


def _is_local(job_id: str) -> bool:
    """Whether the job ran on the embedded server (nothing paid per token: cli/report.py)."""
    ledger = _ledger()
    try:
        job = ledger.job(job_id)
    finally:
        ledger.close()
    return job is not None and job.options.get("provider") == "embedded"


def _finish(job_report: JobReport | None, threshold: tuple[float, bool]) -> None:
    """Print the report, then exit with the documented code (cli/exitcodes.py): 0 only when every row was
    answered (or no more rows than --fail-on-errors allows were not)."""
    report = None if job_report is None else job_report.to_json()  # printed as stored, key by key
    print_report(report, local=job_report is not None and _is_local(job_report.job_id))
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
def resume(
    job_id: str, base_url: str | None, api_key: str | None, engine: str, yes: bool, fail_on_errors: tuple[float, bool]
) -> None:
    """Continue a job after a crash or interruption: nothing paid for is sent again."""
    _finish(_drive(job_id, base_url=base_url, api_key=api_key, engine=engine, yes=yes), fail_on_errors)


@click.command()
@click.argument("job_id")
@provider_options
def cancel(job_id: str, base_url: str | None, api_key: str | None, engine: str) -> None:
    """Cancel a job's running batches, keep what finished, and write OUTPUT."""
    _finish(_drive(job_id, base_url=base_url, api_key=api_key, engine=engine, yes=True, cancel=True), (0, False))


COMMANDS = [run, resume, cancel]
