"""``backup create``: a consistent backup while the portal serves and takes uploads.

The order is what makes it consistent. Objects never change and are named by their content,
so the database is snapshotted first and then every object the snapshot references is
copied; objects stored after the snapshot are not referenced by it and do not matter, and
none it references can be deleted before it is copied (``guard.backup_hold``). Unfinished
uploads are copied up to the offset the snapshot acknowledged: bytes past it were not
acknowledged in that state, and those before it never change.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..storage import Storage, StorageError
from ..storage.base import read_chunks
from ..storage.migrate import migrate
from .configuration import hide_password, without_secrets
from .database import Snapshot, snapshot
from .guard import backup_hold
from .manifest import FORMAT, now_text, portal_version, write_manifest
from .place import BackupError, FolderPlace, Place, sha256_of


@dataclass
class Created:
    """What a backup holds, for the command's one line."""

    manifest: dict
    seconds: float

    def summary(self) -> str:
        """One line for the terminal."""
        m = self.manifest
        objects = m["objects"]
        size = sum(entry[2] for entry in objects)
        how = "copied" if m["storage"]["objects"] == "copied" else "listed"
        uploads = sum(1 for u in m["uploads"] if u["copied"])
        database = m["files"][m["database"]["file"]]["size"]
        return (f"backup {m['place']}: database {_size(database)} ({m['database']['dialect']}, "
                f"{m['database']['revision']}), {len(objects)} objects {_size(size)} {how}, "
                f"{uploads} unfinished uploads, in {self.seconds:.1f} s")


def create_backup(engine, storage: Storage, storage_url: str, upload_area: Path, place: Place,
                  *, copy_objects: bool, uploads: bool, pg_bin: str | None = None) -> Created:
    """Write a whole backup into the empty ``place``; BackupError when it cannot."""
    began = time.monotonic()
    if not place.is_empty():
        raise BackupError(f"{place.url} is not empty: each backup goes into a new folder or "
                          "prefix")
    files: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        if isinstance(place, FolderPlace):
            place.root.mkdir(parents=True, exist_ok=True)
            workdir = place.root
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="portal-backup-")))
        config = json.dumps(without_secrets(), indent=1, sort_keys=True).encode()
        place.write_bytes("config.json", config)
        files["config.json"] = _entry_of_bytes(config)

        started = now_text()
        with backup_hold(engine):
            snap = snapshot(engine, workdir, pg_bin)
            _keep_objects(storage, place, snap, copy_objects)
        place.put_file(snap.name, snap.path)
        files[snap.name] = _entry_of_file(snap.path)
        copied_uploads = _copy_uploads(upload_area, place, snap, workdir, files) \
            if uploads else []
        place.finish()

    manifest = {
        "format": FORMAT,
        "portal_version": portal_version(),
        "place": place.url,
        "started_at": started,  # the recovery point: the snapshot began after this
        "finished_at": now_text(),
        "database": {"file": snap.name, **snap.facts},
        "storage": {"url": hide_password(storage_url),
                    "objects": "copied" if copy_objects else "listed"},
        "objects": [list(entry) for entry in snap.objects],
        "uploads": copied_uploads,
        "files": files,
    }
    write_manifest(place, manifest)
    return Created(manifest, time.monotonic() - began)


def _keep_objects(storage: Storage, place: Place, snap: Snapshot, copy: bool) -> None:
    """Copy every object the snapshot references into the backup (hashed on the way), or
    only check that each is stored; BackupError naming what is missing or wrong."""
    if copy:
        report = migrate(storage, place.objects(), snap.objects)
        failed = report.failed
    else:
        failed = []
        for key, _sha, _size in snap.objects:
            try:
                if not storage.exists(key):
                    failed.append((key, "not stored"))
            except StorageError as exc:
                failed.append((key, str(exc)))
    if failed:
        key, reason = failed[0]
        raise BackupError(f"{len(failed)} of {len(snap.objects)} referenced objects cannot be "
                          f"kept, e.g. {key}: {reason}")


def _copy_uploads(area: Path, place: Place, snap: Snapshot, workdir: Path,
                  files: dict[str, dict]) -> list[dict]:
    """The acknowledged bytes of each upload the snapshot holds unfinished."""
    found = []
    for upload_id, received, size in snap.uploads:
        name = f"uploads/{upload_id}"
        entry = {"id": upload_id, "received": received, "size": size, "copied": False}
        found.append(entry)
        try:
            src = open(area / upload_id, "rb")  # noqa: SIM115 (closed below)
        except OSError:
            continue  # completed or abandoned since the snapshot: nothing to resume
        with src:
            local = workdir / name
            local.parent.mkdir(parents=True, exist_ok=True)
            with open(local, "wb") as out:
                for chunk in read_chunks(src, received):
                    out.write(chunk)
        if local.stat().st_size != received:
            local.unlink()
            continue  # cut back since (a terminated upload): nothing to resume
        place.put_file(name, local)
        files[name] = _entry_of_file(local)
        if not isinstance(place, FolderPlace):
            local.unlink()
        entry["copied"] = True
    return found


def _entry_of_file(path: Path) -> dict:
    with open(path, "rb") as fh:
        sha, size = sha256_of(fh)
    return {"sha256": sha, "size": size}


def _entry_of_bytes(data: bytes) -> dict:
    import hashlib

    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
