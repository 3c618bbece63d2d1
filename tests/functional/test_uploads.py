"""tus 1.0 resumable uploads under /api/uploads/ (README, "HTTP"), through the real app."""

import errno
import fcntl
import hashlib
import io
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.files import add_version
from portal.models import AuditEntry, File, FileVersion, Upload, User, utcnow
from portal.storage import StorageError, get_storage
from portal.uploads import service, tus, views
from portal.uploads.errors import ErrorKind, UploadError

# Messages are asserted in English; test_refusals_follow_the_request_language checks the rest.
TUS = {"Tus-Resumable": "1.0.0", "Accept-Language": "en"}
OFFSET_TYPE = "application/offset+octet-stream"


class Uploader:
    """A minimal tus client over the Flask test client, signed in with a CSRF token."""

    def __init__(self, client, csrf):
        self.client = client
        self.csrf = csrf

    def headers(self, **extra):
        return {**TUS, "X-CSRFToken": self.csrf, **extra}

    def create(self, size, body=None, headers=None, **meta):
        meta.setdefault("filename", "notes.pdf")
        extra = {"Upload-Length": str(size), "Upload-Metadata": tus.format_metadata(meta)}
        extra.update(headers or {})
        if body is None:
            return self.client.post("/api/uploads/", headers=self.headers(**extra))
        return self.client.post("/api/uploads/", headers=self.headers(**extra), data=body,
                                content_type=OFFSET_TYPE)

    def location(self, size, **meta):
        resp = self.create(size, **meta)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.headers["Location"]

    def patch(self, url, offset, data, content_type=OFFSET_TYPE, **extra):
        return self.client.patch(url, data=data, content_type=content_type,
                                 headers=self.headers(**{"Upload-Offset": str(offset)}, **extra))

    def head(self, url):
        return self.client.head(url, headers=TUS)

    def offset(self, url):
        resp = self.head(url)
        assert resp.status_code == 200
        return int(resp.headers["Upload-Offset"])

    def send(self, data, chunk=1000, **meta):
        """A whole upload in PATCHes of ``chunk`` bytes; the last response."""
        url = self.location(len(data), **meta)
        resp = None
        for start in range(0, len(data), chunk):
            resp = self.patch(url, start, data[start:start + chunk])
            assert resp.status_code == 204, resp.get_data(as_text=True)
        return url, resp


class CutStream(io.BytesIO):
    """A request body (announcing all of ``data``) whose connection drops after ``cut`` bytes."""

    def __init__(self, data, cut):
        super().__init__(data)
        self.cut = cut

    def readinto(self, buffer):
        room = self.cut - self.tell()
        if room <= 0:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        view = memoryview(buffer)[:min(room, 300)]
        return super().readinto(view)

    def read(self, size=-1):
        buffer = bytearray(300 if size is None or size < 0 else min(size, 300))
        return bytes(buffer[:self.readinto(buffer)])


@pytest.fixture
def staff(client, make_user, login):
    make_user("teacher", role="staff")
    return Uploader(client, login("teacher"))


def area(app) -> Path:
    return Path(app.extensions["portal_storage"].tmp) / "uploads"


def stored_objects(app) -> list[Path]:
    root = Path(app.extensions["portal_storage"].objects)
    return [p for p in root.rglob("*") if p.is_file()]


def leftovers(app) -> list[Path]:
    """Temp files of the storage itself (its own put() must not leave any)."""
    tmp = Path(app.extensions["portal_storage"].tmp)
    return [p for p in tmp.glob("*.part")]


def data_file(app, url) -> Path:
    return area(app) / url.rsplit("/", 1)[1]


def payload(size, seed=b"x"):
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + str(counter).encode()).digest()
        counter += 1
    return bytes(out[:size])


def test_options_advertises_the_protocol(client, app):
    resp = client.options("/api/uploads/")
    assert resp.status_code == 204
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert resp.headers["Tus-Version"] == "1.0.0"
    assert set(resp.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "checksum"}
    assert resp.headers["Tus-Max-Size"] == str(app.config["MAX_UPLOAD_BYTES"])
    assert "sha256" in resp.headers["Tus-Checksum-Algorithm"].split(",")


def test_full_upload_in_several_patches(app, client, staff, make_user):
    make_user("cs-student", groups=["CS"])  # (the rule's group must exist)
    data = payload(2500)
    resp = staff.create(len(data), filename="讲义 第1章.pdf", title="第一章讲义", category="课件",
                        access="group:CS", description="第一章")
    assert resp.status_code == 201
    url = resp.headers["Location"]
    assert url.startswith("/api/uploads/") and service.is_upload_id(url.rsplit("/", 1)[1])
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    head = staff.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0" and head.headers["Upload-Length"] == "2500"
    assert head.headers["Cache-Control"] == "no-store"
    assert tus.parse_metadata(head.headers["Upload-Metadata"])["title"] == "第一章讲义".encode()

    for start in (0, 1000):
        resp = staff.patch(url, start, data[start:start + 1000])
        assert resp.status_code == 204
        assert resp.headers["Upload-Offset"] == str(start + 1000)
        assert "Upload-File-Id" not in resp.headers
    assert staff.offset(url) == 2000
    resp = staff.patch(url, 2000, data[2000:])
    assert resp.status_code == 204
    assert resp.headers["Upload-Offset"] == "2500"
    file_id = int(resp.headers["Upload-File-Id"])
    assert resp.headers["Upload-Version"] == "1"
    assert resp.headers["Upload-File-Url"] == f"/files/{file_id}"

    head = staff.head(url)  # a late HEAD still learns where the upload went
    assert head.headers["Upload-Offset"] == "2500"
    assert head.headers["Upload-File-Id"] == str(file_id)
    status = client.get(url, headers=TUS).get_json()
    assert status["complete"] is True and status["file_id"] == file_id
    assert not any(area(app).iterdir())  # the upload area is cleaned

    info = client.get(f"/api/files/{file_id}").get_json()
    assert (info["title"], info["category"], info["access"]) == ("第一章讲义", "课件", "group:CS")
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["filename"] == "讲义 第1章.pdf"
    assert client.get(f"/files/{file_id}/download").data == data
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry).where(
            AuditEntry.action == "file.uploaded")).one()
        assert entry.target == f"file:{file_id}" and entry.actor.username == "teacher"
        version = db.session.scalars(select(FileVersion)).one()
        assert version.uploader.username == "teacher" and version.file.owner.username == "teacher"


def test_resume_after_a_dropped_connection(app, staff):
    data = payload(3000)
    url = staff.location(len(data))
    resp = staff.client.patch(url, input_stream=CutStream(data, 1200), content_length=len(data),
                              content_type=OFFSET_TYPE,
                              headers=staff.headers(**{"Upload-Offset": "0"}))
    assert resp.status_code == 400  # nobody reads it, but it must not be a 500
    assert staff.offset(url) == 1200  # the bytes that arrived are kept
    assert data_file(app, url).stat().st_size == 1200
    assert staff.patch(url, 0, data).status_code == 409  # the client must resume, not restart
    resp = staff.patch(url, 1200, data[1200:])
    assert resp.status_code == 204 and "Upload-File-Id" in resp.headers
    file_id = resp.headers["Upload-File-Id"]
    assert staff.client.get(f"/files/{file_id}/download").data == data


def test_unacknowledged_bytes_are_dropped(app, staff):
    """Bytes on disk past the acknowledged offset (a crash before the commit) never count."""
    data = payload(1000)
    url = staff.location(len(data))
    assert staff.patch(url, 0, data[:400]).status_code == 204
    with open(data_file(app, url), "ab") as fh:
        fh.write(b"garbage never acknowledged")
    assert staff.offset(url) == 400
    resp = staff.patch(url, 400, data[400:])
    assert resp.status_code == 204
    assert staff.client.get(f"/files/{resp.headers['Upload-File-Id']}/download").data == data


def test_checksums(app, staff):
    data = payload(2000)
    url = staff.location(len(data))
    good = tus.format_checksum("sha256", data[:1000])
    assert staff.patch(url, 0, data[:1000], **{"Upload-Checksum": good}).status_code == 204

    bad = tus.format_checksum("sha256", b"something else")
    resp = staff.patch(url, 1000, data[1000:], **{"Upload-Checksum": bad})
    assert resp.status == "460 Checksum Mismatch"
    assert resp.get_json()["error"] == "checksum mismatch"
    assert staff.offset(url) == 1000  # the chunk is discarded
    assert data_file(app, url).stat().st_size == 1000

    resp = staff.patch(url, 1000, data[1000:], **{"Upload-Checksum": "md5 AAAA"})
    assert resp.status_code == 400  # an algorithm the server does not offer

    sha1 = tus.format_checksum("sha1", data[1000:])
    resp = staff.patch(url, 1000, data[1000:], **{"Upload-Checksum": sha1})
    assert resp.status_code == 204
    info = staff.client.get(f"/api/files/{resp.headers['Upload-File-Id']}").get_json()
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


def test_checksum_with_a_cut_body_keeps_nothing(app, staff):
    data = payload(2000)
    url = staff.location(len(data))
    resp = staff.client.patch(url, input_stream=CutStream(data, 900), content_length=len(data),
                              content_type=OFFSET_TYPE, headers=staff.headers(**{
                                  "Upload-Offset": "0",
                                  "Upload-Checksum": tus.format_checksum("sha256", data)}))
    assert resp.status_code == 400
    assert staff.offset(url) == 0  # unverifiable bytes are not acknowledged
    assert data_file(app, url).stat().st_size == 0


def test_identical_content_is_stored_once(app, staff):
    data = payload(1500)
    _, first = staff.send(data, title="A")
    _, second = staff.send(data, title="B", duplicate="allow")
    assert first.headers["Upload-File-Id"] != second.headers["Upload-File-Id"]
    assert len(stored_objects(app)) == 1
    assert stored_objects(app)[0].name == hashlib.sha256(data).hexdigest()


def test_zero_byte_upload_is_refused_in_the_request_language(app, staff):
    resp = staff.create(0, filename="empty.txt")
    assert resp.status_code == 400 and "Location" not in resp.headers
    assert "empty (0 bytes)" in resp.get_json()["message"]
    zh = staff.create(0, filename="empty.txt", headers={"Accept-Language": "zh-CN"})
    assert zh.status_code == 400 and "空文件" in zh.get_json()["message"]
    assert not area(app).exists() or not any(area(app).iterdir())
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(File)) == 0


def test_creation_with_upload(app, staff):
    data = payload(1800)
    resp = staff.create(len(data), body=data[:1000])
    assert resp.status_code == 201
    assert resp.headers["Upload-Offset"] == "1000"
    url = resp.headers["Location"]
    resp = staff.patch(url, 1000, data[1000:])
    assert resp.status_code == 204 and "Upload-File-Id" in resp.headers

    resp = staff.create(5, body=b"hello", filename="hello.txt")
    assert resp.status_code == 201 and resp.headers["Upload-Offset"] == "5"
    assert "Upload-File-Id" in resp.headers

    bad = staff.create(5, body=b"hello", filename="x.txt",
                       headers={"Upload-Checksum": tus.format_checksum("sha256", b"other")})
    assert bad.status_code == 460 and "Location" not in bad.headers
    with app.app_context():  # creation is all or nothing
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 2
    assert not any(area(app).iterdir())


def test_protocol_refusals(app, staff):
    url = staff.location(100)
    resp = staff.client.patch(url, data=b"x", content_type=OFFSET_TYPE,
                              headers={"X-CSRFToken": staff.csrf, "Upload-Offset": "0"})
    assert resp.status_code == 412 and resp.headers["Tus-Version"] == "1.0.0"
    resp = staff.client.head(url, headers={"Tus-Resumable": "0.2.2"})
    assert resp.status_code == 412
    resp = staff.patch(url, 0, b"x" * 10, content_type="application/octet-stream")
    assert resp.status_code == 415 and resp.get_json()["error"]
    assert staff.patch(url, 5, b"x").status_code == 409
    assert staff.patch(url, 5, b"x").headers["Upload-Offset"] == "0"
    assert staff.patch(url, -1, b"x").status_code == 400
    assert staff.client.patch(url, data=b"x", content_type=OFFSET_TYPE,
                              headers=staff.headers()).status_code == 400  # no Upload-Offset
    resp = staff.client.post("/api/uploads/", headers=staff.headers(**{
        "Upload-Defer-Length": "1", "Upload-Metadata": tus.format_metadata({"filename": "a"})}))
    assert resp.status_code == 400 and "Defer" in resp.get_json()["message"]
    resp = staff.client.post("/api/uploads/", headers=staff.headers(**{"Upload-Length": "ten"}))
    assert resp.status_code == 400
    assert staff.offset(url) == 0


def test_too_large(app, client, make_user, login):
    app.config["MAX_UPLOAD_BYTES"] = 1000
    make_user("teacher", role="staff")
    staff = Uploader(client, login("teacher"))
    resp = staff.create(1001)
    assert resp.status_code == 413 and resp.headers["Tus-Max-Size"] == "1000"
    assert resp.get_json()["error"] == "too large"
    url = staff.location(1000)
    assert staff.patch(url, 0, b"x" * 1001).status_code == 413  # more than the upload's length
    assert staff.offset(url) == 0
    assert staff.patch(url, 0, b"x" * 1000).status_code == 204


def test_who_may_upload(app, client, make_user, login):
    make_user("alice")
    make_user("teacher", role="staff")
    make_user("other", role="staff")
    make_user("root", role="admin")

    resp = client.post("/api/uploads/", headers={**TUS, "Upload-Length": "3"})
    assert resp.status_code == 401 and resp.get_json()["error"]
    assert client.head("/api/uploads/" + "0" * 32, headers=TUS).status_code == 401

    student = Uploader(client, login("alice"))
    resp = student.create(3)
    assert resp.status_code == 404 and resp.is_json

    teacher = Uploader(client, login("teacher"))
    url = teacher.location(3)
    for name in ("other", "root"):  # an upload belongs to its creator, even for admins
        someone = Uploader(client, login(name))
        assert someone.head(url).status_code == 404
        assert someone.patch(url, 0, b"abc").status_code == 404
        assert client.delete(url, headers=someone.headers()).status_code == 404
    student = Uploader(client, login("alice"))
    assert student.head(url).status_code == 404

    admin = Uploader(client, login("root"))
    _, resp = admin.send(b"admin bytes")
    assert "Upload-File-Id" in resp.headers
    teacher = Uploader(client, login("teacher"))
    assert teacher.patch(url, 0, b"abc").status_code == 204
    assert client.head("/api/uploads/../../etc", headers=TUS).status_code == 404


def test_csrf_is_required_with_a_session(staff):
    url = staff.location(3)
    resp = staff.client.patch(url, data=b"abc", content_type=OFFSET_TYPE,
                              headers={**TUS, "Upload-Offset": "0"})
    assert resp.status_code == 400
    assert staff.offset(url) == 0


def test_termination(app, staff):
    url = staff.location(1000)
    assert staff.patch(url, 0, b"y" * 400).status_code == 204
    assert data_file(app, url).exists()
    resp = staff.client.delete(url, headers=staff.headers())
    assert resp.status_code == 204
    assert not data_file(app, url).exists()
    assert staff.head(url).status_code == 404
    assert staff.patch(url, 400, b"y").status_code == 404
    assert staff.client.delete(url, headers=staff.headers()).status_code == 404
    assert stored_objects(app) == []


def test_method_override(app, staff):
    url = staff.location(3)
    resp = staff.client.post(url, data=b"abc", content_type=OFFSET_TYPE, headers=staff.headers(**{
        "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}))
    assert resp.status_code == 204 and "Upload-File-Id" in resp.headers
    url = staff.location(3)
    resp = staff.client.post(url, headers=staff.headers(**{"X-HTTP-Method-Override": "DELETE"}))
    assert resp.status_code == 204 and staff.head(url).status_code == 404
    assert staff.client.post(url, headers=staff.headers()).status_code == 405


def test_a_busy_upload_is_locked(app, staff):
    url = staff.location(10)
    with open(data_file(app, url), "r+b") as held:  # another request is writing
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        resp = staff.patch(url, 0, b"0123456789")
        assert resp.status_code == 423
        assert staff.client.delete(url, headers=staff.headers()).status_code == 423
    assert staff.offset(url) == 0
    assert staff.patch(url, 0, b"0123456789").status_code == 204


def owned_file(app, owner, content=b"version one", **kw):
    """A file added outside the upload API, owned by ``owner`` (a username) or nobody."""
    with app.app_context():
        user = db.session.scalar(select(User).where(User.username == owner)) if owner else None
        kw.setdefault("filename", "syllabus.pdf")
        kw.setdefault("title", "Syllabus")
        version = add_version(db.session, get_storage(), io.BytesIO(content), owner=user, **kw)
        db.session.commit()
        return version.file_id


def test_new_version_via_file_id(app, staff, make_user, login):
    file_id = owned_file(app, "teacher", category="CS101", access="group:CS")
    data = b"version two, longer"
    _, resp = staff.send(data, chunk=7, filename="syllabus-v2.pdf", file_id=str(file_id),
                         title="ignored", access="public")
    assert resp.headers["Upload-File-Id"] == str(file_id)
    assert resp.headers["Upload-Version"] == "2"
    with app.app_context():
        file = db.session.get(File, file_id)
        assert (file.title, file.category, file.access) == ("Syllabus", "CS101", "group:CS")
        assert [v.original_filename for v in file.versions] == ["syllabus.pdf",
                                                                 "syllabus-v2.pdf"]
    assert staff.create(3, file_id="999999").status_code == 400
    assert staff.create(3, file_id="1 OR 1=1").status_code == 400
    foreign = owned_file(app, None, title="Admin's timetable")  # staff manage only their own
    resp = staff.create(3, file_id=str(foreign))
    assert resp.status_code == 400 and "version" in resp.get_json()["message"]
    resp = staff.create(3, filename="x.pdf", title="Admin's timetable")  # nor by its title
    assert resp.status_code == 400
    make_user("root", role="admin")
    admin = Uploader(staff.client, login("root"))
    _, resp = admin.send(b"admin's new version", file_id=str(foreign))
    assert resp.headers["Upload-File-Id"] == str(foreign) and resp.headers["Upload-Version"] == "2"


def test_the_target_file_vanishing_ends_the_upload(app, staff):
    file_id = owned_file(app, "teacher", title="Gone soon")
    url = staff.location(3, file_id=str(file_id))
    with app.app_context():
        db.session.get(File, file_id).deleted_at = utcnow()
        db.session.commit()
    assert staff.patch(url, 0, b"two").status_code == 410
    assert staff.head(url).status_code == 404
    assert not data_file(app, url).exists()


def test_filenames_are_cleaned(app, staff):
    evil = "../../evil\u202etxt.exe"
    _, resp = staff.send(b"MZ not really", filename=evil)
    file_id = resp.headers["Upload-File-Id"]
    info = staff.client.get(f"/api/files/{file_id}").get_json()
    assert info["filename"] == "eviltxt.exe"
    assert info["title"] == "eviltxt"
    download = staff.client.get(f"/files/{file_id}/download")
    assert "eviltxt.exe" in download.headers["Content-Disposition"]
    assert "\u202e" not in download.headers["Content-Disposition"]
    assert not (Path(app.instance_path).parent / "evil").exists()

    resp = staff.create(3, filename="a.txt", title="bad\u202etitle")
    assert resp.status_code == 400
    long_name = "x" * 300 + ".pdf"
    _, resp = staff.send(b"abc", filename=long_name, title="long")
    info = staff.client.get(f"/api/files/{resp.headers['Upload-File-Id']}").get_json()
    assert len(info["filename"]) <= 200 and info["filename"].endswith(".pdf")


@pytest.mark.parametrize(("kind", "status", "title"), [
    (ErrorKind.BAD_REQUEST, "400 BAD REQUEST", "bad request"),
    (ErrorKind.NOT_FOUND, "404 NOT FOUND", "not found"),
    (ErrorKind.OFFSET_MISMATCH, "409 CONFLICT", "offset mismatch"),
    (ErrorKind.GONE, "410 GONE", "gone"),
    (ErrorKind.TOO_LARGE, "413 REQUEST ENTITY TOO LARGE", "too large"),
    (ErrorKind.BUSY, "423 LOCKED", "locked"),
    (ErrorKind.CHECKSUM_MISMATCH, "460 Checksum Mismatch", "checksum mismatch"),
    (ErrorKind.WRITE_FAILED, "500 INTERNAL SERVER ERROR", "server error"),
    (ErrorKind.STORAGE_FULL, "507 INSUFFICIENT STORAGE", "insufficient storage"),
])
def test_each_kind_of_service_error_has_one_answer(app, kind, status, title):
    assert set(views.STATUS) == set(ErrorKind)
    with app.test_request_context():
        plain = views.refusal(UploadError(kind, "why"))
        full = views.refusal(UploadError(kind, "why", offset=7, max_size=9))
        gone = views.refusal(UploadError(kind, "why", offset=7, max_size=9), with_offset=False)
    for resp in (plain, full, gone):
        assert resp.status == status
        assert resp.get_json() == {"error": title, "message": "why"}
    assert "Upload-Offset" not in plain.headers and "Tus-Max-Size" not in plain.headers
    assert (full.headers["Upload-Offset"], full.headers["Tus-Max-Size"]) == ("7", "9")
    assert "Upload-Offset" not in gone.headers and gone.headers["Tus-Max-Size"] == "9"


@pytest.mark.parametrize("hidden", ["\u202e", "\u200b", "\u2060", "\ufeff"])
def test_hidden_characters_are_refused_in_text_and_cleaned_from_names(app, staff, hidden):
    # One set for every field: RLO was always refused; the zero-width space, word joiner and
    # BOM hide just as well and are refused the same way.
    for field in ("title", "category"):
        resp = staff.create(3, filename="a.txt", **{field: f"bad{hidden}text"})
        assert resp.status_code == 400
        assert resp.get_json() == {
            "error": "bad request",
            "message": f"the {field} contains control or direction characters"}
    resp = staff.create(3, filename="a.txt", description=f"line one\nline{hidden} two")
    assert resp.status_code == 400
    assert resp.get_json()["message"] == "the description contains control characters"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 0

    _, resp = staff.send(b"abc", filename=f"lec{hidden}ture.pdf")
    info = staff.client.get(f"/api/files/{resp.headers['Upload-File-Id']}").get_json()
    assert info["filename"] == "lecture.pdf"
    assert info["title"] == "lecture"


@pytest.mark.parametrize(("meta", "words"), [
    ({"filename": None}, "filename"),
    ({"access": "everyone"}, "Who may read the file is not set right"),
    ({"access": "group:a b"}, "choose it again from the list"),
    ({"access": "group:NO_SUCH"}, "There is no user group named NO_SUCH"),
    ({"access": "user:nobody"}, "There is no user named nobody"),
    ({"title": "t" * 256}, "The title is longer than 255 characters"),
    ({"filename": "f" * 1025}, "The file name is longer than 1024 characters: rename"),
    ({"category": "c" * 65}, "The category is longer than 64 characters"),
    ({"title": b"\xff\xfe"}, "UTF-8"),
])
def test_metadata_is_validated(app, staff, meta, words):
    meta = {"filename": "a.pdf", **meta}
    if meta["filename"] is None:
        del meta["filename"]
        meta["title"] = "no name"
    resp = staff.client.post("/api/uploads/", headers=staff.headers(**{
        "Upload-Length": "3", "Upload-Metadata": tus.format_metadata(meta)}))
    assert resp.status_code == 400
    assert words in resp.get_json()["message"]
    resp = staff.client.post("/api/uploads/", headers=staff.headers(**{
        "Upload-Length": "3", "Upload-Metadata": "filename ###"}))
    assert resp.status_code == 400 and resp.is_json
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 0


def test_someone_elses_title_is_not_taken_over(app, staff):
    owned_file(app, None, content=b"personal", title="Transcript", access="user:alice")
    resp = staff.create(3, filename="t.pdf", title="Transcript")
    assert resp.status_code == 400 and "title" in resp.get_json()["message"]
    owned_file(app, "teacher", content=b"mine", title="Mine")  # an own title adds a version
    _, resp = staff.send(b"mine, again", filename="t.pdf", title="Mine")
    assert resp.headers["Upload-Version"] == "2"


def test_disk_full_while_writing(app, staff, monkeypatch):
    data = payload(3000)
    url = staff.location(len(data))
    assert staff.patch(url, 0, data[:1000]).status_code == 204

    def full_disk(out, chunk):
        out.write(chunk[: len(chunk) // 2])  # a real full disk takes part of a write first
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(service, "write_chunk", full_disk)
    resp = staff.patch(url, 1000, data[1000:])
    assert resp.status_code == 507
    assert resp.is_json and "full" in resp.get_json()["message"]
    assert resp.headers["Upload-Offset"] == "1000"
    assert staff.offset(url) == 1000
    assert data_file(app, url).stat().st_size == 1000  # nothing past the acknowledged offset
    monkeypatch.undo()
    resp = staff.patch(url, 1000, data[1000:])
    assert resp.status_code == 204
    assert staff.client.get(f"/files/{resp.headers['Upload-File-Id']}/download").data == data


def test_disk_full_when_storing_the_finished_upload(app, staff, monkeypatch):
    data = payload(1500)
    url = staff.location(len(data))
    assert staff.patch(url, 0, data[:1000]).status_code == 204

    def full_storage(stream):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise StorageError("cannot store file: No space left on device") from exc

    monkeypatch.setattr(app.extensions["portal_storage"], "put", full_storage)
    resp = staff.patch(url, 1000, data[1000:])
    assert resp.status_code == 507
    assert staff.offset(url) == 1000
    assert data_file(app, url).stat().st_size == 1000
    assert stored_objects(app) == [] and leftovers(app) == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(File)) == 0
        assert db.session.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "file.uploaded")) == 0

    monkeypatch.undo()
    assert staff.patch(url, 1000, data[1000:]).status_code == 204
    assert len(stored_objects(app)) == 1


def test_disk_full_on_a_creation_with_upload_leaves_nothing(app, staff, monkeypatch):
    def full_storage(stream):
        raise StorageError("full") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(app.extensions["portal_storage"], "put", full_storage)
    resp = staff.create(1, body=b"x", filename="one.txt")
    assert resp.status_code == 507 and "Location" not in resp.headers
    assert not any(area(app).iterdir())
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 0


def test_purge_stale(app, staff):
    old = staff.location(10)
    assert staff.patch(old, 0, b"12345").status_code == 204
    fresh = staff.location(10)
    orphan = area(app) / ("f" * 32)
    orphan.write_bytes(b"left by a crash")
    past = (utcnow() - timedelta(days=3)).timestamp()
    os.utime(orphan, (past, past))
    with app.app_context():
        upload = db.session.get(Upload, old.rsplit("/", 1)[1])
        upload.updated_at = utcnow() - timedelta(days=3)
        db.session.commit()
        removed = service.purge_stale(db.session, area(app), older_than=timedelta(days=2))
    assert removed == 2
    assert staff.head(old).status_code == 404 and not data_file(app, old).exists()
    assert not orphan.exists()
    assert staff.head(fresh).status_code == 200


def test_purge_command(app, staff, runner):
    old = staff.location(10)
    with app.app_context():
        upload = db.session.get(Upload, old.rsplit("/", 1)[1])
        upload.updated_at = utcnow() - timedelta(days=3)
        db.session.commit()
    result = runner.invoke(args=["uploads", "purge", "--older-than-hours", "24"])
    assert result.exit_code == 0 and result.output.strip() == "removed 1 stale upload(s)"
    assert staff.head(old).status_code == 404


@pytest.mark.parametrize("language, words", [
    ("en", "the upload is larger than the limit of 10 bytes"),
    ("zh-CN,zh;q=0.9", "上传超过了 10 字节的上限"),
    (None, "上传超过了 10 字节的上限"),  # (the portal's default language)
])
def test_refusals_follow_the_request_language(app, staff, language, words):
    """A tus refusal is worded in the request's language, its values filled in after the
    translation, and its tus headers unchanged."""
    app.config["MAX_UPLOAD_BYTES"] = 10
    headers = {**staff.headers(), "Upload-Length": "11",
               "Upload-Metadata": tus.format_metadata({"filename": "a.pdf"})}
    del headers["Accept-Language"]  # (the helper asks for English)
    if language is not None:
        headers["Accept-Language"] = language
    resp = staff.client.post("/api/uploads/", headers=headers)
    assert resp.status_code == 413 and resp.headers["Tus-Max-Size"] == "10"
    assert resp.get_json()["message"] == words


def test_a_header_refusal_is_translated_with_its_values(staff):
    resp = staff.client.post("/api/uploads/", headers={
        **staff.headers(), "Accept-Language": "zh-CN", "Upload-Length": "3",
        "Upload-Metadata": "filename ###"})
    assert resp.status_code == 400
    assert resp.get_json()["message"] == "Upload-Metadata 中 'filename' 的值不是有效的 base64"
