"""The static figures are fit for a paper: PNG, and on request SVG (text kept as text) and PDF side by side,
every axis labelled, PCA axes with their explained variance, attention panels named by block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from report_runs import report_run

from probe.report import writers as report


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return json.loads((report_run(tmp_path_factory) / "results.json").read_text())


def svg_text(path) -> str:
    return path.with_suffix(".svg").read_text()


def assert_three_formats(png) -> None:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert "<svg" in svg_text(png)


def test_accuracy_figure_panels_and_axes(results, tmp_path):
    png = report.plot_accuracy(results, tmp_path, report.FIGURE_FORMATS)
    assert_three_formats(png)
    svg = svg_text(png)
    for text in ("all rows", "left rows", "right rows", "layer (hidden state; 0 = embeddings)",
                 "cross-validated accuracy", "shuffled labels (target)", "majority class"):
        assert text in svg, text


class Store:
    """Two layers of vectors: layer 0 one point repeated (no variance), layer 1 spread along two axes."""

    def layer(self, position, layer):
        if layer == 0:
            return np.ones((128, 5), dtype=np.float32)
        rng = np.random.default_rng(0)
        return (rng.normal(size=(128, 5)) * [3, 1, 0.1, 0.1, 0.1]).astype(np.float32)


def test_pca_axes_give_explained_variance(results, tmp_path):
    results = {**results, "layers": [r for r in results["layers"] if r["layer"] < 2]}
    labels = ["a", "b"] * 64
    svg = svg_text(report.plot_pca(results, tmp_path, Store(), labels, formats=["svg"]))
    assert "PC1 (0.0% of variance)" in svg  # layer 0: nothing to explain, and no NaN
    first = float(svg.split("PC1 (")[2].split("%")[0])
    assert 85 < first < 95  # variance 9 of about 10.03
    assert "layer 0 (embeddings)" in svg


def test_attention_panels_are_blocks(tmp_path):
    patterns = {0: np.full((2, 3), 1 / 3), 5: np.eye(2, 3)}
    svg = svg_text(report.plot_attention(["The", "mole", "dug"], 1, patterns, "title", tmp_path, ["svg"]))
    assert "block 0 (reads layer 0, writes layer 1)" in svg and "block 5 (reads layer 5, writes layer 6)" in svg
    assert "token attended to (key)" in svg and ">head<" in svg.replace(" ", "")


def test_png_alone_unless_other_formats_are_asked_for(results, tmp_path):
    png = report.plot_accuracy(results, tmp_path)
    assert png.exists() and not png.with_suffix(".svg").exists() and not png.with_suffix(".pdf").exists()


def test_an_unknown_figure_format_names_the_option():
    from types import SimpleNamespace

    from probe.builtin.reporters import figure_formats
    from probe.pipeline.config import ConfigError

    config = SimpleNamespace(options={"plots": {"formats": ["png", "tiff"]}}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: options.plots.formats: unknown format\(s\) 'tiff'; choose from png"):
        figure_formats(config)
    assert figure_formats(SimpleNamespace(options={"plots": {"formats": "pdf"}}, source=None)) == ("pdf",)


# ---------------------------------------------------------------- confusion, colours, runs compared


def luminance(rgba) -> float:
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_confusion_colour_is_recall_light_to_dark_with_counts_and_a_colour_bar(results):
    fig = report.confusion_figure(report.as_results(results))
    panels = [ax for ax in fig.axes if ax.images]
    row = next(r for r in results["layers"] if r["position"] == "target" and r["subset"] == "all"
               and r["accuracy"] == max(x["accuracy"] for x in results["layers"]
                                        if x["position"] == "target" and x["subset"] == "all"))
    counts = np.array(row["confusion"])
    image = panels[0].images[0]
    assert np.allclose(image.get_array(), counts / counts.sum(axis=1, keepdims=True))  # recall per true row
    assert image.norm.vmin == 0 and image.norm.vmax == 1
    assert luminance(image.cmap(0.0)) > 0.9 > 0.3 > luminance(image.cmap(1.0))  # 0 light, 1 dark
    shown = sorted(int(t.get_text()) for t in panels[0].texts)
    assert shown == sorted(counts.ravel().tolist())  # each cell annotated with its count
    colour_bars = [ax for ax in fig.axes if ax not in panels]
    assert len(colour_bars) == 1 and "recall" in colour_bars[0].get_ylabel()
    assert [ax.get_title().split(" rows")[0] for ax in panels] == ["all", "left", "right"]


def test_recall_matrix_leaves_an_empty_sense_at_zero():
    assert report.recall_matrix([[3, 1], [0, 0]]).tolist() == [[0.75, 0.25], [0.0, 0.0]]


def test_pca_png_colours_each_sense_as_the_page_does(results, tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    from probe.report.legend import sense_colours

    drawn = {}
    monkeypatch.setattr(report, "_save", lambda fig, path, formats=(): drawn.setdefault("fig", fig) and path)
    labels = ["spy", "animal", "unit", "skin"] * 32
    report.plot_pca({**results, "layers": [r for r in results["layers"] if r["layer"] < 2]}, tmp_path, Store(),
                    labels)
    ax = drawn["fig"].axes[0]
    colours = {c.get_label(): to_hex(c.get_facecolor()[0]) for c in ax.collections}
    assert colours == sense_colours(labels)
    assert list(colours.values()) == ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]  # sorted senses → palette order


def other_experiment(results: dict, experiment: str, model: str | None = None) -> dict:
    changed = {**results, "experiment": experiment}
    if model:
        changed["model"] = {**results["model"], "name": model}
    return changed


def drawn_figure(monkeypatch):
    """Where report._save puts the figure instead of writing it."""
    drawn = {}
    monkeypatch.setattr(report, "_save", lambda fig, path, formats=(): drawn.setdefault("fig", fig) and path)
    return drawn


def test_plot_runs_titles_each_panel_by_its_own_run(results, tmp_path, monkeypatch):
    drawn = drawn_figure(monkeypatch)
    model = results["model"]["name"]
    report.plot_runs([results, other_experiment(results, "tower")], tmp_path / "runs.png")
    fig = drawn["fig"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"mole-cues on {model}\n(2 blocks)", f"tower on {model}\n(2 blocks)"]
    assert fig.get_suptitle() == "2 runs compared (mole-cues, tower)"
    assert all(ax.get_legend() is not None for ax in fig.axes)  # each panel's series named in its own legend


def test_plot_runs_tells_apart_two_runs_of_one_experiment_and_model(results, tmp_path, monkeypatch):
    from probe.pipeline.results import Results

    drawn = drawn_figure(monkeypatch)
    first, second = Results.from_dict(results), Results.from_dict(results)
    first._run_dir, second._run_dir = Path("runs/seed0"), Path("runs/seed1")
    report.plot_runs([first, second], tmp_path / "runs.png")
    titles = [ax.get_title().split("\n")[0] for ax in drawn["fig"].axes]
    model = results["model"]["name"]
    assert titles == [f"mole-cues on {model} (seed0)", f"mole-cues on {model} (seed1)"]
    assert drawn["fig"].get_suptitle() == "mole-cues: 2 runs compared"


def test_run_names_number_runs_whose_folders_share_a_name_too():
    from probe.report.legend import run_names

    assert run_names([("a", "m", "run"), ("a", "m", "run"), ("b", "m", "run")]) == [
        "a on m (run 1)", "a on m (run 2)", "b on m"]
    assert run_names([("a", "m", None), ("a", "n", None)]) == ["a on m", "a on n"]
