"""The `probe` command line."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from probe import plugins
from probe.cli.cache import cache_dir_option
from probe.core import architectures
from probe.core.architectures import ARCHITECTURES, GPT2_SHAPES
from probe.errors import command_error, first_line
from probe.report.console import progress_bars_off
from probe.scale.devices import DTYPE_NAMES, parse_dtype
from probe.store.files import default_output
from probe.store.usage import cache_dir_or_default


class ProbeGroup(click.Group):
    """probe's own commands; those installed packages declare (entry-point group ``probe.commands``), listed
    from their metadata and imported only when run or described; and, for a name neither knows, those that
    plugins add in a ``register_commands`` hook (which loads every plugin, so `probe --help` never does)."""

    listing = False  # while --help lists the commands: one that fails to import is left out with a warning

    def list_commands(self, ctx):
        return sorted({*self.commands, *plugins.declared_commands()})

    def format_commands(self, ctx, formatter):
        self.listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self.listing = False

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands:
            try:
                self._add_plugin_command(cmd_name)
            except plugins.PluginError as error:
                if not self.listing:
                    raise command_error(error) from None
                click.echo(f"Warning: {error}; not listed", err=True)
        return self.commands.get(cmd_name)

    def _add_plugin_command(self, name: str) -> None:
        declared = plugins.declared_commands()
        if name in declared:
            self.add_command(plugins.load_command(declared[name]), name)
        else:
            plugins.call_each("register_commands", cli=self)


@click.group(cls=ProbeGroup, epilog="Commands that plugins add in a register_commands hook run by name; "
             "`probe plugins` lists them.")
@click.version_option(package_name="probe")
def cli():
    """Probe Hugging Face language models with a readable, hookable reimplementation of attention."""


@cli.command()
@click.argument("run_dirs", nargs=-1, metavar="[RUN_A RUN_B]", type=click.Path(exists=True))
@click.option(
    "--model", "model_name", help="Registered name (see probe.builtin.models), hub name, local folder or .gguf file."
)
@click.option("--revision", help="Hub revision (branch, tag or commit) for --model.")
@click.option(
    "--random-init",
    metavar="NAME_OR_JSON",
    help=f"Offline: random weights in a GPT-2 shape ({', '.join(GPT2_SHAPES)}), a GPT2Config JSON file, "
    "or a tiny config of any architecture `probe architectures` lists.",
)
@click.option("--reference", type=click.Choice(["eager", "sdpa"]), default="eager", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPE_NAMES)), default="float32", show_default=True)
@click.option("--text", "texts", multiple=True, help="Input text (repeatable); several texts are padded.")
@click.option("--padding", type=click.Choice(["right", "left"]), default="right", show_default=True)
@click.option(
    "--tolerance", type=float,
    help="Largest allowed max abs diff [default: 0 vs eager; vs sdpa 1e-5 relative to each tensor's scale].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init weights.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--fast", is_flag=True, help="Run probe's fast path (scaled_dot_product_attention; no patterns).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def compare(run_dirs, model_name, revision, random_init, reference, dtype, texts, padding, tolerance, seed, as_json,
            fast, device):
    """Compare probe's reimplemented attention with Hugging Face's, block by block.

    Exits with status 1 when a difference exceeds the tolerance. With two run folders instead
    (probe compare RUN_A RUN_B), compares their probes on the same rows: per layer, the accuracy
    difference with its paired 95% interval and McNemar's exact p-value.
    """
    if run_dirs:
        return compare_runs(run_dirs, seed, as_json)
    from probe.api import swap_attention
    from probe.core.compare import DEFAULT_TEXTS, compare_models
    from probe.pipeline import models
    from probe.pipeline.context import model_load_error, resolve_model

    if bool(model_name) == bool(random_init):
        raise click.UsageError("give exactly one of --model and --random-init")
    if tolerance is not None and not tolerance >= 0:  # also refuses nan
        raise click.BadParameter(f"{tolerance} is not a tolerance; give a max abs diff ≥ 0", param_hint="--tolerance")
    if any(not text.strip() for text in texts):
        raise click.BadParameter("an empty text has no tokens to compare; give some words", param_hint="--text")
    where, torch_dtype = checked_placement(device, dtype)  # before any model work
    try:
        if random_init in ARCHITECTURES and random_init not in GPT2_SHAPES:
            folder = architectures.save_random(random_init, tempfile.mkdtemp(prefix="probe-random-"), seed=seed)
            source, tokenizer = str(folder), None
        elif random_init:
            config = models.gpt2_config(random_init)
            folder = models.save_random_gpt2(config, seed=seed)
            source, tokenizer = str(folder), None
        else:
            source = resolve_model(model_name, revision)  # registered names → hub name or local path
            tokenizer = models.load_tokenizer(source, revision=revision)
            if models.is_empty_tokenizer(tokenizer):
                raise ValueError(f"no tokenizer files at {source}; save the model's tokenizer there "
                                 f"with tokenizer.save_pretrained({source!r})")
    except OSError as error:
        message = model_load_error(model_name, error) if model_name else str(error)
        raise click.BadParameter(message, param_hint="--model" if model_name else "--random-init") from None
    except ValueError as error:
        raise click.BadParameter(str(error)) from None

    try:
        reference_model = models.load_model(source, revision=revision, dtype=torch_dtype,
                                            attn_implementation=reference).to(where)
        candidate = swap_attention(models.load_model(source, revision=revision, dtype=torch_dtype).to(where),
                                   fast=fast)
    except (OSError, ValueError) as error:  # weights that don't load; an architecture probe can't swap
        raise click.BadParameter(first_line(error),
                                 param_hint="--model" if model_name else "--random-init") from None
    vocab_size = reference_model.config.vocab_size
    input_ids, attention_mask = encode(list(texts or DEFAULT_TEXTS), tokenizer, padding, vocab_size)
    input_ids, attention_mask = input_ids.to(where), attention_mask.to(where)
    result = compare_models(
        reference_model, candidate, input_ids, attention_mask, reference_name=reference, tolerance=tolerance,
        fast=fast,
    )
    result.model = model_name or f"random-init:{random_init}"
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())
    sys.exit(0 if result.passed else 1)


def compare_runs(run_dirs: tuple[str, ...], seed: int, as_json: bool) -> None:
    """``probe compare RUN_A RUN_B``: paired tests between two runs' probes, layer by layer."""
    from probe.pipeline.results import load_results
    from probe.pipeline.statistics import compare_runs as paired_runs

    if len(run_dirs) != 2:
        raise click.UsageError(f"give two run folders to compare, got {len(run_dirs)}")
    try:
        runs = [load_results(folder) for folder in run_dirs]
        compared = paired_runs(*runs, seed=seed)
    except (OSError, ValueError) as error:
        raise command_error(error) from None
    if as_json:
        click.echo(json.dumps(compared, indent=2))
        return
    click.echo(f"A: {compared['a']}\nB: {compared['b']}\nsame rows (dataset digest {compared['dataset_digest']}); "
               f"intervals: {compared['interval'] or 'paired bootstrap, 95%'}")
    click.echo(f"{'position':>8}  {'subset':>8}  {'layer':>5}  {'A':>6}  {'B':>6}  {'A − B':>7}  {'95% CI':>17}  "
               f"{'only A':>6}  {'only B':>6}  {'McNemar p':>9}")
    for test in compared["tests"]:
        click.echo(f"{test['position']:>8}  {test['subset']:>8}  {test['layer']:>5}  {test['accuracy_a']:>6.3f}  "
                   f"{test['accuracy_b']:>6.3f}  {test['difference']:>+7.3f}  "
                   f"[{test['ci'][0]:+.3f}, {test['ci'][1]:+.3f}]  {test['a_only']:>6}  {test['b_only']:>6}  "
                   f"{test['p_value']:>9.3g}")


def encode(texts: list[str], tokenizer, padding_side: str, vocab_size: int):
    """Token ids and attention mask; without a tokenizer (random-init) the UTF-8 bytes, modulo the
    vocabulary size, serve as ids."""
    import torch

    if tokenizer is not None:
        tokenizer.padding_side = padding_side
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        return batch["input_ids"], batch["attention_mask"]
    rows = [[byte % vocab_size for byte in text.encode("utf-8")] for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", help="Model to probe instead of the config's (registered name, hub name or folder).")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), help="Output folder [default: runs/NAME].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@cache_dir_option
@click.option("--plugins-dir", type=click.Path(file_okay=False), help="Load every .py file in this folder as a plugin.")
@click.option("--quiet", is_flag=True, help="No progress bars: one line for each phase that lasts more than a few seconds, with its ETA.")
@click.option("--jobs", "n_jobs", type=int, help="Probe fits in parallel [default: all cores, unless too few fits to pay for starting workers]; negative as joblib reads it (-1: all cores, -2: all but one); results do not depend on it.")
@click.option("--device", help="auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps [default: the config's, auto].")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), help="Model dtype [default: the config's].")
def run(config_path, model_name, output_dir, overrides, cache_dir, plugins_dir, quiet, n_jobs, device, dtype):
    """Run an experiment config: probe every layer, write results.json/csv, plots and summary.md."""
    if n_jobs == 0:
        raise click.BadParameter("0 fits at a time would never finish; give a number ≥ 1, or -1 for all cores",
                                 param_hint="--jobs")
    _run_config(config_path, model_name, output_dir, overrides, cache_dir, plugins_dir, quiet, n_jobs, device, dtype)


def _run_config(config_path, model_name, output_dir, overrides, cache_dir, plugins_dir, quiet, n_jobs, device, dtype):
    from probe.errors import UserError
    from probe.pipeline.config import load_config, parse_override
    from probe.pipeline.finished import run_key

    try:
        values = dict(parse_override(text) for text in overrides)
    except UserError as error:  # not key=value: a bad option, status 2
        raise click.BadParameter(str(error), param_hint="--set") from None
    origins = {field: f"--set {field}" for field in values}
    for field, value in {"model": model_name, "device": device, "dtype": dtype}.items():  # options for fields
        if value:
            values[field], origins[field] = value, f"--{field}"
    try:
        config = load_config(config_path, values, origins)
        output_dir = Path(output_dir) if output_dir else default_output(config.name)
        cache_dir = cache_dir_or_default(cache_dir)
        key = run_key(config, output_dir, plugins_dir)
        if republished(key, config, output_dir, cache_dir, quiet):  # nothing to compute: torch is never imported
            return
        if plugins_dir:
            plugins.load_plugins_dir(plugins_dir)
        click.echo(paths_line(config, output_dir, cache_dir), err=True)
        with progress_bars_off(quiet):  # transformers', datasets' and the hub's bars too; as they were afterwards
            results = _computed(config, output_dir, cache_dir, quiet, n_jobs)
    except UserError as error:
        raise command_error(error) from None
    if results is None:  # a torchrun rank other than 0: its share of the vectors is in the cache
        return
    printed = printed_lines(config, results)
    echo_printed(printed, output_dir, quiet)
    if key is not None:
        keep_run(key, config, results, cache_dir, printed)


def _computed(config, output_dir: Path, cache_dir, quiet: bool, n_jobs):
    from probe.pipeline.run import run_experiment  # numpy, torch and the rest: not needed for a copied run

    from probe.pipeline.progress import LINE
    from probe.scale.arrow_memory import prefer_jemalloc

    prefer_jemalloc()  # the command owns its process: Arrow gives freed memory back (see arrow_memory.py)
    return run_experiment(config, output_dir, cache_dir=cache_dir, progress=LINE if quiet else True, n_jobs=n_jobs)


def printed_lines(config, results) -> dict:
    """What a run prints after its work: the table and best layers (stdout) and its diagnostics (stderr),
    with and without advice (``--quiet`` leaves the advice out)."""
    from probe.report.writers import accuracy_text, diagnostic_lines, layer_table

    out = [layer_table(results)]
    if results.task == "regression":
        from probe.report.regression import best_lines

        out += best_lines(config.name, results)
        return {"stdout": out, "stderr": diagnostic_lines(results, with_advice=True),
                "stderr_quiet": diagnostic_lines(results, with_advice=False)}
    for (position, subset), best in results.best_rows().items():
        out.append(f"{config.name} [{position}, {subset}]: best layer {best.layer} accuracy {accuracy_text(best)}")
    for nested in results.best_layer or []:  # the same question answered without peeking at the test rows
        if nested["layer"] is None:
            continue
        chosen = ", ".join(f"{layer} ({n}×)" for layer, n in nested["chosen"].items())
        out.append(f"{config.name} [{nested['position']}, {nested['subset']}]: chosen on inner folds: layer {chosen}; "
                   f"outer accuracy {nested['accuracy']:.3f} [{nested['accuracy_ci'][0]:.3f}, "
                   f"{nested['accuracy_ci'][1]:.3f}]")
    return {"stdout": out, "stderr": diagnostic_lines(results, with_advice=True),
            "stderr_quiet": diagnostic_lines(results, with_advice=False)}


def echo_printed(printed: dict, output_dir: Path, quiet: bool) -> None:
    for line in printed["stdout"]:
        click.echo(line)
    for line in printed["stderr_quiet" if quiet else "stderr"]:  # also under --quiet: one line each
        click.echo(line, err=True)
    click.echo(f"results, plots and summary in {output_dir}/")


def republished(key: str | None, config, output_dir: Path, cache_dir, quiet: bool) -> bool:
    """Publish the finished run kept under ``key`` at ``output_dir`` and print what it printed; False (and
    nothing done) when there is none whose inputs are unchanged, or the folder is not probe's to replace."""
    from probe.pipeline.finished import finished_before
    from probe.store.files import is_replaceable, staged_output
    from probe.store.finished import EntryChanged, copy_finished

    kept = finished_before(key, Path(cache_dir))
    if kept is None or not is_replaceable(Path(output_dir)):
        return False
    try:
        with staged_output(output_dir) as staging:
            copy_finished(Path(cache_dir), key, staging, kept["files"])
    except (EntryChanged, OSError):  # the output folder is as it was: the run computes instead
        return False
    click.echo(paths_line(config, output_dir, cache_dir), err=True)
    echo_printed(kept["record"]["printed"], output_dir, quiet)
    return True


def keep_run(key: str, config, results, cache_dir, printed: dict) -> None:
    """Keep the run just published under ``key``, unless another run has replaced its folder since."""
    from probe.pipeline.finished import record
    from probe.store.files import lock_for, published_by
    from probe.store.finished import keep_finished

    kept = record(config, Path(cache_dir), results.model.path, printed)
    if kept is None:
        return
    with lock_for(results.run_dir):
        if published_by(results.run_dir) == results.run_id:
            keep_finished(Path(cache_dir), key, results.run_dir, kept)


def paths_line(config, output_dir: Path, cache_dir) -> str:
    """What a run reads and writes, every path resolved: a config's relative paths are relative to its
    folder, so the line says where they landed."""
    reads = [f"data {config.dataset_options['path']}" if "path" in config.dataset_options
             else f"dataset {config.dataset_name}"]
    reads += [f"plugin {plugin}" for plugin in config.plugins]
    return (f"{config.name}: reads {', '.join(reads)}; writes {Path(output_dir).absolute()}/ "
            f"(cache {Path(cache_dir).absolute()}/)")


def checked_placement(device: str, dtype: str):
    """(torch.device, torch dtype) for ``--device`` and ``--dtype``, or a usage error naming the option."""
    from probe.scale.devices import check_dtype, resolve_device

    try:
        where = resolve_device(device)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--device") from None
    try:
        check_dtype(dtype, where, option="--dtype")
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--dtype") from None
    return where, parse_dtype(dtype)


@cli.command(name="architectures")
@click.option("--check", is_flag=True, help="Swap each one on the installed transformers (tiny random model; slow) "
              "and exit with status 1 when one is refused (or, measured, not bit-identical).")
@click.option("--measure", is_flag=True, help="Also measure each one's parity vs eager on a tiny random model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--markdown", is_flag=True, help="Print the README's Markdown table.")
@click.option("--device", default="cpu", show_default=True, help="Where --measure runs: auto, cpu, cuda, cuda:N or mps.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="The dtype --measure loads both models in.")
@click.argument("names", nargs=-1, metavar="[ARCHITECTURE]...")
def list_architectures(check, measure, as_json, markdown, device, dtype, names):
    """Every architecture probe swaps (or the ARCHITECTUREs named): adapter and path (full or universal).

    The listing reads probe's own table (status "declared"; the parity suite checks it on every supported
    transformers release). --check swaps each on the installed release: one it breaks is listed as
    "refused: <reason>" and the others still are. --measure also measures parity vs eager.
    """
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown:
        raise click.BadParameter(f"no architecture {unknown[0]!r}; `probe architectures` lists them",
                                 param_hint="ARCHITECTURE")
    where, torch_dtype = checked_placement(device, dtype) if measure else ("cpu", None)
    rows = swapped_rows(names, measure, where, torch_dtype) if check or measure else architectures.declared_table(names)
    if as_json or markdown:
        click.echo(json.dumps(rows, indent=2) if as_json else architectures.markdown_table(rows), nl=not markdown)
    else:
        echo_table(rows)
    failed = architectures.refused(rows)
    if check and failed:
        names = ", ".join(row["architecture"] for row in failed)
        click.echo(f"{len(failed)} of {len(rows)} not bit-identical or refused: {names}", err=True)
        sys.exit(1)


def swapped_rows(names, measure: bool, where: str, torch_dtype) -> list[dict]:
    """The table as the installed transformers takes it: each architecture swapped (and measured)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the tiny configs' vocabularies are smaller than their token ids say
    with warnings.catch_warnings(), progress_bars_off():
        warnings.simplefilter("ignore")
        return architectures.support_table(measure=measure, device=where, dtype=torch_dtype, names=names)


def echo_table(rows: list[dict]) -> None:
    """Rows as aligned columns; a refused row has no measurement, so its cells there stay empty."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    click.echo("  ".join(f"{c:<{widths[c]}}" for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(f"{str(row.get(c, '')):<{widths[c]}}" for c in columns).rstrip())


@cli.command(name="plot-runs")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--subset", "subsets", multiple=True, help="Only these subsets (e.g. left, right).")
def plot_runs(run_dirs, output, subsets):
    """Plot several runs' accuracy per layer side by side (e.g. one experiment on two models)."""
    from probe.pipeline.results import load_results
    from probe.report.writers import plot_runs as plot

    runs = []
    for folder in run_dirs:
        if not (Path(folder) / "results.json").exists():
            raise click.BadParameter(f"{folder} has no results.json", param_hint="RUN_DIRS")
        try:
            runs.append(load_results(folder))
        except ValueError as error:  # not JSON, or not what a run writes
            reason = first_line(error)
            raise click.BadParameter(f"{folder}/results.json can't be read as a run's results ({reason})",
                                     param_hint="RUN_DIRS") from None
    found = sorted({subset for results in runs for _, subset in results.series()})
    unknown = [subset for subset in subsets if subset not in found]
    if unknown:
        raise click.BadParameter(f"no run has subset {unknown[0]!r}; the runs' subsets: {', '.join(found)}",
                                 param_hint="--subset")
    click.echo(f"wrote {plot(runs, Path(output), list(subsets) or None)}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--output", type=click.Path(dir_okay=False),
              help="HTML file to write [default: RUN_DIR/report.html for one run, ./report.html for several].")
def report(run_dirs, output):
    """Write report.html for a run, or one page comparing several runs (e.g. one experiment on two models)."""
    from probe.report.html import ReportError, write_report

    default = Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("report.html")
    try:
        path = write_report(run_dirs[0], output or default, *run_dirs[1:])
    except ReportError as error:
        raise command_error(error) from None
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_dir")
@click.option("--screenshots", is_flag=True, help="Also save a PNG of each view under RUN_DIR/screenshots/ "
              "(needs chromium and playwright).")
@click.option("--no-open", is_flag=True, help="Do not open a browser (with --screenshots: only save them).")
def view(run_dir, screenshots, no_open):
    """Open a run's report.html in the browser (writing it first if the run has none)."""
    import webbrowser

    from probe.report.browser import BrowserError, open_page, screenshot_views
    from probe.report.html import PAGE, ReportError, write_report

    page = Path(run_dir) / PAGE
    try:
        if not page.exists():
            write_report(run_dir)
        if screenshots:
            with open_page(page) as (browser_page, _):
                for path in screenshot_views(browser_page, Path(run_dir) / "screenshots"):
                    click.echo(f"wrote {path}")
    except (ReportError, BrowserError) as error:
        raise command_error(error) from None
    if not no_open and not webbrowser.open(page.resolve().as_uri()):
        click.echo(f"no browser to open here; the report is {page}")


@cli.command(name="cache")
@cache_dir_option
@click.option("--prune", "prune_days", metavar="DAYS",
              help="Remove every entry no run has used for DAYS days (e.g. 30, or 0.5), except what a running "
                   "process holds; then say how much was freed.")
@click.option("--dry-run", is_flag=True, help="With --prune: list what would be removed, remove nothing.")
def cache_usage(cache_dir, prune_days, dry_run):
    """What the cache holds and its size on disk, part by part; --prune frees what no run has used lately."""
    from probe.cli.cache import converted_models, human, parts

    cache = cache_dir_or_default(cache_dir)
    if dry_run and prune_days is None:
        raise click.BadParameter("--dry-run goes with --prune DAYS", param_hint="--dry-run")
    days = _checked_days(prune_days) if prune_days is not None else None
    if not cache.is_dir():
        raise click.BadParameter(f"no cache folder at {cache.absolute()}", param_hint="--cache-dir")
    if days is not None:
        return _prune(cache, days, dry_run)
    found = parts(cache)
    click.echo(f"{cache}: {human(sum(part.bytes for part in found))}")
    for part in found:
        click.echo(f"  {part.name:<10} {human(part.bytes):>9}  {part.entries:>4} entries  {part.what}")
    for model in converted_models(cache):
        click.echo(f"  models/{model.folder.name}: {human(model.bytes)}, from {model.source or 'a GGUF file'}")


def _checked_days(text: str) -> float:
    from probe.store.usage import check_days

    try:
        return check_days(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--prune") from None


def _prune(cache: Path, days: float, dry_run: bool) -> None:
    from probe.cli.cache import human
    from probe.store.usage import prune

    pruned = prune(cache, days, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for entry in pruned.removed:
        click.echo(f"  {verb} {entry.part}/{entry.path.name} ({human(entry.bytes)})")
    for entry in pruned.in_use:
        click.echo(f"  kept {entry.part}/{entry.path.name}: a running process holds it")
    click.echo(f"{cache}: {verb} {len(pruned.removed)} entries unused for {days:g} days, "
               f"{'would free' if dry_run else 'freed'} {human(pruned.freed)} ({pruned.freed} bytes)")


@cli.command(name="plugins")
@click.option("--plugins-dir", type=click.Path(file_okay=False), help="Also load the .py files in this folder.")
def list_plugins(plugins_dir):
    """List loaded plugins, the hooks each implements and what it registers (datasets, probes, metrics,
    measures, reporters, models, adapters, commands)."""
    try:
        if plugins_dir:
            plugins.load_plugins_dir(plugins_dir)
        registered = dict(plugins.registrations())
    except plugins.PluginError as error:
        raise command_error(error) from None
    for name, hooks in plugins.describe():
        click.echo(f"{name}\n    {', '.join(hooks) or '(no hooks)'}")
        for kind, names in registered[name].items():
            click.echo(f"    {kind}s: {', '.join(names)}")
        if "probe_adapter" in hooks:  # answers per model, so there is no list to give
            click.echo("    adapters: chosen per model by its probe_adapter hook"
                       + (" (`probe architectures` lists probe's own)" if name.startswith("probe.builtin.") else ""))
    for name, entry_point in sorted(plugins.declared_commands().items()):  # not plugins: imported when run
        click.echo(f"command {name} ({entry_point.value}; entry-point group {plugins.COMMANDS_GROUP})")


from probe.cli.sweep import (
    sweep,  # its own module; the command imports its work when run
)

cli.add_command(sweep)


def main(args: list[str] | None = None):
    """The `probe` command. An error ends in one message on stderr and exit status 1 (2 for usage errors);
    a traceback only with --debug (anywhere on the line) or PROBE_DEBUG=1."""
    import atexit
    import gc
    import os

    # At exit, Python collects garbage across everything torch and transformers imported: about 1 s here,
    # for memory the process is about to give back anyway. A frozen heap is skipped; atexit handlers still run.
    atexit.register(gc.freeze)

    argv = list(sys.argv[1:] if args is None else args)
    if "--debug" not in argv:
        return _run_command(argv)
    before = os.environ.get("PROBE_DEBUG")
    os.environ["PROBE_DEBUG"] = "1"  # every command's errors, and a sweep's worker processes, show tracebacks
    try:
        return _run_command([arg for arg in argv if arg != "--debug"])
    finally:  # main() called in-process (tests, notebooks) leaves the environment as it was
        if before is None:
            del os.environ["PROBE_DEBUG"]
        else:
            os.environ["PROBE_DEBUG"] = before


def _run_command(argv: list[str]):
    from probe.errors import debugging, explain

    debug = debugging()
    try:
        cli.main(args=argv, prog_name="probe")
    except Exception as error:  # click has already handled its own errors (and exited)
        if debug:
            raise
        click.echo(f"Error: {explain(error)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
