"""In the browser: the admin's count charts tick in whole numbers, and every asset a page loads
comes from a content-hashed URL that may be kept for a year (portal/assets.py)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import urllib.parse

from portal.assets import IMMUTABLE
from tests.helpers import sign_in

HASHED = re.compile(r"/static/.+\.[0-9a-f]{12}\.[a-z]+")

#: [chart id, the values of its count axis' ticks] for each chart id given.
COUNT_TICKS = """(ids) => ids.map((id) => {
  const chart = Chart.getChart(document.getElementById(id));
  const axis = chart.options.indexAxis === "y" ? chart.scales.x : chart.scales.y;
  return [id, axis.ticks.map((tick) => tick.value)];
})"""


def file_id(server, title: str) -> int:
    """The id of the demo document called ``title``."""
    with contextlib.closing(sqlite3.connect(server.instance.db_path)) as conn:
        return conn.execute("SELECT id FROM files WHERE title = ?", (title,)).fetchone()[0]


def wait_for_charts(page, *ids: str) -> None:
    """Until each chart is drawn with its data."""
    for chart in ids:
        page.wait_for_function(
            f"() => window.Chart && Chart.getChart(document.getElementById('{chart}'))"
            f" && Chart.getChart(document.getElementById('{chart}')).data.datasets.length > 0")


def assert_whole_ticks(page, *ids: str) -> None:
    for chart, values in page.evaluate(COUNT_TICKS, list(ids)):
        assert values, chart
        assert all(float(value).is_integer() for value in values), (chart, values)


def test_count_charts_tick_in_whole_numbers(page, demo_server):
    sign_in(page, "admin")
    # a transcript: downloaded a few times by its one owner, where a chart would draw 0.5
    page.goto(f"/admin/analytics/files/{file_id(demo_server, '李四的成绩单')}")
    wait_for_charts(page, "file-series", "completion-chart")
    assert_whole_ticks(page, "file-series", "completion-chart")
    page.select_option("select[name=days]", "7")  # fewer downloads still: redrawn
    page.wait_for_timeout(300)
    wait_for_charts(page, "file-series", "completion-chart")
    assert_whole_ticks(page, "file-series", "completion-chart")
    page.goto("/admin/analytics/time")
    wait_for_charts(page, "series-chart")
    assert_whole_ticks(page, "series-chart")
    page.goto("/admin/analytics/")
    wait_for_charts(page, "top-chart")
    assert_whole_ticks(page, "top-chart")


def test_pages_load_their_assets_from_hashed_urls(page):
    loaded = []
    page.on("response", lambda response: loaded.append(response)
            if urllib.parse.urlsplit(response.url).path.startswith("/static/") else None)
    sign_in(page, "admin")
    page.goto("/admin/analytics/")  # Chart.js, analytics.js, the style sheet
    wait_for_charts(page, "top-chart")
    page.goto("/")  # portal.js
    page.wait_for_load_state("load")
    paths = {urllib.parse.urlsplit(response.url).path for response in loaded}
    for wanted in ("/static/vendor/chartjs/chart.umd.min.", "/static/js/analytics.",
                   "/static/css/portal.", "/static/js/portal."):
        assert any(path.startswith(wanted) for path in paths), (wanted, paths)
    for response in loaded:
        if response.request.redirected_from is not None:
            continue  # /favicon.ico's redirect names the plain icon, on purpose
        path = urllib.parse.urlsplit(response.url).path
        assert HASHED.fullmatch(path), path
        assert response.status == 200, path
        assert response.headers["cache-control"] == IMMUTABLE, path
