"""Adding files and versions: the one path every upload takes (CLI, upload page, tus)."""

from __future__ import annotations

import contextlib
import logging
import mimetypes
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
                owner: User | None = None, uploader: User | None = None) -> FileVersion:
    """Store the content and record it as the newest version of (title, category).

    A new (title, category) creates the file with this access rule; an existing one gets a
    new version and keeps its rule. The caller commits. If the commit fails, the caller
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
            uploader=uploader,
        )
        session.add(version)
        file.updated_at = utcnow()
        session.flush()
    except Exception:
        discard(session, storage, stored)
        raise
    version.stored = stored  # remembered for discard() after a failed commit
    return version


def discard(session: Session, storage: Storage, stored: StoredObject) -> None:
    """Undo a put whose database record did not land: delete content only this put created,
    and only while no committed version refers to it (another upload of the same bytes may
    have committed meanwhile) and no backup runs (``backup/guard.py``). When in doubt (a
    backup, a database that cannot answer) the object stays: an orphan costs only space."""
    if not stored.created:
        return
    with contextlib.suppress(StorageError, SQLAlchemyError, OSError), \
            deletion_window(session.get_bind()) as conn:
        if conn is None:
            log.info("kept object %s: a backup is running", stored.key)
            return
        used = conn.execute(select(FileVersion.id).where(FileVersion.storage_key == stored.key)
                            .limit(1)).first()
        if used is None:
            storage.delete(stored.key)
