"""Crash safety of `coldbatch serve`: kill -9 at any moment, restart on the same data dir, lose nothing.

Acceptance criterion: after any number of SIGKILLs (and restarts on the same data dir) every batch
still completes, and across its output and error files every input `custom_id` appears exactly once.

`test_kill_and_restart_until_done` runs the real server (`python -m coldbatch serve --engine echo`) as
a subprocess and kills it by pid at delays drawn from a seeded RNG, at least `MIN_KILLS` times, with
batches created at staggered rounds so that kills land while batches are validating, in progress and
finalizing (the statuses seen just before each kill are recorded and printed). Then it checks the
results through the API, the blob folder and the SQLite file.

The in-process tests pin the narrow windows a random kill rarely hits: a crash after the result blobs
are written but before the final transition commits (the files must be rebuilt byte for byte and
registered once), and a cancel that races the end of execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from coldbatch.core.status import BatchStatus as S
from coldbatch.engines.echo import EchoEngine
from coldbatch.server.executor import Executor, ExecutorConfig
from coldbatch.server.scheduler import Slots
from coldbatch.store.blobs import LocalBlobStore
from coldbatch.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow

SEED = 20260
BATCHES = 3
LINES = 2_000
LATENCY = 0.2  # s per group of 32 requests: ~1,300 req/s per batch, so in_progress spans several kills
FAILURE_RATE = 0.1
MIN_KILLS = 12
MAX_KILLS = 24
CREATE_AT_ROUND = (0, 3, 6)  # batch i is created right after the server of round CREATE_AT_ROUND[i] is up
FINALIZING_KILLS = 3  # kill at once when a batch is seen finalizing, at most this many times
DEADLINE_S = 55.0
TERMINAL = {"completed", "failed", "expired", "cancelled"}


# -- the server as a subprocess -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `coldbatch serve` process on a fresh port; the data dir is shared by every restart."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        cmd = [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "echo",
            "--echo-latency",
            str(LATENCY),
            "--echo-failure-rate",
            str(FAILURE_RATE),
            "--allow-short-windows",
            "--data-dir",
            str(data_dir),
            "--port",
            str(self.port),
        ]
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.02)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL exactly the process this object started."""
        self.http.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def statuses(self) -> dict[str, str]:
        r = self.http.get("/v1/batches", params={"limit": 100}, timeout=2)
        r.raise_for_status()
        return {b["id"]: b["status"] for b in r.json()["data"]}


def _input_file(path: Path, k: int) -> set[str]:
    ids = set()
    with path.open("wb") as fh:
        for i in range(LINES):
            cid = f"b{k}-{i:05d}"
            ids.add(cid)
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": f"Review {i} of batch {k}: the kettle was okay."}],
            }
            fh.write(
                orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + b"\n"
            )
    return ids


# -- the kill loop ------------------------------------------------------------------------------------------
def _watch_then_kill(
    server: Server, delay: float, allow_finalizing: bool, last: dict[str, str]
) -> tuple[dict[str, str], bool]:
    """Poll statuses until `delay` passes (or, if allowed, a batch is seen finalizing); then SIGKILL.
    Returns the statuses seen last before the kill and whether the finalizing trigger fired."""
    seen, fired = dict(last), False
    end = time.monotonic() + delay
    while True:
        with contextlib.suppress(httpx.HTTPError):
            seen = server.statuses()
        if allow_finalizing and "finalizing" in seen.values():
            fired = True
            break
        if time.monotonic() >= end:
            break
        time.sleep(min(0.01, max(0.0, end - time.monotonic())))
    server.kill()
    return seen, fired


def _draw_delay(rng: random.Random) -> float:
    """Three regimes: right after start (validating, re-validating, re-finalizing), mid-run, later."""
    regime = rng.random()
    if regime < 0.3:
        return rng.uniform(0.0, 0.05)
    if regime < 0.7:
        return rng.uniform(0.05, 0.5)
    return rng.uniform(0.5, 1.5)


@pytest.mark.alone  # timing under kill -9s: run after the parallel part, by itself (scripts/test)
def test_kill_and_restart_until_done(tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    inputs: list[tuple[Path, set[str]]] = []
    for k in range(BATCHES):
        p = tmp_path / f"batch{k}.jsonl"
        inputs.append((p, _input_file(p, k)))

    server = Server(data_dir, log)
    server.wait_ready()
    file_ids = []
    for p, _ in inputs:
        r = server.http.post(
            "/v1/files", data={"purpose": "batch"}, files={"file": (p.name, p.read_bytes(), "application/jsonl")}
        )
        assert r.status_code == 200, r.text
        file_ids.append(r.json()["id"])

    batch_ids: list[str] = []
    kills: list[dict[str, Any]] = []
    finalizing_left = FINALIZING_KILLS
    statuses: dict[str, str] = {}
    try:
        for rnd in range(MAX_KILLS):
            if rnd > 0:
                server = Server(data_dir, log)
                server.wait_ready()
            created = False
            while len(batch_ids) < BATCHES and CREATE_AT_ROUND[len(batch_ids)] <= rnd:
                r = server.http.post(
                    "/v1/batches",
                    json={
                        "input_file_id": file_ids[len(batch_ids)],
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                    },
                )
                assert r.status_code == 200, r.text
                batch_ids.append(r.json()["id"])
                statuses[r.json()["id"]] = r.json()["status"]
                created = True
            if created and rng.random() < 0.5:  # at once: the executor is validating it (or about to)
                delay, fired = 0.0, False
                server.kill()
            else:
                delay = _draw_delay(rng)
                statuses, fired = _watch_then_kill(server, delay, finalizing_left > 0, statuses)
            finalizing_left -= fired
            kills.append(
                {
                    "round": rnd,
                    "delay": round(delay, 3),
                    "finalizing_trigger": fired,
                    "statuses": [statuses.get(b, "?") for b in batch_ids],
                    **_left_behind(data_dir),
                }
            )
            assert time.monotonic() - started < DEADLINE_S, _kill_table(kills)
            if rnd + 1 >= MIN_KILLS and len(batch_ids) == BATCHES and TERMINAL.issuperset(statuses.values()):
                break

        server = Server(data_dir, log)
        server.wait_ready()
        while not TERMINAL.issuperset(server.statuses().values()) or len(server.statuses()) < BATCHES:
            assert time.monotonic() - started < DEADLINE_S, f"{server.statuses()}\n{_kill_table(kills)}"
            time.sleep(0.05)
        print("\n" + _kill_table(kills))
        _check_results(server, file_ids, batch_ids, inputs, kills)
    finally:
        server.stop()
    _check_data_dir(data_dir, file_ids, batch_ids)


def _left_behind(data_dir: Path) -> dict[str, int]:
    """What the kill left on disk: partial writes under tmp/, and result blobs without a file row (the
    window between writing the result files and the final transition)."""
    db = sqlite3.connect(f"file:{data_dir / 'coldbatch.sqlite3'}?mode=ro", uri=True)  # ro: no checkpoint
    try:
        registered = {r[0] for r in db.execute("SELECT id FROM files")}
    finally:
        db.close()
    blobs = {p.name for p in (data_dir / "files").iterdir() if p.is_file()}
    return {"parts": len(list((data_dir / "files" / "tmp").glob("*.part"))), "unregistered": len(blobs - registered)}


def _kill_table(kills: list[dict[str, Any]]) -> str:
    rows = ["round  delay_s  trigger     tmp parts  unregistered blobs  statuses of batches 0..n at the kill"]
    rows += [
        f"{k['round']:>5}  {k['delay']:>7.3f}  {'finalizing' if k['finalizing_trigger'] else 'delay':<10}  "
        f"{k['parts']:>9}  {k['unregistered']:>18}  {', '.join(k['statuses'])}"
        for k in kills
    ]
    return "\n".join(rows)


def _check_results(
    server: Server,
    file_ids: list[str],
    batch_ids: list[str],
    inputs: list[tuple[Path, set[str]]],
    kills: list[dict[str, Any]],
) -> None:
    table = _kill_table(kills)
    assert len(kills) >= MIN_KILLS, table
    hit = {s for k in kills for s in k["statuses"]}
    assert {"validating", "in_progress", "finalizing"} <= hit, f"phases not covered by the kills:\n{table}"

    expected_files = set(file_ids)
    for bid, (_, ids) in zip(batch_ids, inputs, strict=True):
        b = server.http.get(f"/v1/batches/{bid}").json()
        assert b["status"] == "completed", (b, table)
        seen: list[str] = []
        per_file: dict[str, list[dict[str, Any]]] = {}
        for key in ("output_file_id", "error_file_id"):
            fid = b[key]
            if fid is None:
                per_file[key] = []
                continue
            expected_files.add(fid)
            content = server.http.get(f"/v1/files/{fid}/content").content
            meta = server.http.get(f"/v1/files/{fid}").json()
            assert meta["bytes"] == len(content), (key, meta)
            assert meta["purpose"] == "batch_output"
            lines = [orjson.loads(x) for x in content.splitlines()]
            per_file[key] = lines
            seen += [x["custom_id"] for x in lines]
        dups = [c for c, n in Counter(seen).items() if n > 1]
        assert not dups, f"{bid}: {len(dups)} custom_ids appear more than once, e.g. {dups[:5]}\n{table}"
        assert set(seen) == ids, f"{bid}: missing {sorted(ids - set(seen))[:5]}, extra {sorted(set(seen) - ids)[:5]}"
        out, err = per_file["output_file_id"], per_file["error_file_id"]
        assert all(x["response"]["status_code"] == 200 for x in out)
        assert all(x["response"]["status_code"] == 500 for x in err)
        assert err, "the failure rate should have produced an error file"
        assert b["request_counts"] == {"total": LINES, "completed": len(out), "failed": len(err)}
        usage = b["usage"]
        assert usage["input_tokens"] == sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in out)
        assert usage["output_tokens"] == sum(x["response"]["body"]["usage"]["completion_tokens"] for x in out)

    listed = server.http.get("/v1/files").json()["data"]
    assert sorted(f["id"] for f in listed) == sorted(expected_files), "orphan or missing files in the listing"


def _check_data_dir(data_dir: Path, file_ids: list[str], batch_ids: list[str]) -> None:
    """After a clean stop: blobs on disk are exactly the registered files, the results log is empty, and
    each batch's events are one legal chain (every transition recorded exactly once)."""
    db = sqlite3.connect(f"file:{data_dir / 'coldbatch.sqlite3'}?mode=ro", uri=True)
    try:
        registered = {r[0] for r in db.execute("SELECT id FROM files WHERE deleted = 0")}
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
        for bid in batch_ids:
            chain = [
                tuple(r)
                for r in db.execute(
                    "SELECT from_status, to_status FROM batch_events WHERE batch_id = ? ORDER BY rowid", (bid,)
                )
            ]
            assert chain == [
                (None, "validating"),
                ("validating", "in_progress"),
                ("in_progress", "finalizing"),
                ("finalizing", "completed"),
            ], (bid, chain)
    finally:
        db.close()
    on_disk = {p.name for p in (data_dir / "files").iterdir() if p.is_file()}
    assert on_disk == registered
    assert set(file_ids) <= registered
    assert not list((data_dir / "files" / "tmp").iterdir())


# -- in-process: the narrow windows ------------------------------------------------------------------------
class _Crash(BaseException):
    """Stands for SIGKILL at one exact point: nothing after it runs, nothing is cleaned up."""


BID = "batch_0123456789abcdef01234567"


def _setup(tmp_path: Path, n: int) -> tuple[SqliteStore, LocalBlobStore, set[str]]:
    store = SqliteStore(tmp_path / "db.sqlite3")
    blobs = LocalBlobStore(tmp_path / "files")
    ids = {f"r{i}" for i in range(n)}
    with (tmp_path / "in.jsonl").open("wb") as fh:
        for i in range(n):
            fh.write(
                orjson.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": "m", "messages": [{"role": "user", "content": f"hello {i}"}]},
                    }
                )
                + b"\n"
            )
    shutil.copy(tmp_path / "in.jsonl", blobs.path("file-in"))
    now = int(time.time())
    store.create_file(
        {
            "id": "file-in",
            "owner": "local",
            "filename": "in.jsonl",
            "purpose": "batch",
            "bytes": blobs.path("file-in").stat().st_size,
            "created_at": now,
            "expires_at": None,
        }
    )
    store.create_batch(
        {
            "id": BID,
            "owner": "local",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": "validating",
            "created_at": now,
            "expires_at": now + 86_400,
        }
    )
    return store, blobs, ids


def _executor(store: SqliteStore, blobs: LocalBlobStore, failure_rate: float = 0.2) -> Executor:
    engine = EchoEngine(failure_rate=failure_rate, seed=1)
    return Executor(
        store,
        blobs,
        engine,
        Slots(engine.info.max_concurrency),
        config=ExecutorConfig(group_size=64, flush_seconds=0.01),
    )


def _result_ids(store: SqliteStore, blobs: LocalBlobStore, bid: str) -> tuple[list[str], dict[str, bytes]]:
    b = store.get_batch(bid, None)
    assert b is not None
    ids, contents = [], {}
    for key in ("output_file_id", "error_file_id"):
        if b[key]:
            data = blobs.path(b[key]).read_bytes()
            f = store.get_file(b[key], None)
            assert f is not None and f["bytes"] == len(data)
            contents[key] = data
            ids += [orjson.loads(x)["custom_id"] for x in data.splitlines()]
    return ids, contents


@pytest.mark.parametrize("final", [S.COMPLETED, S.CANCELLED])
def test_crash_between_result_blobs_and_final_transition(
    tmp_path: Path, final: S, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, blobs, ids = _setup(tmp_path, 300)
    ex = _executor(store, blobs)
    if final == S.CANCELLED:  # cancel after the first group is logged: some lines never run
        real = store.record_results

        def record_then_cancel(*a: Any, **kw: Any) -> Any:
            n = real(*a, **kw)
            store.transition(BID, S.CANCELLING, int(time.time()))
            ex.notify(BID)
            return n

        monkeypatch.setattr(store, "record_results", record_then_cancel)

    real_transition = store.transition
    written: dict[str, bytes] = {}

    def crash_at_final(batch_id: str, to: S, now: int, **kw: Any) -> bool:
        if to == final:
            for f in kw.get("files", ()):
                written[f["id"]] = blobs.path(f["id"]).read_bytes()
            raise _Crash
        return real_transition(batch_id, to, now, **kw)

    monkeypatch.setattr(store, "transition", crash_at_final)
    with pytest.raises(_Crash):
        asyncio.run(ex.drive(BID))
    assert written, "the result blobs should have been written before the final transition"
    assert store.get_batch(BID, None)["status"] == (S.FINALIZING if final == S.COMPLETED else S.CANCELLING)
    assert [f["id"] for f in store.list_files("local", purpose=None, after=None, limit=100, order="asc")[0]] == [
        "file-in"
    ], "result files must not be visible before the final transition"
    monkeypatch.undo()

    # restart: a new store connection and executor on the same folder
    store.close()
    store2 = SqliteStore(tmp_path / "db.sqlite3")
    asyncio.run(_executor(store2, blobs).drive(BID))
    b = store2.get_batch(BID, None)
    assert b["status"] == final
    got, contents = _result_ids(store2, blobs, BID)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    assert {b[k]: v for k, v in contents.items()} == written, "result files must be rebuilt byte for byte"
    rows = store2.db.execute("SELECT id, COUNT(*) FROM files GROUP BY id").fetchall()
    assert all(n == 1 for _, n in rows) and len(rows) == 1 + len(written)
    assert b["completed"] + b["failed"] == len(ids)
    assert store2.db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0


def test_cancel_racing_the_end_of_execution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel lands after the last result is logged but before the executor moves to finalizing:
    the compare-and-set lets exactly one win; the batch ends cancelled with every line accounted for."""
    store, blobs, ids = _setup(tmp_path, 200)
    ex = _executor(store, blobs)
    real = store.transition
    raced = []

    def cancel_first(batch_id: str, to: S, now: int, **kw: Any) -> bool:
        if to == S.FINALIZING and not raced:
            raced.append(real(batch_id, S.CANCELLING, now))
        return real(batch_id, to, now, **kw)

    monkeypatch.setattr(store, "transition", cancel_first)
    asyncio.run(ex.drive(BID))
    assert raced == [True]
    b = store.get_batch(BID, None)
    assert b["status"] == S.CANCELLED
    got, _ = _result_ids(store, blobs, BID)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))
    assert [t for _, t in store.events(BID)] == ["validating", "in_progress", "cancelling", "cancelled"]
    # and the other way round: once finalizing, a cancel is refused
    assert not store.transition(BID, S.CANCELLING, int(time.time()))


def test_recover_sweeps_what_a_crash_left_behind(tmp_path: Path) -> None:
    store, blobs, _ = _setup(tmp_path, 10)  # batch BID (validating) reads file-in
    old = time.time() - 60

    def blob(key: str, mtime: float | None = old) -> None:
        with blobs.writer(key) as fh:
            fh.write(b"x\n")
        if mtime is not None:
            os.utime(blobs.path(key), (mtime, mtime))

    blob("file-orphan")  # an upload killed between the rename and its row
    blob("file-gone")  # a deleted file, no unfinished batch reads it
    store.create_file(
        {
            "id": "file-gone",
            "owner": "local",
            "filename": "g.jsonl",
            "purpose": "batch",
            "bytes": 2,
            "created_at": 0,
            "expires_at": None,
        }
    )
    store.delete_file("file-gone", "local")
    store.delete_file("file-in", "local")  # deleted, but batch BID still reads it
    os.utime(blobs.path("file-in"), (old, old))
    # a terminal batch whose log survived a crash right after its final transition
    store.create_batch(
        {
            "id": "batch_done",
            "owner": "local",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-gone",
            "completion_window": "24h",
            "status": "validating",
            "created_at": 0,
            "expires_at": 86_400,
        }
    )
    store.transition("batch_done", S.IN_PROGRESS, 1, total=1)
    store.record_results("batch_done", [("r0", 1, True, b"{}", 1, 0, 1)])
    store.transition("batch_done", S.FINALIZING, 2)
    store.transition("batch_done", S.COMPLETED, 3)

    ex = _executor(store, blobs)
    blob("file-fresh", mtime=None)  # written after the executor started: maybe an upload in flight
    ex.recover()
    assert sorted(blobs.stored_keys()) == ["file-fresh", "file-in"]
    assert store.finished_logs() == [] and store.done_lines("batch_done") == set()
    b = store.get_batch("batch_done", None)
    assert b is not None and b["completed"] == 1
