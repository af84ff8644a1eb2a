"""The audit's report.html opened from disk (file://) in headless Chromium: it loads offline
with no console error, opens with a visible verdict holding result.json's number, and the
verdict's links lead to sections of the page. Fixtures: tests/browser/conftest.py."""

import json

import pytest


@pytest.fixture
def report(audits, page):
    """The standard audit's report.html, loaded; and its result.json."""
    folder = audits / "standard"
    page.goto((folder / "report.html").as_uri())
    return page, json.loads((folder / "result.json").read_text())


def test_harness_catches_errors_and_requests_off_the_machine(page, page_log):
    """The fixtures' own check: a page asking the network for a script and an image, and
    logging an error, is caught (else the offline and no-error checks below mean nothing)."""
    page.set_content('<img src="https://example.com/x.png"><script src="http://10.0.0.1/a.js">'
                     '</script><script>console.error("boom"); null.x;</script>')
    assert set(page_log.blocked) == {"https://example.com/x.png", "http://10.0.0.1/a.js"}
    assert any("boom" in e for e in page_log.errors)
    assert any(e.startswith("uncaught TypeError") for e in page_log.errors)
    page_log.clear()


def test_report_loads_offline_with_a_visible_verdict(report):
    page, result = report
    assert page.title().startswith("scrutiny audit: digits-cnn on digits")
    verdict = page.locator("#section-verdict")
    assert verdict.is_visible()
    # the robust accuracy as result.json has it, printed as the report prints shares
    v = result["verdict"]
    text = verdict.inner_text()
    assert v["robust_accuracy"] == pytest.approx(result["headline"]["robust_accuracy"])
    assert f"Robust accuracy {100 * v['robust_accuracy']:.1f}%" in text
    assert f"({v['robust_samples']}/{v['n_samples']} samples" in text
    low, high = (f"{100 * x:.1f}%" for x in v["interval"])
    assert f"{low} – {high}" in text
    # the verdict opens the report: above every other section, in the first screen
    tops = page.eval_on_selector_all(
        "section", "ss => ss.map(s => [s.id, s.getBoundingClientRect().top])")
    assert tops[0][0] == "section-verdict" and all(t > tops[0][1] for _, t in tops[1:])
    assert tops[0][1] < page.viewport_size["height"]


def test_verdict_links_lead_to_sections_of_the_page(report):
    page, _ = report
    links = page.eval_on_selector_all("#section-verdict a", "as => as.map(a => a.getAttribute('href'))")
    assert "#section-checks" in links  # "the gradient-masking checks raised no flag"
    assert all(h.startswith("#") for h in links), links  # nothing outside the page
    missing = [h for h in links if page.locator(f"[id='{h[1:]}']").count() != 1]
    assert not missing, f"verdict links to anchors the page lacks: {missing}"
    # following one scrolls its section into view
    page.locator("#section-verdict a[href='#section-checks']").first.click()
    assert page.evaluate("location.hash") == "#section-checks"
    top = page.locator("#section-checks").evaluate("s => s.getBoundingClientRect().top")
    assert 0 <= top < page.viewport_size["height"]


def test_sorting_a_report_table_reorders_its_rows(report):
    """A click on a column's heading sorts the rows by it, descending then ascending; each
    row keeps its cells (the attack's name stays beside its number)."""
    page, _ = report
    table = page.locator("#section-robustness table.sortable")
    def rows():
        return table.evaluate("t => Array.from(t.rows).slice(1).map(r => Array.from(r.cells)"
                              ".map(c => c.textContent.trim()))")
    before = rows()
    col = len(before[0]) - 1  # the largest eps
    heading = table.locator("tr").first.locator("th").nth(col)
    heading.click()
    down = rows()
    values = [float(r[col].rstrip("%")) for r in down]
    assert values == sorted(values, reverse=True)
    assert sorted(map(tuple, down)) == sorted(map(tuple, before))  # rows moved whole
    heading.click()
    assert [float(r[col].rstrip("%")) for r in rows()] == sorted(values)


def test_interactive_curve_has_a_trace_per_attack_and_its_legend_toggles_them(report):
    """The robustness curve is drawn by the inlined Plotly: one trace per row of the table,
    and a click on a legend entry hides that trace (Plotly's 'legendonly')."""
    page, result = report
    plot = page.locator("#plot-robustness_curve")
    names = plot.evaluate("p => p.data.map(t => t.name)")
    assert names == list(result["robustness"])
    page.locator("#plot-robustness_curve .legendtoggle").first.click()
    # Plotly acts on a single click once its double-click delay (300 ms) has passed
    page.wait_for_function("document.getElementById('plot-robustness_curve').data[0].visible"
                           " === 'legendonly'", timeout=3000)
    assert plot.evaluate("p => p.data.slice(1).every(t => t.visible !== 'legendonly')")


def test_explorer_changes_the_shown_sample(report, audits):
    """Picking another sample redraws every panel with that sample: the title line, the
    clean image, the difference and the maps all come from the chosen sample's data."""
    page, _ = report
    payload = json.loads((audits / "standard" / "figures.json").read_text())["explorer"]["data"]
    assert page.locator("#section-explorer").is_visible()
    options = page.locator("#explorer-sample option")
    assert options.count() == len(payload["samples"]) == 4

    def shown():
        return {"title": page.locator("#explorer-title").inner_text(),
                "clean": page.locator("#explorer-clean").evaluate("p => p.data[0].z"),
                "diff": page.locator("#explorer-difference").evaluate("p => p.data[0].z")}

    first = shown()
    assert first["clean"] == payload["samples"][0]["clean"]
    page.select_option("#explorer-sample", "2")
    second = shown()
    s2 = payload["samples"][2]
    assert second["title"] != first["title"] and f"#{s2['k']} " in second["title"]
    assert second["clean"] == s2["clean"] and second["diff"] == s2["difference"]
    # the class selector lists the chosen sample's classes, and a class redraws the maps
    labels = page.locator("#explorer-class option").all_inner_texts()
    assert len(labels) == len(s2["classes"])
    page.select_option("#explorer-class", str(len(labels) - 1))
    z = page.locator("#explorer-map-saliency").evaluate("p => p.data[0].z")
    assert z == s2["maps"]["saliency"]["clean"][len(labels) - 1]
