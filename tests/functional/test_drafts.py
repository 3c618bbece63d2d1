"""Publishing is deliberate: an upload from the page is a draft that only those who manage
it see, through every door, until someone publishes it; identical content is refused with
the document it repeats; the access picker never falls back to a wider audience."""

import hashlib

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import AuditEntry, File
from portal.uploads import tus
from tests.helpers import tus_upload

pytestmark = pytest.mark.databases  # drafts are filtered out in the catalog's SQL

TUS = {"Tus-Resumable": "1.0.0", "Accept-Language": "en"}
OFFSET_TYPE = "application/offset+octet-stream"

def seen_by_student(client, file_id: int) -> dict[str, bool]:
    """Which doors show the file to whoever is signed in on ``client``."""
    zip_answer = client.get(f"/files/zip?id={file_id}")
    return {
        "catalog": f"/files/{file_id}\"" in client.get("/").get_data(as_text=True),
        "search": f"/files/{file_id}\"" in client.get("/?q=draft").get_data(as_text=True),
        "api list": any(f["id"] == file_id for f in client.get("/api/files").get_json()["files"]),
        "api file": client.get(f"/api/files/{file_id}").status_code == 200,
        "page": client.get(f"/files/{file_id}").status_code == 200,
        "download": client.get(f"/files/{file_id}/download").status_code == 200,
        "zip": zip_answer.status_code == 200,
        "link": client.post(f"/api/files/{file_id}/links", json={},
                            headers={"X-CSRFToken": client.csrf}).status_code == 201,
    }


def test_a_page_upload_is_a_draft_until_published(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("student1")
    client.csrf = login("teacher")
    data = b"draft lecture notes"
    created = tus_upload(client, client.csrf, data, filename="draft-notes.pdf", access="login",
                     draft="1", description="chapter 1")
    assert created.status_code == 201, created.get_data(as_text=True)
    file_id = int(created.headers["Upload-File-Id"])
    assert created.headers["Upload-File-Draft"] == "1"
    assert client.get(f"/files/{file_id}/download").get_data() == data  # the owner sees it
    assert '<span class="badge draft">Draft</span>' in client.get(
        "/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Nobody else does until you publish it" in client.get(
        f"/files/{file_id}", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Draft" in client.get(f"/admin/files/{file_id}",
                                 headers={"Accept-Language": "en"}).get_data(as_text=True)

    client.csrf = login("student1")
    assert seen_by_student(client, file_id) == dict.fromkeys(
        ["catalog", "search", "api list", "api file", "page", "download", "zip", "link"], False)

    client.csrf = login("teacher")
    published = client.post(f"/admin/files/{file_id}/publish",
                            data={"csrf_token": client.csrf})
    assert published.status_code == 302
    with app.app_context():
        assert db.session.get(File, file_id).draft is False
        assert db.session.scalar(select(AuditEntry.detail).where(
            AuditEntry.action == "file.published")) == "login"

    client.csrf = login("student1")
    assert seen_by_student(client, file_id) == dict.fromkeys(
        ["catalog", "search", "api list", "api file", "page", "download", "zip", "link"], True)


def test_a_public_draft_is_not_public(app, client, make_user, login):
    make_user("teacher", role="staff")
    csrf = login("teacher")
    created = tus_upload(client, csrf, b"public soon", filename="soon.txt", access="public",
                     draft="1")
    file_id = int(created.headers["Upload-File-Id"])
    client.post("/logout", data={"csrf_token": csrf})
    assert client.get(f"/files/{file_id}/download").status_code in (302, 404)
    assert client.get(f"/api/files/{file_id}").status_code in (401, 404)


def test_only_those_who_manage_a_draft_may_publish_it(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("other", role="staff")
    csrf = login("teacher")
    file_id = int(tus_upload(client, csrf, b"mine", filename="mine.txt", access="login",
                         draft="1").headers["Upload-File-Id"])
    csrf = login("other")
    assert client.post(f"/admin/files/{file_id}/publish",
                       data={"csrf_token": csrf}).status_code == 404
    with app.app_context():
        assert db.session.get(File, file_id).draft is True


def test_identical_content_names_the_document_and_version(app, client, make_user, login):
    make_user("teacher", role="staff")
    csrf = login("teacher")
    data = b"the same bytes twice"
    first = tus_upload(client, csrf, data, filename="a.pdf", title="Syllabus", access="login")
    file_id = int(first.headers["Upload-File-Id"])
    again = tus_upload(client, csrf, data, filename="a.pdf", title="Syllabus")  # a new version
    assert again.status_code == 409
    body = again.get_json()
    assert body["error"] == "duplicate"
    assert body["duplicate"] == {"file_id": file_id, "version": 1, "title": "Syllabus",
                                 "url": f"/files/{file_id}"}
    assert "identical to version 1 of “Syllabus”" in body["message"]
    other = tus_upload(client, csrf, data, filename="b.pdf", title="Copy")  # another document
    assert other.status_code == 409 and other.get_json()["duplicate"]["file_id"] == file_id
    zh = client.post("/api/uploads/", headers={
        **TUS, "Accept-Language": "zh-CN", "X-CSRFToken": csrf, "Upload-Length": str(len(data)),
        "Upload-Metadata": tus.format_metadata({"filename": "c.pdf", "title": "C"})},
        data=data, content_type=OFFSET_TYPE)
    assert zh.status_code == 409 and "完全相同" in zh.get_json()["message"]
    with app.app_context():
        assert db.session.get(File, file_id).latest.number == 1
        assert db.session.scalar(select(File).where(File.title == "Copy")) is None
    anyway = tus_upload(client, csrf, data, filename="b.pdf", title="Copy", duplicate="allow")
    assert anyway.status_code == 201 and anyway.headers["Upload-File-Draft"] == "0"
    assert hashlib.sha256(data).hexdigest() == client.get(
        f"/api/files/{anyway.headers['Upload-File-Id']}").get_json()["sha256"]


def test_the_file_form_without_the_picker_keeps_the_audience(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("student1", groups=["CS"])
    csrf = login("teacher")
    file_id = int(tus_upload(client, csrf, b"cs only", filename="cs.txt", access="group:CS")
                  .headers["Upload-File-Id"])
    for fields in ({}, {"access_kind": ""}, {"access_kind": "login", "access_group": "CS"},
                   {"access_kind": "public", "access_user": "student1"}):
        resp = client.post(f"/admin/files/{file_id}", data={
            "title": "cs", "csrf_token": csrf, **fields}, headers={"Accept-Language": "en"})
        assert resp.status_code == 400, fields
        with app.app_context():
            assert db.session.get(File, file_id).access == "group:CS", fields
