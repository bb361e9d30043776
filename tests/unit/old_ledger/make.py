"""Built tests/unit/old_ledger with the code before typed client state: the ledger and job folders of two jobs
as commit 73678bb^ wrote them (old-done: run to its end; old-prepared: prepared, mode auto routed, nothing sent).

    git archive 73678bb^ src/coldbatch | tar -x -C /tmp/oldsrc
    PYTHONPATH=/tmp/oldsrc/src .venv/bin/python tests/unit/old_ledger/make.py /tmp/oldfix

then home/ (without cache.sqlite3), in.csv and done.csv copied here; the paths in the ledger start /tmp/oldfix
(test_typed_state.py moves them).
"""

from __future__ import annotations

import asyncio
import csv
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from _fake_provider import FakeProvider

import coldbatch

assert "/tmp/oldsrc" in coldbatch.__file__, coldbatch.__file__
from coldbatch.builder.spec import RequestSpec  # noqa: E402
from coldbatch.protocol.limits import Limits  # noqa: E402
from coldbatch.runner import ledger as LG  # noqa: E402
from coldbatch.runner.orchestrator import Runner, RunOptions  # noqa: E402
from coldbatch.runner.sync_mode import route  # noqa: E402

ROOT = Path(sys.argv[1])
home = ROOT / "home"
inp = ROOT / "in.csv"
with inp.open("w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["id", "text"])
    for i in range(1, 13):
        w.writerow([f"k{i}", f"text {i % 8}"])  # 12 rows, 8 distinct questions: dedup has work to do
lg = LG.Ledger(home / "ledger.sqlite3")
spec = RequestSpec(model="gpt-4o-mini", prompt="Say {text}", id_column="id", labels=("yes", "no"))
ro = RunOptions(spec=spec.describe(), limits=asdict(Limits(max_requests=5)), poll_interval=0.0, max_cost=5.0)


async def no_sleep(_: float) -> None:
    return None


def answer(cid, body, n):
    return ("ok", '{"label": "yes"}')


lg.create_job("old-done", str(inp), str(ROOT / "done.csv"), asdict(ro))
r = Runner(lg, FakeProvider(answer), "old-done", home, sleep=no_sleep)
r.prepare()
print(asyncio.run(r.run()))

lg.create_job("old-prepared", str(inp), str(ROOT / "prepared.csv"), asdict(replace(ro, mode="auto", cache=False)))
r = Runner(lg, FakeProvider(answer), "old-prepared", home, sleep=no_sleep)
est = r.prepare()
choice = route(est, 5)  # as job._route stores it: `--mode auto` chose batch (8 requests > 5)
lg.set_job(
    "old-prepared", options=asdict(replace(ro, mode=choice["mode"], cache=False)), estimate={**est, "route": choice}
)
print(lg.job("old-prepared")["status"], choice)
lg.close()
