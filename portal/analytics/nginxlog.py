"""What nginx really sent for the downloads the portal handed to it (PORTAL_SENDFILE=x-accel).

With X-Accel-Redirect the portal answers with an empty body and nginx sends the file, so
the portal cannot see how many bytes went out (a student who aborts after 10 % must not
count as a complete download). deploy/nginx.conf therefore writes one JSON line per
handed-off download to its own log, keyed by the event key the portal put in the
``X-Portal-Event`` header of its response (nginx never passes it to the client)::

    {"event":"<32 hex>","status":206,"bytes":1048576,"time":"2026-11-29T23:21:29+00:00",
     "lease":"<the X-Portal-Lease token, when the download held a connection lease>"}

``$body_bytes_sent`` counts the bytes nginx gave the kernel, which is more than the client
received when it aborts with data still in the socket buffers (the portal's own sendfile
counts acknowledged bytes); the difference is at most the buffer, a few MB on a fast LAN.

The recorder reads the lines that are new since the last flush (``read_new``) and joins them
to the events it holds back for nginx (recorder.py); this module only reads the file. Why
by hand: a few lines of offset bookkeeping that also follow a rotation (``logrotate`` renames
the file to ``<name>.1`` and nginx reopens a new one), which no log-shipping library here
does without a daemon of its own.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

#: Longest line read (a JSON line is about 110 bytes; anything longer is not ours).
MAX_LINE = 4096


class Sent(NamedTuple):
    """One line: what nginx answered for one handed-off download."""

    event_key: str
    status: int
    bytes_sent: int
    ended_at: datetime
    lease: str = ""  # X-Portal-Lease: the connection lease this response held (limits.py)


class Granted(NamedTuple):
    """One line of a download nginx sent on the portal's grant (no portal request saw it):
    everything the event needs (portal/download/fast.py says who and which version)."""

    request_id: str
    user_id: int | None
    file_id: int
    version_id: int
    size: int
    status: int
    bytes_sent: int
    ended_at: datetime
    seconds: float
    range_header: str
    client_ip: str
    user_agent: str
    referrer: str
    link_id: str | None = None  # the signed link's, when the grant was for one


def _hex_key(value: object) -> bool:
    return isinstance(value, str) and len(value) == 32 and value.isalnum()


@lru_cache(maxsize=256)
def _time(text: str) -> datetime:
    """nginx's $time_iso8601 (the same text for every line of a second)."""
    return datetime.fromisoformat(text)


def parse(line: bytes) -> Sent | Granted | None:
    """The line's values, or None for a line that is not a well-formed portal event."""
    try:
        return _from_fields(json.loads(line))
    except ValueError:
        return None


def parse_many(lines: list[bytes]) -> list[Sent | Granted]:
    """The well-formed portal events among these lines (one JSON document for all of them
    when every line is well-formed JSON, the usual case: a third of the time per line)."""
    try:
        documents = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        found = (parse(line) for line in lines)
    else:
        found = (_from_fields(document) for document in documents)
    return [event for event in found if event is not None]


def _from_fields(data: object) -> Sent | Granted | None:
    try:
        if "grant" in data:
            return _granted(data)
        key = data["event"]
        if not _hex_key(key):
            return None
        lease = data.get("lease", "")
        return Sent(key, int(data["status"]), int(data["bytes"]), _time(data["time"]),
                    lease if isinstance(lease, str) else "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _granted(data: dict) -> Granted | None:
    user, file_id, version_id, size, *link = data["grant"].split()
    if not _hex_key(data["id"]) or not (user == "-" or user.isdigit()) or len(link) > 1:
        return None
    if link and not (len(link[0]) <= 32 and link[0].isalnum()):
        return None
    # nginx writes an absent field as "" (or "-")
    texts = [str(value) if value and value != "-" else ""
             for value in (data.get("range"), data.get("ip"), data.get("ua"),
                           data.get("referer"))]
    return Granted(
        data["id"], None if user == "-" else int(user), int(file_id), int(version_id),
        int(size), int(data["status"]), int(data["bytes"]), _time(data["time"]),
        float(data["seconds"]), *texts, link[0] if link else None)


def _read_from(path: Path, offset: int, limit: int) -> tuple[list[bytes], int, bool]:
    """Complete lines from ``offset`` on, at most ``limit`` bytes of them, the offset after
    the last one (a line nginx is still writing is left for next time), and whether the
    file holds more after it."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(limit + 1)
    more = len(data) > limit
    end = data.rfind(b"\n", 0, limit) + 1
    if end == 0 and more:  # a line longer than the limit (not ours): skip past it
        end = limit
    lines = [line for line in data[:end].split(b"\n") if line and len(line) <= MAX_LINE]
    return lines, offset + end, more


#: Bytes read per call of read_new (about 1,000 lines): bounds the memory of a reader
#: that has fallen behind, and how long one batch keeps a worker busy (about 50 ms).
READ_LIMIT = 1 << 18


def read_new(path: Path, state: dict, limit: int = READ_LIMIT
             ) -> tuple[list[Sent | Granted], dict, bool]:
    """The events logged since ``state`` ({"inode", "offset"}), at most ``limit`` bytes of
    them; the new state; and whether more lines wait (call again).

    After a rotation (the path now names another file) the rest of the old file is read
    from ``<path>.1`` when it is there, then the new file from its start; the state then
    names the old file until it is read to its end.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [], state, False
    inode, offset = int(state.get("inode", 0)), int(state.get("offset", 0))
    if inode and inode != st.st_ino:
        rotated = Path(f"{path}.1")
        try:
            if os.stat(rotated).st_ino == inode:
                lines, offset, more = _read_from(rotated, offset, limit)
                if more:
                    return parse_many(lines), {"inode": inode, "offset": offset}, True
                new_lines, offset, more = _read_from(path, 0, limit)
                return (parse_many(lines + new_lines), {"inode": st.st_ino, "offset": offset},
                        more)
        except FileNotFoundError:
            pass
        log.warning("nginx log %s was rotated and %s is gone: lines lost", path, rotated)
        offset = 0
    elif st.st_size < offset:  # truncated in place (copytruncate): only noticed while the
        offset = 0  # file is shorter than what was read, so prefer rotation by rename
    lines, offset, more = _read_from(path, offset, limit)
    return parse_many(lines), {"inode": st.st_ino, "offset": offset}, more


def unread(path: Path, state: dict) -> tuple[int, datetime | None]:
    """How far the reader at ``state`` ({"inode", "offset"}) is behind nginx's log: the bytes
    it has not read yet (the rest of a rotated ``<path>.1`` included), and the time of the
    first of them that is a whole event line (None: none)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0, None
    inode, offset = int(state.get("inode", 0)), int(state.get("offset", 0))
    parts = []  # (file, read from, size)
    if inode and inode != st.st_ino:
        rotated = Path(f"{path}.1")
        try:
            if os.stat(rotated).st_ino == inode:
                parts.append((rotated, offset, os.stat(rotated).st_size))
        except FileNotFoundError:
            pass
        parts.append((path, 0, st.st_size))
    else:
        parts.append((path, offset if st.st_size >= offset else 0, st.st_size))
    behind = sum(max(0, size - start) for _, start, size in parts)
    for file, start, size in parts:
        if size <= start:
            continue
        try:
            lines, _, _ = _read_from(file, start, MAX_LINE)
        except FileNotFoundError:
            continue
        for event in parse_many(lines):
            return behind, event.ended_at
    return behind, None
