"""Where a backup lives: a folder, or a prefix of an S3 bucket, with the same layout.

::

    manifest.json           what the backup holds and the SHA-256 of every file (written last)
    manifest.sha256         the manifest's own SHA-256
    config.json             the PORTAL_ settings, secrets left out
    database.sqlite | database.dump   the snapshot (SQLite file, or pg_dump custom format)
    objects/ab/cd/<sha256>  the stored objects (as the storage backends lay them out)
    uploads/<id>            unfinished uploads' acknowledged bytes (--uploads)

Names inside a backup are made here, never taken from a manifest unchecked: ``check_name``
refuses anything but the names above, so a tampered manifest cannot reach another path.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from ..storage import Storage, StorageError
from ..storage.base import CHUNK, fsync_path
from ..storage.local import LocalStorage

_NAME = re.compile(r"^(manifest\.json|manifest\.sha256|config\.json|database\.(sqlite|dump)"
                   r"|uploads/[0-9a-f]{32})$")


class BackupError(Exception):
    """A backup cannot be made, checked or restored; the message says why, in one line."""


def check_name(name: str) -> str:
    """A file name a backup may hold, or BackupError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BackupError(f"the manifest names an unexpected file {name!r}")
    return name


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """(SHA-256 hex, size) of what the stream holds from where it stands."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class FolderPlace:
    """A backup in a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def is_empty(self) -> bool:
        """True when the folder is missing or holds nothing."""
        return not self.root.exists() or not any(self.root.iterdir())

    def put_file(self, name: str, path: Path) -> None:
        """Copy in and fsync."""
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path != target:
            shutil.copyfile(path, target)
        fsync_path(target)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write and fsync."""
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        fsync_path(target)

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes."""
        with self.open(name) as fh:
            return fh.read()

    def open(self, name: str) -> BinaryIO:
        """The file, open for reading."""
        try:
            return open(self._path(name), "rb")
        except OSError as exc:
            raise BackupError(f"{self.url}: cannot read {name}: {exc.strerror}") from exc

    def fetch(self, name: str, path: Path) -> None:
        """Copy the file out."""
        with self.open(name) as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)

    def objects(self) -> Storage:
        """``objects/`` under the folder, as the local backend lays it out."""
        return LocalStorage(self.root)

    def local_path(self, name: str) -> Path:
        """The file in the folder."""
        return self._path(name)

    def finish(self) -> None:
        """Remove the objects backend's empty temp folder."""
        tmp = self.root / "tmp"
        if tmp.is_dir() and not any(tmp.iterdir()):
            tmp.rmdir()

    def close(self) -> None:
        """Nothing to release."""


class S3Place:
    """A backup under ``s3://bucket/prefix``, through the storage backend's client."""

    def __init__(self, bucket: str, prefix: str) -> None:
        from ..storage.s3 import S3Storage

        self.store = S3Storage(bucket, prefix)
        self.bucket, self.prefix = bucket, self.store.prefix
        self.url = f"s3://{bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        name = check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, name: str, call):
        from ..storage.s3 import ERRORS, _missing, _reason

        try:
            return call()
        except ERRORS as exc:
            if _missing(exc):
                raise BackupError(f"{self.url}: {name} is missing") from exc
            raise BackupError(f"{self.url}: cannot {what} {name}: {_reason(exc)}") from exc

    def is_empty(self) -> bool:
        """True when no key starts with the prefix."""
        start = f"{self.prefix}/" if self.prefix else ""
        found = self._call("list", start or "the bucket", lambda: self.store.client
                           .list_objects_v2(Bucket=self.bucket, Prefix=start, MaxKeys=1))
        return not found.get("KeyCount")

    def put_file(self, name: str, path: Path) -> None:
        """Upload (multipart when large)."""
        from ..storage.s3 import TRANSFER

        self._call("write", name, lambda: self.store.client.upload_file(
            str(path), self.bucket, self._key(name), Config=TRANSFER))

    def write_bytes(self, name: str, data: bytes) -> None:
        """PutObject."""
        self._call("write", name, lambda: self.store.client.put_object(
            Bucket=self.bucket, Key=self._key(name), Body=data))

    def read_bytes(self, name: str) -> bytes:
        """GetObject, read whole."""
        with self.open(name) as body:
            return body.read()

    def open(self, name: str) -> BinaryIO:
        """The streaming body of GetObject."""
        return self._call("read", name, lambda: self.store.client.get_object(
            Bucket=self.bucket, Key=self._key(name))["Body"])

    def fetch(self, name: str, path: Path) -> None:
        """Download to a local file."""
        from ..storage.s3 import TRANSFER

        self._call("read", name, lambda: self.store.client.download_file(
            self.bucket, self._key(name), str(path), Config=TRANSFER))

    def objects(self) -> Storage:
        """``objects/`` under the prefix, as the S3 backend lays it out."""
        return self.store

    def local_path(self, name: str) -> None:
        """None: the backup is not on this machine's disk."""
        return None

    def finish(self) -> None:
        """Nothing to tidy."""

    def close(self) -> None:
        """Close the client's connection pool."""
        self.store.close()


#: A backup's folder or S3 prefix.
Place = FolderPlace | S3Place


def place_of(where: str) -> Place:
    """The place named by a folder path or an ``s3://bucket/prefix`` URL."""
    parts = urlsplit(where)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BackupError("an S3 backup needs a bucket: s3://BUCKET/PREFIX")
        try:
            return S3Place(parts.netloc, unquote(parts.path))
        except StorageError as exc:
            raise BackupError(str(exc)) from exc
    if parts.scheme == "file":
        return FolderPlace(Path(unquote(parts.path)))
    if parts.scheme:
        raise BackupError(f"unsupported backup location {where!r}: a folder or s3://BUCKET/PREFIX")
    return FolderPlace(Path(where).resolve())
