"""tus uploads: validated creation, streamed appends, completion into a file version.

Where the bytes live. One data file per upload, named by its server-made uuid (never by
anything the client sends), in the *upload area*: by default ``<storage root>/tmp/uploads``,
inside the storage folder that every app node shares (PORTAL_STORAGE_URL). With the state in
SQL (``Upload``) and the bytes there, any node can continue any upload. ``PORTAL_UPLOAD_DIR``
overrides the folder (needed for a non-local storage backend: it must then be a folder the
nodes share, or uploads must stick to one node); without either it is ``instance/uploads``.

Offsets. ``Upload.received`` is the acknowledged offset. A PATCH writes the body to the data
file as it reads it (bounded chunks, never the whole body in memory), fsyncs, and then stores
``received`` = what is on disk, also when the connection dropped mid-body, so the client's next
HEAD resumes after the bytes that did arrive. Bytes past ``received`` were never acknowledged
(a crash between the write and the commit): the next PATCH truncates them; HEAD reports
``min(received, size on disk)``. A failed write (disk full), a checksum mismatch or a body cut
short under ``Upload-Checksum`` truncates the file back to the acknowledged offset.

Hashing. ``Upload-Checksum`` is computed over each PATCH body while writing it. The SHA-256 of
the whole upload is not carried from one PATCH to the next (a hashlib state cannot be stored in
SQL for another node to resume); on completion the data file is read once, through
``add_version`` -> ``Storage.put``, which hashes while it copies. Identical content is stored
once because the storage is addressed by that hash.

Concurrency. A PATCH or DELETE holds an exclusive ``flock`` on the data file for its duration;
a second one meanwhile is refused as BUSY (tus clients retry it). The lock is per open file,
so it also separates greenlets of one gevent worker. HEAD takes no lock: it reads the committed row.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import ClientDisconnected

from ..access import can_read, manageable, normalize_access, unknown_names
from ..audit import audit
from ..filenames import clean_filename, has_hidden_characters
from ..files import add_version, discard
from ..models import File, FileVersion, Upload, User, utcnow
from ..storage import Storage, StorageError
from . import tus
from .errors import N_, ErrorKind, UploadError

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes read from the request and written per step
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
LIMITS = {"file_id": 20, "filename": 1024, "title": 255, "category": 64, "access": 300,
          "description": 10_000}


#: What each over-long metadata value is called when refused, in the words of the page.
TOO_LONG = {
    "file_id": N_("The file number is longer than %(limit)d digits."),
    "filename": N_("The file name is longer than %(limit)d characters: rename the file and "
                   "upload it again."),
    "title": N_("The title is longer than %(limit)d characters: shorten it."),
    "category": N_("The category is longer than %(limit)d characters: shorten it."),
    "access": N_("The list of user groups is longer than %(limit)d characters: choose fewer."),
    "description": N_("The description is longer than %(limit)d characters: shorten it."),
}


@dataclass(frozen=True)
class Metadata:
    """What Upload-Metadata asked for, validated and cleaned."""

    filename: str
    title: str
    category: str = ""
    access: str = "login"
    description: str = ""
    file_id: int | None = None
    draft: bool = False
    allow_duplicate: bool = False


@dataclass
class AppendResult:
    """The upload after a PATCH; ``interrupted`` when the body ended early (bytes kept)."""

    upload: Upload
    interrupted: bool = False


class _TooLong(Exception):
    """The body carries more bytes than the upload has left."""


# --- where the bytes live -------------------------------------------------------------------


def upload_area(storage: Storage, configured: str | None, instance_path: str) -> Path:
    """The folder holding in-progress uploads (see the module docstring for the choice)."""
    if configured:
        return Path(configured)
    tmp = getattr(storage, "tmp", None)  # LocalStorage's temp folder, inside the shared root
    if tmp is not None:
        return Path(tmp) / "uploads"
    return Path(instance_path) / "uploads"


def is_upload_id(text: str) -> bool:
    """True for the shape of an id this server hands out (uuid4 hex)."""
    return bool(_UPLOAD_ID.match(text or ""))


def data_path(area: Path, upload_id: str) -> Path:
    """The data file of an upload; the id is checked so no other path can be formed."""
    if not is_upload_id(upload_id):
        raise ValueError("invalid upload id")
    return area / upload_id


# --- metadata --------------------------------------------------------------------------------


def _text(pairs: dict[str, bytes | None], key: str, *, alias: str = "") -> str:
    """A metadata value as stripped UTF-8 text within its length limit ("" when absent)."""
    raw = pairs.get(key)
    if raw is None and alias:
        raw = pairs.get(alias)
    if raw is None:
        return ""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise UploadError(ErrorKind.BAD_REQUEST, N_("metadata %(key)s is not UTF-8 text"),
                          key=repr(key)) from exc
    if len(text) > LIMITS[key]:
        raise UploadError(ErrorKind.BAD_REQUEST, TOO_LONG[key], limit=LIMITS[key])
    return text


def validate_metadata(session: Session, user: User, pairs: dict[str, bytes | None]) -> Metadata:
    """Check Upload-Metadata: a file name (``filename``, or ``name`` as Uppy sends it), an
    optional title, category, access rule and description, or ``file_id`` for a new version.

    Unknown keys (``filetype`` and the like) are ignored. The file name is cleaned with
    ``clean_filename`` (path parts, controls, invisible characters, length); the title defaults
    to the cleaned name without its extension. With ``file_id`` the file's own title, category
    and rule are kept, as for any new version. Versions may only be added to files the user
    manages (``portal.access.manageable``: admins all, staff their own), whether named by
    ``file_id`` or by an existing title and category.
    """
    raw_name = _text(pairs, "filename", alias="name")
    if not raw_name:
        raise UploadError(ErrorKind.BAD_REQUEST, N_("Upload-Metadata must carry a 'filename'"))
    filename = clean_filename(raw_name)
    description = _text(pairs, "description")
    if has_hidden_characters(description, allow="\t\n\r"):
        raise UploadError(ErrorKind.BAD_REQUEST, N_("the description contains control characters"))

    raw_id = _text(pairs, "file_id")
    if raw_id:
        if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 12):
            raise UploadError(ErrorKind.BAD_REQUEST, N_("metadata 'file_id' must be a file number"))
        target = session.get(File, int(raw_id))
        if target is None or target.deleted_at is not None or not manageable(user, target):
            raise UploadError(ErrorKind.BAD_REQUEST,
                              N_("there is no such file that you may add a version to"))
        return Metadata(filename=filename, title=target.title, category=target.category,
                        access=target.access, description=description, file_id=target.id,
                        allow_duplicate=_flag(pairs, "duplicate", "allow"))

    title = _text(pairs, "title") or os.path.splitext(filename)[0] or filename
    category = _text(pairs, "category")
    for name, value, template in (
            ("title", title, N_("the title contains control or direction characters")),
            ("category", category, N_("the category contains control or direction characters"))):
        if has_hidden_characters(value):
            raise UploadError(ErrorKind.BAD_REQUEST, template, name=name)
    try:
        access = normalize_access(_text(pairs, "access") or "login")
    except ValueError as exc:
        raise UploadError(ErrorKind.BAD_REQUEST,
                          N_("Who may read the file is not set right: choose it again from "
                             "the list. (Scripts send access as public, login, "
                             "group:NAME[,NAME…] or user:NAME.)")) from exc
    missing = unknown_names(session, access)
    if missing:  # (a typo would hide the file from everyone it was meant for)
        template = (N_("There is no user group named %(names)s: choose one from the list.")
                    if access.startswith("group:") else
                    N_("There is no user named %(names)s: choose a person from the list."))
        raise UploadError(ErrorKind.BAD_REQUEST, template, names=", ".join(missing))
    existing = session.scalar(select(File).where(File.title == title, File.category == category))
    if existing is not None and (existing.deleted_at is not None
                                 or not manageable(user, existing)):
        # add_version would file the upload as a new version of a document this user may not
        # manage (or a deleted one); refuse rather than change it behind the owner's back.
        raise UploadError(ErrorKind.BAD_REQUEST, N_("this title and category are taken by a "
                                                    "file you may not change; choose another "
                                                    "title"))
    return Metadata(filename=filename, title=title, category=category, access=access,
                    description=description, draft=_flag(pairs, "draft", "1", "true", "yes"),
                    allow_duplicate=_flag(pairs, "duplicate", "allow"))


def _flag(pairs: dict[str, bytes | None], key: str, *yes: str) -> bool:
    """Whether a metadata flag (``draft``, ``duplicate``) holds one of the ``yes`` words."""
    return (pairs.get(key) or b"").decode("ascii", "replace").strip().lower() in yes


# --- lifecycle -------------------------------------------------------------------------------


def create_upload(session: Session, area: Path, user: User, *, size: int, max_size: int,
                  metadata: Metadata, raw_metadata: str, now: datetime | None = None) -> Upload:
    """Record a new upload and create its empty data file; TOO_LARGE past the size limit."""
    check_size(size, max_size)
    now = now or utcnow()
    upload = Upload(
        id=uuid.uuid4().hex, user_id=user.id, size=size, received=0, filename=metadata.filename,
        title=metadata.title, category=metadata.category, access=metadata.access,
        description=metadata.description, file_id=metadata.file_id, raw_metadata=raw_metadata,
        draft=metadata.draft, allow_duplicate=metadata.allow_duplicate,
        created_at=now, updated_at=now,
    )
    path = data_path(area, upload.id)
    try:
        area.mkdir(parents=True, exist_ok=True)
        with open(path, "xb"):
            pass
    except OSError as exc:
        raise _write_failure(exc, 0) from exc
    session.add(upload)
    try:
        session.commit()
    except Exception:
        session.rollback()
        path.unlink(missing_ok=True)
        raise
    return upload


def check_size(size: int, max_size: int) -> None:
    """Refuse an empty upload (there is nothing to publish) and one longer than the size
    limit (TOO_LARGE, with the limit)."""
    if size == 0:
        raise UploadError(ErrorKind.BAD_REQUEST,
                          N_("The file is empty (0 bytes), so there is nothing to share. "
                             "Check that you chose the right file."))
    if size > max_size:
        raise UploadError(ErrorKind.TOO_LARGE,
                          N_("the upload is larger than the limit of %(limit)d bytes"),
                          max_size=max_size, limit=max_size)


def find_upload(session: Session, user: User, upload_id: str) -> Upload | None:
    """The caller's own upload with this id, or None (other people's uploads do not exist)."""
    if not is_upload_id(upload_id):
        return None
    upload = session.get(Upload, upload_id)
    if upload is None or upload.user_id != user.id:
        return None
    return upload


def current_offset(area: Path, upload: Upload) -> int:
    """The offset a client resumes from: acknowledged and really on disk."""
    if upload.completed_at is not None:
        return upload.size
    try:
        on_disk = data_path(area, upload.id).stat().st_size
    except FileNotFoundError:
        on_disk = 0
    return min(upload.received, on_disk)


def append(session: Session, storage: Storage, area: Path, upload: Upload, user: User,
           stream: BinaryIO, *, offset: int, content_length: int | None,
           checksum: tuple[str, bytes] | None, client_ip: str = "",
           now: datetime | None = None) -> AppendResult:
    """Write a PATCH body at ``offset``; complete the upload when it reaches its length.

    Raises UploadError: OFFSET_MISMATCH, TOO_LARGE (more bytes than the upload has left),
    BUSY (another request is writing), CHECKSUM_MISMATCH, STORAGE_FULL, GONE (the data or the
    target file is gone). On every refusal after writing began the file is cut back to the
    acknowledged offset; nothing is acknowledged that was not fsynced.
    """
    upload_id = upload.id
    if upload.completed_at is not None:
        return _already_complete(upload, offset, content_length)
    path = data_path(area, upload_id)
    with _held(path) as out:
        if out is None:
            return _data_missing(session, area, upload_id, offset, content_length)
        upload = _reload(session, upload_id)
        if upload is None:
            raise UploadError(ErrorKind.NOT_FOUND, N_("no such upload"))
        if upload.completed_at is not None:
            return _already_complete(upload, offset, content_length)
        acknowledged = min(upload.received, os.fstat(out.fileno()).st_size)
        size = upload.size
        if offset != acknowledged:
            raise UploadError(ErrorKind.OFFSET_MISMATCH, N_("Upload-Offset must be %(offset)d"),
                              offset=acknowledged)
        remaining = size - acknowledged
        if content_length is not None and content_length > remaining:
            raise UploadError(ErrorKind.TOO_LARGE,
                              N_("the body is longer than the %(left)d bytes left"),
                              left=remaining)
        # No database transaction stays open while the body streams in (it may take minutes).
        session.commit()
        digest = tus.new_checksum(checksum[0]) if checksum else None
        try:
            out.truncate(acknowledged)  # drop bytes that were never acknowledged
            out.seek(acknowledged)
            copied, interrupted = _copy(stream, out, remaining, digest)
            os.fsync(out.fileno())
        except _TooLong:
            _cut_back(out, acknowledged)
            raise UploadError(ErrorKind.TOO_LARGE,
                              N_("the body is longer than the bytes left in the upload"),
                              offset=acknowledged) from None
        except OSError as exc:
            _cut_back(out, acknowledged)
            raise _write_failure(exc, acknowledged) from exc
        if digest is not None and (interrupted or digest.digest() != checksum[1]):
            _cut_back(out, acknowledged)
            if interrupted:
                raise UploadError(ErrorKind.BAD_REQUEST,
                                  N_("the body ended before its checksum could be verified"),
                                  offset=acknowledged)
            raise UploadError(ErrorKind.CHECKSUM_MISMATCH,
                              N_("the body does not match Upload-Checksum"), offset=acknowledged)
        new_offset = acknowledged + copied
        now = now or utcnow()
        if new_offset < size:
            upload = _reload(session, upload_id)
            upload.received = new_offset
            upload.updated_at = now
            session.commit()
            return AppendResult(upload, interrupted=interrupted)
        try:
            upload = _complete(session, storage, upload_id, user, out, client_ip=client_ip,
                               now=now)
        except UploadError as exc:
            if exc.kind in (ErrorKind.GONE, ErrorKind.DUPLICATE):  # the upload is gone: its
                # bytes go too
                path.unlink(missing_ok=True)
            else:
                _cut_back(out, acknowledged)
            raise
        except Exception:
            _cut_back(out, acknowledged)
            raise
        path.unlink(missing_ok=True)
        return AppendResult(upload)


def terminate(session: Session, area: Path, upload: Upload) -> None:
    """Forget the upload and free its bytes (tus termination); BUSY while a PATCH writes."""
    path = data_path(area, upload.id)
    with _held(path):
        session.delete(upload)
        session.commit()
        path.unlink(missing_ok=True)


def purge_stale(session: Session, area: Path, *, older_than: timedelta,
                now: datetime | None = None) -> int:
    """Remove uploads untouched for ``older_than`` and orphaned data files; the count removed.

    Uploads being written to (locked) are skipped. Meant for a periodic job.
    """
    cutoff = (now or utcnow()) - older_than
    removed = 0
    for upload in session.scalars(select(Upload).where(Upload.updated_at < cutoff)).all():
        with contextlib.suppress(UploadError):
            terminate(session, area, upload)
            removed += 1
    if area.is_dir():
        known = set(session.scalars(select(Upload.id)))
        for entry in area.iterdir():
            if (is_upload_id(entry.name) and entry.name not in known
                    and entry.stat().st_mtime < cutoff.timestamp()):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


# --- helpers ---------------------------------------------------------------------------------


def write_chunk(out: BinaryIO, chunk: bytes) -> None:
    """Write all of ``chunk`` (an unbuffered file may take fewer bytes per call)."""
    view = memoryview(chunk)
    while view:
        written = out.write(view)
        view = view[written:]


def _copy(stream: BinaryIO, out: BinaryIO, limit: int, digest) -> tuple[int, bool]:
    """Copy the body to ``out`` chunk by chunk; (bytes copied, whether the body was cut short).

    Reading one byte past ``limit`` detects a body longer than announced (chunked requests
    carry no Content-Length to check beforehand).
    """
    copied = 0
    while True:
        try:
            chunk = stream.read(min(CHUNK, limit - copied + 1))
        except (ClientDisconnected, OSError):  # the client went away mid-body
            return copied, True
        if not chunk:
            return copied, False
        if copied + len(chunk) > limit:
            raise _TooLong
        write_chunk(out, chunk)
        if digest is not None:
            digest.update(chunk)
        copied += len(chunk)


def _cut_back(out: BinaryIO, acknowledged: int) -> None:
    """Truncate to the acknowledged offset so that no unacknowledged byte stays behind."""
    try:
        out.truncate(acknowledged)
        os.fsync(out.fileno())
    except OSError:
        log.exception("could not truncate an upload back to %d bytes", acknowledged)


@contextlib.contextmanager
def _held(path: Path) -> Iterator[BinaryIO | None]:
    """The data file open unbuffered (a full disk fails at write(), not at a later flush) and
    exclusively locked, or None when it does not exist; BUSY while another request has it."""
    try:
        out = open(path, "r+b", buffering=0)  # noqa: SIM115  (closed by the with below)
    except FileNotFoundError:
        yield None
        return
    with out:
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UploadError(ErrorKind.BUSY, N_("another request is writing to this upload; "
                                                 "retry shortly")) from exc
        yield out  # closing the file releases the lock


def _reload(session: Session, upload_id: str) -> Upload | None:
    """The row as committed now (another node may have changed it since it was loaded)."""
    return session.execute(
        select(Upload).where(Upload.id == upload_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _write_failure(exc: BaseException, acknowledged: int) -> UploadError:
    """STORAGE_FULL for a full disk or quota (the client may retry later), else a logged
    WRITE_FAILED."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(cause, OSError) and cause.errno in DISK_FULL:
        log.error("upload refused: the upload area or storage is full (%s)", cause)
        return UploadError(ErrorKind.STORAGE_FULL,
                           N_("the server's disk is full; the upload is kept up to byte "
                              "%(offset)d, try again later"), offset=acknowledged)
    log.error("upload write failed: %s", exc)
    return UploadError(ErrorKind.WRITE_FAILED, N_("the upload could not be written"))


def _already_complete(upload: Upload, offset: int, content_length: int | None) -> AppendResult:
    if offset != upload.size:
        raise UploadError(ErrorKind.OFFSET_MISMATCH,
                          N_("the upload is complete; Upload-Offset is %(offset)d"),
                          offset=upload.size)
    if content_length:
        raise UploadError(ErrorKind.TOO_LARGE,
                          N_("the upload is complete; no more bytes are accepted"))
    return AppendResult(upload)


def _data_missing(session: Session, area: Path, upload_id: str, offset: int,
                  content_length: int | None) -> AppendResult:
    """The data file is gone: finished meanwhile, terminated meanwhile, or lost."""
    upload = _reload(session, upload_id)
    if upload is None:
        raise UploadError(ErrorKind.NOT_FOUND, N_("no such upload"))
    if upload.completed_at is not None:
        return _already_complete(upload, offset, content_length)
    log.error("upload %s lost its data file; terminating it", upload_id)
    terminate(session, area, upload)
    raise UploadError(ErrorKind.GONE,
                      N_("the upload's data was lost; please start the upload again"))


def duplicate_of(session: Session, user: User, version: FileVersion) -> FileVersion | None:
    """The newest version of a live document this user may read (the same document before
    ``version``, or another) whose content is ``version``'s, or None."""
    others = FileVersion.id != version.id
    newest = (select(FileVersion.file_id, func.max(FileVersion.number).label("number"))
              .where(others, FileVersion.file_id.in_(
                  select(FileVersion.file_id).where(FileVersion.sha256 == version.sha256)))
              .group_by(FileVersion.file_id).subquery())
    found = session.scalars(
        select(FileVersion).join(File, File.id == FileVersion.file_id)
        .join(newest, (newest.c.file_id == FileVersion.file_id)
              & (newest.c.number == FileVersion.number))
        .where(others, FileVersion.sha256 == version.sha256, File.deleted_at.is_(None))
        .order_by((FileVersion.file_id == version.file_id).desc(), FileVersion.id)).all()
    return next((v for v in found if can_read(user, v.file)), None)


def _complete(session: Session, storage: Storage, upload_id: str, user: User, data: BinaryIO,
              *, client_ip: str, now: datetime) -> Upload:
    """Turn the finished data file into a file version, audit it, commit; return the upload."""
    upload = _reload(session, upload_id)
    title, category = upload.title, upload.category
    if upload.file_id is not None:
        target = session.get(File, upload.file_id)
        if target is None or target.deleted_at is not None:
            session.delete(upload)
            session.commit()
            raise UploadError(ErrorKind.GONE,
                              N_("the file this upload was a new version of no longer exists"))
        title, category = target.title, target.category
    data.seek(0)
    try:
        version = add_version(session, storage, data, filename=upload.filename, title=title,
                              category=category, access=upload.access,
                              description=upload.description, owner=user, uploader=user,
                              hold=True)
    except StorageError as exc:
        session.rollback()
        raise _write_failure(exc, upload.received) from exc
    same = None if upload.allow_duplicate else duplicate_of(session, user, version)
    if same is not None:
        found = {"number": same.number, "title": same.file.title, "file_id": same.file_id}
        session.rollback()
        discard(session, storage, version.stored)
        session.delete(_reload(session, upload_id))
        session.commit()
        raise UploadError(ErrorKind.DUPLICATE,
                          N_("This file is identical to version %(number)d of “%(title)s”, "
                             "so it was not uploaded again."), **found)
    if upload.draft and version.number == 1:  # a new document: it waits to be published
        version.file.draft = True
    upload.received = upload.size
    upload.completed_at = now
    upload.updated_at = now
    upload.version = version
    audit(session, "file.uploaded", actor=user, target=f"file:{version.file_id}",
          detail=(f"version {version.number}{'' if version.published else ' (pending)'}: "
                  f"{version.original_filename}, {version.size} "
                  f"bytes, sha256 {version.sha256}, upload {upload.id}"),
          client_ip=client_ip)
    try:
        session.commit()
    except Exception:
        session.rollback()
        discard(session, storage, version.stored)
        raise
    return upload
