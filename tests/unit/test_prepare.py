"""builder.api.prepare: shards + manifest.json that tell the truth, written atomically, never over user files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from coldbatch import Limits, RequestSpec, prepare
from coldbatch.builder.manifest import read_manifest, shard_paths
from coldbatch.errors import InputError, UsageError
from coldbatch.validation import validate_file

SPEC = RequestSpec(model="gpt-4o-mini", prompt="Sentiment of: {text}", id_column="id")


def csv_file(tmp_path: Path, rows: list[tuple[str, str]], name: str = "in.csv") -> Path:
    path = tmp_path / name
    lines = ["id,text"] + [f'{i},"{t.replace(chr(34), chr(34) * 2)}"' for i, t in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def sent(folder: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for p in shard_paths(folder) for x in p.read_bytes().splitlines()]


def test_manifest_lists_each_shard_truthfully(tmp_path: Path) -> None:
    src = csv_file(tmp_path, [(str(i), f"text {i}" * (i % 4 + 1)) for i in range(1, 24)])
    result = prepare(src, tmp_path / "out", SPEC, limits=Limits(max_requests=5, max_bytes=700))
    m = result.manifest
    assert m["format"] == "coldbatch.manifest/1"
    assert m["input"] == {"name": "in.csv", "rows": 23, "columns": ["id", "text"]}
    assert m["request"]["prompt"] == "Sentiment of: {text}"
    assert len(m["shards"]) >= 5
    for shard in m["shards"]:
        blob = (result.out / shard["path"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(blob).hexdigest()
        assert shard["bytes"] == len(blob) <= 700
        assert shard["requests"] == blob.count(b"\n") <= 5
        assert shard["model"] == "gpt-4o-mini"
        assert validate_file(result.out / shard["path"]).ok
    assert m["totals"] == {
        "rows": 23,
        "requests": 23,
        "bytes": sum(s["bytes"] for s in m["shards"]),
        "shards": len(m["shards"]),
        "rejected": 0,
        "renamed_ids": 0,
    }
    assert [r["custom_id"] for r in sent(result.out)] == [str(i) for i in range(1, 24)]
    assert read_manifest(result.out) == m
    assert sorted(p.name for p in result.out.iterdir()) == ["manifest.json", *[s["path"] for s in m["shards"]]]


def test_same_input_and_options_give_byte_identical_output(tmp_path: Path) -> None:
    src = csv_file(tmp_path, [(str(i), f't{i} ✓ "q"') for i in range(40)])
    first = prepare(src, tmp_path / "a", SPEC, limits=Limits(max_requests=7))
    again = prepare(src, tmp_path / "b", SPEC, limits=Limits(max_requests=7))
    assert snapshot(first.out) == snapshot(again.out)
    prepare(src, tmp_path / "a", SPEC, limits=Limits(max_requests=7))  # over itself
    assert snapshot(first.out) == snapshot(again.out)


def test_rejected_rows_are_listed_and_counted_never_dropped(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,text\n1,fine\n2,\n3,"   "\n,no id\n5,' + b"x" * 400 + b"\n6,caf\xe9\n")
    result = prepare(path, tmp_path / "out", SPEC, limits=Limits(max_line_bytes=300))
    t = result.manifest["totals"]
    assert (t["rows"], t["requests"], t["rejected"]) == (6, 2, 4)
    assert t["rows"] == t["requests"] + t["rejected"]
    rejects = [json.loads(x) for x in (result.out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["code"]) for r in rejects] == [
        (2, "empty_input"),
        (3, "empty_input"),
        (4, "missing_custom_id"),
        (5, "line_too_large"),
    ]
    assert result.manifest["rejects"] == "rejects.jsonl"
    assert result.manifest["repaired_cells"] == [
        {"row": 6, "column": "text", "message": "not valid UTF-8 at byte 3; replaced with U+FFFD"}
    ]
    assert [r["body"]["messages"][0]["content"] for r in sent(result.out)] == [
        "Sentiment of: fine",
        "Sentiment of: caf\ufffd",
    ]


def test_missing_template_column_names_it_and_the_available_ones(tmp_path: Path) -> None:
    src = csv_file(tmp_path, [("1", "a")])
    with pytest.raises(UsageError, match=r"--prompt uses column\(s\) 'tweet' .*available columns: id, text"):
        prepare(src, tmp_path / "out", RequestSpec(model="m", prompt="{tweet}"))
    with pytest.raises(UsageError, match=r"--id-column 'key' is not a column .*available columns: id, text"):
        prepare(src, tmp_path / "out", RequestSpec(model="m", prompt="{text}", id_column="key"))
    with pytest.raises(UsageError, match=r"--input-column uses column\(s\) 'doc'"):
        prepare(src, tmp_path / "out", RequestSpec(model="m", endpoint="/v1/embeddings", input_column="doc"))
    assert not (tmp_path / "out").exists()


def test_repeated_ids_fail_by_default_naming_both_rows(tmp_path: Path) -> None:
    src = csv_file(tmp_path, [("a", "1"), ("b", "2"), ("a", "3"), ("b", "4"), ("a", "5")])
    with pytest.raises(InputError) as info:
        prepare(src, tmp_path / "out", SPEC)
    msg = str(info.value)
    assert "3 row(s) repeat an earlier id in column 'id'" in msg
    assert "row 3: id 'a' repeats row 1" in msg and "row 4: id 'b' repeats row 2" in msg
    assert "--on-duplicate-id suffix" in msg
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.csv"]  # no staging folder left behind


def test_repeated_ids_are_listed_for_a_file_read_with_a_forced_format(tmp_path: Path) -> None:
    src = tmp_path / "export.txt"
    src.write_text("id\ttext\nk\ta\nk\tb\n")
    with pytest.raises(InputError, match=r"row 2: id 'k' repeats row 1"):
        prepare(src, tmp_path / "out", SPEC, fmt="tsv")


def test_repeated_ids_with_suffix_policy(tmp_path: Path) -> None:
    src = csv_file(tmp_path, [("a", "1"), ("a~2", "2"), ("a", "3"), ("a", "4")])
    result = prepare(
        src, tmp_path / "out", RequestSpec(model="m", prompt="{text}", id_column="id", on_duplicate_id="suffix")
    )
    assert [r["custom_id"] for r in sent(result.out)] == ["a", "a~2", "a~3", "a~4"]
    assert result.manifest["totals"]["renamed_ids"] == 2


def test_an_existing_folder_that_is_not_ours_is_left_alone(tmp_path: Path) -> None:
    src = csv_file(tmp_path, [("1", "a")])
    for name, files in {
        "plain": {"notes.txt": b"mine"},
        "webapp": {"manifest.json": b'{"name": "my app"}', "index.html": b"<html>"},
        "broken": {"manifest.json": b"{not json"},
    }.items():
        out = tmp_path / name
        out.mkdir()
        for f, data in files.items():
            (out / f).write_bytes(data)
        with pytest.raises(InputError, match="holds no coldbatch manifest"):
            prepare(src, out, SPEC)
        assert snapshot(out) == files


def test_a_prepared_folder_is_replaced_whole_but_not_with_user_files_in_it(tmp_path: Path) -> None:
    src = csv_file(tmp_path, [(str(i), "t") for i in range(10)])
    out = prepare(src, tmp_path / "out", SPEC, limits=Limits(max_requests=2)).out
    assert len(shard_paths(out)) == 5
    prepare(src, out, SPEC, limits=Limits(max_requests=20))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00001.jsonl"]  # no stale shards
    (out / "results.jsonl").write_text("precious\n")
    with pytest.raises(InputError, match=r"holds files that prepare did not write \(results.jsonl\)"):
        prepare(src, out, SPEC)
    assert (out / "results.jsonl").read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_prepare_leaves_the_previous_output_as_it_was(tmp_path: Path) -> None:
    good = csv_file(tmp_path, [("1", "a"), ("2", "b")])
    out = prepare(good, tmp_path / "out", SPEC).out
    before = snapshot(out)
    bad = csv_file(tmp_path, [("1", "a"), ("1", "b")], name="dupes.csv")
    with pytest.raises(InputError):
        prepare(bad, out, SPEC)
    assert snapshot(out) == before
    with pytest.raises(InputError, match="exists and is not a folder"):
        prepare(good, good, SPEC)


def test_prepare_accepts_an_in_memory_table(tmp_path: Path) -> None:
    df = pl.DataFrame({"id": [10, 11], "text": ["x", "y"]})
    result = prepare(df, tmp_path / "out", SPEC)
    assert [r["custom_id"] for r in sent(result.out)] == ["10", "11"]
    assert result.manifest["input"]["name"] == "<table>"


def test_a_header_only_input_gives_an_empty_manifest(tmp_path: Path) -> None:
    result = prepare(csv_file(tmp_path, []), tmp_path / "out", SPEC)
    assert result.manifest["shards"] == []
    assert result.manifest["totals"]["requests"] == 0


def test_huge_csv_fields_are_sent_up_to_max_line_bytes_and_rejected_alone_above(tmp_path: Path) -> None:
    """Issue 15 (3): a 3 MB field failed the whole job ("straddling object …")."""
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,text\n1," + b"a" * 3_000_000 + b"\n2,small\n3," + b"b" * 1_500_000 + b"\n4,last\n")
    result = prepare(path, tmp_path / "out", SPEC, limits=Limits(max_line_bytes=2_000_000))
    assert [r["custom_id"] for r in sent(result.out)] == ["2", "3", "4"]
    assert len(sent(result.out)[1]["body"]["messages"][0]["content"]) == len("Sentiment of: ") + 1_500_000
    rejects = [orjson.loads(x) for x in (result.out / "rejects.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["code"]) for r in rejects] == [(1, "line_too_large")]


def test_an_unclosed_quote_fails_prepare_with_its_line(tmp_path: Path) -> None:
    """Issue 15 (4): it used to give exit 0 and one row holding the rest of the file."""
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,text\n1,"hello\n2,world\n')
    with pytest.raises(InputError, match=r"in\.csv:2: a quoted field opens on line 2"):
        prepare(path, tmp_path / "out", SPEC)
    assert not (tmp_path / "out").exists()
