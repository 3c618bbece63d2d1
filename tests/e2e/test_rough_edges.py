"""Small things a person trips over, checked in the real browser (issue 18)."""

from __future__ import annotations

import re

from servers import request

from tests.helpers import sign_in


def _box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def test_a_checkbox_sits_on_its_labels_line(page, demo_server):
    page.goto("/login")
    box, text = _box(page, "label.check input"), page.locator("label.check").first
    label = text.bounding_box()
    # one line: the label is no taller than a line and the box is inside it
    assert label["height"] < 2.2 * box["height"] + 8, label
    assert label["y"] <= box["y"] and box["y"] + box["height"] <= label["y"] + label["height"]


def test_sign_out_has_the_font_of_the_other_links(page, demo_server):
    sign_in(page, "student")
    sizes = page.eval_on_selector_all(
        ".topbar nav a, .topbar nav button.link",
        "els => els.map(e => getComputedStyle(e).fontSize)")
    assert len(sizes) >= 2 and len(set(sizes)) == 1, sizes


def test_hidden_means_hidden_even_for_buttons(page, demo_server):
    page.goto("/login")
    shown = page.evaluate("""() => { const b = document.createElement('button');
        b.hidden = true; document.body.appendChild(b);
        return getComputedStyle(b).display; }""")
    assert shown == "none"


def test_the_favicon_is_there(page, demo_server):
    status, headers, _ = request(demo_server.base_url, "GET", "/favicon.ico")
    assert status == 301 and headers["Location"].endswith("/static/favicon.svg")
    assert request(demo_server.base_url, "GET", "/static/favicon.svg")[0] == 200
    page.goto("/login")
    # the page names the icon's content (portal/assets.py), the redirect the plain name
    assert re.search(r"/static/favicon\.[0-9a-f]{12}\.svg$",
                     page.locator("link[rel=icon]").get_attribute("href"))
