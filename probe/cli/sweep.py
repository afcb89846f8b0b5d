"""The `probe sweep` command (registered on the `probe` group in probe/cli.py)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from probe.cli.cache import cache_dir_option
from probe.errors import command_error
from probe.store.usage import cache_dir_or_default


def sweep_eta(elapsed: float, finished: int, total: int) -> str:
    """The time the sweep's other cells will take at its pace so far (cells skipped as finished count too, so
    it errs short), or nothing once every cell is done."""
    if finished >= total:
        return ""
    left = elapsed / finished * (total - finished)
    return f" (ETA {int(left // 60)}:{int(left % 60):02d})"


@click.command()
@click.argument("config_path", metavar="SWEEP_OR_EXPERIMENT", type=click.Path(dir_okay=False))
@click.option("--datasets", type=click.Path(file_okay=False),
              help="A folder of data files, one per word, each run with the experiment.")
@click.option("--model", "models", multiple=True, help="Model(s) to run (repeatable) [default: the sweep's].")
@click.option("--seed", "seeds", multiple=True, type=int, help="Seed(s) to run (repeatable) [default: the sweep's].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field in every cell.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), help="Output folder [default: runs/NAME].")
@cache_dir_option
@click.option("--plugins-dir", type=click.Path(file_okay=False), help="Load every .py file in this folder as a plugin.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Cells run at once.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run the cells as Ray tasks on this cluster ('local': start one here); needs probe[ray].")
@click.option("--mlflow", "tracking", metavar="URI", help="Log each cell to this MLflow tracking URI.")
def sweep(config_path, datasets, models, seeds, overrides, output_dir, cache_dir, plugins_dir, jobs, ray_address,
          tracking):
    """Run one experiment over many words, models and seeds; write one table and one plot.

    SWEEP_OR_EXPERIMENT is a sweep file (it lists `experiments:`) or one experiment config, to run with
    --datasets, --model and --seed. Each cell is a run folder under the output folder; a cell that already
    holds complete results of the same config is skipped.
    """
    from probe import plugins
    from probe.pipeline.config import ConfigError, parse_override
    from probe.sweep.plan import (
        is_sweep_file,
        load_sweep,
        plan_cells,
        read_yaml,
        validate_sweep,
    )
    from probe.sweep.report import write_sweep_reports
    from probe.sweep.run import CellSettings, run_cells, threads_per_cell

    given = {"models": list(models) or None, "seeds": list(seeds) or None, "datasets": datasets,
             "output": output_dir, "tracking": tracking}
    given = {key: value for key, value in given.items() if value is not None}
    try:
        if overrides:
            given["set"] = dict(parse_override(text) for text in overrides)
        if plugins_dir:
            plugins.load_plugins_dir(plugins_dir)
        if is_sweep_file(read_yaml(config_path)):
            config = load_sweep(config_path, given)
        else:
            given.setdefault("name", Path(config_path).stem)
            config = validate_sweep({**given, "experiments": [str(config_path)]}, source="the command line")
        cells = plan_cells(config)
    except (ConfigError, plugins.PluginError) as error:
        raise command_error(error) from None
    output = config.output_dir()
    click.echo(f"{config.name}: {len(cells)} cells into {output}/"
               + (f" on Ray ({ray_address})" if ray_address else f", {jobs} at a time"))
    settings = CellSettings(
        cache_dir=cache_dir_or_default(cache_dir).resolve(), threads=1 if ray_address else threads_per_cell(jobs),
        tracking=config.tracking, sweep_name=config.name,
        plugins_dir=Path(plugins_dir).resolve() if plugins_dir else None,
    )
    done, started = iter(range(1, len(cells) + 1)), time.monotonic()

    def report(outcome):
        took = f" in {outcome.seconds:.1f} s" if outcome.status == "ran" else ""
        finished = next(done)
        click.echo(f"[{finished}/{len(cells)}] {outcome.status} {outcome.cell}{took}"
                   + (f": {outcome.error}" if outcome.error else "")
                   + sweep_eta(time.monotonic() - started, finished, len(cells)))

    try:
        if config.tracking:
            from probe.sweep.tracking import check_tracking

            check_tracking(config.tracking, settings.sweep_name)
        outcomes = run_cells(cells, settings, jobs=jobs, ray_address=ray_address, on_outcome=report)
    except (RuntimeError, ConnectionError) as error:  # the backend is missing or unreachable
        raise command_error(error) from None
    written = write_sweep_reports(cells, output, title=f"{config.name}: best-layer accuracy")
    for path in written.values():
        click.echo(f"wrote {path}")
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(cells)} cells failed: "
                                   + ", ".join(outcome.cell for outcome in failed))
