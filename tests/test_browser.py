"""report.html in a real browser: headless Chromium (Debian's, driven by playwright; `make test` installs
it). The page must load with no console error and no network request, and moving a control must change
what is drawn. A screenshot of each view is written under the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from report_runs import copy_run, report_run

import probe
from probe.report.browser import open_page, screenshot_views
from probe.report.html import write_report

# Each test opens its own page; one worker runs them, so two Chromiums never compete for the 2 cores.
pytestmark = pytest.mark.xdist_group("browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return copy_run(tmp_path_factory, tmp_path_factory.mktemp("browser") / "run")


def n_rows(run_dir: Path) -> int:
    return json.loads((run_dir / "results.json").read_text())["dataset"]["rows"]


def set_range(page, selector: str, value: int) -> None:
    page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)


def select(page, selector: str, value: str) -> None:
    page.select_option(selector, value)


def points(page, view: str) -> list[str]:
    """The drawn markers' positions in a plotly view (one transform per point)."""
    return page.eval_on_selector_all(f"[data-view={view}] .scatterlayer path.point",
                                     "els => els.map(e => e.getAttribute('transform'))")


def texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")


def styles(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.getAttribute('style') || '')")


def test_page_loads_offline_without_errors_and_writes_screenshots(run_dir):
    with open_page(run_dir / "report.html") as (page, log):
        shots = screenshot_views(page, run_dir / "screenshots")
    assert log.errors == [] and log.requests == []
    assert [p.name for p in shots] == ["accuracy.png", "pca.png", "confusion.png", "attention.png"]
    for path in shots:
        with Image.open(path) as image:
            assert image.size[0] > 600 and image.size[1] > 200, f"{path.name}: {image.size}"
            darkest, lightest = image.convert("L").getextrema()
            assert lightest - darkest > 100, f"{path.name} is blank"


def test_accuracy_plot_has_every_series(run_dir):
    with open_page(run_dir / "report.html") as (page, log):
        legend = texts(page, "[data-view=accuracy] .legendtext")
        panels = texts(page, "[data-view=accuracy] .annotation-text")
    assert {"probe at target token", "probe at last token", "shuffled labels (target)", "majority class"} <= set(legend)
    assert panels == ["all rows", "left rows", "right rows"]
    assert log.errors == []


def test_pca_layer_slider_redraws_points(run_dir):
    with open_page(run_dir / "report.html") as (page, log):
        label = "[data-view=pca] [data-role=layer-label]"
        before, before_label = points(page, "pca"), page.text_content(label)
        set_range(page, "[data-view=pca] [data-role=layer]", 0)
        page.wait_for_function("s => document.querySelector(s).textContent.startsWith('layer 0')", arg=label)
        after = points(page, "pca")
        title = page.text_content("[data-view=pca] .gtitle")
        axis = texts(page, "[data-view=pca] .g-xtitle")
    assert before_label.startswith("layer 2 of 0–2") and "layer 0" in title
    assert len(before) == len(after) == 2 * n_rows(run_dir)  # all rows, then left and right rows beside them
    assert before != after
    assert all(a.startswith("PC1 (") and a.endswith("% of variance)") for a in axis)
    assert log.errors == []


def test_confusion_layer_and_position_switch(run_dir):
    with open_page(run_dir / "report.html") as (page, log):
        title = "[data-view=confusion] .gtitle"
        first = page.text_content(title)
        set_range(page, "[data-view=confusion] [data-role=layer]", 1)
        at_layer_1 = page.text_content(title)
        select(page, "[data-view=confusion] [data-role=position]", "last")
        at_last = page.text_content(title)
        cells = texts(page, "[data-view=confusion] .heatmaplayer text")
    assert "layer 2, target token" in first and "layer 1, target token" in at_layer_1
    assert "layer 1, last token" in at_last
    assert sum(int(c) for c in cells) == 2 * n_rows(run_dir)  # all rows, then left and right rows beside them
    assert log.errors == []


def test_attention_viewer_switches_block_head_sentence_and_query(run_dir):
    with open_page(run_dir / "report.html") as (page, log):
        view = "[data-view=attention]"
        tokens = f"{view} [data-role=tokens] .token"
        shading = styles(page, tokens)
        select(page, f"{view} [data-role=head]", "1")
        by_head = styles(page, tokens)
        set_range(page, f"{view} [data-role=block]", 1)
        by_block = styles(page, tokens)
        block_label = page.text_content(f"{view} [data-role=block-label]")
        masked = page.eval_on_selector_all(f"{tokens}.masked", "els => els.length")
        words = texts(page, tokens)
        sentence_names = texts(page, f"{view} [data-role=sentence] option")
        select(page, f"{view} [data-role=sentence]", "1")
        other_words = texts(page, tokens)
        page.click(f"{tokens} >> nth=0")
        query = page.text_content(f"{view} [data-role=query-label]")
        grid_masked = page.eval_on_selector_all(f"{view} table.grid td.masked", "els => els.length")
    assert shading != by_head != by_block
    assert block_label.startswith("block 1 of 0–1 (reads layer 1, writes layer 2)")
    target = next(i for i, w in enumerate(words) if w.strip() == "mole")
    assert masked == len(words) - target - 1  # every token after "mole" is hidden from it
    assert other_words != words
    assert {name.split("]")[0] for name in sentence_names} >= {"[left · animal", "[right · spy"}
    assert query.startswith("Attention from") and "(token 0)" in query
    n = len(other_words)
    assert grid_masked == n * (n - 1) // 2  # the causal mask: the grid's upper triangle
    assert log.errors == [] and log.requests == []


def test_comparison_page_of_two_runs(run_dir, tmp_path):
    page_path = write_report(run_dir, tmp_path / "both.html", run_dir)
    with open_page(page_path) as (page, log):
        traces = page.eval_on_selector_all("[data-view=comparison] .scatterlayer .trace", "els => els.length")
        viewers = page.eval_on_selector_all(".probe-attention [data-role=tokens]", "els => els.length")
    assert traces == 12 and viewers == 2
    assert log.errors == [] and log.requests == []


def test_probe_attention_page_for_any_sentence(tmp_path_factory, tmp_path):
    """probe.core.attention's page shows the very weights of ``view.patterns`` for the chosen block and head."""
    model = report_run(tmp_path_factory).parent / "model"
    view = probe.attention(str(model), ["The mole dug a tunnel.", "A mole is a unit."], target="mole")
    path = view.save(tmp_path / "attention.html")
    with open_page(path, ready=".probe-attention[data-ready=true]") as (page, log):
        set_range(page, "[data-role=block]", 1)
        select(page, "[data-role=head]", "2")
        titles = page.eval_on_selector_all("[data-role=tokens] .token", "els => els.map(e => e.title)")
        options = texts(page, "[data-role=sentence] option")
    target = view.sentences[0]["target"]
    shown = [float(t.rsplit(": ", 1)[1]) for t in titles[: target + 1]]
    assert shown == pytest.approx(view.patterns[1, 2, target, : target + 1].tolist(), abs=1e-3)
    assert all("masked" in t for t in titles[target + 1 :])
    assert len(options) == 2
    assert log.errors == [] and log.requests == []


def test_two_report_fragments_share_a_notebook_page(run_dir, tmp_path):
    """render_report(..., fragment=True) is what a notebook cell shows: two on one page draw independently."""
    from probe.report.html import render_report

    cells = render_report(run_dir, fragment=True) + render_report(run_dir, fragment=True)
    path = tmp_path / "notebook.html"
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{cells}</body></html>')
    with open_page(path) as (page, log):
        page.wait_for_function("document.querySelectorAll('.probe-report[data-ready=true]').length === 2")
        set_range(page, ".probe-report >> nth=1 >> [data-view=pca] [data-role=layer]", 0)
        labels = texts(page, "[data-view=pca] [data-role=layer-label]")
    assert not cells.lstrip().startswith("<!DOCTYPE")
    assert labels == ["layer 2 of 0–2 (the output of block 1)", "layer 0 of 0–2 (the embeddings)"]
    assert log.errors == [] and log.requests == []


def test_confusion_colour_is_recall_light_to_dark_with_counts_and_a_colour_bar(run_dir):
    with open_page(run_dir / "report.html") as (page, log):
        traces = page.eval_on_selector("[data-view=confusion] .plot",
                                       "e => e.data.map(t => ({z: t.z, text: t.text, scale: t.colorscale, "
                                       "bar: t.showscale, zmin: t.zmin, zmax: t.zmax}))")
        bars = page.eval_on_selector_all("[data-view=confusion] .colorbar", "els => els.length")
        cell_texts = texts(page, "[data-view=confusion] .heatmaplayer text")
    first = traces[0]
    for z_row, counts in zip(first["z"], first["text"]):
        assert sum(z_row) == pytest.approx(1.0 if sum(counts) else 0.0)
        assert z_row == pytest.approx([c / sum(counts) for c in counts] if sum(counts) else [0] * len(counts))
    assert first["scale"][0][1] == "#f7fbff" and first["scale"][-1][1] == "#08306b"  # 0 light, 1 dark
    assert (first["zmin"], first["zmax"]) == (0, 1) and bars == 1 and first["bar"] is True
    assert sorted(map(int, cell_texts)) == sorted(c for t in traces for row in t["text"] for c in row)
    assert log.errors == []


def test_pca_points_take_the_colours_python_gives_each_sense(run_dir):
    from probe.report.legend import sense_colours

    with open_page(run_dir / "report.html") as (page, log):
        colours = page.eval_on_selector("[data-view=pca] .plot",
                                        "e => e.data.map(t => [t.name, t.marker.color])")
    labels = json.loads((run_dir / "results.json").read_text())["dataset"]["labels"]
    assert dict(colours) == sense_colours(labels)
    assert log.errors == []


def test_attention_grid_of_heads_log_scale_and_hidden_sink(run_dir):
    with open_page(run_dir / "report.html") as (page, log):
        view = "[data-view=attention]"
        tokens = f"{view} [data-role=tokens] .token"
        heads = page.eval_on_selector_all(f"{view} [data-role=heads] figure.head canvas", "els => els.length")
        captions = texts(page, f"{view} [data-role=heads] figcaption")
        page.click(f"{view} [data-role=heads] figure.head >> nth=2")
        chosen_head = page.eval_on_selector(f"{view} [data-role=head]", "e => e.value")
        chosen_figure = page.get_attribute(f"{view} [data-role=heads] figure.head.chosen", "data-head")
        linear = styles(page, tokens)
        page.check(f"{view} [data-role=log-scale]")
        logged = styles(page, tokens)
        log_note = page.text_content(f"{view} [data-role=scale-note]")
        page.uncheck(f"{view} [data-role=log-scale]")
        before = page.eval_on_selector_all(tokens, "els => els.map(e => e.title)")
        page.check(f"{view} [data-role=hide-sink]")
        after = page.eval_on_selector_all(tokens, "els => els.map(e => e.title)")
        hidden = page.eval_on_selector_all(f"{tokens}.hidden-sink", "els => els.map(e => +e.dataset.index)")
        sink_note = page.text_content(f"{view} [data-role=scale-note]")
        query = page.eval_on_selector(f"{tokens}.query", "e => +e.dataset.index")
    assert heads == 4 and captions == [f"head {h}" for h in range(4)]  # the tiny model's 4 heads
    assert chosen_head == "2" and chosen_figure == "2"
    assert logged != linear and "log scale" in log_note
    assert hidden == [0] and "1 − (its weight on the first token)" in sink_note
    weight = lambda title: float(title.rsplit(": ", 1)[1])  # noqa: E731
    visible = [weight(t) for t in before[1: query + 1]]
    rest = sum(visible)
    assert [weight(t) for t in after[1: query + 1]] == pytest.approx([w / rest for w in visible], abs=2e-3)
    assert sum(weight(t) for t in after[1: query + 1]) == pytest.approx(1.0, abs=2e-3)
    assert log.errors == []
