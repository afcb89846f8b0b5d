"""The plugins guide (docs/plugins-guide.md) is a working plugin: extract it, load it as a file, run an
experiment with it."""

import json
import re
from pathlib import Path

import pytest
from tiny_gpt2 import build_tiny_gpt2

from probe import plugins
from probe.pipeline.config import validate
from probe.pipeline.run import run_experiment

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins-guide.md"


def guide_plugin_source() -> str:
    blocks = re.findall(r"```python\n(# my_plugin\.py\n.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) == 1, "the plugins guide should hold exactly one '# my_plugin.py' example"
    return blocks[0]


@pytest.fixture
def clean_plugins():
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def test_the_guides_example_plugin_runs_an_experiment(tmp_path, clean_plugins):
    plugin_file = tmp_path / "my_plugin.py"
    plugin_file.write_text(guide_plugin_source())
    model = build_tiny_gpt2(tmp_path / "model")
    config = validate({
        "name": "bank", "model": str(model), "dataset": "bank", "folds": 2, "controls": ["majority"],
        "reporters": ["json"], "plugins": [str(plugin_file)], "metrics": ["error_rate"],
    })
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)

    assert results.dataset.labels == ["money", "river"]
    assert [row.layer for row in results.rows] == [0, 1, 2]
    for row in results.rows:
        assert row.metrics["error_rate"] == pytest.approx(1 - row.accuracy, abs=0.11)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["layers"][0]["metrics"].keys() == {"error_rate"}
    names = dict(plugins.describe())
    assert names[f"file:{plugin_file.resolve()}"] == ["register_datasets", "register_metrics"]
