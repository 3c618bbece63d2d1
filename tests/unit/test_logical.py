"""Logical downloads as tables of cases: pure functions, no app."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.analytics import clients, logical

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SIZE = 160 * 1024 * 1024
RULES = logical.Rules()


def ev(status=200, served=None, sent=None, at=0.0, seconds=10.0, method="GET", key="u:1",
       size=SIZE, version=1, ended=True):
    served = served if served is not None else [(0, size)]
    start = T0 + timedelta(seconds=at)
    return logical.Event(key=key, file_id=1, version_id=version, size=size, method=method,
                         status=status, served=served,
                         bytes_sent=sum(b - a for a, b in served) if sent is None else sent,
                         started_at=start,
                         ended_at=start + timedelta(seconds=seconds) if ended else None,
                         user_id=1)


def test_sixteen_parallel_ranged_connections_are_one_complete_download():
    part = SIZE // 16
    events = [ev(206, [(i * part, (i + 1) * part)], at=i * 0.01) for i in range(16)]
    [session] = logical.group(events)
    assert session.counted and session.completed
    assert session.covered == SIZE and session.completion == 1.0 and session.events == 16


def test_sixteen_connections_one_cut_short_counts_the_bytes_really_sent():
    part = SIZE // 16
    events = [ev(206, [(i * part, (i + 1) * part)], at=i * 0.01) for i in range(15)]
    events.append(ev(206, [(15 * part, SIZE)], sent=1000, at=1))
    [session] = logical.group(events)
    assert session.covered == 15 * part + 1000 and not session.completed


def test_five_browser_resumes_are_one_download():
    cuts = [0, SIZE // 5, 2 * SIZE // 5, 3 * SIZE // 5, 4 * SIZE // 5, SIZE]
    events = [ev(200, sent=cuts[1], at=0, seconds=60)]
    for n in range(1, 5):  # each resume asks from where the last stopped, 10 minutes later
        events.append(ev(206, [(cuts[n], SIZE)], sent=cuts[n + 1] - cuts[n], at=n * 660,
                         seconds=60))
    [session] = logical.group(events)
    assert session.counted and session.completed and session.covered == SIZE


def test_overlapping_resumes_do_not_count_bytes_twice():
    events = [ev(200, sent=1000, at=0), ev(200, sent=3000, at=60)]  # restarted from 0
    [session] = logical.group(events)
    assert session.covered == 3000


@pytest.mark.parametrize("event", [
    ev(method="HEAD", sent=0),
    ev(status=304, served=[], sent=0),
    ev(status=412, served=[], sent=0),
    ev(status=416, served=[], sent=0),
    ev(206, [(0, 2)], sent=2),  # bytes=0-1
    ev(206, [(0, 1)], sent=1),  # bytes=0-0
    ev(200, sent=0),  # nothing arrived
])
def test_probes_and_empty_responses_never_count(event):
    [session] = logical.group([event])
    assert not session.counted


def test_probe_then_download_is_one_download_counting_all_bytes():
    events = [ev(206, [(0, 1)], sent=1, at=0), ev(206, [(1, SIZE)], at=1)]
    [session] = logical.group(events)
    assert session.counted and session.covered == SIZE and session.completed


def test_idle_longer_than_thirty_minutes_makes_two_downloads():
    events = [ev(200, sent=SIZE // 2, at=0, seconds=60),
              ev(206, [(SIZE // 2, SIZE)], at=60 + 31 * 60, seconds=60)]
    sessions = logical.group(events)
    assert len(sessions) == 2 and all(s.counted for s in sessions)
    assert [s.covered for s in sessions] == [SIZE // 2, SIZE - SIZE // 2]


def test_a_long_transfer_keeps_its_session_open_until_it_ends():
    # a 2-hour download, resumed 10 minutes after it ended: one download
    events = [ev(200, sent=SIZE - 10, at=0, seconds=7200), ev(206, [(SIZE - 10, SIZE)],
                                                              at=7800)]
    assert len(logical.group(events)) == 1


def test_other_people_and_other_versions_are_separate():
    events = [ev(key="u:1"), ev(key="u:2"), ev(key="u:1", version=2)]
    assert len(logical.group(events)) == 3


def test_orphan_counts_with_unknown_bytes():
    [session] = logical.group([ev(200, sent=logical.UNKNOWN, ended=False)])
    assert session.counted and session.covered == 0


def test_nginx_unknown_bytes_count_as_planned():
    [session] = logical.group([ev(206, [(0, 100), (200, 300)], sent=logical.UNKNOWN, size=400)])
    assert session.covered == 200 and session.counted


def test_multipart_cut_short_follows_range_order():
    assert logical.delivered(206, [(0, 10), (100, 110)], 15, 200) == [(0, 10), (100, 105)]


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), max_size=30))
def test_union_is_sorted_disjoint_and_covers_exactly(raw):
    intervals = [(min(a, b), max(a, b)) for a, b in raw]
    merged = logical.union(intervals)
    assert all(a < b for a, b in merged)
    assert all(merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1))
    points = {x for a, b in intervals for x in range(a, b)}
    assert logical.covered(intervals) == len(points)


INTERVALS = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=8).map(
    lambda raw: [(min(a, b), max(a, b)) for a, b in raw])


@given(INTERVALS, INTERVALS)
def test_within_says_exactly_when_adding_changes_nothing(old, new):
    merged = logical.union(old)
    assert logical.within(new, merged) == (logical.union([*merged, *new]) == merged)


@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 10**6)), max_size=10))
def test_format_parse_round_trip(raw):
    ranges = [(a, a + n) for a, n in raw]
    assert logical.parse_ranges(logical.format_ranges(ranges)) == ranges


@pytest.mark.parametrize(("agent", "kind"), [
    ("aria2/1.37.0", clients.MANAGER),
    ("Mozilla/5.0 (Windows NT 10.0) IDM/6.42", clients.MANAGER),
    ("Thunder/11 迅雷", clients.MANAGER),
    ("Motrix/1.8", clients.MANAGER),
    ("FDM 6.2", clients.MANAGER),
    ("Wget/1.21.4", clients.COMMAND_LINE),
    ("curl/8.5.0", clients.COMMAND_LINE),
    ("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", clients.BROWSER),
    ("", clients.OTHER),
])
def test_client_classes(agent, kind):
    assert clients.classify(agent) == kind


@pytest.mark.parametrize(("address", "kept"), [
    ("10.12.34.56", "10.12.34.0/24"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("::ffff:10.1.2.3", "10.1.2.0/24"),
    ("not an address", ""),
])
def test_ip_truncation(address, kept):
    assert clients.truncate_ip(address) == kept
