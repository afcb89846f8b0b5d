"""The whole pipeline, every first-party plugin included, on ``pytest --device`` (the CPU by default).

On a GPU machine ``pytest --device cuda tests/test_on_device.py tests/test_parity_architectures.py`` checks
that nothing assumes the CPU or float32: extraction, controls, head ablation, erasure, the attention
report and the HTML page all run with the model on that device.
"""

from __future__ import annotations

import collections
import contextlib
import json

import pytest
import torch
from tiny_gpt2 import build_tiny_gpt2
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import probe
from probe import plugins
from probe.core.architectures import ARCHITECTURES, TINY
from probe.pipeline.config import validate
from probe.pipeline.run import run_experiment


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=1)


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def config(model, device, **fields):
    return validate({
        "model": str(model), "dataset": "mole", "folds": 3, "controls": ["majority", "shuffled", "random_weights"],
        "device": str(device), **fields,
    })


def test_every_first_party_reporter_runs_on_the_device(tiny_model, device, tmp_path):
    run = config(tiny_model, device, reporters=["json", "plots", "html", "head-ablation", "erasure",
                                                "attention-report"],
                 options={"head_ablation": {"probe_layer": 2}, "erasure": {"layer": 1, "draws": 1}})
    results = run_experiment(run, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert results.settings["device"] == str(device)
    assert all(0.0 <= row.accuracy <= 1.0 for row in results.rows)
    heads = json.loads((tmp_path / "out" / "head_ablation.json").read_text())["heads"]
    assert len(heads) == 2 * 4 and all(0 <= head["p_value"] <= 1 for head in heads)
    erased = json.loads((tmp_path / "out" / "erasure.json").read_text())
    assert erased and (tmp_path / "out" / "report.html").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "attention_report.json").read_text())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_both_attentions_give_the_same_vectors_on_the_device(tiny_model, device, dtype, tmp_path):
    run = config(tiny_model, device, attention="both", dtype=dtype, reporters=["json"])
    results = run_experiment(run, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert results.settings["dtype"] == dtype
    assert [row.max_abs_diff_vs_reference for row in results.rows] == [0.0] * len(results.rows)
    assert all(row.accuracy == row.reference_accuracy for row in results.rows)


@contextlib.contextmanager
def counted_value_reads():
    """Counts the Python reads of a tensor's values (bool(t), t.item(), …): on a GPU each one makes the
    host wait for the device, so a read per block stalls every forward. (Waits inside torch's own ops,
    such as nonzero or boolean indexing, are not counted.)"""
    reads = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in VALUE_READS}

    def counting(name):
        def read(self, *args, **kwargs):
            reads[name] += 1
            return originals[name](self, *args, **kwargs)
        return read

    try:
        for name in VALUE_READS:
            setattr(torch.Tensor, name, counting(name))
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


VALUE_READS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_probes_attention_reads_no_tensor_value_per_block(name):
    """At most one read per forward and mask (the float mask's check; Gemma 2 has a sliding and a full
    mask), however many blocks: 6 here, where a read per block would add 6."""
    arch = ARCHITECTURES[name]
    overrides = dict(arch.overrides)  # per-block lists, written for the tiny configs' 2 blocks, times 3
    if "layer_types" in overrides:
        overrides["layer_types"] = overrides["layer_types"] * 3
    if "attention_types" in overrides:
        overrides["attention_types"] = [[kinds, 3 * times] for kinds, times in overrides["attention_types"]]
    config = AutoConfig.for_model(arch.model_type, **{
        **{k: v for k, v in TINY.items() if k not in arch.drop}, **overrides, "num_hidden_layers": 6})
    auto = AutoModelForCausalLM if arch.causal else AutoModel
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # a padded row: the pattern's rows with no key to attend to are zeroed
    reads = []
    for swap in (False, True):
        torch.manual_seed(0)
        model = auto.from_config(config, attn_implementation="eager").eval()
        if swap:
            probe.swap_attention(model)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)  # a first call may set things up
            with counted_value_reads() as counted:
                model(input_ids=ids, attention_mask=mask)
        reads.append(sum(counted.values()))
    eager, swapped = reads
    assert swapped - eager <= 2, f"{name}: eager reads {eager} values a forward, probe {swapped}"


def test_rerunning_blocks_reads_each_mask_once_a_batch(tmp_path):
    """probe.pipeline.partial runs blocks by hand, outside the model's forward: the mask they share is still checked
    once a batch, not once a block (6 blocks rerun here)."""
    from transformers import AutoTokenizer, GPT2Model

    from probe.pipeline.partial import capture_block_inputs, vectors_from

    folder = build_tiny_gpt2(tmp_path / "model", n_layer=7, n_embd=32, seed=1)
    model = probe.swap_attention(GPT2Model.from_pretrained(folder, attn_implementation="eager").eval())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["The gardener trapped the mole.", "One mole of gas fills the flask."]
    spans = [(text.index("mole"), text.index("mole") + 4) for text in texts]
    batches = capture_block_inputs(model, tokenizer, texts, spans, block=1, batch_size=1, whole_rows=True)
    reads = []
    for last_layer in (2, 7):  # one block rerun, then six
        with counted_value_reads() as counted:
            vectors_from(model, batches, 1, [last_layer])
        reads.append(sum(counted.values()))
    assert reads[1] == reads[0], f"reads grow with the blocks rerun: {reads[0]} for one block, {reads[1]} for six"
