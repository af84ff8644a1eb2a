"""The audit's pages in a real browser: headless Chromium driven by Playwright.

Chromium is Debian's ``chromium`` package (never a browser Playwright downloads):
``SCRUTINY_CHROMIUM`` names another executable. When none is found and the tests run as
root with ``apt-get``, the package is installed once; otherwise the browser tests are
skipped with a message saying how to install it.

Every test's ``page`` is offline: a request for anything but ``file://`` and
``http://127.0.0.1`` is aborted and fails the test, since the pages must work
self-contained. A console error or an uncaught exception on the page fails the test too,
at teardown, unless the test allows it (``page_log.allow(pattern)`` for expected
messages, or the ``allow_console_errors`` marker).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Where Chromium is looked for after ``SCRUTINY_CHROMIUM``: a path, then names on PATH.
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
#: Flags of the headless browser: no sandbox (root in containers), no GPU, and none of the
#: requests Chromium makes by itself (updates, sync, first-run pages).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: How to get the browser, in every skip message.
HOW = ("install Debian's chromium (`apt-get install chromium`) or set SCRUTINY_CHROMIUM to a "
       "Chromium executable")


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_console_errors: a browser test whose page may "
                                       "log console errors (tests/browser/conftest.py)")


def find_chromium() -> str | None:
    """The Chromium executable: ``SCRUTINY_CHROMIUM``, else the first of :data:`CANDIDATES`
    found; None when there is none."""
    given = os.environ.get("SCRUTINY_CHROMIUM")
    if given:
        path = shutil.which(given)
        if path is None:
            pytest.fail(f"SCRUTINY_CHROMIUM={given!r} is not an executable")
        return path
    for name in CANDIDATES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def _install_chromium() -> str:
    """Install Debian's ``chromium`` with apt-get (root only); why it could not, else ''."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root with apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    for step in ([install], [["apt-get", "update", "-q"], install]):
        try:
            done = [subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                    for cmd in step]
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"apt-get failed: {e}"
        if done[-1].returncode == 0:
            return ""
    return f"apt-get install chromium failed: {done[-1].stderr.strip()[-300:]}"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The Chromium executable, installed once when missing and possible; skips otherwise."""
    path = find_chromium()
    if path is None:
        why = _install_chromium()
        path = None if why else find_chromium()
        if path is None:
            pytest.skip(f"browser tests need Chromium, none found ({why or 'not after apt-get'}): "
                        f"{HOW}")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    """One headless Chromium for the session (Playwright, the system's browser)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser tests need playwright (a dev dependency: "
                                      "pip install -r requirements/dev.lock)")
    pw = sync_api.sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
    except Exception:
        pw.stop()
        raise
    yield browser
    browser.close()
    pw.stop()


def offline(url: str) -> bool:
    """Whether the page may load ``url``: files, this machine's 127.0.0.1 over http, and the
    data the page holds itself (``data:``, ``blob:``, ``about:``)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme in ("file", "data", "blob", "about"):
        return True
    return u.scheme == "http" and u.hostname == "127.0.0.1"


@dataclass
class PageLog:
    """What a test's page logged: console errors and uncaught exceptions (``errors``), and
    the requests blocked as going off this machine (``blocked``)."""

    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    allowed: list[re.Pattern] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Let console errors matching ``pattern`` (a regular expression) pass."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        """The errors no :meth:`allow` pattern matches."""
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def clear(self) -> None:
        self.errors.clear()
        self.blocked.clear()


@pytest.fixture
def page_log() -> PageLog:
    """The log of this test's ``page``."""
    return PageLog()


@pytest.fixture
def page(browser, page_log, request):
    """A fresh page (its own context) that may load only local URLs (:func:`offline`);
    fails the test at teardown on a blocked request or, unless allowed, a console error."""
    context = browser.new_context()
    context.set_default_timeout(10_000)  # generous: a loaded machine is slow, not wrong
    context.set_default_navigation_timeout(30_000)

    def route(r):
        if offline(r.request.url):
            r.continue_()
        else:
            page_log.blocked.append(r.request.url)
            r.abort("blockedbyclient")

    context.route("**/*", route)
    pg = context.new_page()
    pg.on("console", lambda m: m.type == "error" and page_log.errors.append(
        f"console error at {m.location.get('url') or 'the page'}: {m.text}"))
    pg.on("pageerror", lambda e: page_log.errors.append(f"uncaught {e.name}: {e.message}"))
    yield pg
    context.close()
    problems = []
    if page_log.blocked:
        problems.append("requests off this machine (the page must work offline): "
                        + ", ".join(page_log.blocked))
    if request.node.get_closest_marker("allow_console_errors") is None:
        problems += page_log.unexpected()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# -- the audits the pages show ---------------------------------------------------------

@pytest.fixture(scope="session")
def audits(tmp_path_factory) -> Path:
    """Three small audits of the shipped digits models under one folder, built once:

    - ``standard``: digits-cnn with robustness, headline (PGD), checks, explanations, trust,
      the verdict and the sample explorer (its report.html is the page the report tests open);
    - ``robust``: digits-cnn-pgd, the same radii (comparable with ``standard``);
    - ``l2``: digits-cnn under l2 (listed as not comparable by compare and serve).
    """
    from scrutiny.audit import AuditConfig, run_audit, write_report
    from scrutiny.data import load_digits
    from scrutiny.models import pretrained

    data = load_digits(split="test")
    small = {"n_samples": 24, "n_examples": 2, "headline_attack": "pgd",
             "params": {"pgd": {"steps": 10}}, "black_box": None}
    runs = {
        "standard": ("digits-cnn", AuditConfig(
            eps=(0.0, 0.1), explainers=("saliency",), metrics=("deletion",), trust_samples=4,
            explore_samples=4,
            sections=("robustness", "headline", "checks", "explanations", "trust", "verdict",
                      "explorer"),
            **small)),
        "robust": ("digits-cnn-pgd", AuditConfig(
            eps=(0.0, 0.1), sections=("robustness", "headline", "verdict"), **small)),
        "l2": ("digits-cnn", AuditConfig(
            norm="l2", eps=(0.0, 0.5), sections=("robustness", "verdict"), **small)),
    }
    root = tmp_path_factory.mktemp("audits")
    for folder, (name, cfg) in runs.items():
        res = run_audit(pretrained(name, progress=False), data, cfg, progress=False)
        write_report(res, root / folder)
    return root
