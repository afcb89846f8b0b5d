"""Activation patching through the attention core's hook points: run a base sentence while copying one
component's activation in from a source sentence, many patches in one forward.

A *patch* is one component of the source's clean run — a head's ``z`` in block b, block b's attention
output (``attn.out``) or MLP output (``mlp.out``), or the residual stream entering block b (layer b) at
one position — written over the same component of the base's run. The base sentence is copied once per
patch (plus one unpatched copy) and the copies run as one batch; each copy's hook writes only its own
row, so a copy sees exactly its one patch (``probe.pipeline.partial.copy_hooks``, which head ablation
shares).

Positions are aligned on the target word: base and source must cover the target with the same number of
tokens; base position p takes the source's position p + (source target start − base target start). A
position with no partner in the source (the sentences differ in length) keeps the base's own value: a
head, attention or MLP patch writes every aligned position, a residual patch one aligned position,
named relative to the target (−1 is the token before its first token, +1 the token after its last;
``target`` is all of its tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from probe.pipeline.extract import encode_rows, pool_targets
from probe.pipeline.partial import Edit, copy_hooks
from probe.scale.devices import device_of, on_device

TARGET = "target"


class _Stop(Exception):
    """Raised once the probed layer is read: nothing after it changes the vectors."""


@dataclass(frozen=True)
class Pair:
    """Run row ``base`` while patching in from row ``source`` (same target word, another sense)."""

    base: int
    source: int


def sample_pairs(targets, labels, groups, target_tokens, n_pairs: int, seed: int, contexts=None) -> list[Pair]:
    """Up to ``n_pairs`` ordered (base, source) pairs: same target word (case aside), different labels, the
    target covered by as many tokens in both, and different ``contexts`` (each row's tokens as the target
    sees them: in a causal model two rows that share everything up to the target are one input there, and
    no patch can move one toward the other). Pairs within one template ``group`` come first (their
    contexts differ least); other pairs fill up only when there are too few. Seeded, in sampled order."""
    rng = np.random.default_rng(seed)
    same_group, other = [], []
    for base in range(len(targets)):
        for source in range(len(targets)):
            if (str(targets[base]).lower() != str(targets[source]).lower() or labels[base] == labels[source]
                    or target_tokens[base] != target_tokens[source]
                    or (contexts is not None and contexts[base] == contexts[source])):
                continue
            grouped = groups is not None and groups[base] is not None and groups[base] == groups[source]
            (same_group if grouped else other).append(Pair(base, source))
    chosen = [same_group[i] for i in rng.permutation(len(same_group))]
    chosen += [other[i] for i in rng.permutation(len(other))]
    return chosen[:n_pairs]


@dataclass
class Sentence:
    """One row encoded alone (no padding): its tokens and target token indices."""

    encoding: dict
    targets: list[int]

    @property
    def length(self) -> int:
        return int(self.encoding["input_ids"].shape[1])


def encode_sentence(tokenizer, text: str, span: tuple[int, int], cut: bool) -> Sentence:
    encoding, targets, _ = encode_rows(tokenizer, [text], [span], cut)
    return Sentence(encoding, targets[0])


def relative_position(sentence: Sentence, p: int):
    """``target`` inside the target, else the distance from its nearest edge (negative before it)."""
    first, last = sentence.targets[0], sentence.targets[-1]
    if p < first:
        return p - first
    return TARGET if p <= last else p - last


def aligned(base: Sentence, source: Sentence) -> dict:
    """Relative position → (base positions, source positions), for every base position with a partner."""
    shift = source.targets[0] - base.targets[0]
    out: dict = {}
    for p in range(base.length):
        if 0 <= p + shift < source.length:
            positions = out.setdefault(relative_position(base, p), ([], []))
            positions[0].append(p)
            positions[1].append(p + shift)
    return out


@dataclass(frozen=True)
class Component:
    """What one copy patches: ``kind`` head | attn | mlp | resid, at ``block`` (for resid: the residual
    stream entering that block, i.e. layer ``block``), ``head`` for a head, ``position`` for resid."""

    kind: str
    block: int
    head: int | None = None
    position: object = "all"

    @property
    def head_label(self):
        return self.head if self.kind == "head" else self.kind


@dataclass
class TracePoints:
    """The hook point names of one model: where each component is read and written."""

    n_blocks: int
    n_heads: int
    layer: int  # the probed layer
    final_norm: bool = False
    has_mlp: bool = True
    kinds: tuple = field(default=("head", "attn", "mlp", "resid"))

    def residual(self, layer: int) -> str:
        if layer < self.n_blocks:
            return f"blocks.{layer}.resid_pre"
        return "ln_final.out" if self.final_norm else f"blocks.{self.n_blocks - 1}.resid_post"

    def name(self, component: Component) -> str:
        if component.kind == "resid":
            return self.residual(component.block)
        return {"head": f"blocks.{component.block}.attn.z", "attn": f"blocks.{component.block}.attn.out",
                "mlp": f"blocks.{component.block}.mlp.out"}[component.kind]

    def components(self, relative_positions) -> list[Component]:
        """Every head, attention and MLP output of the blocks before the probed layer, the residual stream
        at every layer before it and every position in ``relative_positions``, and at the probed layer at
        the target (the patch that scores 1)."""
        out = []
        for block in range(self.layer):
            if "head" in self.kinds:
                out += [Component("head", block, head) for head in range(self.n_heads)]
            if "attn" in self.kinds:
                out.append(Component("attn", block))
            if "mlp" in self.kinds and self.has_mlp:
                out.append(Component("mlp", block))
        if "resid" in self.kinds:  # at the probed layer itself only the target is read: elsewhere it is 0
            out += [Component("resid", layer, position=position)
                    for layer in range(self.layer) for position in relative_positions]
            out.append(Component("resid", self.layer, position=TARGET))
        return out


def _edit(component: Component, alignment: dict, source_values: dict, points: TracePoints) -> Edit:
    """What one component's copy writes: the source's values at the aligned positions."""
    if component.kind == "resid":
        base_positions, source_positions = alignment[component.position]
    else:
        base_positions = [p for positions, _ in alignment.values() for p in positions]
        source_positions = [p for _, positions in alignment.values() for p in positions]
    name = points.name(component)
    values = source_values[name][0]
    if component.kind == "head":
        return Edit(name, component.head, values[component.head, source_positions], base_positions)
    return Edit(name, None, values[source_positions], base_positions)


@torch.inference_mode()
def clean_run(model, sentence: Sentence, names: list[str]) -> tuple[dict, object]:
    """Every named activation of one sentence's unpatched run (batch of one), and the model's output."""
    from probe.core.hooks import capture

    with capture(model, names) as seen:
        output = model(**on_device(sentence.encoding, device_of(model)), use_cache=False)
    return dict(seen), output


def next_token_log_probability(head, output, position: int, token: int) -> torch.Tensor:
    """log p(``token``) after ``position``, per row: ``head`` (the checkpoint's LM head) on the model's
    last hidden state, which Hugging Face's decoders return after their final norm."""
    logits = head(output.last_hidden_state[:, position]).float()
    return torch.log_softmax(logits, dim=-1)[:, token].cpu()


@torch.inference_mode()
def patched_vectors(model, base: Sentence, source: Sentence, components: list, points: TracePoints,
                    source_values: dict, pooling: str = "mean", batch: int = 256, head=None,
                    next_token: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The probed layer's target vector of the base sentence under each component's patch (one row each),
    ``batch`` copies per forward; a component given as None is the unpatched base. With an LM ``head``
    and a ``next_token``, the whole model runs and each copy's log-probability of that token after the
    target comes back too (else None)."""
    from probe.core.hooks import hooks

    alignment = aligned(base, source)
    read_at = points.residual(points.layer)
    whole = head is not None and next_token is not None
    vectors, next_log_p = [], []
    for start in range(0, len(components), batch):
        chunk = components[start:start + batch]
        copies = [None if component is None else [_edit(component, alignment, source_values, points)]
                  for component in chunk]
        encoding = {name: values.expand(len(chunk), -1) for name, values in base.encoding.items()}
        seen = {}

        def read(tensor, name):
            seen["hidden"] = tensor
            if not whole:
                raise _Stop

        with hooks(model, copy_hooks(copies)):
            with hooks(model, {read_at: read}):  # attached after the patches: it reads what they wrote
                try:
                    output = model(**on_device(encoding, device_of(model)), use_cache=False)
                    if whole:
                        next_log_p.append(next_token_log_probability(head, output, base.targets[-1], next_token))
                except _Stop:
                    pass
        vectors.append(pool_targets(seen["hidden"].float().cpu(), [base.targets] * len(chunk), pooling))
    return np.concatenate(vectors), torch.cat(next_log_p).double().numpy() if whole else None


def sense_difference(probe, vectors: np.ndarray, source_class: int, base_class: int) -> np.ndarray:
    """The probe's log-probability of the source's sense minus the base's, per vector."""
    log_probabilities = probe.predict_log_proba(vectors)
    return log_probabilities[:, source_class] - log_probabilities[:, base_class]


@torch.inference_mode()
def trace_pair(model, probe, classes: list, base: Sentence, source: Sentence, labels: tuple, points: TracePoints,
               pooling: str = "mean", batch: int = 256, window: int | None = None, head=None,
               next_token: int | None = None) -> dict:
    """One pair's patches: {"components": [...], "moved": d − d_base per component, "full": d_source − d_base}.
    d is ``sense_difference`` at the probed layer; d_base is the unpatched copy's, run in the first batch.
    With an LM ``head`` and the source's ``next_token`` (the token after its target) also "next_moved":
    the change in the base's log-probability of that token per patch, and "next_full": the source's own
    log-probability of it minus the base's."""
    alignment = aligned(base, source)
    relative = [p for p in alignment if p == TARGET or window is None or abs(p) <= window]
    components = points.components(relative)
    names = sorted({points.name(c) for c in components} | {points.residual(points.layer)})
    source_values, source_output = clean_run(model, source, names)
    vectors, next_log_p = patched_vectors(model, base, source, [None, *components], points, source_values, pooling,
                                          batch, head, next_token)
    source_vector = pool_targets(source_values[points.residual(points.layer)].float().cpu(), [source.targets],
                                 pooling)
    source_class, base_class = classes.index(labels[1]), classes.index(labels[0])
    d = sense_difference(probe, np.concatenate([vectors, source_vector]), source_class, base_class)
    traced = {"components": components, "moved": d[1:-1] - d[0], "full": float(d[-1] - d[0])}
    if next_log_p is not None:
        own = next_token_log_probability(head, source_output, source.targets[-1], next_token).double().item()
        traced |= {"next_moved": next_log_p[1:] - next_log_p[0], "next_full": own - float(next_log_p[0])}
    return traced


def summarise(traces: list[dict], seed: int = 0, draws: int = 1000) -> list[dict]:
    """Per component: effect = Σ moved / Σ full over the pairs that have it (a ratio of means: a pair whose
    probe barely separates the senses adds little, instead of dividing by almost nothing), with a 95%
    percentile-bootstrap interval over pairs (seeded). Where every pair has "next_moved": its mean over
    pairs (nats, not normalised) with its interval from the same draws, as next_token_change."""
    order = list(dict.fromkeys(c for trace in traces for c in trace["components"]))
    column = {c: i for i, c in enumerate(order)}
    moved = np.zeros((len(traces), len(order)))
    present = np.zeros((len(traces), len(order)))
    full = np.array([trace["full"] for trace in traces])
    for row, trace in enumerate(traces):
        where = [column[c] for c in trace["components"]]
        moved[row, where] = trace["moved"]
        present[row, where] = 1.0
    effect = moved.sum(0) / (present * full[:, None]).sum(0)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(traces), np.full(len(traces), 1 / len(traces)), size=draws).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawn = (weights @ moved) / (weights @ (present * full[:, None]))
    low, high = np.nanpercentile(drawn, [2.5, 97.5], axis=0)
    rows = [{"block": c.block, "head": c.head_label, "position": c.position, "effect": float(effect[i]),
             "ci_low": float(low[i]), "ci_high": float(high[i]), "pairs": int(present[:, i].sum())}
            for i, c in enumerate(order)]
    if any("next_moved" in trace for trace in traces):  # pairs whose source has no token after the target lack it
        next_moved, next_present = np.zeros_like(moved), np.zeros_like(present)
        for row, trace in enumerate(traces):
            if "next_moved" in trace:
                next_moved[row, [column[c] for c in trace["components"]]] = trace["next_moved"]
                next_present[row] = present[row]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = next_moved.sum(0) / next_present.sum(0)
            drawn = (weights @ next_moved) / (weights @ next_present)
        low, high = np.nanpercentile(drawn, [2.5, 97.5], axis=0)
        for i, row in enumerate(rows):
            row |= {"next_token_change": float(mean[i]), "next_token_ci_low": float(low[i]),
                    "next_token_ci_high": float(high[i])}
    return rows
