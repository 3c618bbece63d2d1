"""Small things a real browser must get right: the zip button waits for a ticked file (and
without scripts the server explains instead of a bare 400)."""

from __future__ import annotations

from tests.helpers import sign_in


def test_zip_button_is_disabled_until_a_file_is_ticked(page):
    sign_in(page, "student")
    page.goto("/")
    button = page.locator("#zip-selected")
    assert button.is_disabled()
    boxes = page.locator("input[name=id]")
    boxes.nth(0).check()
    assert button.is_enabled()
    boxes.nth(0).uncheck()
    assert button.is_disabled()


def test_without_scripts_an_empty_zip_says_what_to_do(browser, demo_server):
    context = browser.new_context(locale="en-US", java_script_enabled=False,
                                  base_url=demo_server.base_url)
    try:
        page = context.new_page()
        sign_in(page, "student")
        page.goto("/?sort=popular")
        assert page.locator("#zip-selected").is_enabled()  # (nothing keeps it disabled)
        page.click("#zip-selected")
        page.wait_for_url("**/?sort=popular")
        alert = page.locator("p.flash[role=alert]")
        assert "Tick the files you want first" in alert.inner_text()
    finally:
        context.close()
