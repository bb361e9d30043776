"""`coldbatch run --labels ... --examples FILE`: label rows with a classifier fitted on labelled examples.

How (measured against the alternatives in docs/decisions.md): every row and every example is turned
into a sentence embedding by the provider's `/v1/embeddings` (the text embedded is the rendered
`--prompt`, the same for both), a multinomial logistic regression is fitted on the examples' vectors
(`core/classify.py`), and each row gets the most probable label, with that probability as its
`confidence`. The embeddings go through the ordinary job machinery: the rows' requests are the job's own
(dedup, cache, batch or sync mode, resume), and the examples' are a companion job `<job>~examples`.

The examples file: the columns the prompt template uses, plus the label column (`label`, or
`--examples-label-column`). Rows being labelled are never used as examples: an example whose id (the
`--id-column`, when the examples have it too) or whose rendered text equals a row's is dropped, and
`run` says which. What is kept is copied into the job's folder, so `resume` trains on the same examples
even if the file changes.
"""

from __future__ import annotations

import base64
import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from coldbatch.builder.spec import RequestSpec
from coldbatch.core import template as tpl
from coldbatch.errors import InputError, UsageError
from coldbatch.protocol import limits as L
from coldbatch.runner.output_spec import Classified
from coldbatch.store.interfaces import LedgerStore

if TYPE_CHECKING:  # numpy, the classifier and the Arrow reader load when an --examples job uses them, not
    import numpy as np  # when a plain run imports this module for its names (issue 11, client weight)

    from coldbatch.core import classify

DEFAULT_LABEL_COLUMN = "label"
#: the embedding model asked for when the user names none: the embedded engine serves its own whatever the
#: name; OpenAI's smallest current embedding model otherwise
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"
EXAMPLES_FILE = "examples.csv"  #: the kept examples, in the job's folder
TEXT, LABEL, SOURCE_LINE = "text", "label", "source_line"
#: the most examples; more would only slow fitting (a few hundred already reach the plateau we measured)
MAX_EXAMPLES = 100_000


@dataclass(frozen=True)
class Kept:
    """The examples that will be used, and what was dropped and why (printed by `run`)."""

    rows: list[dict[str, str]]  #: {"text": rendered prompt, "label": ..., "source_line": ...}
    dropped: list[str]  #: one line per dropped example


def child_id(job_id: str) -> str:
    return f"{job_id}~examples"


def embedding_spec(spec: RequestSpec, model: str, *, examples: bool = False) -> RequestSpec:
    """The embeddings requests of a label job: the rendered prompt of each row (or example) as `input`.

    The examples' file holds the already rendered text in a `text` column, so its template is `{text}`.
    """
    if examples:
        return RequestSpec(model=model, endpoint=L.EMBEDDINGS, input_column=TEXT)
    return RequestSpec(
        model=model,
        endpoint=L.EMBEDDINGS,
        prompt=spec.prompt,
        input_column=spec.input_column,
        id_column=spec.id_column,
        on_duplicate_id=spec.on_duplicate_id,
    )


def _line(fmt: str | None, row: int) -> str:
    """Where 0-based data row `row` is, in the user's terms."""
    if fmt in ("csv", "tsv"):
        return f"line {row + 2}"  # the header is line 1 (a quoted cell with line breaks shifts this)
    if fmt == "jsonl":
        return f"line {row + 1}"
    return f"row {row + 1}"


def read(path: Path, spec: RequestSpec, label_column: str, fmt: str | None = None) -> list[dict[str, str]]:
    """The examples of `path`, rendered: {"text", "label", "source_line", "id"}; errors name file, line and field."""
    from coldbatch.dataset.read import open_dataset

    ds = open_dataset(path, fmt)
    template = spec.template
    tpl.check_columns(template, ds.columns, file=str(path), option="--prompt (for --examples)")
    if label_column not in ds.columns:
        raise UsageError(
            f"--examples {path}: no column {label_column!r} with the examples' labels (name another "
            f"with --examples-label-column); columns: {', '.join(ds.columns)}"
        )
    out: list[dict[str, str]] = []
    for start, batch in ds.batches():
        for i, row in enumerate(batch.to_pylist()):
            where = f"--examples {path}, {_line(ds.format, start + i)}"
            out.append(_example(row, where, template, label_column, spec))
            if len(out) > MAX_EXAMPLES:
                raise UsageError(f"--examples {path}: more than {MAX_EXAMPLES:,} examples")
    counts = {label: sum(e[LABEL] == label for e in out) for label in spec.labels}
    missing = [label for label, n in counts.items() if n == 0]
    if missing:
        raise UsageError(
            f"--examples {path}: no example labelled {', '.join(map(repr, missing))}; every label "
            f"needs at least one (a few dozen each work well)"
        )
    return out


def _example(
    row: dict[str, Any], where: str, template: tpl.Template, label_column: str, spec: RequestSpec
) -> dict[str, str]:
    label = (row.get(label_column) or "").strip()
    if label not in spec.labels:
        raise InputError(f"{where}, field {label_column!r}: {label!r} is not one of --labels {', '.join(spec.labels)}")
    for column in template.columns:
        if not (row.get(column) or "").strip():
            raise InputError(f"{where}, field {column!r}: empty (an example needs the text it is an example of)")
    ident = row.get(spec.id_column) if spec.id_column else None
    return {
        TEXT: template.render(row),
        LABEL: label,
        SOURCE_LINE: where.rsplit(", ", 1)[-1],
        "id": "" if ident is None else str(ident),
    }


def drop_overlap(examples: list[dict[str, str]], input_path: Path, spec: RequestSpec, fmt: str | None = None) -> Kept:
    """Drop the examples that are rows of the input (same id, or same rendered text): a row must never
    be labelled by having been its own example."""
    texts = {e[TEXT]: e for e in examples}
    ids = {e["id"]: e for e in examples if e["id"]}
    hit: dict[int, str] = {}  # id(example) -> why
    for row_no, text, ident in _rendered_rows(input_path, spec, fmt):
        for e, why in ((texts.get(text), "its text"), (ids.get(ident) if ident else None, "its id")):
            if e is not None and id(e) not in hit:
                hit[id(e)] = f"{e[SOURCE_LINE]}: {why} is input row {row_no}'s"
    kept = [e for e in examples if id(e) not in hit]
    return Kept(kept, list(hit.values()))


def _rendered_rows(input_path: Path, spec: RequestSpec, fmt: str | None) -> Iterator[tuple[int, str, str | None]]:
    template = spec.template
    columns = [*template.columns, *([spec.id_column] if spec.id_column else [])]
    from coldbatch.dataset.read import open_dataset

    ds = open_dataset(input_path, fmt, only=columns)
    for start, batch in ds.batches():
        for i, row in enumerate(batch.to_pylist()):
            ident = row.get(spec.id_column) if spec.id_column else None
            yield start + i + 1, template.render(row), None if ident is None else str(ident)


def save(kept: Kept, folder: Path) -> Path:
    """Write the kept examples to the job's folder (the companion job's input)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / EXAMPLES_FILE
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, [TEXT, LABEL, SOURCE_LINE], extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(kept.rows)
    tmp.replace(path)
    return path


# -- fitting and labelling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classifier:
    labels: tuple[str, ...]
    model: classify.Model

    def proba(self, vectors: np.ndarray) -> np.ndarray:
        return self.model.proba(vectors)


def vector(content: str | None) -> np.ndarray | None:
    """An embeddings answer as the ledger holds it (a JSON list of floats, or base64 float32 text when the
    request asked for that encoding); None if it is not one vector."""
    import numpy as np

    try:
        value = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, str):
        try:
            return np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4").astype(np.float64)
        except ValueError:
            return None
    if not isinstance(value, list) or not value or not all(isinstance(v, int | float) for v in value):
        return None
    return np.asarray(value, dtype=np.float64)


def train(vectors: list[np.ndarray], labels: list[str], label_set: tuple[str, ...]) -> Classifier:
    """Fit the classifier on the examples' vectors."""
    if len({len(v) for v in vectors}) != 1:
        raise InputError("the examples' embeddings have different lengths: was the embedding model changed?")
    import numpy as np

    from coldbatch.core import classify

    y = np.array([label_set.index(label) for label in labels])
    return Classifier(label_set, classify.fit(np.stack(vectors), y, len(label_set)))


def classified(ledger: LedgerStore, job_id: str, options: Mapping[str, Any]) -> Classified:
    """The labels of an --examples job, by question: fitted on its companion job's example vectors."""
    label_set = tuple(options["labels"])
    with Path(options["file"]).open(newline="", encoding="utf-8") as fh:
        kept = list(csv.DictReader(fh))
    child = child_id(job_id)
    ids = [f"row-{i}" for i in range(1, len(kept) + 1)]  # the companion job's default custom_ids
    results = ledger.results_for(child, ids, keyed=ledger.keyed(child))
    vecs, labels = [], []
    for cid, example in zip(ids, kept, strict=True):
        res = results.get(cid)
        v = vector(res["content"]) if res is not None and res["state"] == "ok" else None
        if v is not None:
            vecs.append(v)
            labels.append(example[LABEL])
    missing = [label for label in label_set if label not in labels]
    if missing:
        raise InputError(
            f"no example labelled {', '.join(map(repr, missing))} could be embedded (see `coldbatch "
            f"status {child}`); the rows cannot be labelled without them"
        )
    classifier = train(vecs, labels, label_set)
    return Classified(label_set, label_all(classifier, ledger.iter_results(job_id), ledger.rows_per_key(job_id)))


def label_all(
    classifier: Classifier, results: Iterable[dict[str, Any]], weights: dict[str, int], chunk: int = 4096
) -> dict[str, tuple[str, float]]:
    """(label, confidence) per question key: the most probable label after adapting the label priors to
    these rows (each question weighted by how many rows asked it). Vectors are read `chunk` at a time."""
    import numpy as np

    from coldbatch.core import classify

    keys: list[str] = []
    parts: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    width = classifier.model.weights.shape[0]
    for res in results:
        v = vector(res["content"]) if res["state"] == "ok" else None
        if v is None or len(v) != width:
            continue
        keys.append(res["custom_id"])
        batch.append(v)
        if len(batch) == chunk:
            parts.append(classifier.proba(np.stack(batch)))
            batch = []
    if batch:
        parts.append(classifier.proba(np.stack(batch)))
    if not keys:
        return {}
    p = classify.adapt_priors(
        np.concatenate(parts),
        classifier.model.priors,
        weights=np.array([weights.get(k, 1) for k in keys], dtype=np.float64),
    )
    best = np.argmax(p, axis=1)
    return {k: (classifier.labels[int(b)], float(p[i, b])) for i, (k, b) in enumerate(zip(keys, best, strict=True))}


def check_labels(kept: Kept, labels: tuple[str, ...], path: Path) -> None:
    """Every label must keep at least one example once the rows being labelled are left out."""
    missing = [label for label in labels if not any(e[LABEL] == label for e in kept.rows)]
    if missing:
        raise UsageError(
            f"--examples {path}: no example labelled {', '.join(map(repr, missing))} is left once the "
            "rows being labelled are left out; add examples that are not rows of INPUT"
        )
