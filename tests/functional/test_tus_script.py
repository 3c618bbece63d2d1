"""The README's "Uploading from a script (tus)" commands, run as written with bash and the
real curl against a real gunicorn: only the first line (address, account, file) is the
test's own. A fresh upload, one resumed after an interrupted send, and the refusals the
README promises (no X-CSRFToken, no session)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import ROOT, Browser, request, require_tool, write_random

pytestmark = pytest.mark.slow

SECTION = "### Uploading from a script (tus)"


def readme_blocks() -> tuple[str, str]:
    """The section's two ``sh`` blocks: sign in and create; send (or resume)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = re.split(r"\n(?=##)", section[len(SECTION):])[0]  # (to the next heading)
    create, send = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    first, _, rest = create.partition("\n")
    assert first.startswith("base=") and "file=" in first
    return rest, send


@pytest.fixture(scope="module")
def uploader(portal_instance):
    # (the README's example files the upload for group CS2023, which must exist)
    portal_instance.flask("user", "create", "teacher", "--password", "teacher-pass-1",
                          "--role", "staff", "--group", "CS2023")
    return "teacher", "teacher-pass-1"


def run_script(script: str, folder: Path, base: str, account: tuple[str, str], name: str,
               ) -> str:
    settings = (f"base={base} user={account[0]} password={account[1]} "
                f"file={shlex.quote(name)}\n")
    require_tool("curl")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", settings + script], cwd=folder,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def uploaded(base: str, account: tuple[str, str], output: str, data: bytes) -> None:
    """The last answer named the new file and version, and downloading that version gives
    the bytes sent (the README's fixed title makes a second upload a new version of the
    first document, pending until published; its uploader may download it by number)."""
    file_id = re.search(r"(?im)^upload-file-id: *(\d+)", output).group(1)
    number = re.search(r"(?im)^upload-version: *(\d+)", output).group(1)
    assert re.search(rf"(?im)^upload-file-url: *\S*/files/{file_id}\b", output)
    browser = Browser(base).login(*account)
    with browser.opener.open(f"{base}/files/{file_id}/download?version={number}",
                             timeout=30) as response:
        assert hashlib.sha256(response.read()).digest() == hashlib.sha256(data).digest()


def test_the_documented_commands_upload_a_file(portal_server, uploader, tmp_path):
    create, send = readme_blocks()
    name = "期末复习提纲.pdf"
    data = write_random(tmp_path / name, 3 * 1024 * 1024 + 17)
    out = run_script(create + send, tmp_path, portal_server.base_url, uploader, name)
    uploaded(portal_server.base_url, uploader, out, data)


def test_the_send_commands_resume_an_interrupted_upload(portal_server, uploader, tmp_path):
    create, send = readme_blocks()
    name = "讲义 第2章.pdf"
    data = write_random(tmp_path / name, 2 * 1024 * 1024 + 5)
    half = len(data) // 2
    (tmp_path / "half").write_bytes(data[:half])
    # The create block, then a send cut off half-way (only the first half arrives), then
    # the README's send block, unchanged, run again.
    interrupted = (
        'curl -sf -b "$jar" -X PATCH -H "X-CSRFToken: $token" -H "Tus-Resumable: 1.0.0" '
        '-H "Upload-Offset: 0" -H "Content-Type: application/offset+octet-stream" '
        '--data-binary @half -o /dev/null "$base$upload"\n')
    out = run_script(create + interrupted + send, tmp_path, portal_server.base_url, uploader,
                     name)
    assert "upload: " in out
    uploaded(portal_server.base_url, uploader, out, data)


def test_without_the_token_or_the_session_the_answers_say_why(portal_server, uploader):
    base = portal_server.base_url
    browser = Browser(base).login(*uploader)
    asked = urllib.request.Request(f"{base}/api/uploads/", method="POST", data=b"", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "3",
        "Upload-Metadata": "filename eC5wZGY=", "Accept-Language": "en"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        browser.opener.open(asked, timeout=30)
    assert refused.value.code == 400
    message = json.loads(refused.value.read())["message"]
    assert "(CSRF) is missing" in message and "X-CSRFToken" in message
    status, _, _ = request(base, "POST", "/api/uploads/",
                           headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
    assert status == 401
