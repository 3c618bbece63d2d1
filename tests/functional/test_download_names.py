"""The name a real client saves a download under (Content-Disposition, RFC 6266/8187).

curl -OJ reads only the ASCII ``filename=`` (it ignores ``filename*``), so that fallback must
be a meaningful transliteration, not ``_-_02_-_.pdf``; wget --content-disposition reads
``filename*`` and keeps the exact UTF-8 name, as chromium does (tests/e2e/test_student.py,
the file-page download).
"""

from __future__ import annotations

import subprocess

import pytest
from servers import require_tool, sha256_file, write_random

pytestmark = pytest.mark.slow

NAME = "数据结构-第02章-线性表.pdf"
FALLBACK = "ShuJuJieGou-Di02Zhang-XianXingBiao.pdf"


@pytest.fixture(scope="module")
def chapter(portal_instance, tmp_path_factory):
    """A public file whose name is all Chinese but for its digits and dashes."""
    path = tmp_path_factory.mktemp("names") / NAME
    write_random(path, 200_000)
    file_id = portal_instance.add_file(path, title="数据结构 第2章", category="课程资料",
                                       access="public")
    return file_id, sha256_file(path)


def fetch_into(folder, cmd: list[str]) -> list[str]:
    folder.mkdir()
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return sorted(p.name for p in folder.iterdir())


def test_curl_remote_header_name_saves_the_transliterated_fallback(portal_server, chapter,
                                                                    tmp_path):
    file_id, digest = chapter
    url = f"{portal_server.base_url}/files/{file_id}/download"
    saved = fetch_into(tmp_path / "curl", [require_tool("curl"), "-sS", "--fail", "-OJ", url])
    assert saved == [FALLBACK]
    assert sha256_file(tmp_path / "curl" / FALLBACK) == digest


def test_wget_content_disposition_saves_the_utf8_name(portal_server, chapter, tmp_path):
    file_id, digest = chapter
    url = f"{portal_server.base_url}/files/{file_id}/download"
    saved = fetch_into(tmp_path / "wget", [require_tool("wget"), "-q", "--content-disposition",
                                           url])
    assert saved == [NAME]
    assert sha256_file(tmp_path / "wget" / NAME) == digest
