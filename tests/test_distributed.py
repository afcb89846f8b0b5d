"""Extraction spread over processes: each rank its share of the cache chunks, rank 0 probes and reports,
and the results are those of a single process — under torchrun itself (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from tiny_gpt2 import build_tiny_gpt2, corpus

from probe.pipeline.extract import extract
from probe.pipeline.results import without_provenance
from probe.scale.ranks import Ranks, launched_ranks

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=3)


@pytest.fixture(scope="module")
def two_chunks_of_rows(tmp_path_factory) -> Path:
    """mole's and tower's 384 rows in one file: two cache chunks of at most 256 rows."""
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    data = ROOT / "probe" / "builtin" / "data"
    path.write_text((data / "mole.jsonl").read_text() + (data / "tower.jsonl").read_text())
    return path


def test_a_launchers_environment_gives_the_ranks():
    assert launched_ranks({}) == Ranks()
    assert launched_ranks({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Ranks(4, 3, 1)
    with pytest.raises(ValueError, match="RANK"):
        launched_ranks({"WORLD_SIZE": "2", "RANK": "two"})
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
        launched_ranks({"WORLD_SIZE": "2", "RANK": "2"})


def test_every_chunk_belongs_to_exactly_one_rank():
    world = [Ranks(3, rank) for rank in range(3)]
    assert all(sum(ranks.owns(chunk) for ranks in world) == 1 for chunk in range(10))


def test_ranks_shares_make_the_single_process_cache(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, GPT2Model

    from probe.core.swap import swap_attention

    monkeypatch.setattr(Ranks, "wait", lambda self: None)  # the ranks run one after the other here
    texts = corpus()[:40]
    spans = [(0, len(text.split()[0])) for text in texts]

    def load():
        return swap_attention(GPT2Model.from_pretrained(tiny_model).eval()), AutoTokenizer.from_pretrained(tiny_model)

    options = {"layers": [0, 1, 2], "batch_size": 4, "chunk_rows": 8, "progress": False}
    single = extract(load, texts, spans, folder=tmp_path / "single", **options)
    extract(load, texts, spans, folder=tmp_path / "shared", ranks=Ranks(2, 1), **options)
    assert [p.name for p in (tmp_path / "shared").glob("chunk-*")] and not (tmp_path / "shared" / "complete.json").exists()
    assert all(int(p.stem.split("-")[1]) % 2 == 1 for p in (tmp_path / "shared").glob("chunk-*"))  # rank 1's only
    shared = extract(load, texts, spans, folder=tmp_path / "shared", ranks=Ranks(2, 0), **options)
    assert (tmp_path / "shared" / "complete.json").exists()
    assert [p.name for p in shared.chunks()] == [p.name for p in single.chunks()] and len(single.chunks()) == 5
    for a, b in zip(single.chunks(), shared.chunks()):
        x, y = load_file(a), load_file(b)
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def test_torchrun_with_two_processes_writes_the_single_process_results(tiny_model, two_chunks_of_rows, tmp_path):
    config = tmp_path / "words.yaml"
    config.write_text(json.dumps({
        "name": "words", "model": str(tiny_model), "dataset": {"name": "file", "path": str(two_chunks_of_rows)},
        "folds": 3, "controls": ["majority", "shuffled", "random_weights"], "reporters": ["json"],
        "device": "cpu",
    }))
    env = {**os.environ, "PROBE_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    probe_cli = shutil.which("probe", path=str(BIN)) or shutil.which("probe")  # beside python, or on PATH
    torchrun = shutil.which("torchrun", path=str(BIN)) or shutil.which("torchrun")
    assert probe_cli and torchrun, "probe's console script and torchrun must be installed (pip install -e .)"
    options = ["run", str(config), "--quiet", "--jobs", "1"]
    subprocess.run([probe_cli, *options, "--output", str(tmp_path / "single"), "--cache-dir", str(tmp_path / "c1")],
                   env=env, check=True, capture_output=True, text=True)
    launched = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "--no-python", probe_cli, *options,
         "--output", str(tmp_path / "spread"), "--cache-dir", str(tmp_path / "c2")],
        env=env, capture_output=True, text=True, check=False,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("best layer") == 1  # one process reported
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    spread = json.loads((tmp_path / "spread" / "results.json").read_text())
    assert without_provenance(single) == without_provenance(spread)  # when and from which commit aside
    features = list((tmp_path / "c2" / "features").iterdir())
    assert len(features) == 2  # the model and the random-weights control, each in two chunks
    assert all(len(list(folder.glob("chunk-*.safetensors"))) == 2 for folder in features)
