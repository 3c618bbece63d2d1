"""Adding files and versions: the one path every upload takes (CLI, upload page, tus)."""

from __future__ import annotations

import contextlib
import logging
import mimetypes
from collections.abc import Callable
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .access import normalize_access
from .backup.guard import deletion_window
from .models import File, FileVersion, User, utcnow
from .storage import Storage, StorageError, StoredObject

log = logging.getLogger(__name__)


def guess_mime(filename: str) -> str:
    """The MIME type by extension, or application/octet-stream."""
    return mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"


def add_version(session: Session, storage: Storage, stream: BinaryIO, *, filename: str,
                title: str, category: str = "", access: str = "login", description: str = "",
                owner: User | None = None, uploader: User | None = None,
                hold: bool = False) -> FileVersion:
    """Store the content and record it as the newest version of (title, category).

    A new (title, category) creates the file with this access rule; an existing one gets a
    new version and keeps its rule. ``hold``: a new version of a published document is
    pending, its readers keep the current version until ``publish_version``; a draft's
    versions wait with the draft itself. The caller commits. If the commit fails, the caller
    calls ``discard`` with the returned version's stored object so that nothing is left behind.
    """
    access = normalize_access(access)
    stored = storage.put(stream)
    try:
        file = session.scalar(select(File).where(File.title == title, File.category == category))
        if file is None:
            file = File(title=title, category=category, access=access, description=description,
                        owner=owner)
            session.add(file)
            session.flush()
        number = (session.scalar(select(func.max(FileVersion.number))
                                 .where(FileVersion.file_id == file.id)) or 0) + 1
        version = FileVersion(
            file=file, number=number, sha256=stored.sha256, crc32=stored.crc32, size=stored.size,
            mime_type=guess_mime(filename), original_filename=filename, storage_key=stored.key,
            uploader=uploader, published=not (hold and number > 1 and not file.draft),
        )
        session.add(version)
        if version.published:  # readers see a change only once there is one for them
            file.updated_at = utcnow()
        session.flush()
    except Exception:
        discard(session, storage, stored)
        raise
    version.stored = stored  # remembered for discard() after a failed commit
    return version


def discard(session: Session, storage: Storage, stored: StoredObject) -> None:
    """Undo a put whose database record did not land: delete content only this put created
    (``delete_unreferenced``)."""
    if stored.created:
        delete_unreferenced(session, storage, stored.key)


def delete_unreferenced(session: Session, storage: Storage, key: str) -> None:
    """Delete the stored object ``key`` once no version's row refers to it: after a put whose
    record did not land, or after a pending version was discarded. Only while no committed
    version refers to it (another upload of the same bytes may have committed meanwhile) and
    no backup runs (``backup/guard.py``). When in doubt (a backup, a database that cannot
    answer) the object stays: an orphan costs only space."""
    with contextlib.suppress(StorageError, SQLAlchemyError, OSError), \
            deletion_window(session.get_bind()) as conn:
        if conn is None:
            log.info("kept object %s: a backup is running", key)
            return
        used = conn.execute(select(FileVersion.id).where(FileVersion.storage_key == key)
                            .limit(1)).first()
        if used is None:
            storage.delete(key)


def publish_version(version: FileVersion) -> None:
    """Make a pending version what its document's readers get (File.current, when it is the
    newest published one). The caller audits and commits."""
    version.published = True
    version.file.updated_at = utcnow()


def discard_version(session: Session, storage: Storage, version: FileVersion,
                    commit: Callable[[Session], None]) -> None:
    """Delete a pending version with ``commit`` (the caller has audited it in the same
    session), then its stored object unless another version holds the same content."""
    if version.published:
        raise ValueError("only a pending version is discarded; published ones stay")
    key = version.storage_key
    session.delete(version)
    commit(session)
    delete_unreferenced(session, storage, key)
