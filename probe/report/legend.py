"""How the report names runs and colours senses, the same in every figure: matplotlib's PNGs, the plotly
figures built in Python, and the views static/report.js draws (which read these colours from the page)."""

from __future__ import annotations

from collections import Counter

# Tableau's ten: distinct from one another and readable for the common colour-vision deficiencies.
SENSE_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                 "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
# Confusion matrices: white for 0, dark blue for 1, so that the diagonal of a good probe stands out.
CONFUSION_SCALE = ((0.0, "#f7fbff"), (0.5, "#6baed6"), (1.0, "#08306b"))


def position_words(position: str) -> str:
    """How a legend names a position: "target token", "last token", …; the mean is over tokens, not one."""
    return "mean over the tokens" if position == "mean" else f"{position} token"


def sense_colours(labels) -> dict[str, str]:
    """Each sense's colour: the senses sorted, the n-th taking the palette's n-th colour (cycling)."""
    return {sense: SENSE_PALETTE[n % len(SENSE_PALETTE)] for n, sense in enumerate(sorted(set(map(str, labels))))}


def run_name(experiment: str, model: str) -> str:
    return f"{experiment} on {model}"


def run_names(runs: list[tuple[str, str, str | None]]) -> list[str]:
    """A distinct name per run, from (experiment, model, folder or None): "experiment on model", and where
    two runs share that, the folder's name (or "run n", counting from 1) after it."""
    plain = [run_name(experiment, model) for experiment, model, _ in runs]
    shared = {name for name, count in Counter(plain).items() if count > 1}
    names = []
    for n, (name, (_, _, folder)) in enumerate(zip(plain, runs)):
        names.append(f"{name} ({folder or f'run {n + 1}'})" if name in shared else name)
    if len(set(names)) < len(names):  # two folders of one name (a/run, b/run): number them instead
        names = [f"{name} (run {n + 1})" if name in shared else name for n, name in enumerate(plain)]
    return names


def comparison_title(experiments: list[str]) -> str:
    """The title over several runs: their experiment when they share one, else the experiments listed."""
    distinct = list(dict.fromkeys(experiments))
    if len(distinct) == 1:
        return f"{distinct[0]}: {len(experiments)} runs compared"
    return f"{len(experiments)} runs compared ({', '.join(distinct)})"
