"""The static figures are fit for a paper: PNG, and on request SVG (text kept as text) and PDF side by side,
every axis labelled, PCA axes with their explained variance, attention panels named by block."""

from __future__ import annotations

import json

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
