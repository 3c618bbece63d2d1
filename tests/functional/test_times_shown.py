"""Every time a page shows is in the portal's zone (PORTAL_ANALYTICS_TIMEZONE, the zone the
analytics count days in), named once, so a download shows on the same day everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from portal.analytics.models import LogicalDownload
from portal.analytics.recorder import recorder
from portal.extensions import db
from portal.models import AuditEntry, File, FileVersion
from portal.timeshown import local_time
from tests.helpers import add_file

pytestmark = pytest.mark.databases  # time stamps stored and read back by each dialect

LATE = datetime(2026, 12, 1, 23, 11, tzinfo=UTC)  # already 12-02 in Shanghai


@pytest.mark.parametrize(("value", "zone", "shown"), [
    (LATE, "Asia/Shanghai", "2026-12-02 07:11"),
    (LATE.replace(tzinfo=None), "Asia/Shanghai", "2026-12-02 07:11"),  # naive: UTC
    (LATE, "Europe/Berlin", "2026-12-02 00:11"),
    (LATE, "UTC", "2026-12-01 23:11"),
    (None, "Asia/Shanghai", ""),
])
def test_local_time(value, zone, shown):
    assert local_time(value, zone) == shown


def _backdate(app, file_id: int) -> None:
    with app.app_context():
        db.session.execute(update(FileVersion).where(FileVersion.file_id == file_id)
                           .values(created_at=LATE))
        db.session.execute(update(File).where(File.id == file_id).values(updated_at=LATE))
        db.session.commit()


@pytest.mark.parametrize(("zone", "day", "time"), [
    ("Asia/Shanghai", "2026-12-02", "2026-12-02 07:11"),
    ("Europe/Berlin", "2026-12-02", "2026-12-02 00:11"),
    ("America/New_York", "2026-12-01", "2026-12-01 18:11"),
])
def test_pages_show_the_portals_zone(make_app, make_user, zone, day, time):
    app = make_app(ANALYTICS_TIMEZONE=zone)
    file_id = add_file(app, b"x" * 100, "public", filename="课表.pdf")
    _backdate(app, file_id)
    client = app.test_client()
    page = client.get(f"/files/{file_id}").get_data(as_text=True)
    assert f"<td>{time}</td>" in page and "UTC" not in page
    assert zone in page  # named once under the table
    assert f"<td>{day}</td>" in client.get("/").get_data(as_text=True)


def test_my_downloads_and_the_audit_log_too(app, client, make_user, login):
    make_user("root", role="admin")
    file_id = add_file(app, b"y" * 100, "public", filename="成绩.pdf")
    login("root")
    client.get(f"/files/{file_id}/download").close()
    recorder(app).flush()
    with app.app_context():
        db.session.execute(update(LogicalDownload).values(started_at=LATE, last_at=LATE))
        db.session.execute(update(AuditEntry).values(at=LATE))
        db.session.commit()
    mine = client.get("/me/downloads").get_data(as_text=True)
    assert "<td>2026-12-02 07:11</td>" in mine and " UTC" not in mine
    assert "Asia/Shanghai" in mine
    audit = client.get("/admin/audit").get_data(as_text=True)
    assert "<td>2026-12-02 07:11:00</td>" in audit
