"""A new version of a published document waits until it is published: through every door
(the view, ``?version=N``, the API, the catalog page, zips, signed links, nginx's grants,
gunicorn's fast and lean paths) readers keep the current version; staff see the pending one
with "publish this version" and "discard"; publishing is audited and reaches another node
within the coherence bound; discarding deletes the version and its stored content unless
another version holds the same bytes."""

from __future__ import annotations

import hashlib
import io
import subprocess
import time
import urllib.parse
import zipfile

import pytest
from servers import Browser, require_tool
from sqlalchemy import select

from portal.audit import action_words
from portal.config import settings
from portal.extensions import db
from portal.models import AuditEntry, DownloadEvent, File, FileVersion
from portal.storage import get_storage
from tests.helpers import form_sign_in, tus_upload, wait_for

# Discarding deletes a row other tables point at (the upload: SET NULL; download events:
# CASCADE), which each dialect enforces its own way.
pytestmark = pytest.mark.databases

V1 = b"syllabus, first edition " * 400
V2 = b"syllabus, second edition, longer " * 500
EN = {"Accept-Language": "en"}


def published_with_pending(app, client, csrf) -> int:
    """A published document (version 1, V1) with a pending version 2 (V2): its id."""
    first = tus_upload(client, csrf, V1, filename="syllabus.pdf", title="Syllabus", access="login")
    assert first.status_code == 201, first.get_data(as_text=True)
    file_id = int(first.headers["Upload-File-Id"])
    second = tus_upload(client, csrf, V2, filename="syllabus-v2.pdf", file_id=str(file_id))
    assert second.status_code == 201, second.get_data(as_text=True)
    assert second.headers["Upload-Version"] == "2"
    assert second.headers["Upload-Version-Pending"] == "1"
    assert second.headers["Upload-File-Draft"] == "0"
    return file_id


def what_readers_get(app, client, file_id: int) -> dict[str, object]:
    """Which content each door gives whoever is signed in on ``client``."""
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    api = client.get(f"/api/files/{file_id}").get_json()
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/files/zip?id={file_id}").get_data()))
    link = client.post(f"/api/files/{file_id}/links", json={},
                       headers={"X-CSRFToken": client.csrf}).get_json()
    by_link = app.test_client().get(urllib.parse.urlsplit(link["url"]).path).get_data()
    page = client.get(f"/files/{file_id}").get_data(as_text=True)
    return {
        "download": digest(client.get(f"/files/{file_id}/download").get_data()),
        "head etag": client.head(f"/files/{file_id}/download").headers["ETag"].strip('"'),
        "api": (api["sha256"], [v["number"] for v in api["versions"]]),
        "zip": digest(archive.read(archive.namelist()[0])),
        "link": (link["version"], digest(by_link)),
        "page": ("syllabus-v2.pdf" in page, "Syllabus" in page),
    }


def readers_get(data: bytes, versions: list[int], *, v2_listed: bool) -> dict[str, object]:
    sha = hashlib.sha256(data).hexdigest()
    return {"download": sha, "head etag": sha, "api": (sha, versions), "zip": sha,
            "link": (versions[-1], sha), "page": (v2_listed, True)}


def test_readers_keep_the_current_version_until_it_is_published(app, client, make_user,
                                                                 login):
    make_user("teacher", role="staff")
    make_user("student1")
    client.csrf = login("teacher")
    file_id = published_with_pending(app, client, client.csrf)
    # staff: the current version by default, the pending one by number and on the admin page
    assert client.get(f"/files/{file_id}/download").get_data() == V1
    assert client.get(f"/files/{file_id}/download?version=2").get_data() == V2
    admin_page = client.get(f"/admin/files/{file_id}", headers=EN).get_data(as_text=True)
    for words in ("Pending", "Publish this version", "Discard", "Readers still download "
                  "version 1", "syllabus-v2.pdf"):
        assert words in admin_page, words
    assert "A new version is pending" in client.get(f"/files/{file_id}",
                                                    headers=EN).get_data(as_text=True)
    assert '<span class="badge draft pending">Pending</span>' in client.get(
        "/admin/files", headers=EN).get_data(as_text=True)
    assert client.post(f"/api/files/{file_id}/links", json={"version": 2},
                       headers={"X-CSRFToken": client.csrf}).status_code == 404

    client.csrf = login("student1")
    assert what_readers_get(app, client, file_id) == readers_get(V1, [1], v2_listed=False)
    assert client.get(f"/files/{file_id}/download?version=2").status_code == 404
    old_link = client.post(f"/api/files/{file_id}/links", json={},
                           headers={"X-CSRFToken": client.csrf}).get_json()["url"]
    assert client.post(f"/admin/files/{file_id}/versions/2/publish",
                       data={"csrf_token": client.csrf}).status_code in (302, 403, 404)

    client.csrf = login("teacher")
    done = client.post(f"/admin/files/{file_id}/versions/2/publish",
                       data={"csrf_token": client.csrf}, headers=EN, follow_redirects=True)
    assert "version 2 of Syllabus is what its readers download now" in done.get_data(
        as_text=True)
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry).where(
            AuditEntry.action == "file.version_published")).one()
        assert entry.actor.username == "teacher"
        assert entry.target == f"{file_id} Syllabus"
        assert entry.detail == "version 2: syllabus-v2.pdf"
        assert db.session.get(File, file_id).current.number == 2
    for language, words in (("en", "Pending version published"), ("zh-CN", "待发布版本已发布")):
        with app.test_request_context(headers={"Accept-Language": language}):
            assert action_words("file.version_published") == words  # the audit page's words
    assert client.post(f"/admin/files/{file_id}/versions/2/publish",
                       data={"csrf_token": client.csrf}).status_code == 404  # published

    client.csrf = login("student1")
    assert what_readers_get(app, client, file_id) == readers_get(V2, [1, 2], v2_listed=True)
    # a link names its version: one minted before keeps its bytes, so no resume mixes two
    assert app.test_client().get(urllib.parse.urlsplit(old_link).path).get_data() == V1


def test_publishing_reaches_another_node_within_the_coherence_bound(app, client, make_user,
                                                                    login, make_app):
    make_user("teacher", role="staff")
    make_user("student1")
    client.csrf = login("teacher")
    file_id = published_with_pending(app, client, client.csrf)
    node = make_app().test_client()
    assert form_sign_in(node, "student1", "password123").status_code == 302
    for _ in range(3):  # its copies and Redis now hold the current version
        assert node.get(f"/files/{file_id}/download").get_data() == V1

    started = time.monotonic()
    assert client.post(f"/admin/files/{file_id}/versions/2/publish",
                       data={"csrf_token": client.csrf}).status_code == 302
    answered = time.monotonic()
    # the answer waits until every node decides by a view confirmed after the commit
    bound = settings(app).coherence_seconds
    assert answered - started >= bound * 0.9
    assert node.get(f"/files/{file_id}/download").get_data() == V2


def test_discard_deletes_the_version_and_its_unshared_content(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("student1")
    client.csrf = login("teacher")
    file_id = published_with_pending(app, client, client.csrf)
    with app.app_context():
        key = db.session.scalar(select(FileVersion.storage_key).where(
            FileVersion.file_id == file_id, FileVersion.number == 2))
        assert get_storage().exists(key)
    # staff try it out: an event of a version about to go, still buffered
    with client.get(f"/files/{file_id}/download?version=2") as tried:  # closed: its event ends
        assert tried.get_data() == V2
    unconfirmed = client.post(f"/admin/files/{file_id}/versions/2/discard",
                              data={"csrf_token": client.csrf}, headers=EN,
                              follow_redirects=True)
    assert "Tick the box to confirm." in unconfirmed.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(File, file_id).pending == (2,)

    client.post(f"/admin/files/{file_id}/versions/2/discard",
                data={"csrf_token": client.csrf, "confirm": "y"})
    with app.app_context():
        file = db.session.get(File, file_id)
        assert [v.number for v in file.versions] == [1] and file.pending == ()
        assert not get_storage().exists(key)
        entry = db.session.scalars(select(AuditEntry).where(
            AuditEntry.action == "file.version_discarded")).one()
        assert entry.detail.startswith("version 2: syllabus-v2.pdf, sha256 ")
    assert client.get(f"/files/{file_id}/download?version=2").status_code == 404
    assert client.post(f"/admin/files/{file_id}/versions/1/discard",  # published: stays
                       data={"csrf_token": client.csrf, "confirm": "y"}).status_code == 404

    # the same bytes as version 1, sent anyway: discarding it keeps version 1's content
    again = tus_upload(client, client.csrf, V1, filename="syllabus.pdf", file_id=str(file_id),
                   duplicate="allow")
    assert again.headers["Upload-Version"] == "2"
    assert again.headers["Upload-Version-Pending"] == "1"
    client.post(f"/admin/files/{file_id}/versions/2/discard",
                data={"csrf_token": client.csrf, "confirm": "y"})
    client.csrf = login("student1")
    with client.get(f"/files/{file_id}/download") as got:
        assert got.get_data() == V1
    # the analytics flush drops the discarded version's event and stores the others
    written = [0]

    def flushed() -> bool:
        written[0] += app.extensions["portal_analytics"].flush()
        return written[0] >= 1

    wait_for(flushed, timeout=30, what="the student's download in SQL", interval=0.2)
    with app.app_context():
        one = db.session.scalar(select(FileVersion.id).where(
            FileVersion.file_id == file_id, FileVersion.number == 1))
        assert set(db.session.scalars(select(DownloadEvent.version_id).where(
            DownloadEvent.file_id == file_id))) == {one}


def test_an_nginx_grant_names_the_current_version(app, client, make_user, login, make_app,
                                                  tmp_path):
    make_user("teacher", role="staff")
    make_user("student1")
    client.csrf = login("teacher")
    file_id = published_with_pending(app, client, client.csrf)
    with app.app_context():
        ids = dict(db.session.execute(select(FileVersion.number, FileVersion.id).where(
            FileVersion.file_id == file_id)).all())
    xaccel = make_app(SENDFILE="x-accel", CACHE_LOCAL_SECONDS=30,
                      ANALYTICS_NGINX_LOG=str(tmp_path / "nginx-events.log")).test_client()
    assert form_sign_in(xaccel, "student1", "password123").status_code == 302

    def granted_version() -> int | None:
        xaccel.get(f"/files/{file_id}/download")  # the view warms the metadata the grant reads
        grant = xaccel.get(f"/_portal/grant/files/{file_id}/download",
                           headers={"X-Original-Method": "GET"})
        if grant.status_code != 200:
            return None
        return int(grant.headers["X-Portal-Grant"].split()[2])

    assert granted_version() == ids[1]
    client.post(f"/admin/files/{file_id}/versions/2/publish", data={"csrf_token": client.csrf})
    assert granted_version() == ids[2]


@pytest.mark.slow
def test_gunicorn_serves_the_current_version_to_curl(portal_instance, portal_server, tmp_path):
    curl = require_tool("curl")
    portal_instance.create_user("teacher", role="staff")
    (tmp_path / "syllabus.pdf").write_bytes(V1)
    out = portal_instance.flask("file", "add", str(tmp_path / "syllabus.pdf"), "--title",
                                "Curl syllabus", "--access", "login", "--owner", "teacher")
    file_id = int(out.strip().splitlines()[-1].split("\t")[0])
    base = portal_server.base_url
    teacher = Browser(base).login("teacher")
    path = teacher.tus_create(len(V2), filename="syllabus-v2.pdf", file_id=str(file_id))
    done = teacher.tus_send(path, 0, V2)
    assert done["Upload-Version-Pending"] == "1"
    alice = Browser(base).login("alice")
    cookie = "; ".join(f"{c.name}={c.value}" for c in alice.jar)
    link = alice.mint_link(file_id)["url"]

    def fetched(*args: str) -> bytes:
        got = subprocess.run([str(curl), "-sf", *args], capture_output=True, timeout=30,
                             check=True)
        return got.stdout

    for _ in range(3):  # warm: the fast path and the lean cycle answer these
        assert fetched("-b", cookie, f"{base}/files/{file_id}/download") == V1
        assert fetched("-b", cookie, "-r", "0-99",
                       f"{base}/files/{file_id}/download") == V1[:100]
    assert fetched(link) == V1
    form = urllib.parse.urlencode({"csrf_token": teacher.csrf}).encode()
    teacher._open(f"/admin/files/{file_id}/versions/2/publish", data=form)
    assert fetched("-b", cookie, f"{base}/files/{file_id}/download") == V2
    assert fetched(alice.mint_link(file_id)["url"]) == V2
