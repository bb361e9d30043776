"""The PostgreSQL work queue, with many actors racing on a real server: chunks claimed by one worker at a time,
an expired lease claimed again (the first holder hears it lost it), results counted once whoever logs them,
a chunk done only when all its lines are logged, and a cancel seen at the next heartbeat."""

from __future__ import annotations

import threading
import time
from collections import Counter

from _scaleout_infra import Backend
from coldbatch.core.status import BatchStatus as S
from coldbatch.store.postgres import PgStore

NOW = int(time.time())


def _running(store: PgStore, batch_id: str, chunks: int, lines: int) -> None:
    store.create_batch(
        {
            "id": batch_id,
            "owner": "o",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-x",
            "completion_window": "24h",
            "status": "validating",
            "created_at": NOW,
            "expires_at": NOW + 86_400,
        }
    )
    plan = [(c * lines + 1, (c + 1) * lines, 0, 0, lines) for c in range(chunks)]
    assert store.transition(batch_id, S.IN_PROGRESS, NOW, chunks=plan, total=chunks * lines)


def _row(line: int) -> tuple[str, int, bool, bytes, int, int, int]:
    return f"r{line}", line, True, b'{"x": %d}' % line, 3, 0, 1


def test_racing_workers_claim_each_chunk_once_and_count_each_line_once(scaleout: Backend) -> None:
    store = PgStore(scaleout.store_url, max_size=12)
    _running(store, "batch_race", chunks=40, lines=50)
    claimed: Counter[int] = Counter()
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (c := store.claim_chunk(name, 30)) is not None:
            with lock:
                claimed[c["chunk"]] += 1
            lines = range(c["first_line"], c["last_line"] + 1)
            store.record_results("batch_race", [_row(n) for n in lines])
            store.record_results("batch_race", [_row(n) for n in lines][:10])  # a retry: counts nothing
            assert store.finish_chunk("batch_race", c["chunk"], name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == list(range(40)) and set(claimed.values()) == {1}
    b = store.get_batch("batch_race", None)
    assert b is not None and (b["completed"], b["failed"], b["input_tokens"]) == (2000, 0, 6000)
    assert store.chunk_progress("batch_race") == {"open": 0, "held": 0, "chunks": 40}
    store.close()


def test_an_expired_lease_is_claimed_again_and_the_old_holder_hears_it(scaleout: Backend) -> None:
    store = PgStore(scaleout.store_url)
    _running(store, "batch_lease", chunks=1, lines=4)
    first = store.claim_chunk("w1", 0.5)
    assert first is not None and store.claim_chunk("w2", 0.5) is None  # held
    store.record_results("batch_lease", [_row(1), _row(2)])
    assert not store.finish_chunk("batch_lease", 0, "w1")  # not all logged: not done, the lease is given up
    again = store.claim_chunk("w2", 0.5)
    assert again is not None and again["chunk"] == 0 and again["attempts"] == 2
    assert store.done_lines("batch_lease", 1, 4) == {1, 2}  # the new holder resumes per line
    time.sleep(0.7)  # w2 dies without a heartbeat
    third = store.claim_chunk("w3", 30)
    assert third is not None and third["attempts"] == 3
    assert store.heartbeat("batch_lease", 0, "w2", 30) is None  # w2 lost it
    assert store.heartbeat("batch_lease", 0, "w3", 30) == "in_progress"
    store.record_results("batch_lease", [_row(n) for n in range(1, 5)])
    assert store.finish_chunk("batch_lease", 0, "w3")
    b = store.get_batch("batch_lease", None)
    assert b is not None and b["completed"] == 4
    store.close()


def test_a_cancel_reaches_the_holder_at_its_heartbeat_and_stops_claims(scaleout: Backend) -> None:
    store, other = PgStore(scaleout.store_url), PgStore(scaleout.store_url)
    _running(store, "batch_cancel", chunks=3, lines=10)
    held = store.claim_chunk("w1", 30)
    assert held is not None
    assert other.transition("batch_cancel", S.CANCELLING, NOW)  # another serve process takes the cancel
    assert store.heartbeat("batch_cancel", held["chunk"], "w1", 30) == "cancelling"
    assert other.claim_chunk("w2", 30) is None  # nothing more starts
    assert store.record_results("batch_cancel", [_row(1)]) == 1  # in-flight requests still log while cancelling
    assert other.chunk_progress("batch_cancel")["held"] == 1
    store.release_chunk("batch_cancel", held["chunk"], "w1")
    assert other.chunk_progress("batch_cancel")["held"] == 0  # the coordinator may finalize now
    assert other.transition("batch_cancel", S.CANCELLED, NOW)
    assert store.record_results("batch_cancel", [_row(2)]) == 0  # nothing logs after the final status
    store.close()
    other.close()
