"""The worker's confirmed view of the database's change log (portal/coherence.py)."""

from __future__ import annotations

import io

import pytest

from portal.extensions import db
from portal.files import add_version
from portal.models import File
from portal.storage import get_storage

pytestmark = pytest.mark.databases  # the change log is read in SQL transactions


def add(app, title: str) -> int:
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(b"x"), filename="a.pdf",
                              title=title, access="login")
        db.session.commit()
        return version.file_id


def test_a_workers_own_commit_does_not_skip_another_nodes_earlier_change(app, make_app):
    """Node B changes file Y; before worker A has confirmed it, A commits a change of its own
    (a later generation). A must still learn of Y's change: its generation may only move past
    what it read from the change log."""
    other = make_app(REDIS_URL="redis://127.0.0.1:1/0", RATELIMIT_STORAGE_URI="memory://")
    y, x = add(app, "Y"), add(app, "X")
    co = app.extensions["portal_coherence"]
    assert co.confirm(force=True)
    floor_before = co._floors.get(f"file:{y}", -1)
    with other.app_context():  # B cannot reach Redis: no pub/sub reaches A
        db.session.get(File, y).access = "user:someone"
        db.session.commit()
    with app.app_context():  # A's own change, within its confirmation interval
        db.session.get(File, x).access = "public"
        db.session.commit()
    assert co._floors[f"file:{y}"] > floor_before
    assert co._floors[f"file:{x}"] > co._floors[f"file:{y}"]


def test_stamps_from_another_timeline_or_before_a_change_are_refused(app):
    y = add(app, "Y")
    co = app.extensions["portal_coherence"]
    assert co.confirm(force=True)
    stamp = co.stamp()
    assert co.valid(f"file:{y}", stamp)
    assert not co.valid(f"file:{y}", stamp + 1)  # newer than anything this database has seen
    assert not co.valid(f"file:{y}", "3")  # not a generation
    with app.app_context():
        db.session.get(File, y).access = "public"
        db.session.commit()
    assert not co.valid(f"file:{y}", stamp)  # read before the change
    assert co.valid(f"file:{y}", co.stamp())
    assert co.valid("user:1", stamp)  # other subjects are not touched
