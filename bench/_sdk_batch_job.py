"""Baseline for bench/client_weight.py: the same batch job written plainly with the openai SDK.

Read the CSV (stdlib), write one /v1/chat/completions request per row, upload, create the batch, poll
until it ends, download the output, join answers to rows by custom_id, write OUTPUT as CSV. No ledger,
no dedup, no cache, no retries: the least a careful user would write. Usage:
    python _sdk_batch_job.py IN.csv OUT.csv BASE_URL MODEL POLL_SECONDS
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time

from openai import OpenAI

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def main(src: str, dst: str, base_url: str, model: str, poll: float) -> None:
    with open(src, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    buf = io.BytesIO()
    for n, row in enumerate(rows, 1):
        body = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": f"Tweet: {row['text']}"}]}
        req = {"custom_id": f"row-{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        buf.write(json.dumps(req).encode() + b"\n")
    client = OpenAI(base_url=base_url, api_key="bench")
    f = client.files.create(file=("requests.jsonl", buf.getvalue()), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in TERMINAL:
        time.sleep(poll)
        batch = client.batches.retrieve(batch.id)
    if batch.status != "completed" or not batch.output_file_id:
        sys.exit(f"batch ended {batch.status}")
    answers = {}
    for line in client.files.content(batch.output_file_id).text.splitlines():
        out = json.loads(line)
        answers[out["custom_id"]] = out["response"]["body"]["choices"][0]["message"]["content"]
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0].keys(), "response"])
        w.writeheader()
        for n, row in enumerate(rows, 1):
            w.writerow({**row, "response": answers.get(f"row-{n}", "")})
    print(len(answers), "answers")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
