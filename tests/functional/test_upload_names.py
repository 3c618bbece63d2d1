"""Safe names everywhere: a title taken from a path-like file name keeps only the last
name, and the name a download is saved under holds nothing Windows, macOS or Linux refuse,
while Chinese stays as it is."""

from urllib.parse import unquote

import pytest

from portal.uploads import tus

TUS = {"Tus-Resumable": "1.0.0", "Accept-Language": "en"}


def upload(client, csrf, data: bytes, filename: str):
    return client.post("/api/uploads/", headers={
        **TUS, "X-CSRFToken": csrf, "Upload-Length": str(len(data)),
        "Upload-Metadata": tus.format_metadata({"filename": filename, "access": "login"})},
        data=data, content_type="application/offset+octet-stream")


def saved_name(disposition: str) -> str:
    """The name a client that reads filename* (else filename) saves under."""
    if "filename*=UTF-8''" in disposition:
        return unquote(disposition.split("filename*=UTF-8''", 1)[1])
    return disposition.split('filename="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize(("sent", "title", "name"), [
    ("../../etc/passwd", "passwd", "passwd"),
    ("a/b\\c:d*e?f.txt", "c_d_e_f", "c_d_e_f.txt"),
    ("C:\\作业\\第1章<终稿>.pdf", "第1章_终稿_", "第1章_终稿_.pdf"),
    ("CON.txt", "_CON", "_CON.txt"),
    ("讲义 第2章. . ", "讲义 第2章", "讲义 第2章"),
])
def test_names_from_paths_and_unsafe_characters(app, client, make_user, login, sent, title,
                                                name):
    make_user("teacher", role="staff")
    csrf = login("teacher")
    created = upload(client, csrf, f"content of {sent}".encode(), sent)
    assert created.status_code == 201, created.get_data(as_text=True)
    file_id = created.headers["Upload-File-Id"]
    info = client.get(f"/api/files/{file_id}").get_json()
    assert (info["title"], info["filename"]) == (title, name)
    disposition = client.get(f"/files/{file_id}/download").headers["Content-Disposition"]
    assert saved_name(disposition) == name
    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert not set('<>:"/\\|?*') & set(fallback) and fallback == fallback.rstrip(" .")
