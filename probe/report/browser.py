"""Open a report in headless Chromium (Debian's /usr/bin/chromium, driven by playwright): screenshots of
each view, and the console errors and network requests a page made, for tests and `probe view`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWS = ("comparison", "accuracy", "pca", "confusion", "attention")


class BrowserError(RuntimeError):
    """No browser to drive: says what to install."""


def chromium_path() -> str:
    """The system Chromium ($PROBE_CHROMIUM, else chromium on PATH); playwright's own download is not used."""
    path = os.environ.get("PROBE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise BrowserError("no chromium found: install it (Debian: apt-get install chromium) or set PROBE_CHROMIUM")
    return path


@dataclass
class PageLog:
    """What a page did while open: console errors, uncaught exceptions, and requests beyond the page itself."""

    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@contextmanager
def open_page(path: str | Path, width: int = 1400, height: int = 900,
              ready: str = "body[data-ready=true]") -> Iterator[tuple[object, PageLog]]:
    """A playwright page showing the HTML file at ``path`` once ``ready`` matches (a report page: every view
    drawn); any other request is blocked and logged."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserError("the playwright package is missing: pip install playwright") from None
    url = Path(path).resolve().as_uri()
    log = PageLog(url)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: m.type == "error" and log.errors.append(m.text))
            page.on("pageerror", lambda e: log.errors.append(str(e)))
            page.route("**/*", lambda route: _only_the_page(route, log))
            page.goto(url)
            page.wait_for_selector(ready, state="attached", timeout=60_000)
            yield page, log
        finally:
            browser.close()


def _only_the_page(route, log: PageLog) -> None:
    if route.request.url == log.url:
        route.continue_()
    else:
        log.requests.append(route.request.url)
        route.abort()


def screenshot_views(page, folder: str | Path, prefix: str = "") -> list[Path]:
    """One PNG per view on the page (the first run's, plus the comparison), named after the view."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in VIEWS:
        view = page.query_selector(f"[data-view={name}]")
        if view is not None:
            path = folder / f"{prefix}{name}.png"
            view.screenshot(path=str(path))
            written.append(path)
    return written
