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
    page.click("li.upload:nth-child(2) .status a")
    page.wait_for_url("**/files/*")
    assert page.locator("#sha256").inner_text().strip() == hashlib.sha256(
        big.read_bytes()).hexdigest()
