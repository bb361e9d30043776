"""The server's synchronous /v1/chat/completions is served ahead of batch work on the same engine."""

from __future__ import annotations

import json
import time

from coldbatch.engines.echo import EchoEngine


def test_a_sync_request_is_answered_while_a_long_batch_runs(serve) -> None:  # type: ignore[no-untyped-def]
    client = serve(EchoEngine(latency=0.3, max_concurrency=2)).client()
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": f"row {i}"}]},
        }
        for i in range(40)
    ]
    f = client.files.create(file=("b.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while client.batches.retrieve(batch.id).status != "in_progress":
        time.sleep(0.05)
    t = time.monotonic()
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hot"}])
    waited = time.monotonic() - t
    assert answer.choices[0].message.content == "hot"
    # the batch needs ~6 s (40 requests, 2 at a time, 0.3 s each); the hot request waits for one slot at most
    assert waited < 2.0, waited
    assert client.batches.retrieve(batch.id).status == "in_progress"
