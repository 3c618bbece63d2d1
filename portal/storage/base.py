"""The storage interface: content addressed by SHA-256, errors wrapped in StorageError."""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
_KEY = re.compile(r"^[0-9a-f]{64}$")


class StorageError(Exception):
    """Any failure of a storage backend, with a message fit for a log or /healthz."""


@dataclass(frozen=True)
class StoredObject:
    """What a completed write produced: the key to read it back and what it is."""

    key: str
    sha256: str
    crc32: int
    size: int
    created: bool = False  # False when identical content was already stored


def check_key(key: str) -> str:
    """Refuse anything but a SHA-256 hex key, so no name ever reaches a path or an object key."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise StorageError("invalid storage key")
    return key


def shard_path(key: str) -> str:
    """Where an object lives below a backend's ``objects`` root, nginx's internal location
    and a grant's object URI: ``ab/cd/abcd...`` (two levels, so no folder holds more than
    a few hundred entries at a campus's size)."""
    return f"{key[:2]}/{key[2:4]}/{key}"


def read_chunks(stream: BinaryIO, limit: int) -> Iterator[bytes]:
    """At most ``limit`` bytes of a binary stream from where it stands, in chunks."""
    left = limit
    while left > 0:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a folder (which makes a rename into it durable), by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Hasher:
    """SHA-256, CRC-32 and size of a stream, computed while it is written."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.crc = 0
        self.size = 0

    def update(self, chunk: bytes) -> None:
        """Account for the next chunk."""
        self.sha.update(chunk)
        self.crc = zlib.crc32(chunk, self.crc)
        self.size += len(chunk)


class Storage(Protocol):
    """What every backend offers; returns files, iterators and sizes, never responses."""

    def put(self, stream: BinaryIO) -> StoredObject:
        """Store a stream's content once per SHA-256, atomically."""

    def open(self, key: str) -> BinaryIO:
        """A binary file object, seekable, positioned at 0."""

    def read_range(self, key: str, start: int, stop: int) -> Iterator[bytes]:
        """The bytes [start, stop) in chunks, reading nothing outside them."""

    def local_path(self, key: str) -> str | None:
        """A file-system path for zero-copy serving, or None for remote backends."""

    def size(self, key: str) -> int:
        """The size in bytes."""

    def exists(self, key: str) -> bool:
        """True when the content is stored."""

    def delete(self, key: str) -> None:
        """Remove the content (callers check no version still uses it)."""

    def check(self) -> None:
        """Raise StorageError when the backend cannot read and write."""
