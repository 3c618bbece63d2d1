"""Copy stored content from one backend to another (``flask storage migrate``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from .base import Storage, StorageError


@dataclass
class MigrationReport:
    """What a migration did; ``failed`` holds (key, reason)."""

    copied: int = 0
    present: int = 0
    verified: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the terminal."""
        return (f"copied {self.copied}, already present {self.present}, "
                f"verified {self.verified}, failed {len(self.failed)}")


def stored_sha256(storage: Storage, key: str, size: int) -> str:
    """SHA-256 of what the backend really holds (read back in full)."""
    digest = hashlib.sha256()
    for chunk in storage.read_range(key, 0, size):
        digest.update(chunk)
    return digest.hexdigest()


def migrate(source: Storage, target: Storage, objects: Iterable[tuple[str, str, int]], *,
            verify: bool = False) -> MigrationReport:
    """Copy every (key, sha256, size) missing from target; safe to run again.

    Each copy is hashed while the target writes it (``put``), so bytes that do not match the
    version's SHA-256 are refused and removed; ``verify`` also reads every object back from
    the target, the copied ones and those already there.
    """
    report = MigrationReport()
    for key, sha, size in objects:
        try:
            if target.exists(key):
                report.present += 1
            else:
                with source.open(key) as stream:
                    stored = target.put(stream)
                if stored.key != key or stored.sha256 != sha or stored.size != size:
                    if stored.created:
                        target.delete(stored.key)
                    raise StorageError(f"source bytes hash to {stored.sha256}, not {sha}")
                report.copied += 1
            if verify:
                if stored_sha256(target, key, size) != sha:
                    raise StorageError("read back from the target with a different SHA-256")
                report.verified += 1
        except (StorageError, OSError) as exc:
            report.failed.append((key, str(exc)))
    return report
