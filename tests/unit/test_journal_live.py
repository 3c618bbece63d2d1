"""What is being sent now, from the journals: a living writer's starts without an end count,
a dead writer's (its lock released) do not, and neither does a start with its end."""

from __future__ import annotations

import json

from portal.analytics.journal import Journal, dead_journals, live_open_starts


def _start(key: str) -> str:
    return json.dumps({"event_key": key, "file_id": 1, "method": "GET"})


def test_live_starts_without_an_end(tmp_path):
    live = Journal(tmp_path, "live")
    live.started(_start("a"))
    live.started(_start("b"))
    live.ended(["b"])
    dead = Journal(tmp_path, "dead")
    dead.started(_start("c"))
    dead.close(remove=False)  # its writer is gone: its lock with it
    assert [json.loads(r)["event_key"] for r in live_open_starts(tmp_path)] == ["a"]
    # looking took no lock away: the flusher still finds the dead journal, and only it
    orphans = dead_journals(tmp_path)
    assert [o.path.name for o in orphans] == ["dead.journal"]
    for o in orphans:
        o.release()
    live.close(remove=True)


def test_no_journal_folder_is_nothing_sent(tmp_path):
    assert live_open_starts(tmp_path / "missing") == []
