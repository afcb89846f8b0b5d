"""Rebuild the README's report screenshots from `make run`'s reports (needs chromium and playwright):

    .venv/bin/python docs/screenshots.py
"""

from pathlib import Path

from probe.report.browser import open_page

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"


def set_range(page, selector: str, value: int) -> None:
    page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)


def attention(report: Path) -> None:
    """SmolLM2, a unit-sense sentence whose cue (chemistry) sits left of "mole": block 4, head 1."""
    with open_page(report) as (page, log):
        view = "[data-view=attention]"
        page.select_option(f"{view} [data-role=sentence]", "1")
        set_range(page, f"{view} [data-role=block]", 4)
        page.select_option(f"{view} [data-role=head]", "1")
        page.query_selector(view).screenshot(path=str(IMAGES / "report-attention.png"))
    assert not log.errors and not log.requests, log


def pca(report: Path) -> None:
    """MiniLM, the target vectors at layer 3 of 6."""
    with open_page(report, width=1100) as (page, log):
        set_range(page, "[data-view=pca] [data-role=layer]", 3)
        page.query_selector("[data-view=pca]").screenshot(path=str(IMAGES / "report-pca.png"))
    assert not log.errors and not log.requests, log


if __name__ == "__main__":
    attention(ROOT / "runs" / "mole-smollm2-135m" / "report.html")
    pca(ROOT / "runs" / "mole-minilm-l6" / "report.html")
    print("wrote", IMAGES / "report-attention.png", IMAGES / "report-pca.png")
