"""The `BlobStore` contract: a blob appears under its key only once completely written, reads and writes
stream, keys are server-minted ids only, and deleting is idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest

from coldbatch.store.blobs import LocalBlobStore
from coldbatch.store.interfaces import BlobStore

CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


def test_a_written_blob_reads_back_streamed(blob_store: BlobStore) -> None:
    with blob_store.writer("file-a") as fh:
        for _ in range(64):  # 4 MiB in pieces, as an upload arrives
            fh.write(CHUNK)
    assert blob_store.exists("file-a") and blob_store.size("file-a") == 64 * len(CHUNK)
    read = 0
    with blob_store.open("file-a") as fh:
        while piece := fh.read(1 << 16):
            assert piece == CHUNK[: len(piece)]
            read += len(piece)
    assert read == 64 * len(CHUNK)
    assert blob_store.local_path("file-a").read_bytes()[:16] == CHUNK[:16]
    assert blob_store.mtime("file-a") > 0
    assert blob_store.stored_keys() == ["file-a"]


def test_a_failed_write_publishes_nothing_and_keeps_the_old_blob(blob_store: BlobStore) -> None:
    with blob_store.writer("file-a") as fh:
        fh.write(b"hello\n")
    with pytest.raises(RuntimeError), blob_store.writer("file-a") as fh:
        fh.write(b"half a replacement")
        raise RuntimeError("crash")
    with pytest.raises(RuntimeError), blob_store.writer("file-b") as fh:
        fh.write(b"half a new blob")
        raise RuntimeError("crash")
    with blob_store.open("file-a") as fh:
        assert fh.read() == b"hello\n"
    assert not blob_store.exists("file-b")
    assert blob_store.stored_keys() == ["file-a"]
    blob_store.clear_tmp()
    assert blob_store.stored_keys() == ["file-a"]


def test_a_blob_is_invisible_until_its_writer_finishes(blob_store: BlobStore) -> None:
    with blob_store.writer("file-a") as fh:
        fh.write(b"partial")
        assert not blob_store.exists("file-a") and blob_store.stored_keys() == []
    assert blob_store.exists("file-a")


def test_delete_is_idempotent_and_missing_blobs_say_so(blob_store: BlobStore) -> None:
    with blob_store.writer("file-a") as fh:
        fh.write(b"x")
    blob_store.delete("file-a")
    blob_store.delete("file-a")
    assert not blob_store.exists("file-a") and blob_store.stored_keys() == []
    with pytest.raises(FileNotFoundError):
        blob_store.open("file-a")


@pytest.mark.parametrize("key", ["../etc/passwd", "a/b", "", "x" * 81, "file a"])
def test_only_server_minted_keys_are_accepted(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="bad blob key"):
        blob_store.exists(key)
    with pytest.raises(ValueError, match="bad blob key"), blob_store.writer(key):
        pass
    with pytest.raises(ValueError, match="bad blob key"):
        blob_store.local_path(key)


def test_ranges_chunks_and_the_local_side(blob_store: BlobStore) -> None:
    assert isinstance(blob_store, BlobStore)
    data = bytes(range(256)) * 5000  # 1.28 MB
    with blob_store.writer("file-r") as fh:
        fh.write(data)
    with blob_store.open("file-r", 1000) as fh:
        assert fh.read(10) == data[1000:1010]
    with blob_store.open("file-r", 5, 9) as fh:
        assert fh.read(4) == data[5:9]
    blocks = list(blob_store.iter_chunks("file-r", 1 << 19))
    assert b"".join(blocks) == data and max(map(len, blocks)) <= 1 << 19 and len(blocks) == 3
    assert blob_store.local_root.is_dir()
    assert blob_store.local_path("file-r").stat().st_size == len(data)


# -- the folder store's own: what a crash leaves on disk -----------------------------------------------------
def test_a_failed_folder_write_leaves_no_part_file(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "files")
    with pytest.raises(RuntimeError), blobs.writer("file-a") as fh:
        fh.write(b"half a blob")
        raise RuntimeError("crash")
    assert not list((tmp_path / "files" / "tmp").iterdir())


def test_clear_tmp_removes_the_parts_a_killed_process_left(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "files")
    (tmp_path / "files" / "tmp" / "file-b.123.0.part").write_bytes(b"partial")
    blobs.clear_tmp()
    assert not list((tmp_path / "files" / "tmp").iterdir())
    assert not blobs.exists("file-b")
    with pytest.raises(ValueError, match="bad blob key"):
        blobs.path("../etc/passwd")
