"""Catalog queries: what a user may see, searched, filtered and paged."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from ..access import can_read, escape_like, readable_clause
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
    downloads: dict[int, int] = field(default_factory=dict)  # file id -> logical downloads

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


SORTS = ("newest", "popular")


def download_counts_query():
    """file_id -> logical downloads, summed over the daily rollups of everyone (all time)."""
    from ..analytics.models import ALL_USERS, Rollup

    return (select(Rollup.file_id, func.sum(Rollup.downloads).label("downloads"))
            .where(Rollup.grain == "d", Rollup.grp == ALL_USERS)
            .group_by(Rollup.file_id))


def download_counts(session: Session, file_ids: list[int]) -> dict[int, int]:
    """Logical downloads per file, for the files shown."""
    if not file_ids:
        return {}
    counts = download_counts_query().subquery()
    rows = session.execute(select(counts.c.file_id, counts.c.downloads)
                           .where(counts.c.file_id.in_(file_ids))).all()
    return {file_id: int(n or 0) for file_id, n in rows}


def search_files(session: Session, user: User | None, *, query: str = "", category: str = "",
                 page: int = 1, per_page: int = 20, sort: str = "newest") -> Page:
    """Files the user may read matching the words of query and the category, newest first
    or most downloaded first. On PostgreSQL the LIKE patterns use trigram indexes
    (migration 0005); SQLite scans, which is fine at a campus's size."""
    stmt = select(File).where(readable_clause(user))
    if category:
        stmt = stmt.where(File.category == category)
    for word in query.split()[:8]:
        pattern = f"%{escape_like(word.lower())}%"
        name_match = select(FileVersion.id).where(
            FileVersion.file_id == File.id,
            func.lower(FileVersion.original_filename).like(pattern, escape="\\"),
        ).exists()
        stmt = stmt.where(or_(func.lower(File.title).like(pattern, escape="\\"),
                              func.lower(File.description).like(pattern, escape="\\"),
                              name_match))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = max(1, page)
    order = (File.updated_at.desc(), File.id.desc())
    if sort == "popular":
        counts = download_counts_query().subquery()
        stmt = stmt.outerjoin(counts, counts.c.file_id == File.id)
        order = (func.coalesce(counts.c.downloads, 0).desc(), *order)
    items = list(session.scalars(
        stmt.options(selectinload(File.versions))
        .order_by(*order)
        .limit(per_page).offset((page - 1) * per_page)
    ).all())
    return Page(items=items, total=total, page=page, per_page=per_page,
                downloads=download_counts(session, [f.id for f in items]))


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


def my_download_history(session: Session, user: User, limit: int = 200) -> list[dict]:
    """The user's logical downloads, newest first, of files they may still read."""
    from ..analytics.models import LogicalDownload

    rows = session.execute(
        select(LogicalDownload, File, FileVersion)
        .join(File, File.id == LogicalDownload.file_id)
        .join(FileVersion, FileVersion.id == LogicalDownload.version_id)
        .where(LogicalDownload.user_id == user.id, LogicalDownload.counted.is_(True))
        .order_by(LogicalDownload.last_at.desc()).limit(limit)
    ).all()
    return [{"file": file, "version": version, "started_at": ld.started_at,
             "last_at": ld.last_at, "completion": ld.completion, "covered": ld.covered,
             "completed": ld.completed, "client": ld.ua_class}
            for ld, file, version in rows if can_read(user, file)]
