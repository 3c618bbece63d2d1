"""Reading nginx's event log (portal/analytics/nginxlog.py): only new, complete, well-formed
lines, across a rotation and a truncation."""

from __future__ import annotations

import json
import os

from portal.analytics import nginxlog


def line(key: str, nbytes: int = 10, status: int = 200) -> str:
    return json.dumps({"event": key, "status": status, "bytes": nbytes,
                       "time": "2026-11-29T23:21:29+00:00"}) + "\n"


K1, K2, K3, K4 = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)


def test_new_complete_lines_only(tmp_path):
    log = tmp_path / "portal_events.log"
    log.write_text(line(K1) + "not json\n" + json.dumps({"event": "x"}) + "\n" + line(K2)[:20])
    sent, state = nginxlog.read_new(log, {})
    assert [s.event_key for s in sent] == [K1]  # the half-written line waits
    with open(log, "a") as fh:
        fh.write(line(K2)[20:] + line(K3, 5, 206))
    sent, state = nginxlog.read_new(log, state)
    assert [(s.event_key, s.status, s.bytes_sent) for s in sent] == [(K2, 200, 10),
                                                                       (K3, 206, 5)]
    assert nginxlog.read_new(log, state) == ([], state)


def test_rotation_finishes_the_old_file_first(tmp_path):
    log = tmp_path / "portal_events.log"
    log.write_text(line(K1))
    _, state = nginxlog.read_new(log, {})
    with open(log, "a") as fh:
        fh.write(line(K2))  # written just before logrotate renamed the file
    os.rename(log, f"{log}.1")
    log.write_text(line(K3))  # nginx reopened a new one
    sent, state = nginxlog.read_new(log, state)
    assert [s.event_key for s in sent] == [K2, K3]
    log.write_text("")  # truncated in place (copytruncate): noticed while it is shorter
    sent, state = nginxlog.read_new(log, state)
    assert sent == [] and state["offset"] == 0
    log.write_text(line(K4))
    sent, _ = nginxlog.read_new(log, state)
    assert [s.event_key for s in sent] == [K4]


def test_missing_log_changes_nothing(tmp_path):
    state = {"inode": 5, "offset": 10}
    assert nginxlog.read_new(tmp_path / "absent.log", state) == ([], state)
