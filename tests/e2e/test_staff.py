"""What staff do in a browser: upload files with visible progress, see them in the catalog."""

import hashlib
import os

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


def test_a_new_version_of_a_published_document_is_confirmed_first(page, tmp_path):
    second = tmp_path / "线性代数讲义-v2.pdf"
    second.write_bytes(b"%PDF-1.4 linear algebra, second edition " * 200)
    sign_in(page, "staff")
    page.goto("/admin/files")
    page.click("text=线性代数 讲义")
    page.wait_for_url("**/admin/files/*")
    page.set_input_files("#file-picker", [str(second)])
    assert "此文档已发布" in page.locator("#upload-hint").inner_text()
    assert page.locator("li.upload").count() == 0
    page.check("#confirm-live")
    page.set_input_files("#file-picker", [str(second)])
    page.wait_for_selector("li.upload.done")
    assert page.locator("li.upload.done .status").inner_text() == "完成"
    assert page.locator("li.upload.done button[type=submit]").count() == 0  # nothing to publish
