"""PORTAL_DOWNLOAD_LIMITS: parsed, refused with one clear line, and who gets which limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from portal.download.leases import Bucket
from portal.download.people import limit_for, person_of
from portal.settings import UNLIMITED, ConfigError, Limit, Settings, from_environ

ROOT = Path(__file__).resolve().parents[2]


def test_limits_are_parsed():
    s = from_environ({"PORTAL_DOWNLOAD_LIMITS": '{"student": {"connections": 4, "rate": "4MB"},'
                      ' "group:vip": {"rate": 1000}, "staff": {"connections": 16},'
                      ' "admin": {}, "anonymous": {"rate": "512K"}}'})
    assert dict(s.download_limits) == {
        "student": Limit(4, 4 * 1024**2), "group:vip": Limit(None, 1000),
        "staff": Limit(16, None), "admin": UNLIMITED, "anonymous": Limit(None, 512 * 1024)}
    assert from_environ({}).download_limits == ()
    assert from_environ({"PORTAL_DOWNLOAD_LIMITS": "{}"}).download_limits == ()
    assert Settings(download_limits={"student": {"rate": "1.5M"}}).download_limits == (
        ("student", Limit(None, 1572864)),)


@pytest.mark.parametrize(("raw", "says"), [
    ('{"students": {}}', "unknown key 'students'"),
    ('{"group:": {}}', "unknown key 'group:'"),
    ('{"student": {"conns": 4}}', "unknown field 'conns'"),
    ('{"student": {"connections": 0}}', "connections must be a whole number"),
    ('{"student": {"connections": "4"}}', "connections must be a whole number"),
    ('{"student": {"connections": true}}', "connections must be a whole number"),
    ('{"student": {"rate": "fast"}}', "rate must be bytes per second"),
    ('{"student": {"rate": "4XB"}}', "rate must be bytes per second"),
    ('{"student": {"rate": -1}}', "rate must be bytes per second"),
    ('{"student": {"rate": "0"}}', "rate must be bytes per second"),
    ('{"student": 4}', "must be an object"),
    ('[1, 2]', "must be a JSON object"),
    ('{not json', "must be a JSON object"),
])
def test_bad_limits_are_refused(raw, says):
    with pytest.raises(ConfigError, match="PORTAL_DOWNLOAD_LIMITS") as caught:
        from_environ({"PORTAL_DOWNLOAD_LIMITS": raw})
    assert says in str(caught.value)


def test_a_bad_value_stops_start_up_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PORTAL_INSTANCE_PATH": str(tmp_path),
           "PORTAL_DOWNLOAD_LIMITS": '{"student": {"rate": "lots"}}'}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("portal: configuration error: "), lines
    assert "PORTAL_DOWNLOAD_LIMITS['student'].rate" in lines[0]


def user(role, *groups, uid=7):
    return SimpleNamespace(id=uid, role=role, group_names=set(groups))


def test_the_most_generous_matching_entry_wins_per_dimension():
    limits = (("student", Limit(4, 4000)), ("group:vip", Limit(2, None)),
              ("group:lab", Limit(8, 1000)), ("anonymous", Limit(1, 100)))
    assert limit_for(user("student"), limits) == Limit(4, 4000)
    assert limit_for(user("student", "vip"), limits) == Limit(4, None)
    assert limit_for(user("student", "vip", "lab"), limits) == Limit(8, None)
    assert limit_for(user("staff"), limits) == UNLIMITED  # no entry: not limited
    assert limit_for(user("staff", "lab"), limits) == Limit(8, 1000)
    assert limit_for(None, limits) == Limit(1, 100)
    settings = Settings(download_limits=limits)
    assert person_of(None, "10.0.0.9", settings).key == "ip:10.0.0.9"
    assert person_of(user("student", uid=3), "10.0.0.9", settings).key == "u:3"


def test_the_bucket_paces_without_spinning():
    import time

    bucket = Bucket(1_000_000)
    start, cpu = time.monotonic(), time.process_time()
    sent = 0
    while sent < 500_000:
        bucket.take(bucket.chunk())
        sent += bucket.chunk()
    elapsed = time.monotonic() - start
    assert elapsed >= 0.3  # 0.5 MB at 1 MB/s, less the first bursts (no upper bound: a shared CPU)
    assert time.process_time() - cpu < 0.2  # it slept, it did not spin
