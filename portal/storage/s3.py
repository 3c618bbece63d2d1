"""S3-compatible backend (AWS S3, MinIO, Ceph RGW, rclone serve s3, ...) through boto3.

Objects live at ``<prefix>/objects/<ab>/<cd>/<sha256>`` like the local backend's files. The
endpoint, the keys and the region come from the usual AWS variables (``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), which boto3 reads itself; the portal reads only the bucket and prefix
from ``PORTAL_STORAGE_URL=s3://bucket/prefix``.
"""

from __future__ import annotations

import io
import tempfile
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import boto3
import boto3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .base import CHUNK, Hasher, StorageError, StoredObject, check_key, shard_path

#: boto3 errors that mean "the storage failed" (network, auth, missing object, upload).
ERRORS = (BotoCoreError, ClientError, boto3.exceptions.Boto3Error)

#: Multipart above 16 MiB in 16 MiB parts (S3 allows 10,000 parts: 160 GB objects).
TRANSFER = TransferConfig(multipart_threshold=16 * 1024 * 1024,
                          multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)


def client_config() -> Config:
    """Timeouts short enough that a dead endpoint fails a request, not a worker; checksums
    only where the API requires them (rclone and other S3 servers reject the newer
    CRC trailers that boto3 sends by default); SigV4 for presigned URLs too (botocore
    would presign with the legacy SigV2 query string, which rclone, MinIO and newer AWS
    regions refuse)."""
    return Config(
        signature_version="s3v4",
        connect_timeout=3, read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        max_pool_connections=32,
    )


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in ("404", "NoSuchKey", "NotFound")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    return str(exc)


class S3Storage:
    """Content-addressed objects in one bucket under one prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, client=None) -> None:
        if not bucket:
            raise StorageError("s3:// storage URLs need a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        try:
            self.client = client or boto3.session.Session().client("s3", config=client_config())
        except ERRORS as exc:
            raise StorageError(f"cannot configure S3: {_reason(exc)}") from exc

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def object_key(self, key: str) -> str:
        """The S3 object key of a content key."""
        key = check_key(key)
        path = f"objects/{shard_path(key)}"
        return f"{self.prefix}/{path}" if self.prefix else path

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ERRORS as exc:
            if _missing(exc):
                return None
            raise StorageError(f"cannot stat stored object: {_reason(exc)}") from exc

    def put(self, stream: BinaryIO) -> StoredObject:
        """Spool to a local temp file while hashing, then upload unless the content exists."""
        hasher = Hasher()
        with tempfile.TemporaryFile(prefix="portal-s3-") as spool:
            try:
                while chunk := stream.read(CHUNK):
                    hasher.update(chunk)
                    spool.write(chunk)
                spool.seek(0)
            except OSError as exc:
                raise StorageError(f"cannot store file: {exc.strerror or exc}") from exc
            key = hasher.sha.hexdigest()
            created = self._head(key) is None
            if created:
                try:
                    self.client.upload_fileobj(spool, self.bucket, self.object_key(key),
                                               Config=TRANSFER)
                except ERRORS as exc:
                    raise StorageError(f"cannot upload to S3: {_reason(exc)}") from exc
                head = self._head(key)
                if head is None or head["ContentLength"] != hasher.size:
                    raise StorageError("S3 upload did not land with the expected size")
        return StoredObject(key=key, sha256=key, crc32=hasher.crc, size=hasher.size,
                            created=created)

    def _get(self, key: str, start: int, stop: int | None = None):
        """The streaming body of bytes [start, stop) (to the end when stop is None)."""
        span = f"bytes={start}-" if stop is None else f"bytes={start}-{stop - 1}"
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key),
                                          Range=span)["Body"]
        except ERRORS as exc:
            raise StorageError(f"cannot read stored object: {_reason(exc)}") from exc

    def open(self, key: str) -> BinaryIO:
        """A seekable, buffered reader that streams from S3 and re-requests after a seek."""
        size = self.size(key)
        return io.BufferedReader(_S3Reader(self, key, size), buffer_size=CHUNK)

    def read_range(self, key: str, start: int, stop: int) -> Iterator[bytes]:
        """The bytes [start, stop) from one ranged GetObject, streamed in chunks.

        The request is made now, so a missing object or a dead endpoint raises StorageError
        before the response starts; a failure mid-stream raises it from the iterator.
        """
        if stop <= start:
            return iter(())
        return _stream(self._get(key, start, stop), stop - start)

    def local_path(self, key: str) -> None:
        """None: remote objects cannot be sent with sendfile."""
        check_key(key)
        return None

    def size(self, key: str) -> int:
        """The stored size in bytes."""
        head = self._head(key)
        if head is None:
            raise StorageError("cannot stat stored object: not found")
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        """True when the content is stored."""
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        """Remove the content; a missing object is not an error (S3 DeleteObject is idempotent)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except ERRORS as exc:
            raise StorageError(f"cannot delete stored object: {_reason(exc)}") from exc

    def check(self) -> None:
        """Write, read back and delete a probe object."""
        probe = f"{self.prefix}/tmp/probe-{uuid.uuid4().hex}".lstrip("/")
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
            body = self.client.get_object(Bucket=self.bucket, Key=probe)["Body"]
            with body:
                data = body.read()
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except ERRORS as exc:
            raise StorageError(f"S3 bucket {self.bucket!r} is not usable: {_reason(exc)}") from exc
        if data != b"ok":
            raise StorageError("storage probe read back wrong bytes")

    def presigned_get(self, key: str, *, filename_header: str, content_type: str,
                      expires: int = 300) -> str:
        """A short-lived URL for GET of the object, with the portal's download headers.

        S3 answers a GET of it with ``filename_header`` as Content-Disposition and
        ``content_type`` as Content-Type (the signed ``response-content-*`` overrides); the
        signature covers the method, so a HEAD of the same URL is refused.
        """
        try:
            return self.client.generate_presigned_url(
                "get_object", ExpiresIn=expires,
                Params={"Bucket": self.bucket, "Key": self.object_key(key),
                        "ResponseContentDisposition": filename_header,
                        "ResponseContentType": content_type})
        except ERRORS as exc:
            raise StorageError(f"cannot sign an S3 URL: {_reason(exc)}") from exc

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()


def _stream(body, length: int) -> Iterator[bytes]:
    """Chunks of a GetObject body; closes it (and so its connection) whatever happens."""
    with body:
        remaining = length
        try:
            while remaining > 0:
                chunk = body.read(min(CHUNK, remaining))
                if not chunk:
                    raise StorageError("S3 object ended early")
                remaining -= len(chunk)
                yield chunk
        except ERRORS as exc:
            raise StorageError(f"S3 read failed: {_reason(exc)}") from exc
        except OSError as exc:
            raise StorageError(f"S3 read failed: {exc}") from exc


class _S3Reader(io.RawIOBase):
    """Sequential reads come from one open GetObject; a seek starts a new one when read."""

    def __init__(self, storage: S3Storage, key: str, size: int) -> None:
        super().__init__()
        self.storage, self.key, self.length = storage, key, size
        self.pos = 0
        self.body = None
        self.body_pos = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        if self.pos >= self.length:
            return 0
        if self.body is None or self.body_pos != self.pos:
            self._drop()
            self.body = self.storage._get(self.key, self.pos)
            self.body_pos = self.pos
        want = min(len(buffer), self.length - self.pos)
        try:
            data = self.body.read(want)
        except (*ERRORS, OSError) as exc:
            self._drop()
            raise StorageError(f"S3 read failed: {exc}") from exc
        buffer[:len(data)] = data
        self.pos += len(data)
        self.body_pos = self.pos
        return len(data)

    def _drop(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop()
        super().close()
