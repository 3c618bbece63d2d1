"""The admin overview: today's downloads, what is being downloaded now, the week's top files
and the health of the parts, of the files the reader may see (analytics' scope rule)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from ..analytics import queries, sending
from ..analytics.models import LogicalDownload
from ..models import File

#: A logical download with a response in this window and not yet complete is "active": the
#: events reach SQL when a response ends, so a download that is between two of its range
#: requests (a download manager's pieces, a resume) counts, as it should.
ACTIVE_WINDOW = timedelta(minutes=5)
TOP = 10


def active_downloads(conn: Connection, now: datetime, *,
                     readable: queries.Readable = None) -> dict:
    """Counted, incomplete logical downloads with a response in the last ``ACTIVE_WINDOW``, and the
    distinct people behind them, of the files ``readable`` lets the reader see (one query)."""
    t = LogicalDownload.__table__
    stmt = (select(func.count(), func.count(t.c.user_key.distinct()))
            .where(t.c.last_at >= now - ACTIVE_WINDOW, t.c.counted.is_(True),
                   t.c.completed.is_(False)))
    if readable is not None:
        stmt = stmt.where(t.c.file_id.in_(select(File.id).where(readable)))
    downloads, people = conn.execute(stmt).one()
    return {"downloads": int(downloads), "people": int(people),
            "window_minutes": int(ACTIVE_WINDOW.total_seconds() // 60)}


def sending_now(conn: Connection, now_sending: sending.Sending, *,
                readable: queries.Readable = None) -> dict:
    """The GET responses with a body being sent right now on every node (``sending.gather``),
    and the people (or anonymous clients) behind them, of the files ``readable`` lets the
    reader see; ``complete`` False when only this node could be read."""
    rows = now_sending.rows
    ids = {file_id for file_id, _ in rows}
    if readable is not None and ids:
        visible = set(conn.execute(select(File.id).where(File.id.in_(ids), readable))
                      .scalars())
        rows = [row for row in rows if row[0] in visible]
    return {"responses": len(rows), "people": len({who for _, who in rows}),
            "servers": now_sending.nodes, "complete": now_sending.complete}


def dashboard(conn: Connection, tz: ZoneInfo, now: datetime, now_sending: sending.Sending, *,
              readable: queries.Readable = None) -> dict:
    """Today against yesterday (downloads, people, bytes, cache hit rate), what is being
    sent now and what was active lately, and the last seven days' top files: the analytics
    queries, read once each."""
    today = queries.Period.last_days(1, tz, now)
    return {"today": queries.overview(conn, today, readable=readable),
            "now": sending_now(conn, now_sending, readable=readable),
            "active": active_downloads(conn, now, readable=readable),
            "top": queries.top_files(conn, queries.Period.last_days(7, tz, now), limit=TOP,
                                     readable=readable)}
