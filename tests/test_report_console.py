"""What a run tells its user besides the figures: summary.md lists the reporters that ran apart from those
that were skipped (and why), and --quiet silences the libraries' progress bars only while it runs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from report_runs import report_run

from probe import plugins
from probe.hookspecs import hookimpl
from probe.pipeline.results import ReporterLog, Results
from probe.pipeline.run import write_reports
from probe.report.console import progress_bars_off


@pytest.fixture
def results(tmp_path_factory) -> Results:
    return Results.from_dict(json.loads((report_run(tmp_path_factory) / "results.json").read_text()))


class Reporters:
    """A plugin with a reporter that writes a file and one that has nothing to write."""

    @hookimpl
    def register_reporters(self, register):
        register("notes", lambda results, output_dir, run: (output_dir / "notes.txt").write_text("ok"))
        register("needs-decoder", self.skip)

    @staticmethod
    def skip(results, output_dir, run):
        raise plugins.ReporterSkipped("the model is an encoder: no next-token distribution to report")


def test_summary_lists_what_ran_and_apart_what_was_skipped_and_why(builtins_only, results, tmp_path):
    plugins.register_plugin(Reporters(), "reporters-test")
    run = SimpleNamespace(config=SimpleNamespace(reporters=["summary", "needs-decoder", "notes", "json"]),
                          reporters=ReporterLog())
    write_reports(results, tmp_path, run)
    summary = (tmp_path / "summary.md").read_text()
    assert "Reporters that ran: notes, json, summary." in summary  # summary last: it reports on the others
    assert "Files: what the notes reporter writes, results.json, summary.md." in summary
    assert ("Reporters that did not run:\n- needs-decoder: skipped (the model is an encoder: no next-token "
            "distribution to report)") in summary
    assert (tmp_path / "notes.txt").exists() and summary.count("needs-decoder") == 1
    assert [(o.name, o.status) for o in run.reporters.outcomes] == [
        ("needs-decoder", "skipped"), ("notes", "ran"), ("json", "ran"), ("summary", "ran")]


def test_a_reporter_that_raises_still_stops_the_run_naming_it(builtins_only, results, tmp_path):
    class Broken:
        @hookimpl
        def register_reporters(self, register):
            register("broken", lambda results, output_dir, run: 1 / 0)

    plugins.register_plugin(Broken(), "broken-test")
    run = SimpleNamespace(config=SimpleNamespace(reporters=["broken", "summary"]), reporters=ReporterLog())
    with pytest.raises(plugins.PluginError, match="plugin 'broken-test': reporter 'broken' raised ZeroDivisionError"):
        write_reports(results, tmp_path, run)


def test_summary_outside_a_run_lists_the_files_the_settings_name(results, tmp_path):
    from probe.report.writers import write_summary

    summary = write_summary(results, tmp_path).read_text()
    assert "Files: results.json, report.html, report_data.json." in summary  # reporters: json, html


def library_switches() -> dict[str, bool]:
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    return {"transformers": transformers_logging.is_progress_bar_enabled(),
            "datasets": datasets.is_progress_bar_enabled(), "huggingface_hub": not hub.are_progress_bars_disabled()}


@pytest.fixture
def bars_on():
    """Every library's bars on (conftest switches transformers' off for the whole session), then as before."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    before = library_switches()
    transformers_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    hub.enable_progress_bars()
    yield
    for name, on in before.items():
        if not on:
            {"transformers": transformers_logging.disable_progress_bar, "datasets": datasets.disable_progress_bars,
             "huggingface_hub": hub.disable_progress_bars}[name]()


def test_quiet_switches_every_librarys_bars_off_and_back(bars_on, capsys):
    from transformers.utils import logging as transformers_logging

    assert library_switches() == {"transformers": True, "datasets": True, "huggingface_hub": True}
    with progress_bars_off():
        assert library_switches() == {"transformers": False, "datasets": False, "huggingface_hub": False}
        for _ in transformers_logging.tqdm(range(3), desc="loading weights"):
            pass
        assert "loading weights" not in capsys.readouterr().err
    assert library_switches() == {"transformers": True, "datasets": True, "huggingface_hub": True}
    with progress_bars_off(quiet=False):
        assert library_switches()["datasets"] is True


def test_quiet_leaves_a_bar_that_was_off_off(bars_on):
    import datasets

    datasets.disable_progress_bars()
    with progress_bars_off():
        pass
    assert library_switches() == {"transformers": True, "datasets": False, "huggingface_hub": True}
