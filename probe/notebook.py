"""One-liners for notebooks: every hook point's tensor for a sentence, and an inline attention view.

    outputs, cache = probe.run_with_cache("smollm2-135m", "The mole dug a tunnel.")
    cache["blocks.3.attn.pattern"]        # (batch, head, query pos, key pos)
    cache["blocks.3.attn.z"][:, h]        # head h: probe's z is (batch, head, pos, d_head)
    probe.attention("minilm-l6", "The mole dug a tunnel.", target="mole")   # shows the viewer in Jupyter

Head axis: probe keeps heads on axis 1 — q, k, v and z are (batch, head, pos, d_head) — where
TransformerLens keeps them on axis 2 (``z[:, :, h]``); ``z.transpose(1, 2)`` gives TransformerLens's order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from probe.errors import UserError


class ActivationCache(dict):
    """Hook point name → tensor (detached, on the model's device), plus the tokens that produced them.
    Names are ordered by block number (blocks.2 before blocks.10), then as the forward reached them."""

    def __init__(self, tensors: dict, tokens: list[list[str]], inputs: dict, targets: list | None = None,
                 positions: dict | None = None):
        order = {name: n for n, name in enumerate(tensors)}
        super().__init__(sorted(tensors.items(), key=lambda item: (_block_of(item[0]), order[item[0]])))
        self.tokens = tokens  # one list of token strings per text
        self.inputs = inputs  # what the tokenizer returned: input_ids, attention_mask, …
        self.targets = targets  # per text, the token indices of the target word (when one was given)
        self.positions = positions or {}  # position name → per text, the token indices it reads (as a run does)

    def blocks(self) -> list[int]:
        """The block numbers the cache holds, in order."""
        return sorted({_block_of(name) for name in self if _block_of(name) >= 0})

    def stack(self, point: str) -> torch.Tensor:
        """One hook point of every block stacked on a new first axis: ``stack("resid_post")`` is
        (block, batch, pos, width), its rows in ``blocks()``'s order."""
        names = [f"blocks.{block}.{point}" for block in self.blocks()]
        missing = [name for name in names if name not in self]
        if not names or missing:
            raise KeyError(f"no {point!r} in every block of this cache (missing: {', '.join(missing) or 'all'}); "
                           f"run_with_cache(..., names=...) chooses what is kept")
        return torch.stack([self[name] for name in names])


def _block_of(name: str) -> int:
    """``blocks.{i}.…`` → i; anything else sorts first (-1)."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else -1


def run_with_cache(model, text: str | Sequence[str], *, tokenizer=None,
                   names: str | Iterable[str] = "*", revision: str | None = None, target: str | None = None,
                   positions=None):
    """Run ``model`` on ``text`` (one string or a list, padded on the right) without gradients and
    return ``(outputs, cache)``: the model's outputs and an ``ActivationCache`` of every hook point that
    ``names`` matches (globs, default all: ``blocks.{i}.resid_pre``, ``blocks.{i}.attn.q/k/v/scores/
    masked_scores/pattern/z/out``, ``blocks.{i}.resid_post``).

    ``model``: a loaded transformers model, or a name (registered, hub or local folder) that is loaded
    once and kept. ``tokenizer``: default, the one saved with the model. A model without probe's attention
    gets it for this call only (``probe.swapped_attention``). ``target``: a word; ``cache.targets`` then holds,
    per text, the indices of the tokens that cover its first whole-word occurrence. ``positions``: specs as
    a config's ``positions`` writes them (``["first", "mean", {"index": -2}]``; ``target`` needs ``target=``);
    ``cache.positions`` then maps each position's name to, per text, the token indices a run reads there.
    """
    from probe.core.hooks import capture
    from probe.core.swap import is_swapped, swapped_attention

    model, tokenizer = _model_and_tokenizer(model, tokenizer, revision)
    texts = [text] if isinstance(text, str) else list(text)
    tokenizer.padding_side = "right"
    aligning = target is not None or positions is not None
    encoding = tokenizer(texts, return_tensors="pt", padding=True, return_offsets_mapping=aligning,
                         return_special_tokens_mask=aligning)
    offsets = encoding.pop("offset_mapping").tolist() if aligning else None
    special = encoding.pop("special_tokens_mask").tolist() if aligning else None
    targets = _target_indices(texts, offsets, target) if target else None
    found = _position_indices(positions, texts, offsets, encoding, special, targets) if positions is not None else None
    encoding = encoding.to(_device(model))
    swapping = nullcontext() if is_swapped(model) else swapped_attention(model)
    with swapping, capture(model, names) as seen, torch.no_grad():
        outputs = model(**encoding)
        tensors = dict(seen)
    return outputs, ActivationCache(tensors, _tokens(tokenizer, encoding), dict(encoding), targets, found)


class TargetNotFound(UserError, ValueError):
    """``run_with_cache``'s target word is not in one of the texts."""


class PositionError(UserError, ValueError):
    """``run_with_cache``'s positions: a spec it does not accept, or a text without the token(s) it reads."""


def _position_indices(specs, texts, offsets, encoding, special, targets) -> dict[str, list[list[int]]]:
    """Per position name, each text's token indices, chosen as extraction chooses them (positions.py)."""
    from probe.pipeline import positions

    specs = specs if isinstance(specs, (list, tuple)) else [specs]
    try:
        parsed = [positions.parse(spec) for spec in specs]
    except ValueError as error:
        raise PositionError(f"positions: {error}") from None
    if any(p.kind == "span" for p in parsed):
        raise PositionError("positions: {span: …} reads a dataset's columns; give target= for a word instead")
    if any(p.kind == "target" for p in parsed) and targets is None:
        raise PositionError("positions: 'target' needs target= (the word whose tokens it reads)")
    n_tokens = encoding["attention_mask"].sum(-1).tolist()
    try:  # the target's tokens are found already (targets), the others here
        found = positions.batch_indices([p for p in parsed if p.kind != "target"], texts, offsets, n_tokens,
                                        special, {})
    except positions.RowTokens as error:
        raise PositionError(f"positions: {error}") from None
    found["target"] = targets
    return {p.name: found[p.name] for p in parsed}


def _target_indices(texts: list[str], offsets: list, target: str) -> list[list[int]]:
    """Per text, the tokens covering ``target``'s first whole-word occurrence; a text without it is an error."""
    from probe.pipeline.data import span_token_indices, whole_word_matches

    found = []
    for text, row in zip(texts, offsets):
        matches = whole_word_matches(text, target)
        if not matches:
            raise TargetNotFound(f"target {target!r} is not a word of {text!r}")
        found.append(span_token_indices(text, row, *matches[0]))
    return found


@dataclass
class AttentionView:
    """Every block's attention for some sentences; shown as the interactive viewer in Jupyter."""

    sentences: list[dict]  # as ``probe.report.attention_view.capture_attention`` returns them

    @property
    def patterns(self) -> torch.Tensor:
        """The first sentence's attention, (block, head, query, key), to 3 decimals."""
        first = self.sentences[0]
        return torch.tensor(first["patterns"], dtype=torch.float32) / first["scale"]

    @property
    def tokens(self) -> list[str]:
        return self.sentences[0]["tokens"]

    def _repr_html_(self) -> str:
        from probe.report.attention_view import viewer_html

        return viewer_html(self.sentences)

    def save(self, path: str | Path) -> Path:
        """A standalone HTML page with the viewer (no network needed to open it)."""
        from probe.store.files import write_text_atomic

        page = f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>attention</title></head><body>' \
               f"{self._repr_html_()}</body></html>\n"
        return write_text_atomic(path, page)


def attention(model, text: str | Sequence[str], *, target: str | None = None, tokenizer=None,
              revision: str | None = None) -> AttentionView:
    """The attention viewer for ``text`` (a string or a list of them): pick a block and a head, see each
    token shaded by the attention the ``target`` word (default: the last token) gives it, and the full
    query × key grid with the causal mask hatched. Displays itself in Jupyter; ``.save("a.html")`` too."""
    from probe.core.swap import is_swapped, swapped_attention
    from probe.report.attention_view import capture_attention

    model, tokenizer = _model_and_tokenizer(model, tokenizer, revision)
    texts = [text] if isinstance(text, str) else list(text)
    swapping = nullcontext() if is_swapped(model) else swapped_attention(model)
    with swapping:
        return AttentionView([capture_attention(model, tokenizer, t, target) for t in texts])


def _model_and_tokenizer(model, tokenizer, revision):
    if isinstance(model, (str, Path)):
        loaded, own_tokenizer = _load(str(model), revision)
        return loaded, tokenizer or own_tokenizer
    if tokenizer is None:
        from probe.pipeline.models import load_tokenizer

        source = getattr(model, "name_or_path", None)
        if not source:
            raise ValueError("this model does not say where it was loaded from: pass tokenizer=")
        tokenizer = load_tokenizer(source, revision=revision)
    return model, tokenizer


def _load(name: str, revision: str | None):
    """A model by name, loaded once per session: registered names resolve to their files, and a GGUF file
    loads from its converted checkpoint in the user's cache (the one ``probe run`` converts into), so a new
    process does not dequantize it again."""
    from probe.pipeline.models import gguf_folder
    from probe.pipeline.run import resolve_model
    from probe.store.usage import default_cache_dir

    source = resolve_model(name, revision)
    if source.endswith(".gguf") and Path(source).is_file():
        source = str(gguf_folder(source, default_cache_dir() / "models"))
    return _load_source(source, revision)


@functools.lru_cache(maxsize=2)
def _load_source(source: str, revision: str | None):
    from probe.pipeline.models import load_model, load_tokenizer

    return load_model(source, revision=revision), load_tokenizer(source, revision=revision)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _tokens(tokenizer, encoding) -> list[list[str]]:
    rows = []
    for ids, mask in zip(encoding["input_ids"].tolist(), encoding["attention_mask"].tolist()):
        rows.append([tokenizer.decode([i]) for i, keep in zip(ids, mask) if keep])
    return rows


def report_html(results) -> str:
    """The views of report.html as a fragment for a notebook cell (PCA and attention too, when the run
    folder has them); several can share one notebook."""
    from probe.report.html import render_report

    source = results.run_dir if results.run_dir and (results.run_dir / "results.json").exists() else results.to_dict()
    return render_report(source, fragment=True)


def plot(results, path: str | Path | None = None):
    """Accuracy per layer with its controls (what accuracy.png shows; a regression run: R² and Spearman,
    as regression.png); returns the matplotlib figure."""
    from probe.report.writers import accuracy_figure, as_results

    if as_results(results).task == "regression":
        from probe.report.regression_figures import curves_figure

        figure = curves_figure(as_results(results))
    else:
        figure = accuracy_figure(results)
    if path is not None:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return figure


def register_display() -> None:
    """In IPython or Jupyter, show a Results as its report (the Results type itself knows nothing of
    reports: the display is registered here, through IPython's own formatter table)."""
    import sys

    if "IPython" not in sys.modules:  # not in a notebook or IPython shell: nothing to register
        return
    shell = sys.modules["IPython"].get_ipython()
    if shell is not None:
        from probe.pipeline.results import Results

        shell.display_formatter.formatters["text/html"].for_type(Results, report_html)
