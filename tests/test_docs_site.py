"""The documentation site builds in strict mode (a broken link, anchor or nav entry fails), and its
generated reference pages cover the code they are generated from: every config field with a
description, every hook, every architecture of the static table."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "_generate" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load_generator()


def build(site: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strictly_without_warnings(tmp_path):
    result = build(tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    config = (tmp_path / "site" / "config" / "index.html").read_text()
    assert "<code>batch_size</code>" in config  # the generated reference made it into the page
    assert "<!-- generated:" not in config


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is what catches a broken link: the same site with one bad link does not build."""
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(ROOT / "docs"), str(docs)], check=True)
    page = docs / "concepts.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md#nothing).\n")
    settings = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    settings = settings.replace("- docs/_generate/reference.py", f"- {ROOT / 'docs' / '_generate' / 'reference.py'}")
    (tmp_path / "mkdocs.yml").write_text(settings)
    result = build(tmp_path / "site", tmp_path / "mkdocs.yml")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_every_config_field_is_described_and_every_description_names_a_field():
    assert reference.missing_descriptions() == []
    fields = {model.__name__: set(model.model_fields) for model in reference.config_models()}
    stale = [f"{model}.{name}" for model, names in reference.field_descriptions().items()
             for name in names if name not in fields.get(model, set())]
    assert not stale, f"docs/_generate/config_fields.yaml describes fields the config does not have: {stale}"


def test_the_config_reference_gives_each_fields_type_and_default():
    from probe.pipeline.config import ExperimentConfig

    rows = {row.split("|")[1].strip(" `"): row for row in reference.config_reference().splitlines()
            if row.startswith("| `")}
    assert set(ExperimentConfig.model_fields) <= set(rows)
    assert "| int | `5` |" in rows["folds"]
    assert "required" in rows["model"]
    assert "'first' or 'last' or 'mean'" in rows["pooling"]


def test_the_hook_reference_has_every_hookspec_in_source_order():
    from probe import hookspecs

    text = reference.hook_reference()
    documented = re.findall(r"^## `(\w+)`", text, flags=re.M)
    source = re.findall(r"^@hookspec.*\ndef (\w+)", Path(hookspecs.__file__).read_text(), flags=re.M)
    assert documented == source and len(source) >= 10


def test_the_architecture_page_lists_the_static_table():
    from probe.core.architectures import ARCHITECTURES

    rows = [line.split("|")[1].strip() for line in reference.architecture_table().splitlines()[2:]
            if line.startswith("| ")]
    assert rows == sorted(ARCHITECTURES)


def test_an_unknown_marker_is_an_error_not_a_silent_gap():
    with pytest.raises(KeyError, match="no-such"):
        reference.render("<!-- generated: no-such -->")


def test_every_page_is_in_the_nav():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def files(entries):
        for entry in entries:
            for value in entry.values():
                yield from files(value) if isinstance(value, list) else [value]

    assert sorted(files(nav)) == sorted(page.name for page in (ROOT / "docs").glob("*.md"))


def test_the_readme_stays_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
