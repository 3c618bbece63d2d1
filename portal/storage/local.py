"""Local-disk backend: objects/<ab>/<cd>/<sha256>, written through a temp file."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .base import (
    CHUNK,
    Hasher,
    StorageError,
    StoredObject,
    check_key,
    fsync_path,
    read_chunks,
    shard_path,
)


class LocalStorage:
    """Content-addressed files under one root; identical content is stored once."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self._objects_str = str(self.objects)
        self.tmp = self.root / "tmp"

    def _path(self, key: str) -> Path:
        key = check_key(key)
        return self.objects / shard_path(key)

    def ensure(self) -> None:
        """Create the folders, or raise StorageError saying why not."""
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage folder {self.root}: {exc.strerror}") from exc

    def put(self, stream: BinaryIO) -> StoredObject:
        """Copy the stream to a temp file, fsync it, and rename it to its hash."""
        self.ensure()
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        hasher = Hasher()
        try:
            with open(tmp, "xb") as out:
                while chunk := stream.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            key = hasher.sha.hexdigest()
            final = self._path(key)
            created = not final.exists()
            if not created:
                tmp.unlink()  # identical content is already stored
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                fsync_path(final.parent)  # the rename, durable
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"cannot store file: {exc.strerror or exc}") from exc
        return StoredObject(key=key, sha256=key, crc32=hasher.crc, size=hasher.size,
                            created=created)

    def open(self, key: str) -> BinaryIO:
        """Open the stored content for reading."""
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"cannot open stored object: {exc.strerror}") from exc

    def read_range(self, key: str, start: int, stop: int) -> Iterator[bytes]:
        """The bytes [start, stop) of the content, in chunks."""
        try:
            fh = open(self._path(key), "rb")  # noqa: SIM115 (the generator closes it)
        except OSError as exc:
            raise StorageError(f"cannot open stored object: {exc.strerror}") from exc
        return _read_slice(fh, start, stop)

    def local_path(self, key: str) -> str:
        """The path of the content, for sendfile and X-Accel-Redirect (string joins: this is
        asked on every download, and four pathlib joins cost 2 % of one, py-spy)."""
        key = check_key(key)
        return f"{self._objects_str}/{shard_path(key)}"

    def size(self, key: str) -> int:
        """The stored size in bytes."""
        try:
            return self._path(key).stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot stat stored object: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        """True when the content is stored."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the content; a missing object is not an error."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete stored object: {exc.strerror}") from exc

    def check(self) -> None:
        """Write, read back and remove a probe file."""
        self.ensure()
        probe = self.tmp / f"probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            if probe.read_bytes() != b"ok":
                raise StorageError("storage probe read back wrong bytes")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"storage is not writable: {exc.strerror}") from exc


def _read_slice(fh: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
    with fh:
        fh.seek(start)
        yield from read_chunks(fh, stop - start)
