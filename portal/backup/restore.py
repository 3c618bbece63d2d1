"""``backup restore``: a backup into an empty instance, then up to this portal's migrations.

The contract is an empty database: no table at all (a new SQLite file, an empty PostgreSQL
schema), checked before anything is written, with no option to override it. The storage
need not be empty: objects are named by their content, so an object already stored is the
one the backup holds, and objects the restored database does not reference are orphans
that cost only space. Objects go in first, so the restored database never references one
that is missing.

Afterwards the database starts a new timeline (``start_new_timeline``): a new identity, so
that nothing Redis or a worker holds of the database before it (whose ids and generations
the restored one repeats) is read again (docs/trust.md), and every session, remember-me
cookie and signed link ends: those handed out after the backup was taken would otherwise
come back to life where their logout, revocation or password change was lost with it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import update
from sqlalchemy.engine import Engine

from ..models import PortalState, User
from ..storage import Storage, StorageError
from ..storage.base import read_chunks
from ..storage.migrate import migrate
from . import database
from .manifest import file_problems, read_manifest
from .place import BackupError, Place
from .verify import database_file


@dataclass
class Restored:
    """What a restore did, for the command's one line."""

    manifest: dict
    migrated_to: str
    identity: str
    objects_copied: int
    objects_present: int
    uploads: int
    seconds: float

    def summary(self) -> str:
        """One line for the terminal."""
        m = self.manifest
        revision = m["database"]["revision"]
        migrated = "" if revision == self.migrated_to else f", migrated to {self.migrated_to}"
        return (f"restored {m['place']} (taken {m['started_at']}): database at {revision}"
                f"{migrated}, {self.objects_copied} objects copied, {self.objects_present} "
                f"already stored, {self.uploads} unfinished uploads; new identity "
                f"{self.identity}: every session and signed link has ended; "
                f"in {self.seconds:.1f} s")


def restore_backup(engine: Engine, storage: Storage, upload_area: Path, place: Place,
                   migrations: str, *, pg_bin: str | None = None) -> Restored:
    """Restore into the empty database and the storage; BackupError (nothing written yet)
    when the backup is damaged, the database not empty, an object unavailable, or the
    backup newer than this portal."""
    began = time.monotonic()
    manifest = read_manifest(place)
    facts = manifest["database"]
    uploads = [u for u in manifest["uploads"] if u["copied"]]
    problems = file_problems(place, manifest,
                             [facts["file"], *(f"uploads/{u['id']}" for u in uploads)])
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BackupError(f"the backup is damaged: {problems[0]}{more}")
    script = ScriptDirectory(migrations)
    head = script.get_current_head()
    try:
        script.get_revision(facts["revision"])
    except Exception as exc:  # alembic raises several kinds for an unknown revision
        raise BackupError(f"the backup's migration {facts['revision']!r} is unknown here: it "
                          "was made by a newer portal; restore it with that version") from exc
    database.check_target(engine, facts)
    tables = database.tables_of(engine)
    if tables:
        raise BackupError(f"the database is not empty ({len(tables)} tables): restore needs an "
                          "empty one (a new SQLite file or an empty PostgreSQL schema)")
    copied, present = _put_objects(place, storage, manifest)

    with database_file(place, facts["file"]) as path:
        database.restore(engine, facts, path, pg_bin)
    if facts["revision"] != head:
        from flask_migrate import upgrade

        upgrade(directory=migrations)
    identity = start_new_timeline(engine)
    for upload in uploads:
        _put_upload(place, upload_area, upload)
    return Restored(manifest, head, identity, copied, present, len(uploads),
                    time.monotonic() - began)


def _put_objects(place: Place, storage: Storage, manifest: dict) -> tuple[int, int]:
    """Copy the backup's objects into the storage (hashed on the way) or, when it only
    listed them, check that the storage has each; (copied, already there)."""
    objects = manifest["objects"]
    if manifest["storage"]["objects"] == "copied":
        report = migrate(place.objects(), storage, objects)
        failed = report.failed
        copied, present = report.copied, report.present
    else:
        failed = []
        for key, _sha, _size in objects:
            try:
                if not storage.exists(key):
                    failed.append((key, "not in the storage, and the backup has only its "
                                        "checksum (restore it from the bucket's versions)"))
            except StorageError as exc:
                failed.append((key, str(exc)))
        copied, present = 0, len(objects) - len(failed)
    if failed:
        key, reason = failed[0]
        raise BackupError(f"{len(failed)} of {len(objects)} objects cannot be restored, "
                          f"e.g. {key}: {reason}")
    return copied, present


def start_new_timeline(engine: Engine) -> str:
    """Give the restored database a new identity and end every session, remember-me cookie
    and signed link (each user's session generation moves on); the new identity."""
    fresh = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(update(PortalState.__table__).where(PortalState.id == 1)
                     .values(identity=fresh, generation=PortalState.generation + 1))
        conn.execute(update(User.__table__).values(session_gen=User.session_gen + 1))
    return fresh


def _put_upload(place: Place, area: Path, upload: dict) -> None:
    """An unfinished upload's acknowledged bytes back into the upload area."""
    area.mkdir(parents=True, exist_ok=True)
    target = area / upload["id"]
    with place.open(f"uploads/{upload['id']}") as src, open(target, "wb") as out:
        for chunk in read_chunks(src, upload["received"]):
            out.write(chunk)
