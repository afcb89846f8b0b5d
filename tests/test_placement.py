"""Where a run computes, checked before any model work: the device, the dtype it can do, and a max_memory
that can hold the model; and which attention path the extraction ran, as results.json records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_gpt2 import build_tiny_gpt2

from probe.pipeline.config import ConfigError, validate
from probe.pipeline.run import run_experiment
from probe.scale.devices import check_dtype, resolve_device
from probe.scale.placement import check_max_memory, model_bytes

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=2)


def small(model, **fields):
    raw = {"model": str(model), "dataset": "mole", "folds": 3, "controls": ["majority"], "reporters": ["json"],
           "layers": [0, 2], **fields}
    return validate(raw, source="exp.yaml")


def refused(config, tmp_path, match):
    """The run fails with a ConfigError matching ``match``, having written nothing and loaded no weights."""
    with pytest.raises(ConfigError, match=match) as error:
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "features").exists()
    return str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_a_cuda_device_this_machine_lacks_is_refused_naming_the_option(tiny_model, tmp_path, device):
    message = refused(small(tiny_model, device=device), tmp_path, "device")
    assert message.startswith("exp.yaml: device:") and repr(device) in message and "no CUDA device" in message


def test_bfloat16_on_a_gpu_older_than_ampere_is_refused_naming_the_option(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match=r"dtype: cuda:0 \(Tesla T4\) cannot compute in bfloat16"):
        check_dtype("bfloat16", torch.device("cuda:0"))
    check_dtype("float16", torch.device("cuda:0"))  # a T4 does float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    check_dtype("bfloat16", torch.device("cuda:0"))  # an A100 does bfloat16
    check_dtype("bfloat16", resolve_device("cpu"))


def test_the_models_size_is_estimated_without_weights(tiny_model):
    from transformers import AutoConfig, GPT2Model

    config = AutoConfig.from_pretrained(tiny_model)
    params = sum(p.numel() for p in GPT2Model(config).parameters())
    assert model_bytes(config, "float32") == 4 * params
    assert model_bytes(config, "bfloat16") == 2 * params


def test_a_max_memory_that_cannot_hold_the_model_is_refused_with_the_numbers(tiny_model, tmp_path):
    config = small(tiny_model, device_map="auto", max_memory={"cpu": "10KB"})
    message = refused(config, tmp_path, "max_memory")
    assert "cpu: 9.8 KiB" in message and "KiB in float32" in message and "add a disk entry" in message
    from transformers import AutoConfig

    needed = model_bytes(AutoConfig.from_pretrained(tiny_model), "float32")
    assert check_max_memory({"cpu": needed}, AutoConfig.from_pretrained(tiny_model), "float32") == {"cpu": needed}


@pytest.mark.parametrize(("max_memory", "match"), [
    ({"cpu": "lots"}, r"max_memory\['cpu'\]: 'lots' is not a size"),
    ({"gpu": "1GB"}, "max_memory names 'gpu'"),
    ({7: "1GB", "cpu": "1GB"}, "max_memory names GPU 7"),
])
def test_a_malformed_max_memory_is_refused_naming_the_entry(tiny_model, tmp_path, max_memory, match):
    if torch.cuda.device_count() > 7 and max_memory.get(7):
        pytest.skip("this machine has a GPU 7")
    refused(small(tiny_model, device_map="auto", max_memory=max_memory), tmp_path, match)


def test_max_memory_without_device_map_is_refused(tiny_model, tmp_path):
    refused(small(tiny_model, max_memory={"cpu": "1GB"}), tmp_path, "max_memory .* needs device_map")


def test_extraction_takes_the_fast_path_unless_compared_with_hugging_face(tiny_model, tmp_path):
    def run(name, **fields):
        config = small(tiny_model, controls=["majority", "random_weights"], **fields)
        run_experiment(config, tmp_path / name, cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
        return json.loads((tmp_path / name / "results.json").read_text())

    fast = run("fast")
    assert fast["extraction"]["attention_path"] == {"reimplemented": "fast", "random_weights": "fast"}
    both = run("both", attention="both")
    assert both["extraction"]["attention_path"] == {"reference": "eager", "reimplemented": "exact",
                                                   "random_weights": "exact"}
    assert all(row["max_abs_diff_vs_reference"] == 0.0 for row in both["layers"])  # exact: bit-identical
    # The fast and exact vectors do not share a cache entry: each path has its own.
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 5


def test_compare_refuses_a_dtype_the_device_cannot_do(monkeypatch):
    from click.testing import CliRunner

    from probe.cli import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    result = CliRunner().invoke(cli, ["compare", "--random-init", "gpt2", "--device", "cuda", "--dtype", "bfloat16"])
    assert result.exit_code == 2 and "--dtype" in result.output and "Tesla V100" in result.output
