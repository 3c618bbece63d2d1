"""What nginx really sent for the downloads the portal handed to it (PORTAL_SENDFILE=x-accel).

With X-Accel-Redirect the portal answers with an empty body and nginx sends the file, so
the portal cannot see how many bytes went out (a student who aborts after 10 % must not
count as a complete download). deploy/nginx.conf therefore writes one JSON line per
handed-off download to its own log, keyed by the event key the portal put in the
``X-Portal-Event`` header of its response (nginx never passes it to the client)::

    {"event":"<32 hex>","status":206,"bytes":1048576,"time":"2026-11-29T23:21:29+00:00"}

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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

#: Longest line read (a JSON line is about 110 bytes; anything longer is not ours).
MAX_LINE = 4096


@dataclass(frozen=True)
class Sent:
    """One line: what nginx answered for one handed-off download."""

    event_key: str
    status: int
    bytes_sent: int
    ended_at: datetime


@dataclass(frozen=True)
class Granted:
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


def _hex_key(value: object) -> bool:
    return isinstance(value, str) and len(value) == 32 and value.isalnum()


def parse(line: bytes) -> Sent | Granted | None:
    """The line's values, or None for a line that is not a well-formed portal event."""
    try:
        data = json.loads(line)
        if "grant" in data:
            return _granted(data)
        key = data["event"]
        if not _hex_key(key):
            return None
        return Sent(key, int(data["status"]), int(data["bytes"]),
                    datetime.fromisoformat(data["time"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _granted(data: dict) -> Granted | None:
    user, file_id, version_id, size = data["grant"].split()
    if not _hex_key(data["id"]) or not (user == "-" or user.isdigit()):
        return None

    def text(name: str) -> str:  # nginx writes an absent field as "" (or "-")
        value = data.get(name) or ""
        return "" if value == "-" else str(value)

    return Granted(
        request_id=data["id"], user_id=None if user == "-" else int(user),
        file_id=int(file_id), version_id=int(version_id), size=int(size),
        status=int(data["status"]), bytes_sent=int(data["bytes"]),
        ended_at=datetime.fromisoformat(data["time"]), seconds=float(data["seconds"]),
        range_header=text("range"), client_ip=text("ip"), user_agent=text("ua"),
        referrer=text("referer"))


def _read_from(path: Path, offset: int) -> tuple[list[bytes], int]:
    """Complete lines from ``offset`` on, and the offset after the last complete one (a
    line nginx is still writing is left for next time)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    lines = [line for line in data[:end].split(b"\n") if line and len(line) <= MAX_LINE]
    return lines, offset + end


def read_new(path: Path, state: dict) -> tuple[list[Sent | Granted], dict]:
    """The events logged since ``state`` ({"inode", "offset"}), and the new state.

    After a rotation (the path now names another file) the rest of the old file is read
    from ``<path>.1`` when it is there, then the new file from its start.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [], state
    inode, offset = int(state.get("inode", 0)), int(state.get("offset", 0))
    lines: list[bytes] = []
    if inode and inode != st.st_ino:
        rotated = Path(f"{path}.1")
        try:
            if os.stat(rotated).st_ino == inode:
                lines += _read_from(rotated, offset)[0]
        except FileNotFoundError:
            log.warning("nginx log %s was rotated and %s is gone: lines lost", path, rotated)
        offset = 0
    elif st.st_size < offset:  # truncated in place (copytruncate): only noticed while the
        offset = 0  # file is shorter than what was read, so prefer rotation by rename
    new_lines, offset = _read_from(path, offset)
    sent = [s for s in (parse(line) for line in lines + new_lines) if s is not None]
    return sent, {"inode": st.st_ino, "offset": offset}
