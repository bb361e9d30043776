"""File bytes in an S3-compatible bucket (AWS, MinIO, Ceph, R2, moto): the folder store's methods.

`s3://BUCKET/PREFIX`; the endpoint comes from the standard `AWS_ENDPOINT_URL` and the credentials from
the standard AWS variables (boto3's own chain), so nothing here is specific to one vendor. Writes are a
multipart upload fed in `PART_BYTES` parts (never a whole file in memory) and published by
CompleteMultipartUpload, which is atomic: a reader sees the whole object or none, like the folder
store's rename; an upload that fails or is abandoned is aborted (`clear_tmp` aborts those a crash left
behind, once they are older than a grace period, since other processes may be uploading right now).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")
#: S3's minimum part size is 5 MiB (all parts but the last); 8 MiB keeps memory flat and requests few
PART_BYTES = 8 << 20
#: a multipart upload older than this is taken as abandoned by a crashed process
STALE_UPLOAD_SECONDS = 3600.0


class BlobsUnavailable(RuntimeError):
    """The bucket cannot be reached or used at start: the message names it and the endpoint."""


def parse_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET/PREFIX` -> (bucket, prefix ending in '/' or empty)."""
    m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", url)
    if not m:
        raise ValueError(f"--blobs {url!r}: expected s3://BUCKET/PREFIX (a valid bucket name)")
    prefix = (m.group(2) or "").strip("/")
    return m.group(1), prefix + "/" if prefix else ""


class S3BlobStore:
    """Blobs under one bucket and prefix; the keys are ids the server minted."""

    def __init__(self, url: str, *, client: Any = None, check: bool = True, scratch: Path | None = None) -> None:
        import boto3  # only this backend needs it ([scale] extra)
        from botocore.config import Config

        self.url = url
        self._scratch = scratch
        self.bucket, self.prefix = parse_url(url)
        self.s3 = client or boto3.client(
            "s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
        )
        if check:
            self._check()

    def _check(self) -> None:
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            endpoint = self.s3.meta.endpoint_url
            raise BlobsUnavailable(
                f"cannot use the bucket {self.bucket!r} at {endpoint} (from AWS_ENDPOINT_URL or AWS's default): {exc}"
            ) from exc

    def _key(self, key: str) -> str:
        if not _KEY.match(key):
            raise ValueError(f"bad blob key {key!r}")
        return self.prefix + key

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Write a blob; it appears under `key` only if the block finishes without error."""
        w = _MultipartWriter(self.s3, self.bucket, self._key(key))
        try:
            yield w  # type: ignore[misc]
            w.complete()
        except BaseException:
            w.abort()
            raise

    def stored_keys(self) -> list[str]:
        """Every stored key under the prefix (uploads in progress are not objects yet)."""
        return [k for k, _ in self._listing()]

    def _listing(self) -> Iterator[tuple[str, float]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(self.prefix) :]
                if _KEY.match(name):
                    yield name, obj["LastModified"].timestamp()

    def mtime(self, key: str) -> float:
        return float(self.s3.head_object(Bucket=self.bucket, Key=self._key(key))["LastModified"].timestamp())

    def size(self, key: str) -> int:
        return int(self.s3.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def open(self, key: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        """A streaming reader of the blob (or of bytes [start, end) of it)."""
        kw: dict[str, Any] = {}
        if start or end is not None:
            kw["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(key), **kw)["Body"]
        except self.s3.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.url}: no blob {key!r}") from None
        return body  # type: ignore[no-any-return]

    def iter_chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        body = self.open(key)
        try:
            while block := body.read(size):
                yield block
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))
        self.forget_local(key)

    @property
    def local_root(self) -> Path:
        """Scratch folder for local copies (made on first use)."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="coldbatch-s3-"))
        self._scratch.mkdir(parents=True, exist_ok=True)
        return self._scratch

    def local_path(self, key: str) -> Path:
        """A local copy of the blob, for readers that need a real file (the validator's worker process);
        streamed to disk, never whole in memory. `forget_local` removes it."""
        dest = self.local_root / self._key(key)[len(self.prefix) :]
        if not dest.exists():
            part = self.local_root / f"{key}.{os.getpid()}.{threading.get_ident()}.part"
            self.s3.download_file(self.bucket, self._key(key), str(part))
            part.replace(dest)
        return dest

    def forget_local(self, key: str) -> None:
        if self._scratch is not None and _KEY.match(key):
            (self._scratch / key).unlink(missing_ok=True)

    def clear_tmp(self, older_than: float = STALE_UPLOAD_SECONDS) -> int:
        """Abort multipart uploads under the prefix idle for more than `older_than` seconds (started that long
        ago and no part sent since: a crashed writer's); returns how many. A long upload that is still
        sending parts is another live process's, however long ago it started."""
        cutoff = time.time() - older_than
        n = 0
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for up in page.get("Uploads", []):
                if up["Initiated"].timestamp() > cutoff or self._last_part(up) > cutoff:
                    continue
                with contextlib.suppress(self.s3.exceptions.NoSuchUpload):
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
        return n

    def _last_part(self, up: dict[str, Any]) -> float:
        """When the upload's newest part arrived (0 without parts)."""
        try:
            parts = self.s3.list_parts(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]).get("Parts", [])
        except self.s3.exceptions.NoSuchUpload:
            return time.time()  # completed or aborted meanwhile: nothing to do
        return max((float(p["LastModified"].timestamp()) for p in parts), default=0.0)

    def pending_uploads(self) -> int:
        """Multipart uploads not completed nor aborted (for the orphan checks of the tests)."""
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return sum(len(page.get("Uploads", [])) for page in pages)


class _MultipartWriter(io.RawIOBase):
    """A write-only file object that sends every `PART_BYTES` as one part of a multipart upload."""

    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        super().__init__()
        self.s3, self.bucket, self.key = s3, bucket, key
        self.buf = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.upload_id: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buf += data
        if len(self.buf) >= PART_BYTES:
            self._send(bytes(self.buf[:PART_BYTES]))
            del self.buf[:PART_BYTES]
        return len(data)

    def _send(self, part: bytes) -> None:
        try:
            self._send_part(part)
        except (BotoCoreError, ClientError) as exc:  # the store's failure: a 5xx, never the client's 400
            raise OSError(f"S3 upload of {self.key} failed: {exc}") from exc

    def _send_part(self, part: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        n = len(self.parts) + 1
        etag = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=n, Body=part)[
            "ETag"
        ]
        self.parts.append({"ETag": etag, "PartNumber": n})

    def complete(self) -> None:
        if self.upload_id is None:  # small: one PUT, atomic as well
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buf))
        else:
            if self.buf:
                self._send(bytes(self.buf))
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
            )
        self.buf.clear()

    def abort(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(Exception):  # best effort; clear_tmp aborts it later
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            self.upload_id = None
