"""Catalog queries: what a user may see, searched, filtered and paged."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from .. import cache
from ..access import _escape_like, can_read, readable_clause
from ..models import File, FileVersion, User


def human_size(n: int) -> str:
    """1536 -> '1.5 KB' (binary units, as the templates show sizes)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@dataclass
class Page:
    """One page of catalog results."""

    items: list[File]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def search_files(session: Session, user: User | None, *, query: str = "", category: str = "",
                 page: int = 1, per_page: int = 20) -> Page:
    """Files the user may read, newest first, matching the words of query and the category."""
    stmt = select(File).where(readable_clause(user))
    if category:
        stmt = stmt.where(File.category == category)
    for word in query.split()[:8]:
        pattern = f"%{_escape_like(word.lower())}%"
        name_match = select(FileVersion.id).where(
            FileVersion.file_id == File.id,
            func.lower(FileVersion.original_filename).like(pattern, escape="\\"),
        ).exists()
        stmt = stmt.where(or_(func.lower(File.title).like(pattern, escape="\\"),
                              func.lower(File.description).like(pattern, escape="\\"),
                              name_match))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = max(1, page)
    items = session.scalars(
        stmt.options(selectinload(File.versions))
        .order_by(File.updated_at.desc(), File.id.desc())
        .limit(per_page).offset((page - 1) * per_page)
    ).all()
    return Page(items=list(items), total=total, page=page, per_page=per_page)


def categories(session: Session, user: User | None) -> list[tuple[str, int]]:
    """The categories that hold something the user may read, with counts."""
    rows = session.execute(
        select(File.category, func.count()).where(readable_clause(user))
        .group_by(File.category).order_by(File.category)
    ).all()
    return [(c, n) for c, n in rows if c]


def readable_file(session: Session, user: User | None, file_id: int) -> File | None:
    """The file if it exists and the user may read it; None otherwise (the caller answers 404)."""
    file = session.get(File, file_id)
    if file is None or not can_read(user, file):
        return None
    return file


def readable_latest(session: Session, user: User | None, file_id: int
                    ) -> tuple[cache.FileSnapshot, cache.VersionSnapshot | None] | None:
    """The file and its newest version as cached snapshots, if the user may read the file;
    None otherwise. A hit in the metadata cache costs no SQL (can_read still loads a
    signed-in user's groups for a group: rule)."""

    def load():
        file = session.get(File, file_id)
        return None if file is None else cache.snapshot(file, file.latest)

    found = cache.file_meta(file_id, load)
    if found is None or not can_read(user, found[0]):
        return None
    return found
