"""PORTAL_DOWNLOAD_LIMITS_LOCKED, and the limits in force: the environment's entries, each
replaced by an admin's row of its key unless the environment locks that key."""

from __future__ import annotations

import pytest

from portal.download.limit_store import lock_of, merged, rate_text
from portal.settings import ConfigError, Limit, Settings, from_environ, parse_rate


def test_locks_are_parsed():
    s = from_environ({"PORTAL_DOWNLOAD_LIMITS_LOCKED":
                      '{"anonymous": " set by the network team ", "group:vip": "contract"}'})
    assert s.download_limits_locked == (("anonymous", "set by the network team"),
                                        ("group:vip", "contract"))
    assert from_environ({}).download_limits_locked == ()
    assert Settings(download_limits_locked={"*": "all"}).download_limits_locked == (("*", "all"),)


@pytest.mark.parametrize(("raw", "says"), [
    ('{"students": "x"}', "unknown key 'students'"),
    ('{"group:": "x"}', "unknown key 'group:'"),
    ('{"anonymous": ""}', "must be the reason, as text"),
    ('{"anonymous": true}', "must be the reason, as text"),
    ('["anonymous"]', "must be a JSON object such as"),
    ("{anonymous", "must be a JSON object, not"),
])
def test_bad_locks_stop_start_up_with_one_line(raw, says):
    with pytest.raises(ConfigError) as caught:
        from_environ({"PORTAL_DOWNLOAD_LIMITS_LOCKED": raw})
    assert says in str(caught.value) and "PORTAL_DOWNLOAD_LIMITS_LOCKED" in str(caught.value)


def test_rows_replace_the_environment_unless_locked():
    config = Settings(download_limits={"student": {"connections": 4}, "anonymous": {
        "connections": 2}}, download_limits_locked={"anonymous": "network team"})
    rows = {"student": Limit(1, 1000), "anonymous": Limit(50), "group:vip": Limit()}
    assert dict(merged(config, rows)) == {"student": Limit(1, 1000), "anonymous": Limit(2),
                                          "group:vip": Limit()}
    assert dict(merged(config, {})) == {"student": Limit(4), "anonymous": Limit(2)}
    assert lock_of(config, "anonymous") == "network team" and lock_of(config, "student") is None
    every = Settings(download_limits={"student": {"connections": 4}},
                     download_limits_locked={"*": "fixed"})
    assert dict(merged(every, rows)) == {"student": Limit(4)}
    assert lock_of(every, "group:new") == "fixed"


@pytest.mark.parametrize("rate", [1, 1000, 1024, 512 * 1024, 4 * 1024**2, 3 * 1024**3, 1536])
def test_the_form_shows_a_rate_that_reads_back_the_same(rate):
    assert parse_rate("rate", rate_text(rate)) == rate
