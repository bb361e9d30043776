"""Typed client state (issue 11, point 3), A/B: one whole job (prepare, submit, poll, collect, OUTPUT) against
the tests' in-memory Batch API, CPU seconds of the run alone. Run it with PYTHONPATH at each tree to compare
(`git archive REV src/coldbatch | tar -x -C DIR`); it speaks the API before and after RunOptions became frozen.

    PYTHONPATH=DIR/src .venv/bin/python bench/typed_state_ab.py 20000
"""

from __future__ import annotations

import asyncio
import csv
import resource
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from _fake_provider import FakeProvider

from coldbatch.builder.spec import RequestSpec
from coldbatch.protocol.limits import Limits
from coldbatch.runner import ledger as LG

try:
    from coldbatch.runner.options import RunOptions
except ImportError:
    from coldbatch.runner.orchestrator import RunOptions
from coldbatch.runner.orchestrator import Runner

N = int(sys.argv[1])
tmp = Path(tempfile.mkdtemp())
inp = tmp / "in.csv"
with inp.open("w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["id", "text"])
    for i in range(N):
        w.writerow([f"k{i}", f"text {i}"])
lg = LG.Ledger(tmp / "home" / "ledger.sqlite3")
spec = RequestSpec(model="gpt-4o-mini", prompt="Say {text}", id_column="id")
new = hasattr(RunOptions, "to_json")
lim = Limits(max_requests=500)
ro = RunOptions(spec=spec.describe(), limits=lim if new else asdict(lim), poll_interval=0.0, dedup=False, cache=False)
lg.create_job("j", str(inp), str(tmp / "out.csv"), ro.to_json() if new else asdict(ro))


async def no_sleep(_):
    return None


r = Runner(lg, FakeProvider(), "j", tmp / "home", sleep=no_sleep)
t0 = resource.getrusage(resource.RUSAGE_SELF)
r.prepare()
rep = asyncio.run(r.run())
t1 = resource.getrusage(resource.RUSAGE_SELF)
rep = rep.to_json() if hasattr(rep, "to_json") else rep
assert rep["succeeded"] == N, rep
print("new" if new else "old", round((t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime), 3))
