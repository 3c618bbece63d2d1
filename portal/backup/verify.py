"""``backup verify``: check a backup without restoring it.

The manifest against its checksum; every file against the manifest; every referenced object
present with the right SHA-256 (read back and hashed: in the backup when it copied them, in
the portal's storage when it only listed them); the database snapshot readable
(``database.readable``).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..storage import Storage, StorageError
from ..storage.migrate import stored_sha256
from .database import readable
from .manifest import file_problems, read_manifest
from .place import BackupError, Place


@dataclass
class Checked:
    """What a verification found."""

    manifest: dict
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the terminal."""
        m = self.manifest
        where = "in the backup" if m["storage"]["objects"] == "copied" else "in the storage"
        state = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        return (f"{state}: {len(m['files'])} files, {len(m['objects'])} objects {where}, "
                f"database {m['database']['dialect']} at {m['database']['revision']}, "
                f"taken {m['started_at']}")


def verify_backup(place: Place, storage: Storage, pg_bin: str | None = None) -> Checked:
    """Check everything; BackupError only when there is no readable manifest at all."""
    manifest = read_manifest(place)
    checked = Checked(manifest, file_problems(place, manifest))
    database = manifest["database"]
    with database_file(place, database["file"]) as path:
        problem = readable(database, path, pg_bin)
        if problem:
            checked.problems.append(f"{database['file']}: {problem}")
    source = place.objects() if manifest["storage"]["objects"] == "copied" else storage
    checked.problems.extend(object_problems(source, manifest["objects"]))
    return checked


def object_problems(source: Storage, objects: list) -> list[str]:
    """Each listed ``[key, sha256, size]`` that the source lacks or holds other bytes of."""
    problems = []
    for key, sha, size in objects:
        try:
            stored = source.size(key)
            if stored != size:
                problems.append(f"object {key}: {stored} bytes, {size} expected")
            elif stored_sha256(source, key, size) != sha:
                problems.append(f"object {key}: its bytes do not hash to {sha}")
        except StorageError as exc:
            problems.append(f"object {key}: {exc}")
    return problems


@contextlib.contextmanager
def database_file(place: Place, name: str):
    """A local path of the backup's database file (fetched to a temp folder from S3)."""
    local = place.local_path(name)
    if local is not None:
        if not local.is_file():
            raise BackupError(f"{place.url}: {name} is missing")
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="portal-restore-") as tmp:
        path = Path(tmp) / name
        place.fetch(name, path)
        yield path
