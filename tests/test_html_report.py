"""report.html and report_data.json without a browser: what the html reporter writes, the figures' content,
`probe report` / `probe view`, and bad run folders. (test_browser.py drives the page itself.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from report_runs import copy_run, report_run

from probe.cli import cli
from probe.report.extras import example_rows, pca2
from probe.report.figures import accuracy_figure, comparison_figure
from probe.report.html import ReportError, load_run, render_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return report_run(tmp_path_factory)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"PROBE_PLUGINS": ""})


def plotly_copies(page: str) -> int:
    from plotly.offline import get_plotlyjs

    return page.count(get_plotlyjs()[:200])


# ---------------------------------------------------------------- what the reporter writes


def test_reporter_writes_a_self_contained_page(run_dir):
    page = (run_dir / "report.html").read_text()
    assert plotly_copies(page) == 1
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script loaded from elsewhere"
    assert not re.search(r"<link\b", page), "a stylesheet loaded from elsewhere"
    for view in ("accuracy", "pca", "confusion", "attention"):
        assert f'data-view="{view}"' in page
    assert "mole-cues on " in page


def test_report_data_pca_per_position_and_layer(run_dir):
    data = json.loads((run_dir / "report_data.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    n_rows = results["dataset"]["rows"]
    assert set(data["pca"]) == {"target", "last"}
    assert sorted(data["pca"]["target"], key=int) == ["0", "1", "2"]
    for layer in data["pca"]["target"].values():
        assert len(layer["x"]) == len(layer["y"]) == n_rows
        first, second = layer["explained"]
        assert 0 < second <= first < 1
    assert set(data["rows"]["subset"]) == {"left", "right"} and data["split_by"] == "cue"
    assert len(data["rows"]["text"]) == n_rows


def test_report_data_attention_is_causal_and_normalised(run_dir):
    data = json.loads((run_dir / "report_data.json").read_text())
    sentences = data["attention"]
    assert 2 <= len(sentences) <= 8
    assert {(s["subset"], s["label"]) for s in sentences} >= {("left", "animal"), ("right", "spy")}
    assert all(s["subset"] == data["rows"]["subset"][s["row"]] for s in sentences)
    for s in sentences:
        patterns = np.array(s["patterns"])  # (block, head, q, k) per mille
        n = len(s["tokens"])
        assert patterns.shape == (2, 4, n, n)
        masked = np.array(s["masked"], dtype=bool)
        assert np.array_equal(masked, np.triu(np.ones((n, n), dtype=bool), k=1)), "GPT-2's mask is causal"
        assert (patterns[..., masked] == 0).all()
        assert np.abs(patterns.sum(-1) - s["scale"]).max() <= n  # each row sums to 1, rounded per weight
        assert s["tokens"][s["target"]].strip() == "mole"


def test_pca2_explained_variance_and_constant_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * [5.0, 2.0, 0.1]
    points, explained = pca2(X)
    assert points.shape == (200, 2)
    assert explained[0] == pytest.approx(25 / 29.01, abs=0.05) and explained[1] == pytest.approx(4 / 29.01, abs=0.05)
    same, none = pca2(np.ones((10, 4)))  # one word, no position embeddings: nothing to explain
    assert not same.any() and not none.any()


@pytest.mark.parametrize("shape", [(40, 300), (300, 40)])  # fewer rows than features, and more
def test_pca2_gives_scikit_learns_components_up_to_sign(shape):
    from sklearn.decomposition import PCA

    X = np.random.default_rng(1).normal(size=shape) * np.linspace(3.0, 0.1, shape[1])
    points, explained = pca2(X.astype(np.float32))
    reference = PCA(2, svd_solver="full").fit(X)
    expected = reference.transform(X)
    signs = np.sign((points * expected).sum(0))
    assert signs.all()
    np.testing.assert_allclose(points * signs, expected, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(explained, reference.explained_variance_ratio_, rtol=1e-5)


def test_example_rows_one_per_subset_and_sense_preferring_a_visible_cue():
    rows = {"label": ["a", "a", "b", "b", "a", "b"], "cue": ["right", "right", "right", "both", "left", "left"],
            "group": ["1", "2", "1", "2", "1", "2"]}
    assert example_rows(rows, "group", example=0) == [0, 3, 1, 2]  # group 1 has no visible cue for b
    assert example_rows(rows, None, example=2) == [2, 4]
    assert example_rows({"label": ["a", "b", "a"]}, None, example=0) == [0, 1]


# ---------------------------------------------------------------- figures


def test_accuracy_figure_has_a_panel_per_subset_with_controls_and_folds(run_dir):
    results = load_run(run_dir).results
    figure = accuracy_figure(results)
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles == ["all rows", "left rows", "right rows"]
    names = {t["name"] for t in figure["data"]}
    assert {"probe at target token", "probe at last token", "shuffled labels (target)", "majority class"} <= names
    probe = next(t for t in figure["data"] if t["name"] == "probe at target token")
    interval, folds = probe["customdata"][0]  # the 95% interval and the three folds, in the hover
    assert len(folds.split(", ")) == 3 and interval.startswith("[")
    first = next(r for r in results["layers"] if r["position"] == "target" and r["subset"] == "all")
    assert probe["error_y"]["array"][0] == pytest.approx(first["accuracy_ci"][1] - first["accuracy"])
    assert figure["layout"]["xaxis"]["title"]["text"] == "layer (hidden state; 0 = embeddings)"


def test_comparison_figure_puts_runs_on_relative_depth(run_dir):
    results = load_run(run_dir).results
    deeper = {**results, "model": {**results["model"], "name": "deeper", "layers": 4}}
    figure = comparison_figure([results, deeper])
    assert len(figure["data"]) == 2 * 6  # 2 positions × 3 subsets per run
    shallow, deep = figure["data"][0], figure["data"][6]
    assert shallow["x"][-1] == 1.0 and deep["x"][-1] == 0.5


def test_render_from_results_alone_says_what_is_missing(run_dir):
    results = load_run(run_dir).results
    page = render_report(results)
    assert 'data-view="accuracy"' in page and 'data-view="confusion"' in page
    assert 'data-view="pca"' not in page and "No report_data.json" in page


# ---------------------------------------------------------------- the command line


def test_probe_report_compares_runs_on_one_page(run_dir, tmp_path):
    output = tmp_path / "both.html"
    result = invoke("report", run_dir, run_dir, "--output", output)
    assert result.exit_code == 0, result.output
    page = output.read_text()
    assert plotly_copies(page) == 1
    assert 'data-run="0"' in page and 'data-run="1"' in page and 'data-view="comparison"' in page


def test_probe_report_rewrites_a_runs_page(tmp_path_factory, tmp_path):
    run = copy_run(tmp_path_factory, tmp_path / "run")
    (run / "report.html").unlink()
    result = invoke("report", run)
    assert result.exit_code == 0 and f"wrote {run / 'report.html'}" in result.output
    assert 'data-view="attention"' in (run / "report.html").read_text()


def test_probe_view_writes_a_missing_page_without_opening(tmp_path_factory, tmp_path):
    run = copy_run(tmp_path_factory, tmp_path / "run")
    (run / "report.html").unlink()
    result = invoke("view", run, "--no-open")
    assert result.exit_code == 0, result.output
    assert (run / "report.html").exists()


@pytest.mark.parametrize("command", ["report", "view"])
def test_a_folder_without_results_json_is_named(tmp_path, command):
    result = invoke(command, tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'results.json'}: not found (is {tmp_path} the output " \
                                    "folder of `probe run`?)"
    assert "Traceback" not in result.output


def test_broken_results_json_is_named(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    result = invoke("report", tmp_path)
    assert result.exit_code == 1 and f"{tmp_path / 'results.json'}: not valid JSON" in result.output
    with pytest.raises(ReportError, match="no such run folder"):
        load_run(tmp_path / "missing")


# ---------------------------------------------------------------- runs of different experiments, colours


def page_data(page: str) -> dict:
    text = page.split("<script type=\"application/json\" data-probe-data>")[1].split("</script>")[0]
    return json.loads(text.replace("<\\/", "</"))


def test_probe_report_names_each_run_by_its_experiment_and_model(run_dir, tmp_path):
    tower = tmp_path / "tower"
    tower.mkdir()
    results = json.loads((run_dir / "results.json").read_text())
    (tower / "results.json").write_text(json.dumps({**results, "experiment": "tower"}))
    output = tmp_path / "both.html"
    assert invoke("report", run_dir, tower, "--output", output).exit_code == 0
    page, model = output.read_text(), results["model"]["name"]
    assert f"<title>2 runs compared (mole-cues, tower)</title>" in page
    headings = re.findall(r'<section class="run" data-run="\d"><h2>([^<]*)</h2>', page)
    assert headings == [f"mole-cues on {model}", f"tower on {model}"]
    data = page_data(page)
    assert [run["name"] for run in data["runs"]] == headings
    names = [trace["name"] for trace in data["comparison"]["data"]]
    assert len(set(names)) == len(names)  # no two legend entries alike
    assert {name.split(":")[0] for name in names} == set(headings)
    assert "mole-cues: 2 runs compared" not in page


def test_one_run_twice_is_told_apart_by_its_folder(run_dir):
    data = page_data(render_report(run_dir, run_dir))
    first, second = (run["name"] for run in data["runs"])
    assert first.endswith("(run 1)") and second.endswith("(run 2)")  # one folder name twice: numbered
    names = [trace["name"] for trace in data["comparison"]["data"]]
    assert len(set(names)) == len(names) and "(run 1)" in names[0] and "(run 2)" in names[-1]


def test_page_carries_the_python_palette_and_recall_colour_scale(run_dir):
    from probe.report.legend import CONFUSION_SCALE, sense_colours

    page = (run_dir / "report.html").read_text()
    data = page_data(page)
    labels = json.loads((run_dir / "results.json").read_text())["dataset"]["labels"]
    assert data["runs"][0]["sense_colours"] == sense_colours(labels)
    assert data["confusion_scale"] == [list(stop) for stop in CONFUSION_SCALE]
    assert "#1f77b4\", \"#d62728" not in page  # report.js keeps no palette of its own
