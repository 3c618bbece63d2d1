"""Where the Flask views read a download's metadata from: the metadata cache (this worker's
copies or Redis, fetched in one round trip before anything else), else SQL.

The fast path has its own reader (fast.py: copies and Redis only); both hand the plan
(plan.py) the same snapshots.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import cache
from ..auth.users import snapshot_user
from ..cache import FileSnapshot, VersionSnapshot
from ..models import File, FileVersion


class StoreReader:
    """plan.Reader over the metadata cache and the database."""

    def __init__(self, session: Session, storage, prefetched=None) -> None:
        self.session = session
        self.storage = storage
        self.prefetched = prefetched

    @classmethod
    def prefetching(cls, session: Session, storage, file_id: int, *, user_id: int | None,
                    version_key: str | None = None) -> StoreReader:
        """A reader that has read everything the download will ask in one round trip."""
        return cls(session, storage, cache.prefetch_download(user_id, file_id,
                                                             version_key=version_key))

    def current(self, file_id: int) -> tuple[FileSnapshot, VersionSnapshot | None] | None:
        """The file and its current version (File.current); a hit in the metadata cache
        costs no SQL."""

        def load():
            file = self.session.get(File, file_id)
            return None if file is None else cache.snapshot(file, file.current)

        return cache.file_meta(file_id, load, self.prefetched)

    def version(self, file_id: int, *, number: int | None = None,
                version_id: int | None = None, fresh: bool = False) -> VersionSnapshot | None:
        """Version ``number`` of the file (``?version=N``) or the one with this id (a signed
        link's); versions never change, so their snapshots need no invalidation. ``fresh``
        (a pending version, which may be discarded and its number taken again): from SQL,
        and not cached."""
        if version_id is not None:
            key = cache.version_key_by_id(version_id)
            where = FileVersion.id == version_id
        else:
            key = cache.version_key_by_number(file_id, number)
            where = (FileVersion.file_id == file_id) & (FileVersion.number == number)

        def load():
            return cache.version_snapshot_of(
                self.session.scalars(select(FileVersion).where(where)).one_or_none())

        return load() if fresh else cache.version_snapshot(key, load, self.prefetched)

    def user(self, user_id: int):
        """The active user (a SnapshotUser), None when disabled or unknown."""
        return snapshot_user(user_id, self.prefetched)

    def local_path(self, storage_key: str) -> str | None:
        """The object's local file, None for a remote origin."""
        return self.storage.local_path(storage_key)

    @property
    def presigns(self) -> bool:
        """True for a storage that hands out presigned URLs (S3)."""
        return getattr(self.storage, "presigned_get", None) is not None
