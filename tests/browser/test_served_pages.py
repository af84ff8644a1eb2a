"""``scrutiny compare``'s page and ``scrutiny serve``'s pages in headless Chromium: clicking a
column heading sorts the leaderboard, the served index links to reports that load with no
console error, and paths outside the served folder are 404 in the browser too. Fixtures:
tests/browser/conftest.py."""

import re
import threading

import pytest

from scrutiny.audit.serve import make_server
from scrutiny.cli import main


def _column(page, heading: str) -> tuple[list[str], list[float]]:
    """The rows' audit folders (the "audit" column) and their ``data-v`` in column
    ``heading``, in the order the leaderboard shows them."""
    return page.evaluate("""heading => {
        const table = document.querySelector("#leaderboard");
        const heads = Array.from(table.tHead.rows[0].cells).map(c => c.textContent.trim());
        const col = heads.indexOf(heading), audit = heads.indexOf("audit");
        const rows = Array.from(table.tBodies[0].rows);
        return [rows.map(r => r.cells[audit].textContent.trim()),
                rows.map(r => parseFloat(r.cells[col].dataset.v))];
    }""", heading)


def _sort_by(page, heading: str) -> str:
    th = page.locator("#leaderboard th").filter(has_text=re.compile(f"^{heading}$"))
    th.click()
    return th.get_attribute("aria-sort")


def _assert_sorts(page):
    """Clicking "rank" sorts by it descending (the page opens ascending), clicking again
    ascending; clicking "clean" sorts by clean accuracy, each row keeping its numbers."""
    audits, ranks = _column(page, "rank")
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks) == 3  # ranked first
    clean_of = dict(zip(*_column(page, "clean"), strict=True))
    assert _sort_by(page, "rank") == "descending"
    shown, values = _column(page, "rank")
    assert shown == audits[::-1] and values == sorted(ranks, reverse=True)
    assert _sort_by(page, "rank") == "ascending"
    shown, values = _column(page, "rank")
    assert shown == audits and values == ranks
    # a column of shares: each row keeps its own number, the numbers in order
    assert _sort_by(page, "clean") == "descending"
    shown, clean = _column(page, "clean")
    assert clean == sorted(clean, reverse=True) and clean == [clean_of[a] for a in shown]


def test_compare_page_sorts_by_a_clicked_column(audits, tmp_path, page):
    out = tmp_path / "compare.html"
    assert main(["compare", str(audits), "--out", str(out)]) == 0
    page.goto(out.as_uri())
    assert page.locator("#leaderboard tbody tr").count() == 3
    _assert_sorts(page)


@pytest.fixture(scope="module")
def server(audits):
    srv = make_server(audits, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_served_index_sorts_and_leads_to_reports(server, page, page_log):
    assert server.url.startswith("http://127.0.0.1:")
    page.goto(server.url)
    _assert_sorts(page)
    with page.expect_navigation():
        page.locator("a[href='robust/report.html']").click()
    assert page.url == server.url + "robust/report.html"
    assert page.title() == "scrutiny audit: digits-cnn-pgd on digits"
    assert page.locator("#section-verdict").is_visible()


@pytest.mark.parametrize("path", ["../etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
                                  "robust/..%2f..%2fetc%2fpasswd", "robust/%2Fetc%2Fpasswd"])
def test_served_paths_outside_the_folder_are_not_found(server, page, page_log, path):
    page_log.allow(r"^console error at http://127\.0\.0\.1:\d+/[^ ]*: Failed to load resource: "
                   r".* 404")  # the browser's note of the very 404 the test asks for
    response = page.goto(server.url + path)
    assert response.status == 404
    assert "root:" not in page.content()
