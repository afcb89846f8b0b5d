"""One sentence's attention, captured at every block and drawn as an interactive HTML viewer.

The same viewer serves report.html and notebooks (``probe.attention(model, text)``): tokens shaded by
the weight a chosen query token (by default the target word) gives them, the full query × key grid, and
the causal mask drawn where a query may not look.
"""

from __future__ import annotations

import html
import itertools
import json
from importlib import resources

SCALE = 1000  # weights are stored as integers per mille: a 30-block model stays a few hundred kB per sentence
_ids = itertools.count()


def capture_attention(model, tokenizer, text: str, target: str | tuple[int, int] | None = None,
                      label: str | None = None) -> dict:
    """Every block's attention pattern for ``text``, plus what the viewer needs to draw it.

    ``model`` must carry probe's attention (``probe.swap_attention``). ``target``: a word of ``text``,
    a (start, end) character span, or None for the last token; the viewer shades tokens by the
    attention *from* the target's last token.
    """
    return capture_attentions(model, tokenizer, [text], [target], [label])[0]


def capture_attentions(model, tokenizer, texts: list[str], targets: list | None = None,
                       labels: list[str | None] | None = None) -> list[dict]:
    """``capture_attention`` for several texts in one forward pass: right-padded, each text's patterns
    cut to its own tokens. A padded key gets weight 0, so only float rounding depends on the batch (SmolLM2,
    8 mole sentences: 4 of 100,000 weights differ from one-at-a-time, each by one per mille)."""
    targets = targets or [None] * len(texts)
    labels = labels or [None] * len(texts)
    if len(texts) > 1 and tokenizer.pad_token is None:  # a tokenizer that cannot pad: one text at a time
        return [capture_attention(model, tokenizer, *each) for each in zip(texts, targets, labels)]
    import torch  # here, not at the top: report.html reads this module's static text without a model

    encoding, offsets, seen = run_padded(model, tokenizer, texts, ["blocks.*.attn.pattern",
                                                                   "blocks.0.attn.masked_scores"])
    blocks = sorted((int(name.split(".")[1]), name) for name in seen if name.endswith(".attn.pattern"))
    patterns = torch.stack([seen[name] for _, name in blocks], 1).float().cpu()  # (text, block, head, q, k)
    scores = seen["blocks.0.attn.masked_scores"][:, 0].float().cpu()  # (text, q, k)
    # (q, k): True where the mask blocks the key: −∞, or the dtype's lowest value as Hugging Face's masks use
    masked = torch.isinf(scores) | (scores <= torch.finfo(scores.dtype).min / 2)
    sentences = []
    for i, (text, target, label) in enumerate(zip(texts, targets, labels)):
        n = int(encoding["attention_mask"][i].sum())
        ids = encoding["input_ids"][i, :n].tolist()
        sentences.append({
            "text": text,
            "label": label,
            "tokens": [tokenizer.decode([token]) for token in ids],
            "target": _query_index(text, offsets[i][:n], target),
            "masked": masked[i, :n, :n].int().tolist(),
            "patterns": torch.round(patterns[i, :, :, :n, :n] * SCALE).int().tolist(),
            "scale": SCALE,
        })
    return sentences


def run_padded(model, tokenizer, texts, names: list[str]):
    """One forward over ``texts``, right-padded (so each text's positions are as they would be alone),
    capturing hook points ``names``: (the encoding, on the CPU; each text's character offsets; {name: tensor})."""
    import torch

    from probe.core.hooks import capture
    from probe.scale.devices import device_of

    if len(texts) > 1:
        tokenizer.padding_side = "right"
    encoding = tokenizer(list(texts), return_tensors="pt", return_offsets_mapping=True, padding=len(texts) > 1)
    offsets = encoding.pop("offset_mapping").tolist()
    with capture(model, names) as seen, torch.no_grad():
        model(**encoding.to(device_of(model)))
    return encoding.to("cpu"), offsets, seen


def _query_index(text: str, offsets, target) -> int:
    """The token whose attention is shown first: the target's last token, or the sentence's last token."""
    from probe.pipeline.data import span_token_indices, whole_word_matches

    if target is None:
        return len(offsets) - 1
    if isinstance(target, str):
        matches = whole_word_matches(text, target)
        if not matches:
            raise ValueError(f"target {target!r} is not a word of {text!r}")
        target = matches[0]
    covered = span_token_indices(text, offsets, *target)
    if not covered:
        raise ValueError(f"no token covers characters {target} of {text!r}")
    return covered[-1]


def static_text(name: str) -> str:
    """A file from probe/report/static (the report's JavaScript and CSS)."""
    return resources.files("probe.report").joinpath("static", name).read_text(encoding="utf-8")


def json_for_script(data) -> str:
    """JSON that is safe inside a <script> element (no "</script>" can end it early)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def viewer_html(sentences: list[dict], *, title: str = "", with_assets: bool = True) -> str:
    """The attention viewer for ``sentences`` (from ``capture_attention``) as an HTML fragment.

    ``with_assets``: include the viewer's CSS and JavaScript (a page with several viewers needs them once).
    """
    element = f"probe-attention-{next(_ids)}"
    assets = f"<style>{static_text('report.css')}</style><script>{static_text('attention.js')}</script>" \
        if with_assets else ""
    heading = f"<h3>{html.escape(title)}</h3>" if title else ""
    return (
        f'{assets}<div class="probe-attention" id="{element}">{heading}</div>'
        f"<script>probeAttentionViewer(document.getElementById({json.dumps(element)}), "
        f"{json_for_script(sentences)});</script>"
    )
