"""`coldbatch run --provider anthropic` against `coldbatch serve --engine echo`, next to `--provider openai`.

Acceptance (issue 13, client side):
- the whole of Tweets.csv (14,640 rows) runs end to end through each provider's official SDK (openai's Batch
  API; anthropic's Message Batches with inline requests), each in its own COLDBATCH_HOME (no shared cache), and
  the two OUTPUT files have the same rows, ids and label columns;
- kill -9 per provider in the crash window of exactly-once (the batch exists on the server, the client has not
  heard of it: a proxy holds the create call's answer), then `resume`: the batch is adopted, not created again;
- Anthropic batches carry no metadata: a batch of the same size that is not ours is adopted only until its
  results show another prefix, and is then left alone (never read into OUTPUT, never deleted);
- cancelling an Anthropic job keeps the answers that finished and reports the rest as `batch_cancelled`;
- `--provider azure` calls Azure's data-plane URLs (`/openai/...?api-version=`), mapped onto the server by a proxy.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import orjson
import pytest
from _delay_proxy import DelayProxy
from _runner_support import TWEETS, coldbatch, echo_server, env_for, job_id_from, read_csv

from coldbatch.providers.anthropic_batches import AnthropicProvider

pytestmark = pytest.mark.slow
needs_tweets = pytest.mark.skipif(not TWEETS.is_file(), reason=f"{TWEETS} is not there")
LABELS = "negative,neutral,positive"


def _root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def _job(data: Path, out: Path, provider: str, url: str, *more: str) -> list[str]:
    return [
        "run",
        str(data),
        "--out",
        str(out),
        "--provider",
        provider,
        "-m",
        "gpt-4o-mini",
        "-p",
        "Sentiment of this tweet: {text}",
        "--labels",
        LABELS,
        "--base-url",
        url,
        "--api-key",
        "sk-test",
        "--yes",
        "--poll-interval",
        "0.2",
        "--mode",
        "batch",
        "--keep-remote-files",  # everything sent stays on the server, for the test to count
        *more,
    ]


def _anthropic_batches(root: str) -> list[dict[str, object]]:
    with anthropic.Anthropic(base_url=root, api_key="sk-test") as c:
        return [b.model_dump() for b in c.messages.batches.list(limit=100)]


@needs_tweets
def test_tweets_job_gives_the_same_rows_ids_and_labels_on_openai_and_anthropic(tmp_path: Path) -> None:
    outs = {}
    with echo_server(tmp_path / "srv") as srv:
        for provider, url in (("openai", srv.base_url), ("anthropic", _root(srv.base_url))):
            out = outs[provider] = tmp_path / f"{provider}.csv"
            res = coldbatch(
                tmp_path / f"home-{provider}",
                *_job(
                    TWEETS,
                    out,
                    provider,
                    url,
                    "--id-column",
                    "tweet_id",
                    "--on-duplicate-id",
                    "suffix",
                    "--max-requests",
                    "5000",
                ),
                timeout=600,
            )
            assert res.returncode == 0, res.stderr[-3000:]
            assert "14,640 rows → " in res.stdout
            assert "answered from the cache 0" in res.stdout  # each provider really sent its requests
        anthropic_batches = _anthropic_batches(_root(srv.base_url))
        openai_batches = srv.batches()
    a, o = read_csv(outs["anthropic"]), read_csv(outs["openai"])
    assert len(a) == len(o) == 14_640
    for col in ("tweet_id", "custom_id", "text", "label", "error"):
        assert [r[col] for r in a] == [r[col] for r in o], col
    assert {r["label"] for r in a} == set(LABELS.split(","))
    assert all(r["error"] == "" for r in a)
    # the answers came through each dialect: 3 units of <= 5,000 distinct questions each, on each side
    assert len(anthropic_batches) == len(openai_batches) >= 3
    assert all(b["processing_status"] == "ended" for b in anthropic_batches)


def _dataset(path: Path, rows: int = 240) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id,text\n")
        for i in range(1, rows + 1):
            fh.write(f't{i},"tweet {i}: the flight was {["late", "fine", "great"][i % 3]}"\n')
    return path


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_kill_9_while_a_batch_create_is_in_flight_then_resume_adopts_that_batch(tmp_path: Path, provider: str) -> None:
    data, out, home = _dataset(tmp_path / "in.csv"), tmp_path / "out.csv", tmp_path / "home"
    with echo_server(tmp_path / "srv") as srv:
        target = srv.base_url if provider == "openai" else _root(srv.base_url)
        with DelayProxy(_root(srv.base_url), hold=30.0) as proxy:
            url = proxy.url + ("/v1" if provider == "openai" else "")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "coldbatch",
                    *_job(data, out, provider, url, "--id-column", "id", "--max-requests", "100"),
                ],
                env=env_for(home),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 90
            while not proxy.created.is_set() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            proc.send_signal(signal.SIGKILL)  # the batch exists on the server; the ledger says "creating"
            _, err = proc.communicate(timeout=30)
        job = job_id_from(err)
        res = coldbatch(home, "resume", job, "--base-url", target, "--api-key", "sk-test", "--yes", timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        units = orjson.loads(coldbatch(home, "status", job, "--json").stdout)["units"]
        made = len(_anthropic_batches(_root(srv.base_url))) if provider == "anthropic" else len(srv.batches(job))
    assert "adopted=True" in res.stderr, res.stderr[-3000:]
    assert made == len(units) == 3  # one batch per unit: the one created before the kill was not sent again
    rows = read_csv(out)
    assert [r["id"] for r in rows] == [f"t{i}" for i in range(1, 241)]
    assert all(r["label"] in LABELS.split(",") and r["error"] == "" for r in rows)


def test_a_foreign_batch_of_the_same_size_is_adopted_only_until_its_results_prove_it_is_not_ours(
    tmp_path: Path,
) -> None:
    unit = tmp_path / "send-00001.jsonl"
    body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    unit.write_bytes(
        b"".join(
            orjson.dumps({"custom_id": f"k-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + b"\n"
            for i in range(3)
        )
    )
    tag = {
        "coldbatch_job": "j",
        "coldbatch_unit": "1",
        "coldbatch_try": "1",
        "coldbatch_round": "1",
        "coldbatch_sha256": "ab",
    }
    with echo_server(tmp_path / "srv") as srv:
        root = _root(srv.base_url)
        with anthropic.Anthropic(base_url=root, api_key="sk-test") as c:  # another client of the same workspace
            foreign = c.messages.batches.create(
                requests=[
                    {
                        "custom_id": f"other-{i}",
                        "params": {
                            "model": "gpt-4o-mini",
                            "max_tokens": 5,
                            "messages": [{"role": "user", "content": "x"}],
                        },
                    }
                    for i in range(3)
                ]
            ).id

        async def scenario() -> tuple[str | None, int, str | None, str]:
            p = AnthropicProvider(base_url=root, api_key="sk-test", state_dir=tmp_path / "state")
            try:
                adopted = await p.find_batch(f"local:{unit}", tag, 3, int(time.time()) - 120)
                assert adopted is not None
                while (b := await p.retrieve(adopted["id"]))["status"] != "completed":
                    await asyncio.sleep(0.1)
                size = await p.download(b["output_file_id"], tmp_path / "out.jsonl")
                await p.delete_file(b["output_file_id"])  # housekeeping must leave a foreign batch alone
                again = await p.find_batch(f"local:{unit}", tag, 3, int(time.time()) - 120)
                ours = await p.create_batch(f"local:{unit}", "/v1/chat/completions", tag, "24h")
                found = await p.find_batch(f"local:{unit}", tag, 3, int(time.time()) - 120)
                return adopted["id"], size, again and again["id"], f"{ours['id']}={found and found['id']}"
            finally:
                await p.aclose()

        adopted_id, size, again, ours = asyncio.run(scenario())
        with anthropic.Anthropic(base_url=root, api_key="sk-test") as c:
            still_there = c.messages.batches.retrieve(foreign).id
    assert adopted_id == foreign and size == 0  # adopted (same size, unclaimed), then proven foreign: no results
    assert again is None  # a batch proven foreign is never adopted again
    a, b = ours.split("=")
    assert a == b  # our own batch, once created, is the one found for the unit
    assert still_there == foreign


def test_azure_provider_speaks_azures_data_plane_urls(tmp_path: Path) -> None:
    """`--provider azure` uses the openai SDK's Azure client: every call goes to `/openai/...?api-version=...`
    (no Azure here: a proxy maps those URLs onto coldbatch serve's /v1/)."""
    data, out = _dataset(tmp_path / "in.csv", rows=30), tmp_path / "out.csv"
    with echo_server(tmp_path / "srv") as srv, DelayProxy(_root(srv.base_url), rewrite=("/openai/", "/v1/")) as proxy:
        res = coldbatch(tmp_path / "home", *_job(data, out, "azure", proxy.url, "--id-column", "id"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["id"] for r in read_csv(out)] == [f"t{i}" for i in range(1, 31)]
    assert all(r["label"] in LABELS.split(",") for r in read_csv(out))
    calls = {(m, p.split("/")[2]) for m, p, _ in proxy.seen if p.startswith("/openai/")}
    assert {("POST", "files"), ("POST", "batches"), ("GET", "batches")} <= calls
    assert all(p.startswith("/openai/") and "api-version=2024-10-21" in q for _, p, q in proxy.seen)


def test_cancel_an_anthropic_job_keeps_what_finished_and_reports_the_rest(tmp_path: Path) -> None:
    data, out, home = _dataset(tmp_path / "in.csv", rows=400), tmp_path / "out.csv", tmp_path / "home"
    with echo_server(tmp_path / "srv", latency=20.0) as srv:  # the batch is still running when cancel arrives
        root = _root(srv.base_url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "coldbatch", *_job(data, out, "anthropic", root, "--id-column", "id")],
            env=env_for(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 90
        while not _anthropic_batches(root) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        jobs = orjson.loads(coldbatch(home, "jobs", "--json").stdout)
        res = coldbatch(home, "cancel", jobs[0]["id"], "--base-url", root, "--api-key", "sk-test", timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        _, err = proc.communicate(timeout=180)
        batches = _anthropic_batches(root)
    assert len(batches) == 1 and batches[0]["cancel_initiated_at"] is not None
    rows = read_csv(out)
    assert len(rows) == 400
    done = [r for r in rows if r["label"]]
    cancelled = [r for r in rows if r["error"].startswith("batch_cancelled: ")]
    assert len(done) + len(cancelled) == 400 and cancelled, err[-2000:]
    assert proc.returncode == 4  # rows left unanswered, each with its reason


def test_when_the_adopted_batch_proves_foreign_the_units_own_batch_is_found_and_read(tmp_path: Path) -> None:
    """The crash left our batch on Anthropic unrecorded, and another client's batch of the same size is older:
    the foreign one is adopted first, proven foreign when it ends, and the unit's own batch is then followed and
    read: no retry round, nothing paid twice."""
    unit = tmp_path / "send-00001.jsonl"
    body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    unit.write_bytes(
        b"".join(
            orjson.dumps({"custom_id": f"k-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + b"\n"
            for i in range(3)
        )
    )
    tag = {
        "coldbatch_job": "j",
        "coldbatch_unit": "1",
        "coldbatch_try": "1",
        "coldbatch_round": "1",
        "coldbatch_sha256": "cd",
    }
    with echo_server(tmp_path / "srv") as srv:
        root = _root(srv.base_url)

        async def scenario() -> tuple[str, str, str, list[str]]:
            p = AnthropicProvider(base_url=root, api_key="sk-test", state_dir=tmp_path / "state")
            try:
                foreign = await p.client.messages.batches.create(
                    requests=[  # another client, first
                        {
                            "custom_id": f"other-{i}",
                            "params": {
                                "model": "gpt-4o-mini",
                                "max_tokens": 5,
                                "messages": [{"role": "user", "content": "x"}],
                            },
                        }
                        for i in range(3)
                    ]
                )
                await asyncio.sleep(1.1)  # created_at has whole seconds: ours is strictly newer
                from coldbatch.providers.anthropic_batches import unit_prefix

                ours = await p.client.messages.batches.create(  # our create, whose answer the crash lost
                    requests=p._requests(unit, unit_prefix(tag))
                )  # type: ignore[arg-type]
                adopted = await p.find_batch(f"local:{unit}", tag, 3, int(time.time()) - 120)
                assert adopted is not None
                while (b := await p.retrieve(adopted["id"]))["status"] != "completed":
                    await asyncio.sleep(0.1)
                await p.download(b["output_file_id"], tmp_path / "out.jsonl")
                ids = [orjson.loads(x)["custom_id"] for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
                return foreign.id, ours.id, f"{adopted['id']}>{b['output_file_id']}", sorted(ids)
            finally:
                await p.aclose()

        foreign, ours, path, ids = asyncio.run(scenario())
        made = len(_anthropic_batches(root))
    assert path == f"{foreign}>{ours}"  # adopted the older foreign batch, then followed ours once it was proven
    assert ids == ["k-0", "k-1", "k-2"]  # our answers, under the unit's own ids
    assert made == 2  # nothing created a third batch
