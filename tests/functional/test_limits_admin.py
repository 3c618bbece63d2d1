"""Download limits as admins see them: the admin page (both languages), the analytics
overview and /metrics, after a real refusal through the Flask view."""

from __future__ import annotations

import pytest
from helpers import add_file


@pytest.fixture
def limited(config):
    config["DOWNLOAD_LIMITS"] = {"student": {"connections": 1, "rate": "64MB"},
                                 "group:vip": {"connections": 3}, "admin": {}}
    config["DOWNLOAD_ADMISSION_CONNECTIONS"] = 50
    return config


def test_refusals_are_counted_and_shown(limited, app, client, make_user, login):
    make_user("stu")
    make_user("boss", role="admin")
    file_id = add_file(app, b"x" * (2 << 20), access="login")
    login("stu")
    url = f"/files/{file_id}/download"
    first = client.get(url, buffered=False)  # its body is not read: the connection is held
    assert first.status_code == 200
    assert client.head(url).status_code == 200  # HEAD sends no body: not counted
    second = client.get(url)
    assert second.status_code == 429 and second.headers["Retry-After"] == "2"
    first.close()  # the body closes: the lease goes
    again = client.get(url)
    assert again.status_code == 200 and len(again.data) == 2 << 20
    again.close()

    login("boss")
    page = client.get("/admin/limits", headers={"Accept-Language": "en"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Group vip" in text and "64.0 MB/s" in text and "unlimited" in text
    assert "over the person's connection limit (429)</th><td>1</td>" in text
    zh = client.get("/admin/limits?lang=zh_CN").get_data(as_text=True)
    assert "下载限制" in zh and "用户组 vip" in zh
    overview = client.get("/admin/analytics/", headers={"Accept-Language": "en"})
    assert "Refused over a person's limit: 1 ·" in overview.get_data(as_text=True)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'portal_download_refused_total{reason="person_limit"} 1.0' in metrics
    assert "portal_download_throttled_total 2.0" in metrics
    assert "portal_download_node_connections 0.0" in metrics


def test_students_do_not_see_the_limits_page(limited, app, client, make_user, login):
    make_user("stu")
    login("stu")
    assert client.get("/admin/limits").status_code == 404


def test_leases_are_renewed_while_held_and_shares_follow(limited, app):
    """Real Redis: a held lease outlives its lease time (renewed), a released one goes at
    once; a person's rate is split by their connections on this worker and elsewhere."""
    import time

    from portal.download import leases as dl
    from portal.download.people import Person
    from portal.settings import Limit, Settings

    settings = Settings(download_limits={"student": {"connections": 3, "rate": 1000}},
                        download_lease_seconds=3)
    slots = dl.Slots(app, app.extensions["portal_redis"])
    person = Person("u:99", Limit(3, 1000))
    key = "portal:download:conn:u:99"
    client = app.extensions["portal_redis"]
    first = slots.acquire(person, settings, large=True)
    assert isinstance(first, dl.Lease) and first.rate == 1000
    # another worker's connection of the same person, straight into Redis
    client.zadd(key, {"elsewhere": time.time() + 30})
    second = slots.acquire(person, settings, large=True)
    assert second.rate == 1000 // 3  # the third connection of three
    assert slots.acquire(person, settings, large=True).status == 429
    slots.renew(None)
    assert slots.buckets["u:99"].rate == 1000 * 2 / 3  # two of the three are here
    time.sleep(3.5)  # past the lease time: only the renewer kept them
    client.zrem(key, "elsewhere")
    slots.renew(None)
    assert client.zcard(key) == 2 and slots.buckets["u:99"].rate == 1000
    first.release()
    second.release()
    assert client.zcard(key) == 0 and "u:99" not in slots.buckets


def test_the_zip_door_applies_the_same_limit(limited, app, client, make_user, login):
    make_user("stu")
    ids = [add_file(app, bytes([n]) * (1 << 20), access="login", filename=f"{n}.bin")
           for n in (1, 2)]
    login("stu")
    held = client.get(f"/files/{ids[0]}/download", buffered=False)
    assert held.status_code == 200
    refused = client.get(f"/files/zip?id={ids[0]}&id={ids[1]}")
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    held.close()
    archive = client.get(f"/files/zip?id={ids[0]}&id={ids[1]}", buffered=False)
    assert archive.status_code == 200
    assert client.get(f"/files/{ids[1]}/download").status_code == 429  # the zip holds it
    archive.close()


def test_leases_handed_to_nginx_end_by_its_log_unless_taken_over(limited, app):
    """Real Redis: nginx's log line ends a handed-over lease; a line of a response whose
    connection has since taken the lease for its next response leaves it alone."""
    from portal.download import leases as dl
    from portal.download.people import Person
    from portal.settings import Limit, Settings

    settings = Settings(download_limits={"student": {"connections": 2}},
                        download_lease_seconds=30)
    client = app.extensions["portal_redis"]
    slots = dl.Slots(app, client)
    person = Person("u:41", Limit(2, None))
    key = "portal:download:conn:u:41"
    first = slots.acquire(person, settings, large=True, lease_id="x:nginx:1:7")
    old_token = first.hand_over(30)
    # the next segment on the same nginx connection: its lease, not one more
    again = slots.acquire(person, settings, large=True, lease_id="x:nginx:1:7")
    assert isinstance(again, dl.Lease) and client.zcard(key) == 1
    token = again.hand_over(31)
    other = slots.acquire(person, settings, large=True, lease_id="x:nginx:1:8")
    assert isinstance(other, dl.Lease)
    other_token = other.hand_over(30)
    assert slots.acquire(person, settings, large=True).status == 429
    assert dl.release_handed(client, [old_token, "not a token", ""]) == 1
    assert client.zcard(key) == 2  # the first response's line: its lease was taken over
    dl.release_handed(client, [token, other_token])
    assert client.zcard(key) == 0 and client.zcard(dl.node_key(slots.node)) == 0


def test_with_redis_down_leases_handed_to_nginx_count_until_they_expire(limited, app):
    """No Redis: a worker counts the downloads it handed to nginx against the person's
    limit and the node's budget until their leases would have expired (they used to stop
    counting at once, and the node's count never went down again)."""
    import socket
    import time

    from portal.cache.connection import make_client
    from portal.download import leases as dl
    from portal.download.people import Person
    from portal.settings import Limit, Settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    slots = dl.Slots(app, make_client(f"redis://127.0.0.1:{port}/0"))
    settings = Settings(download_limits={"student": {"connections": 2}},
                        download_admission_connections=3, download_lease_seconds=3)
    student, guest = Person("u:7", Limit(2, None)), Person("ip:1", Limit())
    for conn in ("x:n:1:1", "x:n:1:2"):
        lease = slots.acquire(student, settings, large=True, lease_id=conn)
        assert isinstance(lease, dl.Lease) and lease.local
        lease.hand_over(3.0)
    assert slots.local_node == 0  # handed over: counted among the handed ones instead
    assert slots.acquire(student, settings, large=True).status == 429
    # the same nginx connection's next request takes its lease's place
    lease = slots.acquire(student, settings, large=True, lease_id="x:n:1:1")
    assert isinstance(lease, dl.Lease)
    lease.hand_over(3.0)
    held = slots.acquire(guest, settings, large=True)  # the node's third connection
    assert isinstance(held, dl.Lease)
    assert slots.acquire(guest, settings, large=True).status == 503
    time.sleep(3.1)  # the handed leases expire
    assert isinstance(slots.acquire(student, settings, large=True), dl.Lease)
    held.release()
    assert slots.local_node == 1
