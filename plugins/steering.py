"""Steering along a probe's direction: does pushing the residual stream toward a sense make the model treat
the word as that sense?

Reporter ``steering``. At layer L (hidden state L, the best-probed layer with a block after it by default)
the run's own probe is fitted on each fold's training rows; its direction toward sense s, mapped back into
the residual space (probe/science/steering.py), is added at the hook point ``blocks.{L}.resid_pre`` — the
residual stream entering block L, which is hidden state L itself — as α · σ · û: û the unit direction, σ
the std of the training rows' projections onto û (the data's own spread along it), α from ``alphas``. The
vector is added at the tokens the probe reads (the target's word pieces, or the last token; ``at: all``:
every token of the row), to the fold's held-out rows only, and blocks L.. are rerun. Reported, against
random unit directions scaled to the same norm (``draws`` seeded draws per fold):

(a) later layers' probes (each fitted on the fold's training rows, unsteered): the fraction of held-out
    rows of another sense that the probe now calls s ("toward s"), averaged over the senses steered to;
(b) the model's own outputs at the probed token (plugins/own_outputs.py): the next-token distribution for a
    causal LM, the masked-LM distribution at the word for a masked LM; "not available" for a checkpoint with
    neither head (all-MiniLM-L6-v2 is a bare sentence encoder). Two numbers: the KL divergence from the
    unsteered distribution, and the change in log-probability of the tokens typical of s (the ``top_k``
    tokens whose mean probability over the fold's training rows of sense s most exceeds their mean over all
    its training rows).

Every interval is a 95% bootstrap over held-out rows (seeded). The conditions (sense × α × direction) run
batched: each forward carries copies of a batch, one per condition, and one copy adds a zero vector, whose
results are checked against the unsteered run (``alpha0_max_abs_diff``: it runs in a forward of its own,
shaped as the unsteered one, and must match it bit for bit).

Options under ``options.steering``: ``layer``, ``alphas`` (default [0, 1, 2, 4, 8]), ``senses`` (default all),
``at`` (probed | all), ``draws`` (default 3), ``position`` (default the config's first), ``top_k`` (10).
Writes steering.json, steering.csv and steering.png, and records the intervention in results.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from probe import hookimpl

OPTIONS = ("layer", "alphas", "senses", "at", "draws", "position", "top_k")
DEFAULT_ALPHAS = (0, 1, 2, 4, 8)
ROWS_PER_FORWARD = 8  # × the config's batch size: how many copies of a batch one forward carries


def _error(message: str):
    from probe.science.steering import SteeringError

    return SteeringError(f"options.steering: {message}")


def _positive_int(options: dict, name: str, default: int) -> int:
    value = options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _error(f"{name} must be a positive integer, got {value!r}")
    return value


def steering_settings(results, config, n_blocks: int, labels: list) -> dict:
    """The options with their defaults, checked; a SteeringError names the option at fault."""
    from probe.pipeline.config import plugin_options

    options = plugin_options(config, "steering", OPTIONS)
    position = options.get("position", config.positions[0])
    if position not in ("target", "last") or position not in config.positions:
        raise _error(f"position is {position!r}; this run probed {config.positions} (target or last can be steered)")
    rows = [r for r in results.rows if r.position == position and r.subset == "all" and r.layer < n_blocks]
    layer = options.get("layer", max(rows, key=lambda r: r.accuracy).layer if rows else 0)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_blocks:
        raise _error(f"layer is {layer!r}; it must be a layer with a block after it: 0..{n_blocks - 1}")
    alphas = options.get("alphas", list(DEFAULT_ALPHAS))
    if (not isinstance(alphas, list) or not alphas
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in alphas)):
        raise _error(f"alphas must be a non-empty list of numbers, got {alphas!r}")
    senses = options.get("senses", list(labels))
    if not isinstance(senses, list) or not senses or any(s not in labels for s in senses):
        raise _error(f"senses must be a non-empty list of the run's labels ({', '.join(map(str, labels))}), "
                     f"got {senses!r}")
    at = options.get("at", "probed")
    if at not in ("probed", "all"):
        raise _error(f"at is {at!r}; accepted values: probed (the tokens the probe reads), all (every token)")
    return {"layer": layer, "hook_point": f"blocks.{layer}.resid_pre", "position": position, "at": at,
            "alphas": sorted({float(a) for a in alphas}), "senses": list(dict.fromkeys(senses)),
            "draws": _positive_int(options, "draws", 3), "top_k": _positive_int(options, "top_k", 10)}


# ------------------------------------------------------------------ the unsteered run and the fold fits


@dataclass
class Clean:
    """The unsteered run: vectors at layer L and every later layer, and the model's own log-probabilities."""

    X: dict  # layer → (rows, d)
    log_probs: object | None  # torch (rows, vocab), or None without an LM head


def read_positions(batch, position: str) -> list[int]:
    """Each row's token the probe reads last: the target's last word piece, or the row's last token."""
    return [targets[-1] for targets in batch.targets] if position == "target" else batch.last.tolist()


def clean_pass(model, inputs, settings: dict, n_blocks: int, pooling: str, readout) -> Clean:
    import torch

    from probe.pipeline.partial import vectors_from

    n_rows = sum(len(batch.rows) for batch in inputs)
    kept = {}

    def read(batch, hidden):
        lp = readout.log_probs(batch, hidden, read_positions(batch, settings["position"]))
        if "lp" not in kept:
            kept["lp"] = torch.empty(n_rows, lp.shape[-1])
        kept["lp"][batch.rows] = lp

    layers = range(settings["layer"], n_blocks + 1)
    X = vectors_from(model, inputs, settings["layer"], layers, settings["position"], pooling,
                     read if readout else None)
    return Clean(X, kept.get("lp"))


@dataclass
class FoldFit:
    directions: dict  # sense → unit vector (the probe's, at layer L)
    spread: dict  # sense → std of the training rows' projections onto it
    random: list  # draws × unit vector
    probes: dict  # later layer → fitted probe
    typical: dict = field(default_factory=dict)  # sense → token ids typical of it (with an LM head)


def fold_fits(run, clean: Clean, y, fold_list, settings: dict) -> list[FoldFit]:
    from probe.science.steering import projection_spread, random_direction, sense_directions
    from probe_plugins.own_outputs import typical_tokens

    layer, make_probe = settings["layer"], run.services.make_probe()
    fits = []
    for fold, (train, _) in enumerate(fold_list):
        probe = make_probe().fit(clean.X[layer][train], y[train])
        directions = sense_directions(probe, run.config.probe_name)
        missing = [s for s in settings["senses"] if s not in directions]
        if missing:
            raise _error(f"sense {missing[0]!r} has no training rows in fold {fold}: the probe has no direction for it")
        d = clean.X[layer].shape[1]
        fits.append(FoldFit(
            directions=directions,
            spread={s: projection_spread(clean.X[layer][train], u) for s, u in directions.items()},
            random=[random_direction(d, [run.config.seed, fold, draw]) for draw in range(settings["draws"])],
            probes={ell: make_probe().fit(X[train], y[train]) for ell, X in clean.X.items() if ell > layer},
            typical=typical_tokens(clean.log_probs, y, train, settings["senses"], settings["top_k"])
            if clean.log_probs is not None else {},
        ))
    return fits


# ------------------------------------------------------------------ the steered runs, batched


def conditions(settings: dict) -> list[tuple]:
    """(sense, α, direction): one zero-vector condition, then every sense × non-zero α × direction."""
    kinds = ["probe", *(f"random-{draw}" for draw in range(settings["draws"]))]
    return [(None, 0.0, "zero")] + [(s, a, k) for s in settings["senses"] for a in settings["alphas"] if a != 0
                                     for k in kinds]


def steering_vector(fit: FoldFit, condition: tuple):
    import numpy as np

    sense, alpha, kind = condition
    if kind == "zero":
        return np.zeros_like(next(iter(fit.directions.values())))
    unit = fit.directions[sense] if kind == "probe" else fit.random[int(kind.split("-")[1])]
    return alpha * fit.spread[sense] * unit  # a random direction gets the probe direction's norm


def tiled(batch, copies: int):
    """``batch`` repeated ``copies`` times along the batch dimension (copy c holds rows c·B .. c·B+B-1)."""
    import torch

    from probe.pipeline.partial import BlockInputs

    size = len(batch.rows)

    def tile(value):
        if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == size:
            return value.repeat(copies, *([1] * (value.ndim - 1)))
        if isinstance(value, (tuple, list)):
            return type(value)(tile(v) for v in value)
        if isinstance(value, dict):
            return {k: tile(v) for k, v in value.items()}
        return value

    return BlockInputs(list(range(size * copies)), tile(batch.encoding), tile(batch.args), tile(batch.kwargs),
                       batch.targets * copies, batch.last.repeat(copies), batch.cut)


def steering_hook(delta):
    """A hook function that adds ``delta`` (the hooked tensor's shape, float32, on its device) to the
    residual stream. x + 0 is x: where ``delta`` is zero nothing changes, bit for bit."""

    def add(resid, name):
        return (resid.float() + delta).to(resid.dtype)

    return add


def steered_positions(batch, settings: dict, row: int) -> list[int]:
    if settings["at"] == "all":
        return batch.encoding["attention_mask"][row].nonzero().flatten().tolist()
    return batch.targets[row] if settings["position"] == "target" else [int(batch.last[row])]


@dataclass
class Steered:
    """Per condition × row: later probes' predicted label index per layer, and the model's own outputs."""

    predicted: object  # (conditions, rows, later layers) int, -1 where the row was not held out
    kl: object  # (conditions, rows) KL(steered ‖ unsteered), nats; NaN without an LM head
    typical: object  # (conditions, rows) log P(typical tokens of the condition's sense)
    zero_diff: float = 0.0  # the zero condition's largest |vector − unsteered vector|


def steer_pass(run, model, inputs, settings, clean: Clean, fits, held_out, labels, readout) -> Steered:
    import numpy as np

    from probe.core.hooks import hooks
    from probe.pipeline.partial import vectors_from
    from probe.pipeline.progress import progress_bar

    todo, later = conditions(settings), sorted(fits[0].probes)
    n_rows = len(held_out)
    out = Steered(np.full((len(todo), n_rows, len(later)), -1), np.full((len(todo), n_rows), np.nan),
                  np.full((len(todo), n_rows), np.nan))
    index = {label: i for i, label in enumerate(labels)}
    rows_per_forward = ROWS_PER_FORWARD * run.config.batch_size
    bar = progress_bar(run.services.progress, total=len(todo) * n_rows, unit="row",
                       desc=f"{run.config.name}: steering at layer {settings['layer']}")
    with bar:
        for batch in inputs:
            per_forward = max(1, rows_per_forward // len(batch.rows))
            # The zero condition runs alone, shaped as the unsteered run was, so that it can match it bit
            # for bit; the others share forwards (a forward's shape changes its last bits, not its meaning).
            chunks = [[0]] + [list(range(start, min(start + per_forward, len(todo))))
                              for start in range(1, len(todo), per_forward)]
            for chunk in chunks:
                copy = tiled(batch, len(chunk))
                delta = _deltas(batch, copy, chunk, todo, fits, held_out, settings)
                device = copy.args[0].device if copy.args else copy.kwargs["hidden_states"].device
                delta = delta.to(device)

                read = (lambda b, h: _read_outputs(b, h, batch, chunk, todo, fits, held_out, clean, settings,
                                                   readout, out)) if readout else None
                with hooks(model, {settings["hook_point"]: steering_hook(delta)}):
                    vectors = vectors_from(model, [copy], settings["layer"], later, settings["position"],
                                           run.config.pooling, read)
                _predict(vectors, batch, chunk, fits, held_out, later, index, out)
                if chunk[0] == 0:  # the zero condition: copy 0
                    size = len(batch.rows)
                    out.zero_diff = max(out.zero_diff, *(float(np.abs(vectors[ell][:size] - clean.X[ell][batch.rows]).max())
                                                         for ell in later))
                bar.update(len(chunk) * len(batch.rows))
    return out


def _deltas(batch, copy, chunk, todo, fits, held_out, settings):
    import torch

    hidden = copy.args[0] if copy.args else copy.kwargs["hidden_states"]
    delta = torch.zeros(hidden.shape, dtype=torch.float32)
    size = len(batch.rows)
    for c, condition in enumerate(chunk):
        for i, row in enumerate(batch.rows):
            if held_out[row] < 0:
                continue
            vector = torch.from_numpy(steering_vector(fits[held_out[row]], todo[condition])).float()
            delta[c * size + i, steered_positions(batch, settings, i)] = vector
    return delta


def _predict(vectors, batch, chunk, fits, held_out, later, index, out) -> None:
    import numpy as np

    size, rows = len(batch.rows), np.asarray(batch.rows)
    for fold, fit in enumerate(fits):
        mine = np.flatnonzero(held_out[rows] == fold)
        if not len(mine):
            continue
        for c, condition in enumerate(chunk):
            for j, ell in enumerate(later):
                predicted = fit.probes[ell].predict(vectors[ell][c * size + mine])
                out.predicted[condition, rows[mine], j] = [index[p] for p in predicted]


def _read_outputs(copy, hidden, batch, chunk, todo, fits, held_out, clean, settings, readout, out) -> None:
    import torch

    size = len(batch.rows)
    log_probs = readout.log_probs(copy, hidden, read_positions(copy, settings["position"]))
    for c, condition in enumerate(chunk):
        sense = todo[condition][0]
        for i, row in enumerate(batch.rows):
            if held_out[row] < 0:
                continue
            steered, unsteered = log_probs[c * size + i], clean.log_probs[row]
            out.kl[condition, row] = float((steered.exp() * (steered - unsteered)).sum())
            if sense is not None:
                out.typical[condition, row] = float(torch.logsumexp(steered[fits[held_out[row]].typical[sense]], 0))


# ------------------------------------------------------------------ the summary


def held_out_folds(fold_list, n_rows: int):
    """Each row's fold that holds it out, -1 for a row in no test part (a fixed split's train rows)."""
    import numpy as np

    held_out = np.full(n_rows, -1)
    for fold, (_, test) in enumerate(fold_list):
        held_out[test] = fold
    return held_out


def summarise(settings, steered: Steered, clean_predicted, clean_typical, y, labels, held_out, seed) -> dict:
    """Per α × direction (probe, random pooled over draws) × later layer: the fraction toward s with its
    interval; and the outputs' KL and Δ log P(typical tokens), each averaged over the senses steered to."""
    import numpy as np

    from probe.science.steering import bootstrap_interval

    todo, rows = conditions(settings), np.flatnonzero(held_out >= 0)
    later = list(range(settings["layer"] + 1, settings["layer"] + 1 + steered.predicted.shape[2]))
    kinds = {"probe": ["probe"], "random": [f"random-{d}" for d in range(settings["draws"])]}
    index = {label: i for i, label in enumerate(labels)}

    def per_row(alpha, kinds_, value):
        """Each held-out row's value(condition index, sense, row) averaged over the other senses and kinds."""
        table = np.full(len(rows), np.nan)
        for n, row in enumerate(rows):
            picks = [value(0 if alpha == 0 else todo.index((s, alpha, k)), s, row)
                     for s in settings["senses"] if s != y[row] for k in kinds_]
            table[n] = np.mean(picks) if picks else np.nan
        return table[~np.isnan(table)]

    def entry(values):
        low, high = bootstrap_interval(values, seed)
        return {"mean": float(np.mean(values)) if len(values) else float("nan"), "ci": [low, high]}

    table, outputs = [], []
    for alpha in settings["alphas"]:
        for kind, names in kinds.items():
            for j, ell in enumerate(later):
                toward = per_row(alpha, names, lambda c, s, row: steered.predicted[c, row, j] == index[s])
                row = {"alpha": alpha, "direction": kind, "layer": ell, "toward": entry(toward)}
                if kind == "random":
                    row["toward_draws"] = [float(np.mean(per_row(alpha, [d], lambda c, s, r: steered.predicted[c, r, j] == index[s])))
                                           for d in names]
                table.append(row)
            if clean_typical is not None:
                kl = per_row(alpha, names, lambda c, s, row: steered.kl[c, row])
                gain = per_row(alpha, names, lambda c, s, row: (0.0 if alpha == 0 else steered.typical[c, row])
                               - (0.0 if alpha == 0 else clean_typical[s][row]))
                outputs.append({"alpha": alpha, "direction": kind, "kl": entry(kl), "delta_log_p_typical": entry(gain)})
    unsteered = {ell: float(np.mean(per_row(0, ["zero"], lambda c, s, row, j=j: clean_predicted[row, j] == index[s])))
                 for j, ell in enumerate(later)}
    return {"layers": table, "outputs": outputs, "unsteered_toward": unsteered}


def clean_predictions(clean: Clean, fits, held_out, labels):
    """(rows, later layers) each held-out row's unsteered prediction by its fold's probes, as label indices."""
    import numpy as np

    later = sorted(fits[0].probes)
    index = {label: i for i, label in enumerate(labels)}
    predicted = np.full((len(held_out), len(later)), -1)
    for fold, fit in enumerate(fits):
        mine = np.flatnonzero(held_out == fold)
        for j, ell in enumerate(later):
            predicted[mine, j] = [index[p] for p in fit.probes[ell].predict(clean.X[ell][mine])]
    return predicted


def clean_typical_log_probs(clean: Clean, fits, held_out, settings) -> dict | None:
    """sense → (rows,) log P(the sense's typical tokens) unsteered, each row with its own fold's tokens."""
    import numpy as np
    import torch

    if clean.log_probs is None:
        return None
    table = {s: np.full(len(held_out), np.nan) for s in settings["senses"]}
    for row in np.flatnonzero(held_out >= 0):
        for s in settings["senses"]:
            table[s][row] = float(torch.logsumexp(clean.log_probs[row][fits[held_out[row]].typical[s]], 0))
    return table


# ------------------------------------------------------------------ the reporter


def steering(results, output_dir, run):
    import numpy as np

    from probe.pipeline.interventions import record
    from probe.pipeline.partial import capture_block_inputs
    from probe_plugins.own_outputs import own_outputs

    config, n_blocks = run.config, run.services.n_blocks
    y = np.asarray(run.rows.table["label"])
    labels = sorted(set(y.tolist()))
    settings = steering_settings(results, config, n_blocks, labels)
    fold_list = run.splits.folds()
    held_out = held_out_folds(fold_list, len(y))
    readout, missing = own_outputs(run)
    model, tokenizer = run.services.load_model()
    inputs = capture_block_inputs(model, tokenizer, run.rows.table["text"], run.rows.spans, settings["layer"],
                                  config.batch_size, whole_rows=settings["position"] == "last")
    clean = clean_pass(model, inputs, settings, n_blocks, config.pooling, readout)
    fits = fold_fits(run, clean, y, fold_list, settings)
    steered = steer_pass(run, model, inputs, settings, clean, fits, held_out, labels, readout)
    summary = {**settings, "folds": len(fold_list), "rows": int((held_out >= 0).sum()),
               "alpha_unit": "the std of the fold's training rows' projections onto the probe's unit direction",
               "spread": {str(s): float(np.mean([fit.spread[s] for fit in fits])) for s in settings["senses"]},
               "residual_norm": float(np.mean(np.linalg.norm(clean.X[settings["layer"]], axis=1))),
               "alpha0_max_abs_diff": steered.zero_diff,
               "outputs_kind": readout.kind if readout else None,
               **({"outputs_reason": missing} if missing else {}),
               **summarise(settings, steered, clean_predictions(clean, fits, held_out, labels),
                           clean_typical_log_probs(clean, fits, held_out, settings), y, labels, held_out,
                           config.seed)}
    _write(summary, output_dir)
    _plot(results, summary, output_dir)
    options = {k: summary[k] for k in ("alphas", "senses", "at", "draws", "position", "top_k")}
    results.interventions.append(record("steering", "steering", options, [settings["hook_point"]],
                                        layers=[settings["layer"]], effect=effect_summary(summary),
                                        note="measured on reruns only: the probes in results.json are unsteered"))
    return summary


def effect_summary(summary: dict) -> dict:
    """The largest α's effect at the last layer: toward s (probe vs random) and, with an LM head, Δ log P."""
    alpha, last = max(summary["alphas"], key=abs), max(row["layer"] for row in summary["layers"])
    pick = {row["direction"]: row["toward"] for row in summary["layers"] if row["alpha"] == alpha and row["layer"] == last}
    effect = {"alpha": alpha, "layer": last, "toward_probe": pick["probe"], "toward_random": pick["random"],
              "toward_unsteered": summary["unsteered_toward"][last]}
    outputs = {row["direction"]: row["delta_log_p_typical"] for row in summary["outputs"] if row["alpha"] == alpha}
    if outputs:
        effect["outputs_kind"] = summary["outputs_kind"]
        effect["delta_log_p_typical_probe"], effect["delta_log_p_typical_random"] = outputs["probe"], outputs["random"]
    return effect


def _write(summary: dict, output_dir) -> None:
    from probe.store.files import write_text_atomic

    write_text_atomic(output_dir / "steering.json", json.dumps(summary, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["alpha", "direction", "layer", "toward", "ci_low", "ci_high"])
    for row in summary["layers"]:
        writer.writerow([row["alpha"], row["direction"], row["layer"], row["toward"]["mean"], *row["toward"]["ci"]])
    write_text_atomic(output_dir / "steering.csv", buffer.getvalue())


def _plot(results, summary: dict, output_dir):
    """Left: the fraction of other senses' rows the last layer's probe calls s, against α (bands: 95%
    intervals). Right: the change in log-probability of the tokens typical of s, when available."""
    import numpy as np

    from probe.report.writers import _pyplot, _save

    plt = _pyplot()
    has_outputs = bool(summary["outputs"])
    fig, axes = plt.subplots(1, 2 if has_outputs else 1, figsize=(10 if has_outputs else 6, 3.8), squeeze=False)
    last = max(row["layer"] for row in summary["layers"])
    for kind, colour in (("probe", "C3"), ("random", "C0")):
        rows = [row for row in summary["layers"] if row["direction"] == kind and row["layer"] == last]
        alphas = [row["alpha"] for row in rows]
        mean = np.array([row["toward"]["mean"] for row in rows])
        low, high = (np.array([row["toward"]["ci"][i] for row in rows]) for i in (0, 1))
        axes[0, 0].plot(alphas, mean, color=colour, marker="o", ms=3, label=f"{kind} direction")
        axes[0, 0].fill_between(alphas, low, high, color=colour, alpha=0.2, lw=0)
        if has_outputs:
            rows = [row for row in summary["outputs"] if row["direction"] == kind]
            gain = np.array([row["delta_log_p_typical"]["mean"] for row in rows])
            glow, ghigh = (np.array([row["delta_log_p_typical"]["ci"][i] for row in rows]) for i in (0, 1))
            axes[0, 1].plot([row["alpha"] for row in rows], gain, color=colour, marker="o", ms=3, label=kind)
            axes[0, 1].fill_between([row["alpha"] for row in rows], glow, ghigh, color=colour, alpha=0.2, lw=0)
    ax = axes[0, 0]
    ax.set_xlabel("α (× the data's spread along the probe's direction)"), ax.set_ylabel(f"layer {last}: fraction called s")
    ax.set_ylim(0, 1.02), ax.legend(fontsize=7)
    where = "every token" if summary["at"] == "all" else f"the {summary['position']} token"
    ax.set_title(f"{results.experiment}, {results.model.name}: steered at layer {summary['layer']}, {where}"
                 + ("" if has_outputs else f"\nmodel outputs {summary.get('outputs_reason', 'n/a')}"), fontsize=8)
    if has_outputs:
        axes[0, 1].axhline(0, color="0.3", lw=0.8)
        axes[0, 1].set_xlabel("α"), axes[0, 1].set_ylabel(f"Δ log P(tokens typical of s), {summary['outputs_kind']}")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, output_dir / "steering.png")


@hookimpl
def register_reporters(register):
    register("steering", steering)
