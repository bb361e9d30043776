"""What `coldbatch run | resume | cancel` print about a job: its estimate before sending, its report after.

Costs are shown for what they are. On the embedded server (a model on this machine) nothing is paid per
token: the cost is $0 and no "saving" is computed (a 0/0, or the price of the model name a request gave,
made `saving -55%` appear for a local model, issue 16). Token counts are labelled approximate when the
estimate's tokenizer stands in for the model's own (the estimate's warnings say which).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from coldbatch.cli import render

if TYPE_CHECKING:
    from coldbatch.runner.estimate_view import JobEstimate
    from coldbatch.store.records import JobRecord

LOCAL_COST = "$0 (the embedded server runs the model on this machine: no per-token price, no saving to compute)"


def show_estimate(est: JobEstimate, *, local: bool = False) -> None:
    """The estimate before a job sends anything (on stderr: stdout carries the report)."""
    n, approx = est.requests, est.approximate
    distinct = n if est.distinct_requests is None else est.distinct_requests
    to_send = n if est.planned_to_send is None else est.planned_to_send
    click.echo(
        f"{n:,} requests ({distinct:,} distinct, {est.cache_hits or 0:,} answered from the cache, {to_send:,}"
        f" to send), {'~' if approx else ''}{est.input_tokens_to_send or 0:,} prompt tokens to send"
        + (" (approximate)" if approx else ""),
        err=True,
    )
    if local:
        click.echo(f"cost: {LOCAL_COST}", err=True)
    else:
        click.echo(
            f"cost: every row at sync prices {render.usd(est.sync_cost_usd)}, at batch prices "
            f"{render.usd(est.batch_cost_usd)}, after dedup and cache {render.usd(est.final_cost_usd)}"
            + (f" (saving {est.saving_pct}%)" if est.saving_pct is not None else ""),
            err=True,
        )
    for w in est.warnings:
        if local and w.startswith("no price for model"):
            continue  # nothing is paid on this machine, whatever the model is called
        w = w.replace("(pass --prices FILE)", "(`coldbatch estimate --prices FILE` prices it)")  # run has none
        click.echo(f"warning: {w}", err=True)


def negative_saving(r: dict[str, Any]) -> str:
    """Why a saving can be below zero: the baseline is the estimate (answer lengths from max_tokens or
    --expected-output-tokens), the cost is what the answers really used."""
    return (
        f"note: the saving is negative because the cost counts the tokens the answers really used "
        f"({r['completion_tokens']:,} completion tokens), while the baseline, every row at sync prices, is the "
        f"estimate's (answer lengths from --max-tokens): the answers were longer "
        f"than estimated. With the same tokens, sync prices would have cost {render.usd(r['cost_sync_usd'])}."
    )


def _cost_line(r: dict[str, Any], local: bool) -> str:
    head = (
        f"tokens: {r['prompt_tokens']:,} prompt ({r['cached_tokens']:,} cached), {r['completion_tokens']:,} "
        f"completion; {r.get('mode', 'batch')} mode, cost "
    )
    if local:
        return head + f"{LOCAL_COST}; {r['seconds']} s"
    return (
        head + f"{render.usd(r.get('cost_usd', r['cost_batch_usd']))} "
        f"(at batch prices {render.usd(r['cost_batch_usd'])}, at sync prices "
        f"{render.usd(r['cost_sync_usd'])}; every row at sync prices {render.usd(r.get('cost_sync_all_rows_usd'))}"
        + (f", saving {r['saving_pct']}%" if r.get("saving_pct") is not None else "")
        + f"; estimate {render.usd(r['estimated_batch_usd'])}); {r['seconds']} s"
    )


def print_report(r: dict[str, Any] | None, *, local: bool = False) -> None:
    """The job's summary on stdout (after the progress display was closed)."""
    if r is None:
        return
    click.echo(
        f"{r['rows']:,} rows → {r['output']}: {r['succeeded']:,} succeeded, {r['failed']:,} failed"
        + (f" (by distinct request: {r['failed_by_code']})" if r["failed_by_code"] else "")
        + f", {r['rejected_rows']:,} rejected before sending; {r['retried_rows']:,} requests retried over "
        f"{r['rounds']} round(s)"
    )
    if r.get("distinct_requests") is not None:
        click.echo(
            f"distinct requests {r['distinct_requests']:,}, answered from the cache {r['cache_hits']:,}, "
            f"sent {r['requests_sent']:,}"
        )
    click.echo(_cost_line(r, local))
    if not local and (r.get("saving_pct") or 0) < 0:
        click.echo(negative_saving(r))
    rescue = r.get("deadline_rescue")
    if rescue:
        extra = "$0" if local else render.usd(rescue["extra_cost_usd"])
        click.echo(
            f"deadline rescue: {rescue['requests']:,} requests ({rescue['rows']:,} rows) sent through the sync "
            f"API, {rescue['rows_via_batch_or_cache']:,} rows answered by batch or cache; extra cost at sync "
            f"prices {extra}"
        )


def status_lines(job: JobRecord, summary: dict[str, Any]) -> list[str]:
    """`coldbatch status`'s results as sentences (the ledger's dict is `--json`'s)."""
    lines = [
        f"requests answered: {summary['succeeded']:,} ok, {summary['failed']:,} failed, "
        f"{summary['pending_retry']:,} waiting for a retry ({summary['results']:,} recorded, by distinct "
        "request)"
    ]
    codes = summary.get("failed_by_code") or {}
    if codes:
        lines.append(
            "failed, by reason: "
            + ", ".join(f"{code or 'unknown'} {n:,}" for code, n in sorted(codes.items(), key=lambda kv: -kv[1]))
        )
    lines.append(
        f"tokens: {summary['prompt_tokens']:,} prompt ({summary['cached_tokens']:,} cached), "
        f"{summary['completion_tokens']:,} completion; {summary['retried_rows']:,} request(s) retried"
    )
    rep = job.report or {}
    if rep.get("error"):
        lines.append(f"the job failed: {rep['error']}")
    elif "rows" in rep:
        lines.append(
            f"OUTPUT {rep.get('output', job.output_path)}: {rep['rows']:,} rows, {rep['succeeded']:,} "
            f"answered, {rep['rows'] - rep['succeeded']:,} not (its `error` column says why)"
        )
    return lines
