"""What staff do in a browser: upload files with visible progress, see them in the catalog."""

import hashlib
import os
from urllib.parse import urlsplit

from tests.helpers import screenshot, sign_in


def test_upload_two_files_with_progress(page, demo_server, tmp_path):
    small = tmp_path / "第十二周作业.pdf"
    small.write_bytes(b"%PDF-1.4 homework " * 1000)
    big = tmp_path / "实验录像-第3周.mp4"
    big.write_bytes(os.urandom(24 * 1024 * 1024))  # several 8 MiB tus chunks
    sign_in(page, "staff")
    page.goto("/admin/upload")
    page.fill("input[name=category]", "课程资料")
    page.select_option("select[name=access_kind]", "group")
    page.fill("input[name=access_group]", "CS2023")
    screenshot(page, "admin-upload")
    page.set_input_files("#file-picker", [str(small), str(big)])
    rows = page.locator("li.upload")
    rows.nth(1).locator("progress").wait_for()
    # the progress bar moves before the upload completes
    page.wait_for_function(
        "() => { const p = document.querySelectorAll('li.upload progress')[1];"
        " return p && p.value > 0; }")
    page.wait_for_selector("li.upload.done >> nth=1", timeout=60000)
    assert rows.count() == 2 and page.locator("li.upload.failed").count() == 0
    screenshot(page, "admin-upload-done")
    # the new file is in the catalog for a CS2023 student, with the right bytes
    assert page.locator("li.upload.done .status").first.inner_text() == (
        "已作为草稿上传：只有您和管理员能看到。")
    page.click("li.upload:nth-child(2) .actions a")
    page.wait_for_url("**/files/*")
    assert page.locator("#sha256").inner_text().strip() == hashlib.sha256(
        big.read_bytes()).hexdigest()


def test_an_upload_is_a_draft_until_published(page, browser, demo_server, tmp_path):
    notes = tmp_path / "期中复习-草稿.pdf"
    notes.write_bytes(b"%PDF-1.4 draft notes " * 500)
    sign_in(page, "staff")
    page.goto("/admin/upload")
    # files chosen before the audience do not go up
    page.set_input_files("#file-picker", [str(notes)])
    assert page.locator("#upload-hint").inner_text() == "请先选择谁可以查看这些文件，再选择文件。"
    assert page.locator("li.upload").count() == 0
    page.select_option("select[name=access_kind]", "login")
    page.fill("input[name=title]", "期中复习提纲（草稿测试）")
    page.set_input_files("#file-picker", [str(notes)])
    page.wait_for_selector("li.upload.done")
    screenshot(page, "admin-upload-draft")

    student = browser.new_context(locale="zh-CN", base_url=demo_server.base_url)
    try:
        other = student.new_page()
        sign_in(other, "student")
        other.goto("/?q=期中复习提纲")
        assert "期中复习提纲（草稿测试）" not in other.content()

        page.click("li.upload.done .actions button[type=submit]")  # 发布
        page.wait_for_url("**/admin/files/*")
        assert page.locator("#draft-notice").count() == 0
        screenshot(page, "admin-file-published")

        other.goto("/?q=期中复习提纲")
        assert "期中复习提纲（草稿测试）" in other.content()
    finally:
        student.close()


def test_an_identical_file_is_named_and_can_be_skipped_or_sent(page, tmp_path):
    twice = tmp_path / "重复的讲义.pdf"
    twice.write_bytes(b"%PDF-1.4 the same notes " * 300)
    sign_in(page, "staff")
    page.goto("/admin/upload")
    page.select_option("select[name=access_kind]", "login")
    page.set_input_files("#file-picker", [str(twice)])
    page.wait_for_selector("li.upload.done")
    for choice in ("跳过", "仍然上传"):
        page.set_input_files("#file-picker", [str(twice)])
        row = page.locator("li.upload").last
        row.locator("button", has_text=choice).wait_for()
        assert "此文件与“重复的讲义”的第 1 版完全相同" in row.locator(".status").inner_text()
        assert row.locator("button", has_text="重试").count() == 0
        row.locator("button", has_text=choice).click()
    assert page.locator("li.upload").nth(1).locator(".status").inner_text() == "已跳过"
    page.locator("li.upload").last.locator(".status", has_text="已作为草稿上传").wait_for()
    screenshot(page, "admin-upload-duplicate")


def downloaded_sha256(page) -> str:
    """Press the file page's Download button; the SHA-256 of what the browser saved."""
    with page.expect_download() as info:
        page.click("#download")
    with open(info.value.path(), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_a_new_version_waits_until_staff_publish_it(page, browser, demo_server, tmp_path):
    second = tmp_path / "线性代数讲义-第二版.pdf"
    second.write_bytes(b"%PDF-1.4 linear algebra, second edition " * 200)
    new_sha = hashlib.sha256(second.read_bytes()).hexdigest()
    student = browser.new_context(locale="zh-CN", base_url=demo_server.base_url)
    try:
        reader = student.new_page()
        sign_in(reader, "2024015")  # MATH2024, whose group may read the lecture notes
        reader.goto("/?q=线性代数")
        reader.click("text=线性代数 讲义")
        reader.wait_for_url("**/files/*")
        old_sha = reader.locator("#sha256").inner_text().strip()
        assert downloaded_sha256(reader) == old_sha

        sign_in(page, "staff")
        page.goto(urlsplit(reader.url).path.replace("/files/", "/admin/files/"))
        assert "新版本会先处于待发布状态" in page.locator("#pending-hint").inner_text()
        page.set_input_files("#file-picker", [str(second)])
        page.wait_for_selector("li.upload.done")
        assert page.locator("li.upload.done .status").inner_text() == (
            "已作为待发布版本上传：在您发布之前，读者仍下载当前版本。")
        assert page.locator("li.upload.done .actions button[type=submit]").inner_text() == (
            "发布此版本")
        screenshot(page, "admin-version-pending")

        reader.reload()
        assert reader.locator("#sha256").inner_text().strip() == old_sha
        assert "线性代数讲义-第二版.pdf" not in reader.content()
        assert downloaded_sha256(reader) == old_sha

        page.reload()  # the file's page lists the pending version with its buttons
        assert page.locator("#versions tr.pending").count() == 1
        assert page.locator("#pending-notice").count() == 1
        screenshot(page, "admin-file-pending-version")
        with page.expect_navigation():
            page.click("#versions tr.pending button.primary")  # 发布此版本
        assert "已发布" in page.locator("main").inner_text()
        assert page.locator("#versions tr.pending").count() == 0
        assert page.locator("#pending-notice").count() == 0
        assert "线性代数讲义-第二版.pdf" in page.locator("#versions").inner_text()
        screenshot(page, "admin-version-published")

        reader.reload()
        assert reader.locator("#sha256").inner_text().strip() == new_sha
        assert downloaded_sha256(reader) == new_sha
    finally:
        student.close()
