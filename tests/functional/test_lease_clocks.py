"""Download leases across nodes whose clocks disagree (real Redis): every expiry is counted
on Redis's clock, so a node minutes ahead or behind neither expires another node's leases
early nor writes leases of its own that others take for expired."""

from __future__ import annotations

import pytest

from portal.download import leases as dl
from portal.download.people import Person
from portal.settings import Limit, Settings
from tests.helpers import clock_off_by

SKEW = 600.0  # ten minutes, twenty times the lease
SETTINGS = Settings(download_limits={"student": {"connections": 2}}, download_lease_seconds=30)
PERSON = Person("u:skew", Limit(2, None))


def redis_now(client) -> float:
    """Redis's own clock."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


@pytest.fixture
def nodes(app):
    """Two nodes' lease slots on one Redis: ``here`` with a true clock, ``there``."""
    client = app.extensions["portal_redis"]
    return (dl.Slots(app, client, node="node-here"), dl.Slots(app, client, node="node-there"),
            client)


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_node_with_a_wrong_clock_leaves_the_others_leases_alone(nodes, skew):
    """Its admission neither removes a live lease of another node (its clock ahead) nor
    writes one that the others take for expired (its clock behind)."""
    here, there, client = nodes
    first = here.acquire(PERSON, SETTINGS, large=True)
    assert isinstance(first, dl.Lease)
    with clock_off_by(skew):
        second = there.acquire(PERSON, SETTINGS, large=True)
        assert isinstance(second, dl.Lease)
        assert there.node_active() == 1
    assert here.acquire(PERSON, SETTINGS, large=True).status == 429  # both still count
    assert here.node_active() == 1
    key = dl.conn_key(PERSON.key)
    for lease in (first, second):
        left = client.zscore(key, lease.id) - redis_now(client)
        assert 0 < left <= SETTINGS.download_lease_seconds


def test_renewal_on_a_clock_behind_keeps_the_lease(nodes):
    """The renewer of a node whose clock has fallen behind pushes its lease on, not into
    the past where the next admission elsewhere would remove it."""
    here, there, client = nodes
    held = there.acquire(PERSON, SETTINGS, large=True)
    assert isinstance(held, dl.Lease)
    with clock_off_by(-SKEW):
        there.renew(SETTINGS.download_lease_seconds)
    assert isinstance(here.acquire(PERSON, SETTINGS, large=True), dl.Lease)
    assert here.acquire(PERSON, SETTINGS, large=True).status == 429
    assert client.zscore(dl.conn_key(PERSON.key), held.id) is not None


def test_a_lease_handed_to_nginx_on_a_clock_behind_counts_until_its_log_line(nodes):
    """Handed over on a node whose clock is behind, the lease still counts for its seconds
    on Redis's clock, and nginx's log line (its token) still ends it."""
    here, there, client = nodes
    held = there.acquire(PERSON, SETTINGS, large=True, lease_id="x:nginx:1:9")
    with clock_off_by(-SKEW):
        token = held.hand_over(30)
    expiry = float(token.split(" ")[0])
    assert 0 < expiry - redis_now(client) <= 30.001  # millisecond text
    first = here.acquire(PERSON, SETTINGS, large=True)
    assert isinstance(first, dl.Lease)
    assert here.acquire(PERSON, SETTINGS, large=True).status == 429
    assert dl.release_handed(client, [token]) == 1
    assert client.zscore(dl.conn_key(PERSON.key), held.id) is None
    assert isinstance(here.acquire(PERSON, SETTINGS, large=True), dl.Lease)
