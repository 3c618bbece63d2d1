"""The event row of one response, built from what a view captured (``event_row``), and its
JSON form in the journal and in Redis.

The row's columns are ``rawevents.EVENT_COLUMNS``; ``recorder.open_event`` records it, and
``nginximport.granted_row`` builds one from an nginx log line alone.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import orjson

from . import clients, logical

_DATES = ("started_at", "ended_at")


def new_event_key() -> str:
    """A unique key for one response (32 hex digits)."""
    return uuid.uuid4().hex


def dump_row(row: dict) -> str:
    """An event row as the JSON of the journal, the stream and the nginx hashes (compact
    UTF-8; datetimes as ISO 8601, as ``datetime.isoformat`` writes them). orjson, not json:
    every download writes its row twice, and json's encoder was 5 % of a worker's time."""
    return orjson.dumps(row).decode()


def load_row(raw: bytes | str) -> dict:
    """The inverse of ``dump_row`` (datetimes back as datetimes)."""
    row = orjson.loads(raw)
    for name in _DATES:
        if row.get(name):
            row[name] = datetime.fromisoformat(row[name])
    return row


def referrer_without_query(referrer: str | None) -> str:
    """Where the download was started from, without query or fragment (they can carry
    personal data)."""
    if not referrer:
        return ""
    parts = urlsplit(referrer)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:256] if parts.netloc else ""


def event_row(*, file_id: int, version_id: int, size: int, user_id: int | None,
              via_link: bool, method: str, status: int, range_header: str,
              served: list[tuple[int, int]], client_ip: str, user_agent: str, referrer: str,
              link_id: str | None) -> dict:
    """The start record of one response, from values the view captured."""
    user_agent = (user_agent or "")[:256]
    return {
        "file_id": file_id, "version_id": version_id, "user_id": user_id,
        "via_link": via_link, "method": method, "status": status,
        "range_header": (range_header or "")[:200],
        "served_ranges": logical.format_ranges(served), "size": size,
        "client_ip": clients.truncate_ip(client_ip), "user_agent": user_agent,
        "ua_class": clients.classify(user_agent),
        "referrer": referrer_without_query(referrer), "served_from": "origin",
        "link_id": link_id, "started_at": datetime.now(UTC),
    }
