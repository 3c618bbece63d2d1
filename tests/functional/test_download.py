"""The download routes through the test client: HTTP semantics, headers, links, records.

The same routes are exercised through a real gunicorn with curl, wget and aria2c in
test_real_clients.py; the protocol core is unit-tested in tests/unit/download.
"""

import hashlib
import io
import time
from email.parser import BytesParser
from email.policy import HTTP

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.files import add_version
from portal.models import DownloadEvent, File
from portal.storage import get_storage

BODY = bytes(range(256)) * 64  # 16 KiB


def add(app, title="课程表", body=BODY, access="public", filename="2026秋季课程表.pdf"):
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(body), filename=filename,
                              title=title, category="课程表", access=access)
        db.session.commit()
        return version.file_id


def events(app):
    from portal.analytics.recorder import recorder

    recorder(app).flush()  # events are buffered in Redis until the flusher writes them
    with app.app_context():
        return db.session.scalars(select(DownloadEvent).order_by(DownloadEvent.id)).all()


def test_full_download_headers(app, client):
    file_id = add(app)
    resp = client.get(f"/files/{file_id}/download")
    assert resp.status_code == 200 and resp.data == BODY
    h = resp.headers
    assert h["ETag"] == f'"{hashlib.sha256(BODY).hexdigest()}"'
    assert h["Accept-Ranges"] == "bytes" and h["Content-Length"] == str(len(BODY))
    assert h["Content-Type"] == "application/pdf"
    assert "filename*=UTF-8''2026%E7%A7%8B%E5%AD%A3%E8%AF%BE%E7%A8%8B%E8%A1%A8.pdf" in \
        h["Content-Disposition"] and h["Content-Disposition"].startswith("attachment;")
    assert h["Repr-Digest"].startswith("sha-256=:")
    assert h["Cache-Control"].startswith("public") and h["X-Content-Type-Options"] == "nosniff"
    assert "Last-Modified" in h


def test_private_files_are_cache_control_private(app, client, make_user, login):
    file_id = add(app, access="login")
    make_user("alice")
    login("alice")
    assert client.get(f"/files/{file_id}/download").headers["Cache-Control"].startswith("private")


def test_single_range_and_same_disposition(app, client):
    file_id = add(app)
    full = client.get(f"/files/{file_id}/download")
    part = client.get(f"/files/{file_id}/download", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == BODY[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(BODY)}"
    assert part.headers["Content-Length"] == "100"
    assert part.headers["Content-Disposition"] == full.headers["Content-Disposition"]
    assert "Repr-Digest" not in part.headers
    suffix = client.get(f"/files/{file_id}/download", headers={"Range": "bytes=-10"})
    assert suffix.data == BODY[-10:]


def test_multi_range_is_multipart(app, client):
    file_id = add(app)
    resp = client.get(f"/files/{file_id}/download", headers={"Range": "bytes=0-9,1000-1009"})
    assert resp.status_code == 206
    assert int(resp.headers["Content-Length"]) == len(resp.data)
    ctype = resp.headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + resp.data)
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.iter_parts()]
    assert parts == [(f"bytes 0-9/{len(BODY)}", BODY[0:10]),
                     (f"bytes 1000-1009/{len(BODY)}", BODY[1000:1010])]


def test_conditionals(app, client):
    file_id = add(app)
    url = f"/files/{file_id}/download"
    etag = client.head(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-Match": '"other"'}).status_code == 412
    stale = client.get(url, headers={"If-Range": '"other"', "Range": "bytes=0-9"})
    assert stale.status_code == 200 and stale.data == BODY
    fresh = client.get(url, headers={"If-Range": etag, "Range": "bytes=0-9"})
    assert fresh.status_code == 206 and fresh.data == BODY[:10]
    bad = client.get(url, headers={"Range": f"bytes={len(BODY)}-"})
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(BODY)}"
    junk = client.get(url, headers={"Range": "pages=1-2"})
    assert junk.status_code == 200 and junk.data == BODY


def test_head_mirrors_get(app, client):
    file_id = add(app)
    head = client.head(f"/files/{file_id}/download", headers={"Range": "bytes=0-9"})
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(BODY))


def test_versions(app, client):
    first = add(app, body=b"version one")
    second = add(app, body=b"version two, longer")
    assert first == second
    assert client.get(f"/files/{first}/download").data == b"version two, longer"
    assert client.get(f"/files/{first}/download?version=1").data == b"version one"
    assert client.get(f"/files/{first}/download?version=9").status_code == 404
    assert client.get(f"/files/{first}/download?version=x").status_code == 404


def test_empty_file(app, client):
    file_id = add(app, body=b"", filename="empty.txt")
    resp = client.get(f"/files/{file_id}/download")
    assert resp.status_code == 200 and resp.data == b"" and resp.headers["Content-Length"] == "0"
    assert client.get(f"/files/{file_id}/download",
                      headers={"Range": "bytes=0-0"}).status_code == 416


@pytest.mark.parametrize("filename,mime", [("page.html", "text/html"),
                                           ("logo.svg", "image/svg+xml")])
def test_active_content_is_sandboxed(app, client, filename, mime):
    file_id = add(app, body=b"<script>alert(1)</script>", filename=filename)
    resp = client.get(f"/files/{file_id}/download")
    assert resp.headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_nasty_filenames_are_cleaned(app, client):
    file_id = add(app, filename="..\\..\\evil\u202egnp.exe\r\n")
    cd = client.get(f"/files/{file_id}/download").headers["Content-Disposition"]
    assert "\u202e" not in cd and "\\" not in cd and "\r" not in cd and ".." not in cd


def test_events_are_recorded_with_bytes(app, client):
    file_id = add(app)
    client.get(f"/files/{file_id}/download").close()
    client.get(f"/files/{file_id}/download", headers={"Range": "bytes=0-99"}).close()
    client.head(f"/files/{file_id}/download").close()
    rows = [(e.status, e.bytes_sent, e.range_header) for e in events(app)]
    assert rows == [(200, len(BODY), ""), (206, 100, "bytes=0-99")]  # HEAD records nothing


def mint(client, csrf, file_id, **payload):
    resp = client.post(f"/api/files/{file_id}/links", json=payload,
                       headers={"X-CSRFToken": csrf})
    assert resp.status_code == 201, resp.data
    return resp.json


def test_signed_link_lifecycle(app, client, make_user, login):
    file_id = add(app, access="login")
    make_user("alice")
    csrf = login("alice")
    link = mint(client, csrf, file_id)
    assert link["url"].endswith("/2026%E7%A7%8B%E5%AD%A3%E8%AF%BE%E7%A8%8B%E8%A1%A8.pdf")
    assert link["expires_at"].endswith("Z") and link["size"] == len(BODY)
    anon = app.test_client()
    with anon.get(link["url"]) as resp:  # closing the body records the event
        assert resp.data == BODY
    part = anon.get(link["url"], headers={"Range": "bytes=5-9"})
    assert part.status_code == 206 and part.data == BODY[5:10]
    # bound to the version current when minted: a new version does not leak into a resume
    add(app, access="login", body=b"a brand new version")
    assert anon.get(link["url"]).data == BODY
    assert client.get(f"/files/{file_id}/download").data == b"a brand new version"
    rows = events(app)
    assert any(e.via_link for e in rows)
    # tampering
    tampered = link["url"].replace("/d/", "/d/x")
    resp = anon.get(tampered)
    assert resp.status_code == 403 and "下载链接" in resp.get_data(as_text=True)
    # revocation through the Redis deny-list
    resp = client.post("/api/links/revoke", json={"url": link["url"]},
                       headers={"X-CSRFToken": csrf})
    assert resp.status_code == 200 and resp.json == {"revoked": True}
    assert anon.get(link["url"]).status_code == 403


def test_expired_link(app, client, make_user, login):
    file_id = add(app, access="login")
    make_user("alice")
    csrf = login("alice")
    app.config["LINK_TTL_SECONDS"] = 1
    url = mint(client, csrf, file_id)["url"]
    time.sleep(2.1)
    resp = app.test_client().get(url)
    assert resp.status_code == 403 and "过期" in resp.get_data(as_text=True)


def test_someone_elses_link_cannot_be_revoked(app, client, make_user, login):
    file_id = add(app, access="login")
    make_user("alice")
    make_user("bob")
    url = mint(client, login("alice"), file_id)["url"]
    csrf = login("bob")
    assert client.post("/api/links/revoke", json={"url": url},
                       headers={"X-CSRFToken": csrf}).status_code == 404
    assert app.test_client().get(url).status_code == 200


def test_deleted_file_is_404(app, client, make_user, login):
    file_id = add(app, access="login")
    make_user("alice")
    login("alice")
    with app.app_context():
        from portal.models import utcnow

        db.session.get(File, file_id).deleted_at = utcnow()
        db.session.commit()
    assert client.get(f"/files/{file_id}/download").status_code == 404
