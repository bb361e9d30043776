"""Exactly-once spending under `kill -9`: the `run` process is killed at random moments, then resumed.

Acceptance criterion: against `coldbatch serve --engine echo` (with simulated latency), kill -9 the `run`
process at random moments (at least 20 distinct points across the job's phases), then `resume`: the
final OUTPUT is identical to an uninterrupted run, and the server holds exactly one batch per shard
(plus retries of genuinely failed lines).

How it is made meaningful:
- The crash run's server injects failures (`--echo-failure-rate`), so the job goes through retry rounds
  and kills land in them too. Which rows fail is random per server, so the reference (uninterrupted) run
  uses a failure-free server and OUTPUT is compared byte for byte on every column except `attempts`;
  `--max-attempts` is high enough that a row failing every attempt is out of the question.
- The phase each kill interrupted is read from the ledger right after the kill (job status, unit states,
  rounds), and whether that process had changed the ledger before it died; both are printed.
- With `--keep-remote-files` everything the job ever sent stays on the server, so the test can check it:
  one batch per (unit, try) tag and nothing else, one upload per unit filename, and each retry batch's
  input is exactly the set of rows that the previous round's batches reported as failed.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from _runner_support import EchoServer, coldbatch, echo_server, env_for

pytestmark = pytest.mark.slow

SEED = 4242
ROWS = 1_200
MAX_REQUESTS = 40  # 30 round-1 shards, and retry rounds of several units
LATENCY = 1.0  # s per engine call (of up to 32 requests; calls overlap): each round spends ~1 s on the server
FAILURE_RATE = 0.5  # ~12 rounds: many round boundaries for the kills to hit
MAX_ATTEMPTS = 30  # P(some row fails all 30 attempts) = 1200 * 0.5**30 ≈ 1e-6
MIN_KILLS = 20
MIN_KILLS_BEFORE_DONE = 15
MAX_KILLS = 26
DEADLINE_S = 40.0  # after this (and MIN_KILLS), no more kills: the last resume runs to the end
MIN_PHASES = 4
LABELS = "negative,neutral,positive"


def _dataset(path: Path) -> Path:
    rng = random.Random(7)
    words = ["late", "great", "lost bag", "thanks", "delayed", "crew", "seat", "refund", '"quoted"', "a, b"]
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id,text,n\n")
        for i in range(1, ROWS + 1):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
            fh.write(f'r{i:05d},"{text.replace(chr(34), chr(34) * 2)} #{i}",{i}\n')
    return path


def _job_args(data: Path, out: Path, base_url: str, *more: str) -> list[str]:
    return [
        str(data),
        "--out",
        str(out),
        "-m",
        "gpt-4o-mini",
        "-p",
        "Sentiment of: {text}",
        "--id-column",
        "id",
        "--labels",
        LABELS,
        "--max-requests",
        str(MAX_REQUESTS),
        "--base-url",
        base_url,
        "--yes",
        "--poll-interval",
        "0.2",
        "--max-attempts",
        str(MAX_ATTEMPTS),
        "--mode",
        "batch",
        *more,
    ]


# -- the ledger, read directly ------------------------------------------------------------------------------
def _ledger_state(home: Path) -> dict[str, Any]:
    """The (only) job's status and its units, straight from the SQLite file (read-only)."""
    db_path = home / "ledger.sqlite3"
    if not db_path.exists():
        return {"job": None, "status": None, "units": []}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        job = db.execute("SELECT id, status FROM jobs ORDER BY created_at LIMIT 1").fetchone()
        if job is None:
            return {"job": None, "status": None, "units": []}
        units = db.execute(
            "SELECT id, round, state, try, batch_id, batch_status FROM units WHERE job_id = ? ORDER BY id", (job[0],)
        ).fetchall()
        results = db.execute(
            "SELECT state, COUNT(*) FROM results WHERE job_id = ? GROUP BY state", (job[0],)
        ).fetchall()
    except sqlite3.OperationalError:  # the tables are not there yet
        return {"job": None, "status": None, "units": []}
    finally:
        db.close()
    return {"job": job[0], "status": job[1], "units": units, "results": dict(results)}


def _phase(st: dict[str, Any]) -> str:
    """Name the job's phase from its ledger state: round 1 or a retry round, and what its units are doing."""
    if st["job"] is None:
        return "starting"
    if st["status"] in ("preparing", "prepared", "done", "cancelled"):
        return str(st["status"])
    units = st["units"]
    top = max((u[1] for u in units), default=1)
    current = [u for u in units if u[1] == top]
    if all(u[2] in ("collected", "failed") for u in current):
        return "between rounds / writing OUTPUT"
    where = "round 1" if top == 1 else "retry round"
    if any(u[2] in ("planned", "uploading", "uploaded", "creating") for u in current):
        return f"{where}: submitting"
    if any(u[2] in ("collected", "failed") for u in current):
        return f"{where}: collecting"
    return f"{where}: polling"


def _fingerprint(st: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps([st["status"], st["units"], st.get("results")])).hexdigest()


# -- the crash loop -------------------------------------------------------------------------------------------
def _start(home: Path, args: list[str]) -> subprocess.Popen[bytes]:
    log = (home.parent / "crash-cli.log").open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "coldbatch", *args], env=env_for(home), stdout=log, stderr=log)
    finally:
        log.close()


def _wait_or_kill(
    proc: subprocess.Popen[bytes], home: Path, before: str, cap: float, after_change: float | None
) -> tuple[int | None, float, float | None]:
    """Kill -9 `proc` at `cap` seconds, or `after_change` s after it first changed the ledger if sooner.

    Returns (exit code, None when killed; seconds from start to the kill or exit; seconds to the first change).
    """
    t0 = time.monotonic()
    kill_at = t0 + cap
    changed: float | None = None
    while True:
        rc = proc.poll()
        now = time.monotonic()
        if rc is not None:
            return rc, now - t0, changed
        if now >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)  # the run process only: it starts no children (--base-url given)
            proc.wait()
            return None, now - t0, changed
        if after_change is not None and changed is None and _fingerprint(_ledger_state(home)) != before:
            changed = now - t0
            kill_at = min(kill_at, now + after_change)
        time.sleep(0.005)


def _crash_until_done(home: Path, run_args: list[str], startup: float) -> tuple[str, list[dict[str, Any]]]:
    """Start `run`, kill -9 it, `resume`, kill again, ... until MIN_KILLS (or more) kills; then resume to the end.

    Each kill point is drawn from a seeded RNG, one of two kinds:
    - "start-up": a plain delay within the start-up time S (imports, ledger, provider; estimated from the
      processes seen so far), very short ones included: the process is killed before it acts;
    - "mid-step": a delay of 0-0.08 s (most), 0.08-0.5 s or 0.5-1.5 s after the process first changed the
      ledger (capped at S + 2 s), so that kills land while the job is working, in whatever phase it is, and
      each process gets a little (or a lot) further than the one before, however slow or loaded this machine is.
    Should a resume finish the job before MIN_KILLS kills, the remaining kills hit `resume` of the finished
    job (which re-writes OUTPUT); they are counted apart.
    """
    rng = random.Random(SEED)
    kills: list[dict[str, Any]] = []
    first_changes: list[float] = []
    started = time.monotonic()
    finished = False
    while True:
        st_before = _ledger_state(home)
        job = st_before["job"]
        args = ["resume", job, "--yes"] if job else ["run", *run_args, "--name", "crash"]
        done_killing = len(kills) >= MAX_KILLS or (
            len(kills) >= MIN_KILLS and (finished or time.monotonic() - started > DEADLINE_S)
        )
        s_est = min(first_changes[-3:]) if first_changes else startup
        r = rng.random()
        after_change: float | None = None
        if done_killing:
            cap, kind = 120.0, "none"
        elif not kills:  # the first kill lands just after `run` created the job: while it prepares
            after_change = rng.uniform(0.0, 0.1)
            cap, kind = s_est + 2.0, f"mid-step+{after_change:.2f}"
        elif r < 0.15:
            cap, kind = rng.uniform(0.02, 0.9 * s_est), "start-up"
        else:
            after_change = (
                rng.uniform(0.0, 0.08) if r < 0.55 else rng.uniform(0.08, 0.5) if r < 0.85 else rng.uniform(0.5, 1.5)
            )
            cap, kind = s_est + 2.0, f"mid-step+{after_change:.2f}"
        proc = _start(home, args)
        rc, elapsed, changed = _wait_or_kill(proc, home, _fingerprint(st_before), cap, after_change)
        if changed is not None:
            first_changes.append(changed)
        if rc is None:
            if done_killing:
                raise AssertionError("the final resume did not finish")
            st = _ledger_state(home)
            kills.append(
                {
                    "n": len(kills) + 1,
                    "cmd": args[0],
                    "kind": kind,
                    "at": round(elapsed, 3),
                    "after_done": finished,
                    "phase": _phase(st),
                    "phase_before": _phase(st_before),
                    "progressed": _fingerprint(st) != _fingerprint(st_before),
                }
            )
            continue
        log = (home.parent / "crash-cli.log").read_text(errors="replace")
        assert rc == 0, f"{args[0]} exited {rc}:\n{log[-3000:]}"
        st = _ledger_state(home)
        assert st["job"] is not None and st["status"] == "done", st
        finished = True
        if done_killing:
            return st["job"], kills


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _dataset(tmp_path_factory.mktemp("crash-data") / "rows.csv")


def _reference(tmp: Path, data: Path) -> tuple[Path, float]:
    """The uninterrupted run, on a failure-free server; and the start-up time S of a `resume`.

    S is measured as the time `resume` of the finished job takes (it re-writes the same OUTPUT).
    """
    out = tmp / "reference.csv"
    home = tmp / "ref-home"
    with echo_server(tmp / "ref-server") as srv:
        res = coldbatch(home, "run", *_job_args(data, out, srv.base_url))
        assert res.returncode == 0, res.stderr[-3000:]
        first = out.read_bytes()
        t0 = time.monotonic()
        again = coldbatch(home, "resume", _ledger_state(home)["job"], "--yes")
        startup = time.monotonic() - t0
        assert again.returncode == 0, again.stderr[-3000:]
        assert out.read_bytes() == first, "resume of a finished job must re-write the same OUTPUT"
    return out, startup


def _without(path: Path, column: str) -> tuple[list[str], list[list[str]]]:
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    i = rows[0].index(column)
    return rows[0][:i] + rows[0][i + 1 :], [r[:i] + r[i + 1 :] for r in rows[1:]]


def _check_server(srv: EchoServer, job: str, home: Path) -> dict[str, int]:
    """One batch per (unit, try) of the ledger and nothing else; one upload per unit; retries = failed rows."""
    db = sqlite3.connect(f"file:{home / 'ledger.sqlite3'}?mode=ro", uri=True)
    units = {
        r[0]: {"round": r[1], "try": r[2], "batch_id": r[3], "file_id": r[4], "state": r[5]}
        for r in db.execute("SELECT id, round, try, batch_id, file_id, state FROM units WHERE job_id = ?", (job,))
    }
    db.close()
    assert all(u["state"] == "collected" for u in units.values()), units

    batches = srv.batches(job)
    tags = collections.Counter((b["metadata"]["coldbatch_unit"], b["metadata"]["coldbatch_try"]) for b in batches)
    dup = {k: n for k, n in tags.items() if n > 1}
    assert not dup, f"a unit's try was submitted more than once: {dup}"
    expected = {(str(i), str(t)) for i, u in units.items() for t in range(1, u["try"] + 1)}
    assert set(tags) == expected, (sorted(tags), sorted(expected))
    by_unit = {
        int(b["metadata"]["coldbatch_unit"]): b
        for b in batches
        if b["metadata"]["coldbatch_try"] == str(units[int(b["metadata"]["coldbatch_unit"])]["try"])
    }
    assert {i: b["id"] for i, b in by_unit.items()} == {i: u["batch_id"] for i, u in units.items()}

    uploads = collections.Counter(
        f["filename"] for f in srv.files() if f["purpose"] == "batch" and f["filename"].startswith(job)
    )
    assert all(n == 1 for n in uploads.values()), f"uploaded twice: {uploads}"
    assert set(uploads) == {f"{job}.u{i}.jsonl" for i in units}

    def ids(file_id: str | None) -> list[str]:
        if not file_id:
            return []
        return [orjson.loads(x)["custom_id"] for x in srv.content(file_id).splitlines() if x.strip()]

    rounds = max(u["round"] for u in units.values())
    failed_before: list[str] | None = None
    for rnd in range(1, rounds + 1):
        in_round = [by_unit[i] for i, u in units.items() if u["round"] == rnd]
        sent = [cid for b in in_round for cid in ids(b["input_file_id"])]
        assert len(sent) == len(set(sent)), f"round {rnd} sends a row twice"
        if failed_before is None:
            assert len(sent) == ROWS
        else:
            assert sorted(sent) == sorted(failed_before), f"round {rnd} does not retry exactly the failed rows"
        failed_before = [cid for b in in_round for cid in ids(b["error_file_id"])]
    assert failed_before == [], "rows still failing after the last round"
    return {"units": len(units), "batches": len(batches), "rounds": rounds}


@pytest.mark.alone  # timing under kill -9s: run after the parallel part, by itself (scripts/test)
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_output(tmp_path: Path, dataset: Path) -> None:
    t_start = time.monotonic()
    reference, startup = _reference(tmp_path, dataset)
    t_ref = time.monotonic() - t_start

    home = tmp_path / "crash-home"
    home.mkdir()
    out = tmp_path / "crash.csv"
    # every shard's batch runs at once (as at a large provider), so each round lasts ~1 s of latency
    with echo_server(
        tmp_path / "crash-server", latency=LATENCY, failure_rate=FAILURE_RATE, extra=["--running-batches", "64"]
    ) as srv:
        job, kills = _crash_until_done(home, _job_args(dataset, out, srv.base_url, "--keep-remote-files"), startup)
        counts = _check_server(srv, job, home)

    print(
        f"\nstart-up {startup:.2f} s; reference run (and a resume) {t_ref:.1f} s; {len(kills)} kills; "
        f"whole test {time.monotonic() - t_start:.1f} s"
    )
    for k in kills:
        print(
            f"  kill {k['n']:2d} {k['cmd']:6s} at {k['at']:5.2f} s ({k['kind']:15s}): {k['phase_before']:>31s} → "
            f"{k['phase']:<31s} {'(ledger changed)' if k['progressed'] else ''}"
        )
    print(f"  server: {counts}")
    phases = collections.Counter(k["phase"] for k in kills)
    print(f"  phases at kill: {dict(phases)}")

    assert len(kills) >= MIN_KILLS
    before_done = [k for k in kills if not k["after_done"]]
    assert len(before_done) >= MIN_KILLS_BEFORE_DONE, "the job finished too early: most kills must hit it running"
    running_phases = {k["phase"] for k in before_done} - {"starting", "prepared", "done"}
    assert len(running_phases) >= MIN_PHASES, phases
    assert counts["rounds"] >= 5, "the failure injection should have caused retry rounds"

    ref_header, ref_rows = _without(reference, "attempts")
    header, rows = _without(out, "attempts")
    assert header == ref_header
    assert len(rows) == len(ref_rows) == ROWS
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(rows, ref_rows, strict=True)) if a != b]
    assert not diff, f"{len(diff)} rows differ, e.g. {diff[:3]}"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")], "a temporary OUTPUT file was left"
