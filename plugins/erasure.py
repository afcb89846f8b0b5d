"""Concept erasure: does the model *use* the sense it encodes at a layer, or is it only decodable there?

Reporter ``erasure`` (amnesic probing, Elazar et al. 2021, with LEACE, Belrose et al. 2023): fit LEACE on
layer L's vectors against the labels, erase that subspace from the residual stream entering block L
(hook point ``blocks.{L}.resid_pre``) at every position of every row — as amnesic probing and LEACE's
concept scrubbing do, since the sense may sit at the context words as well — and rerun the model
from there. Reported against erasing a random subspace of the same rank (``draws`` seeded draws; see
probe/erasure.py for how it is drawn):

(a) probe accuracy at layer L and every later layer, a fresh probe per layer on the erased run;
(b) the change in the model's own next-token loss on the folds' test rows (every row under k folds, the
    test part of a fixed split; mean over predicted tokens; only for a checkpoint with a causal LM head,
    which is loaded once more for it; otherwise "not available").

No leakage: in each of the run's own folds (k folds, or a fixed split's train/test) the eraser is fitted
on the fold's training rows only; the probe is trained on those rows of the erased run and scored on the
fold's test rows, and each row's loss is measured under the eraser of the fold that holds it out.

Options under ``options.erasure``: ``layer`` (default: the best-probed layer that has a block after it),
``draws`` (random subspaces, default 5), ``position`` (default the config's first). Writes erasure.json,
erasure.csv and erasure.png. Needs the ``concept-erasure`` package (``pip install -e '.[erasure]'``).
"""

from __future__ import annotations

import csv
import io
import json

from probe import hookimpl

OPTIONS = ("layer", "draws", "position")


def erasure_settings(results, config, n_blocks: int) -> dict:
    from probe.pipeline.config import plugin_options

    options = plugin_options(config, "erasure", OPTIONS)
    position = options.get("position", config.positions[0])
    if position not in config.positions:
        raise ValueError(f"options.erasure.position is {position!r}; this run probed {config.positions}")
    rows = [r for r in results.rows if r.position == position and r.subset == "all" and r.layer < n_blocks]
    layer = options.get("layer", max(rows, key=lambda r: r.accuracy).layer if rows else 0)
    draws = options.get("draws", 5)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"options.erasure.layer must be an integer, got {layer!r}")
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"options.erasure.draws must be a positive integer, got {draws!r}")
    from probe.science.erasure import erasure_point

    return {"layer": layer, "draws": draws, "position": position, "hook_point": erasure_point(layer, n_blocks)}


def fold_erasers(X, y, fold_list, draws: int, seed: int) -> tuple[dict, list[int]]:
    """{(condition, fold): eraser} for LEACE and each random draw, fitted on each fold's training rows;
    and LEACE's rank per fold (the random subspaces get the same)."""
    from probe.science.erasure import concept_rank, fit_leace, random_fitter, whitening

    erasers, ranks = {}, []
    for fold, (train, _) in enumerate(fold_list):
        fitter = fit_leace(X[train], y[train])
        whitened = whitening(fitter)  # one eigendecomposition per fold, not one per draw
        ranks.append(concept_rank(fitter, whitened))
        erasers[("leace", fold)] = fitter.eraser
        for draw in range(draws):
            erasers[(f"random-{draw}", fold)] = random_fitter(fitter, ranks[-1], [seed, draw, fold], whitened).eraser
    return erasers, ranks


def unerased_vectors(run, settings: dict, loss, reader=None) -> tuple:
    """What block L receives (per batch), layer L's vectors, and {later layer: X} without erasure;
    with ``loss``, every row's next-token loss too; with ``reader`` (an OutputsReader), every row's own
    output distribution at the probed token."""
    from probe.pipeline.partial import capture_block_inputs, vectors_from

    config, layer = run.config, settings["layer"]
    model, tokenizer = run.services.load_model()
    inputs = capture_block_inputs(model, tokenizer, run.rows.table["text"], run.rows.spans, layer, config.batch_size,
                                  whole_rows=loss is not None or settings["position"] == "last")
    later = range(layer + 1, run.services.n_blocks + 1)
    meter = loss.meter(range(len(run.rows)), check=True) if loss else None
    vectors = vectors_from(model, inputs, layer, [layer, *later], settings["position"], config.pooling,
                           _each(meter, reader.clean if reader else None))
    return inputs, vectors.pop(layer), vectors, meter


def erased_vectors(run, settings: dict, inputs, erasers: dict, fold_list, loss, reader=None) -> tuple[dict, dict]:
    """{(condition, fold): {later layer: X}}: blocks L.. rerun with each eraser at ``blocks.{L}.resid_pre``;
    with ``loss``, {(condition, fold): meter} of the fold's test rows' next-token losses."""
    from probe.core.hooks import hooks
    from probe.pipeline.partial import vectors_from
    from probe.pipeline.progress import progress_bar
    from probe.science.erasure import erase_hook

    config, layer = run.config, settings["layer"]
    model, _ = run.services.load_model()
    later = range(layer + 1, run.services.n_blocks + 1)
    runs, meters = {}, {}
    for (condition, fold), eraser in progress_bar(run.services.progress, iterable=erasers.items(), unit="run",
                                                  desc=f"{config.name}: erasure at layer {layer}"):
        meter = meters[(condition, fold)] = loss.meter(fold_list[fold][1]) if loss else None
        read = reader.erased(condition, fold, fold_list[fold][1]) if reader else None
        with hooks(model, {settings["hook_point"]: erase_hook(eraser)}):
            runs[(condition, fold)] = vectors_from(model, inputs, layer, later, settings["position"],
                                                   config.pooling, _each(meter, read))
    return runs, meters


def score_layers(run, settings, X_layer, runs, erasers, y, fold_list) -> list[dict]:
    """Per layer from L on: accuracy without erasure, after LEACE (mean and std over folds) and after each
    random draw (mean over folds), each probe trained on its fold's training rows of its own run."""
    import numpy as np

    from probe.science.erasure import erase_numpy
    from probe.science.probes import FitTask, fit_all

    layer, draws = settings["layer"], settings["draws"]
    layers = [layer, *runs["unerased"]]
    conditions = ["leace", *(f"random-{d}" for d in range(draws))]
    tasks = [FitTask(("unerased", layer), X_layer, y, fold_list)]
    tasks += [FitTask(("unerased", ell), X, y, fold_list) for ell, X in runs["unerased"].items()]
    for condition in conditions:
        for fold, split in enumerate(fold_list):
            vectors = {layer: erase_numpy(erasers[(condition, fold)], X_layer), **runs[(condition, fold)]}
            tasks += [FitTask((condition, fold, ell), X, y, [split]) for ell, X in vectors.items()]
    predicted = fit_all(tasks, run.services.make_probe(), cache=run.services.cache_dir / "probes")

    def fold_accuracies(condition, ell):
        return [float(np.mean(predicted[(condition, fold, ell)][0] == y[test]))
                for fold, (_, test) in enumerate(fold_list)]

    table = []
    for ell in layers:
        unerased = [float(np.mean(p == y[test])) for p, (_, test) in zip(predicted[("unerased", ell)], fold_list)]
        leace = fold_accuracies("leace", ell)
        random = [float(np.mean(fold_accuracies(c, ell))) for c in conditions[1:]]
        table.append({"layer": ell, "unerased": float(np.mean(unerased)), "leace": float(np.mean(leace)),
                      "leace_std": float(np.std(leace)), "random": float(np.mean(random)),
                      "random_std": float(np.std(random)), "random_draws": random})
    return table


def _each(*callbacks):
    """One ``on_deepest`` callback that calls each of ``callbacks`` that is not None, or None."""
    kept = [callback for callback in callbacks if callback is not None]
    if not kept:
        return None
    return lambda batch, hidden: [callback(batch, hidden) for callback in kept] and None


def majority_accuracy(y, fold_list) -> float:
    """Always guessing the training fold's commonest label, on the same folds."""
    import numpy as np

    scores = []
    for train, test in fold_list:
        labels, counts = np.unique(y[train], return_counts=True)
        scores.append(float(np.mean(y[test] == labels[np.argmax(counts)])))
    return float(np.mean(scores))


# ------------------------------------------------------------------ (b) the model's own next-token loss


def lm_head_missing(run) -> str | None:
    """Why the next-token loss can't be measured here, or None when the checkpoint has a causal LM head."""
    names = getattr(run.services.model_config, "architectures", None) or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names):
        return None
    kind = ", ".join(names) or run.services.model_config.model_type
    return f"not available: the checkpoint ({kind}) has no causal language-model head"


class NextTokenLoss:
    """Rows' next-token loss from the rerun's last hidden state: the base model's final norm, then the
    checkpoint's LM head (the causal LM is loaded once more for it). The first batch is checked against
    the causal LM's own logits, so a family whose logits are something else (soft-capped, scaled) fails
    loudly instead of reporting a wrong loss."""

    def __init__(self, run, outputs=None):
        """``outputs``: an OwnOutputs of kind next-token, whose loaded LM, norm and head are reused."""
        from transformers import AutoModelForCausalLM

        from probe.core.adapters import adapter_for
        from probe.core.adapters.spec import module_at
        from probe.core.points import spec_of

        if outputs is not None and outputs.kind == "next-token":  # one copy of the LM's weights, not two
            self.norm, self.lm, self.head = outputs.norm, outputs.lm, outputs.head
            return
        model, _ = run.services.load_model()
        spec = spec_of(model, adapter_for(model))
        self.norm = module_at(getattr(model, "base_model", model), spec.final_norm) if spec else None
        if self.norm is None:
            raise ValueError(f"no final norm is known for model type {model.config.model_type!r}")
        self.lm = run.services.load_weights(AutoModelForCausalLM)
        self.head = self.lm.get_output_embeddings()

    def meter(self, rows, check: bool = False):
        return LossMeter(self, rows, check)


class LossMeter:
    """Called by ``vectors_from`` with each batch's last hidden state; sums the chosen rows' losses."""

    def __init__(self, loss: NextTokenLoss, rows, check: bool):
        self.loss, self.rows, self.check = loss, {int(r) for r in rows}, check
        self.sums, self.counts = {}, {}

    def __call__(self, batch, hidden) -> None:
        """``batch``: the BlockInputs (whole rows) that ``hidden`` came from."""
        import torch

        from probe.scale.devices import on_device

        if batch.cut:
            raise ValueError("a next-token loss needs every token: capture the rows with whole_rows=True")
        loss = self.loss
        picked = [i for i, row in enumerate(batch.rows) if row in self.rows]
        if not picked:
            return
        encoding = on_device(batch.encoding, hidden.device)
        with torch.inference_mode():
            logits = loss.head(loss.norm(hidden[picked]))
            if self.check:
                self._check(logits, encoding, picked)
        ids, real = encoding["input_ids"][picked, 1:], encoding["attention_mask"][picked, 1:].float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids, reduction="none")
        for i, total, count in zip(picked, (nll * real).sum(1).tolist(), real.sum(1).tolist()):
            self.sums[batch.rows[i]], self.counts[batch.rows[i]] = total, count
        self.check = False

    def _check(self, logits, encoding, picked) -> None:
        import torch

        full = self.loss.lm(**encoding, use_cache=False).logits[picked]
        real = encoding["attention_mask"][picked].bool()
        diff = (full - logits)[real].abs().max().item()
        tolerance = 50 * torch.finfo(logits.dtype).eps * full[real].abs().max().item()
        if diff > tolerance:
            raise ValueError(f"the LM head after the final norm gives logits {diff:.3g} away from the causal LM's "
                             f"own (tolerance {tolerance:.3g}): this family computes its logits differently")

    def total(self) -> tuple[float, float]:
        rows = sorted(self.sums)  # in dataset order, whatever order the batches came in
        return sum(self.sums[r] for r in rows), sum(self.counts[r] for r in rows)


def loss_summary(base, meters: dict, draws: int) -> dict:
    """Mean loss per predicted token on the folds' test rows (every row under k folds, the test part of a
    fixed split): without erasure, with LEACE, with each random draw (each row's erased loss from the fold
    that holds it out). A row in several test folds counts once per fold, unerased and erased alike."""
    import numpy as np

    tested = [meter.rows for (condition, _), meter in meters.items() if condition == "leace"]
    tokens = sum(base.counts[row] for rows in tested for row in sorted(rows))
    unerased = sum(base.sums[row] for rows in tested for row in sorted(rows)) / tokens

    def mean_loss(condition):
        return sum(m.total()[0] for (c, _), m in meters.items() if c == condition) / tokens

    leace = mean_loss("leace")
    random = [mean_loss(f"random-{d}") - unerased for d in range(draws)]
    return {"available": True, "tokens": int(tokens), "unerased": unerased, "leace": leace,
            "delta_leace": leace - unerased, "delta_random": float(np.mean(random)),
            "delta_random_std": float(np.std(random)), "delta_random_draws": random}


# ------------------------------------------------------------------ (c) the model's own outputs at the word


class OutputsReader:
    """The model's own distribution at the probed token (plugins/own_outputs.py: next-token for a causal LM,
    masked-LM at the word for a masked LM), as the steering reporter reads it: unerased for every row, then
    per eraser the KL from it and the log-probability of the tokens typical of the row's own sense (those
    picked on the fold's training rows), for the fold's test rows."""

    def __init__(self, readout, position: str, y, top_k: int = 10):
        self.readout, self.position, self.y, self.top_k = readout, position, y, top_k
        self.log_probs, self.typical, self.kl, self.own = None, {}, {}, {}

    def _read(self, batch, hidden):
        from probe_plugins.steering import read_positions

        return self.readout.log_probs(batch, hidden, read_positions(batch, self.position))

    def clean(self, batch, hidden) -> None:
        import torch

        log_probs = self._read(batch, hidden)
        if self.log_probs is None:
            self.log_probs = torch.empty(len(self.y), log_probs.shape[-1])
        self.log_probs[batch.rows] = log_probs

    def pick_tokens(self, fold_list) -> None:
        from probe_plugins.own_outputs import typical_tokens

        senses = sorted(set(self.y.tolist()))
        self.typical = [typical_tokens(self.log_probs, self.y, train, senses, self.top_k) for train, _ in fold_list]

    def erased(self, condition: str, fold: int, test):
        """An ``on_deepest`` callback for the rerun under ``condition``'s eraser of ``fold``."""
        import torch

        rows = {int(r) for r in test}

        def read(batch, hidden):
            log_probs = self._read(batch, hidden)
            for i, row in enumerate(batch.rows):
                if row in rows:
                    clean, erased = self.log_probs[row], log_probs[i]
                    self.kl[(condition, row)] = float((erased.exp() * (erased - clean)).sum())
                    ids = self.typical[fold][self.y[row]]
                    self.own[(condition, row)] = float(torch.logsumexp(erased[ids], 0) - torch.logsumexp(clean[ids], 0))

        return read

    def summary(self, draws: int, seed: int) -> dict:
        """Per held-out row, LEACE and the random draws (averaged per row), with 95% bootstrap intervals."""
        import numpy as np

        from probe.science.steering import bootstrap_interval

        rows = sorted({row for (condition, row) in self.kl if condition == "leace"})

        def entry(table, conditions):
            values = np.array([np.mean([table[(c, row)] for c in conditions]) for row in rows])
            low, high = bootstrap_interval(values, seed)
            return {"mean": float(values.mean()), "ci": [low, high]}

        randoms = [f"random-{d}" for d in range(draws)]
        out = {"available": True, "kind": self.readout.kind, "position": self.position, "rows": len(rows),
               "top_k": self.top_k}
        for name, table in (("kl", self.kl), ("delta_log_p_own_typical", self.own)):
            out[name] = {"leace": entry(table, ["leace"]), "random": entry(table, randoms),
                         "random_draws": [entry(table, [c])["mean"] for c in randoms]}
        return out


# ------------------------------------------------------------------ the reporter


def erasure(results, output_dir, run):
    from importlib.metadata import version

    import numpy as np

    from probe.pipeline.interventions import record
    from probe_plugins.own_outputs import own_outputs

    config = run.config
    settings = erasure_settings(results, config, run.services.n_blocks)
    y = np.asarray(run.rows.table["label"])
    fold_list = run.splits.folds()  # the run's own, under its evaluation protocol (k folds or a fixed split)
    missing = lm_head_missing(run)
    readout, no_outputs = own_outputs(run)
    reader = OutputsReader(readout, settings["position"], y) if readout else None
    loss = None if missing else NextTokenLoss(run, readout)
    inputs, X_layer, unerased, base = unerased_vectors(run, settings, loss, reader)
    erasers, ranks = fold_erasers(X_layer, y, fold_list, settings["draws"], config.seed)
    if reader:
        reader.pick_tokens(fold_list)
    runs, meters = erased_vectors(run, settings, inputs, erasers, fold_list, loss, reader)
    runs["unerased"] = unerased
    del inputs, loss
    summary = {**settings, "method": f"LEACE (concept-erasure {version('concept-erasure')})",
               "erased_at": "every position", "rank": ranks, "folds": len(fold_list),
               "majority": majority_accuracy(y, fold_list),
               "layers": score_layers(run, settings, X_layer, runs, erasers, y, fold_list),
               "loss": {"available": False, "reason": missing} if missing else
               loss_summary(base, meters, settings["draws"]),
               "outputs": reader.summary(settings["draws"], config.seed) if reader else
               {"available": False, "reason": no_outputs}}
    _write(summary, output_dir)
    _plot(results, summary, output_dir)
    results.interventions.append(record(
        "erasure", "erasure", {k: settings[k] for k in ("draws", "position")}, [settings["hook_point"]],
        layers=[settings["layer"]], effect=erasure_effect(summary),
        note="measured on reruns only: the probes in results.json are fitted on unerased vectors"))
    return summary


def erasure_effect(summary: dict) -> dict:
    """The erased layer's accuracy (LEACE vs random vs none) and, where measured, the outputs' change."""
    first = summary["layers"][0]
    effect = {"layer": first["layer"], "accuracy_unerased": first["unerased"], "accuracy_leace": first["leace"],
              "accuracy_random": first["random"], "majority": summary["majority"]}
    if summary["loss"]["available"]:
        effect["delta_next_token_loss"] = {"leace": summary["loss"]["delta_leace"],
                                           "random": summary["loss"]["delta_random"]}
    if summary["outputs"]["available"]:
        effect[f"{summary['outputs']['kind']} KL at the {summary['position']} token"] = {
            name: summary["outputs"]["kl"][name]["mean"] for name in ("leace", "random")}
    return effect


def _write(summary: dict, output_dir) -> None:
    from probe.store.files import write_text_atomic

    write_text_atomic(output_dir / "erasure.json", json.dumps(summary, indent=2) + "\n")
    columns = ["layer", "unerased", "leace", "leace_std", "random", "random_std"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary["layers"])
    write_text_atomic(output_dir / "erasure.csv", buffer.getvalue())


def _plot(results, summary: dict, output_dir):
    """Left: probe accuracy per layer, the run's own curve and, from the erased layer on, LEACE and the
    random subspaces (bands: std over folds / over draws). Right: the change in next-token loss."""
    import numpy as np

    from probe.report.writers import LAYER_AXIS, _pyplot, _save

    plt = _pyplot()
    has_loss = summary["loss"]["available"]
    fig, axes = plt.subplots(1, 2 if has_loss else 1, figsize=(10 if has_loss else 6.5, 3.8),
                             gridspec_kw={"width_ratios": [3, 1]} if has_loss else None, squeeze=False)
    ax = axes[0, 0]
    own = sorted((r.layer, r.accuracy) for r in results.rows if r.position == summary["position"] and r.subset == "all")
    ax.plot(*zip(*own), color="0.4", marker=".", label="no erasure")
    table = summary["layers"]
    layers = [row["layer"] for row in table]
    for name, colour, label in (("leace", "C3", "LEACE erased"), ("random", "C0", "random subspace, same rank")):
        mean, std = np.array([row[name] for row in table]), np.array([row[f"{name}_std"] for row in table])
        ax.plot(layers, mean, color=colour, marker="o", ms=3, label=label)
        ax.fill_between(layers, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
    ax.axhline(summary["majority"], color="0.6", ls="--", lw=1, label="majority class")
    ax.axvline(summary["layer"], color="0.2", ls=":", lw=1)
    ax.set_xlabel(LAYER_AXIS), ax.set_ylabel("probe accuracy"), ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="best")
    rank = max(summary["rank"])
    ax.set_title(f"{results.experiment}, {results.model.name}: erased at layer {summary['layer']} "
                 f"(rank {rank}, every position)" + ("" if has_loss else "; next-token loss n/a (no LM head)"),
                 fontsize=9)
    if has_loss:
        _plot_loss(axes[0, 1], summary["loss"])
    fig.tight_layout()
    return _save(fig, output_dir / "erasure.png")


def _plot_loss(ax, loss: dict) -> None:
    draws = loss["delta_random_draws"]
    ax.bar([0, 1], [loss["delta_leace"], loss["delta_random"]], color=["C3", "C0"], alpha=0.7)
    ax.scatter([1] * len(draws), draws, color="C0", s=10, zorder=3)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks([0, 1], ["LEACE", "random"])
    ax.set_ylabel("Δ next-token loss (nats/token)")
    ax.set_title(f"loss without erasure {loss['unerased']:.3f}", fontsize=9)


@hookimpl
def register_reporters(register):
    register("erasure", erasure)
