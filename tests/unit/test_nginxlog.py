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
    sent, state, _ = nginxlog.read_new(log, {})
    assert [s.event_key for s in sent] == [K1]  # the half-written line waits
    with open(log, "a") as fh:
        fh.write(line(K2)[20:] + line(K3, 5, 206))
    sent, state, _ = nginxlog.read_new(log, state)
    assert [(s.event_key, s.status, s.bytes_sent) for s in sent] == [(K2, 200, 10),
                                                                       (K3, 206, 5)]
    assert nginxlog.read_new(log, state) == ([], state, False)


def test_rotation_finishes_the_old_file_first(tmp_path):
    log = tmp_path / "portal_events.log"
    log.write_text(line(K1))
    _, state, _ = nginxlog.read_new(log, {})
    with open(log, "a") as fh:
        fh.write(line(K2))  # written just before logrotate renamed the file
    os.rename(log, f"{log}.1")
    log.write_text(line(K3))  # nginx reopened a new one
    sent, state, _ = nginxlog.read_new(log, state)
    assert [s.event_key for s in sent] == [K2, K3]
    log.write_text("")  # truncated in place (copytruncate): noticed while it is shorter
    sent, state, _ = nginxlog.read_new(log, state)
    assert sent == [] and state["offset"] == 0
    log.write_text(line(K4))
    sent, _, _ = nginxlog.read_new(log, state)
    assert [s.event_key for s in sent] == [K4]


def test_a_reader_behind_reads_in_bounded_steps(tmp_path):
    log = tmp_path / "portal_events.log"
    keys = [f"{i:032x}" for i in range(10)]
    log.write_text("".join(line(k) for k in keys))
    size = len(line(keys[0]))
    state, got, calls = {}, [], 0
    while True:  # room for two and a half lines per call: two lines each time
        sent, state, more = nginxlog.read_new(log, state, limit=size * 5 // 2)
        got += [s.event_key for s in sent]
        calls += 1
        if not more:
            break
    assert got == keys and calls == 5
    # across a rotation: the rest of the old file first, in steps, then the new one
    os.rename(log, f"{log}.1")
    with open(f"{log}.1", "a") as fh:
        fh.write(line(K1) + line(K2) + line(K3))
    log.write_text(line(K4))
    sent, state, more = nginxlog.read_new(log, state, limit=size * 2)
    assert [s.event_key for s in sent] == [K1, K2] and more
    sent, state, more = nginxlog.read_new(log, state, limit=size * 2)
    assert [s.event_key for s in sent] == [K3, K4] and not more


def test_missing_log_changes_nothing(tmp_path):
    state = {"inode": 5, "offset": 10}
    assert nginxlog.read_new(tmp_path / "absent.log", state) == ([], state, False)


def grant_line(**fields) -> bytes:
    data = {"grant": "7 3 12 65536", "id": "e" * 32, "status": 206, "bytes": 100,
            "time": "2026-11-30T01:10:00+00:00", "seconds": "0.250", "range": "bytes=0-99",
            "ip": "10.1.2.3", "ua": "aria2/1.36.0", "referer": ""}
    data.update(fields)
    return json.dumps(data).encode()


def test_a_granted_download_is_a_whole_event():
    granted = nginxlog.parse(grant_line())
    assert granted == nginxlog.Granted(
        request_id="e" * 32, user_id=7, file_id=3, version_id=12, size=65536, status=206,
        bytes_sent=100, ended_at=granted.ended_at, seconds=0.25, range_header="bytes=0-99",
        client_ip="10.1.2.3", user_agent="aria2/1.36.0", referrer="")
    assert granted.ended_at.isoformat() == "2026-11-30T01:10:00+00:00"
    assert nginxlog.parse(grant_line(grant="- 3 12 65536", referer="-")).user_id is None


def test_malformed_grant_lines_are_skipped():
    for fields in ({"grant": "7 3 12"}, {"grant": "x 3 12 5"}, {"id": "short"},
                   {"status": "ok"}, {"seconds": "soon"}, {"time": "yesterday"},
                   {"grant": None}):
        assert nginxlog.parse(grant_line(**fields)) is None, fields


def test_granted_row_counts_the_range_nginx_sent():
    from portal.analytics.nginximport import granted_row

    row = granted_row(nginxlog.parse(grant_line()))
    assert (row["event_key"], row["user_id"], row["file_id"], row["version_id"]) == (
        "e" * 32, 7, 3, 12)
    assert (row["served_ranges"], row["bytes_sent"], row["served_from"]) == ("0-99", 100,
                                                                            "nginx")
    assert (row["ended_at"] - row["started_at"]).total_seconds() == 0.25
    assert row["ua_class"] == "manager" and row["method"] == "GET"
    full = granted_row(nginxlog.parse(grant_line(status=200, range="", bytes=65536)))
    assert (full["served_ranges"], full["status"]) == ("0-65535", 200)
    assert (row["via_link"], row["link_id"]) == (False, None)


def test_a_grant_for_a_signed_link_names_it():
    from portal.analytics.nginximport import granted_row

    granted = nginxlog.parse(grant_line(grant="7 3 12 65536 0a1b2c3d4e5f6789"))
    assert granted.link_id == "0a1b2c3d4e5f6789"
    row = granted_row(granted)
    assert (row["via_link"], row["link_id"], row["user_id"]) == (True, "0a1b2c3d4e5f6789", 7)
    for bad in ("7 3 12 65536 a b", "7 3 12 65536 not-alnum!", "7 3 12 65536 " + "a" * 33):
        assert nginxlog.parse(grant_line(grant=bad)) is None, bad
