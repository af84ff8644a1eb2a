"""Screenshots of the audit report for the docs (docs/img/*.png).

Runs two small audits (digits-cnn with digits-cnn-pgd compared, and digits-cnn-pgd alone),
writes their reports and the ``scrutiny compare`` page, and photographs them in headless
Chromium (Debian's ``chromium``, driven by Playwright, as the browser tests do)::

    .venv/bin/python docs/screenshots.py            # about 5 CPU-minutes

The audits use the default configuration on 64 samples (cert 32, trust 16), so the figures
in the pictures are those of a small audit, not of ``make demo``'s 450 samples.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

IMG = Path(__file__).parent / "img"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def audits(root: Path) -> None:
    import torch

    from scrutiny.audit import AuditConfig, run_audit, write_report
    from scrutiny.audit.compare import compare, render_html
    from scrutiny.data import load_digits
    from scrutiny.models import pretrained

    torch.set_num_threads(1)
    data = load_digits(split="test")
    cfg = AuditConfig(n_samples=64, cert_samples=32, trust_samples=16, compare_samples=64)
    for folder, name, robust in (("digits-cnn", "digits-cnn", "digits-cnn-pgd"),
                                 ("digits-cnn-pgd", "digits-cnn-pgd", None)):
        res = run_audit(pretrained(name, progress=False), data, cfg, progress=True,
                        robust_model=pretrained(robust, progress=False) if robust else None)
        write_report(res, root / folder)
    board = compare([root / "digits-cnn", root / "digits-cnn-pgd"], root=root)
    (root / "compare.html").write_text(render_html(board, base=root), encoding="utf-8")


def shoot(root: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    IMG.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
        page.goto((root / "digits-cnn" / "report.html").as_uri())
        page.wait_for_timeout(1000)
        page.screenshot(path=IMG / "report-verdict.png")
        page.evaluate("document.getElementById('toc').style.position = 'static'")
        for name, selector in (("report-robustness", "#section-robustness"),
                               ("report-comparison", "#section-comparison"),
                               ("report-explorer", "#section-explorer"),
                               ("report-influence", "#figure-influence")):
            loc = page.locator(selector)
            loc.scroll_into_view_if_needed()
            if name == "report-explorer":
                page.select_option("#explorer-sample", "1")
                page.wait_for_timeout(500)
            loc.screenshot(path=IMG / f"{name}.png")
        page.goto((root / "compare.html").as_uri())
        page.wait_for_timeout(500)
        page.locator("#leaderboard").screenshot(path=IMG / "compare.png")
        browser.close()


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    if not (root / "compare.html").exists():
        audits(root)
    shoot(root)
    print(f"screenshots in {IMG}; reports in {root}")
