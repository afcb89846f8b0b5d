"""results.json's provenance: probe's git commit (only from probe's own checkout) and a UTC timestamp."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from probe.pipeline import results as provenance
from probe.pipeline.results import Provenance


@pytest.fixture
def fresh_commit_cache():
    provenance.git_commit.cache_clear()
    yield
    provenance.git_commit.cache_clear()


def test_timestamp_is_now_in_utc():
    stamp = datetime.fromisoformat(provenance.timestamp())
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=5)


def test_commit_is_the_checkouts_head(fresh_commit_cache):
    root = Path(provenance.__file__).resolve().parents[2]  # probe/pipeline/results.py → the checkout
    if not (root / ".git").exists():
        pytest.skip("probe is installed, not run from a git checkout")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert provenance.git_commit() == head.strip()
    assert Provenance.now().git_commit == head.strip()


def test_no_commit_outside_a_checkout(fresh_commit_cache, tmp_path, monkeypatch):
    """An installed copy (no .git beside the package) records no commit, even inside another repository."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    installed = tmp_path / "venv" / "site-packages" / "probe"
    installed.mkdir(parents=True)
    monkeypatch.setattr(provenance, "__file__", str(installed / "provenance.py"))
    assert provenance.git_commit() is None


def test_without_provenance_keeps_every_other_field():
    results = {"experiment": "mole", "layers": [1], "provenance": {"timestamp": "t", "git_commit": None}}
    assert provenance.without_provenance(results) == {"experiment": "mole", "layers": [1]}
