"""The commands that only list or read import none of the heavy libraries, and load no plugin they do not
need: each runs in a fresh process, which then says what it imported. Installed plugins are real entry
points: a folder of tests/installed_plugins on PYTHONPATH, whose .dist-info declares them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_runs import report_run

from probe.report.html import render_report

INSTALLED = Path(__file__).parent / "installed_plugins"
HEAVY_TOP = INSTALLED / "heavy_top"  # entry point heavy_top: imports scikit-learn at the top of its module
HELLO = INSTALLED / "hello_command"  # a command declared under the probe.commands entry-point group
HEAVY = ("torch", "transformers", "datasets", "sklearn", "pandas", "plotly")

# main() as the console script calls it; then one line of JSON: the exit status and the modules imported.
PROBE = """
import json, sys
from probe.cli import main
try:
    main(sys.argv[1:])
    status = 0
except SystemExit as stop:
    status = stop.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


def probe_process(args, tmp_path, *installed: Path) -> tuple[dict, str, str]:
    """Run ``probe ARGS`` in a fresh process with the ``installed`` plugin folders on PYTHONPATH: (its
    exit status and imported modules, what it printed before, its stderr)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PROBE_PLUGINS", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, installed))
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, check=False)
    printed, _, last = done.stdout.rstrip("\n").rpartition("\n")
    return json.loads(last), printed, done.stderr


def heavy_in(modules: list[str]) -> list[str]:
    return [name for name in HEAVY if name in modules]


def a_cache(tmp_path: Path) -> Path:
    """A cache with features and a converted model (which `probe cache` inspects)."""
    cache = tmp_path / "cache"
    (cache / "features" / "entry").mkdir(parents=True)
    (cache / "features" / "entry" / "chunk.npy").write_bytes(b"\0" * 100)
    (cache / "models" / "model-0123456789abcdef0123").mkdir(parents=True)
    (cache / "models" / "model-0123456789abcdef0123" / "config.json").write_text("{}")
    return cache


LISTING = {
    "--help": lambda tmp_path: ["--help"],
    "architectures": lambda tmp_path: ["architectures"],
    "cache": lambda tmp_path: ["cache", "--cache-dir", a_cache(tmp_path)],
}


@pytest.mark.parametrize("installed", [(), (HEAVY_TOP,)], ids=["plugins as installed", "plugin importing sklearn"])
@pytest.mark.parametrize("command", list(LISTING))
def test_a_listing_command_imports_no_heavy_library_and_no_plugin(command, installed, tmp_path):
    answer, printed, stderr = probe_process(LISTING[command](tmp_path), tmp_path, *installed)
    assert answer["status"] in (0, None), stderr
    assert printed, stderr
    assert heavy_in(answer["modules"]) == []
    assert "pydantic" not in answer["modules"] and "numpy" not in answer["modules"]  # no config, no arrays
    assert "probe_heavy_top" not in answer["modules"]
    assert not [name for name in answer["modules"] if name.startswith("probe_plugins")]  # first-party plugins


def test_cache_listing_still_names_the_converted_model(tmp_path):
    answer, printed, stderr = probe_process(LISTING["cache"](tmp_path), tmp_path)
    assert answer["status"] in (0, None), stderr
    assert "  models/model-0123456789abcdef0123: 2 B, from a GGUF file" in printed.splitlines()


def test_plugins_listing_loads_plugins_but_no_heavy_library_of_probe(tmp_path):
    answer, printed, stderr = probe_process(["plugins"], tmp_path)
    assert answer["status"] in (0, None), stderr
    assert "head_ablation" in printed.splitlines()  # an installed first-party plugin, loaded to list its hooks
    assert heavy_in(answer["modules"]) == []


def test_the_plugin_fixture_is_installed_and_imports_sklearn_when_loaded(tmp_path):
    """The other tests' plugin is real: `probe plugins` finds its entry point and importing it brings sklearn."""
    answer, printed, stderr = probe_process(["plugins"], tmp_path, HEAVY_TOP)
    assert answer["status"] in (0, None), stderr
    lines = printed.splitlines()
    assert lines[lines.index("heavy_top") + 2] == "    probes: ridge-top"
    assert "sklearn" in answer["modules"] and "probe_heavy_top" in answer["modules"]


def test_report_on_a_finished_run_imports_no_torch(tmp_path, tmp_path_factory):
    run_dir = report_run(tmp_path_factory)
    page = tmp_path / "report.html"
    answer, printed, stderr = probe_process(["report", run_dir, "--output", page], tmp_path, HEAVY_TOP)
    assert answer["status"] in (0, None), stderr
    assert printed == f"wrote {page}"
    # plotly builds the figures (its JSON is what the page embeds); nothing else heavy, no plugin
    assert heavy_in(answer["modules"]) == ["plotly"]
    assert "probe_heavy_top" not in answer["modules"]


def test_report_written_without_torch_is_the_page_render_report_gives(tmp_path, tmp_path_factory):
    run_dir = report_run(tmp_path_factory)
    page = tmp_path / "report.html"
    answer, _, stderr = probe_process(["report", run_dir, "--output", page], tmp_path)
    assert answer["status"] in (0, None), stderr
    element = re.compile(r"probe-report-[0-9a-f]{12}")  # each page draws into an element of its own id
    written = element.sub("probe-report-ID", page.read_text(encoding="utf-8"))
    assert written == element.sub("probe-report-ID", render_report(run_dir))


def test_an_installed_command_is_listed_by_help_without_importing_its_libraries(tmp_path):
    answer, printed, stderr = probe_process(["--help"], tmp_path, HELLO, HEAVY_TOP)
    assert answer["status"] in (0, None), stderr
    assert re.search(r"^  hello +Say hello from an installed package\.$", printed, re.MULTILINE)
    assert heavy_in(answer["modules"]) == [] and "probe_heavy_top" not in answer["modules"]


def test_an_installed_command_runs_and_imports_what_it_needs_then(tmp_path):
    answer, printed, stderr = probe_process(["hello", "--who", "tests"], tmp_path, HELLO)
    assert answer["status"] in (0, None), stderr
    assert printed.startswith("hello tests (scikit-learn ")
    assert "sklearn" in answer["modules"]


def test_plugins_lists_an_installed_command(tmp_path):
    answer, printed, stderr = probe_process(["plugins"], tmp_path, HELLO)
    assert answer["status"] in (0, None), stderr
    assert "command hello (probe_hello_command:hello; entry-point group probe.commands)" in printed.splitlines()


def installed_package(folder: Path, name: str, entry_points: str, module: str) -> Path:
    """A package importlib.metadata finds on ``folder``: module ``name``.py and its .dist-info."""
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    (folder / f"{name}.py").write_text(module)
    return folder


BROKEN_IMPORT = ("command 'broken' (broken_command:run, entry-point group probe.commands) failed to import: "
                 "ModuleNotFoundError: No module named 'no_such_module_here'")


def broken_command(tmp_path: Path) -> Path:
    """An installed package whose probe.commands entry point fails to import."""
    return installed_package(tmp_path / "site", "broken_command", "[probe.commands]\nbroken = broken_command:run\n",
                             "import no_such_module_here\n")


def test_a_command_that_fails_to_import_is_named(tmp_path):
    answer, _, stderr = probe_process(["broken"], tmp_path, broken_command(tmp_path))
    assert answer["status"] == 1
    assert stderr == f"Error: {BROKEN_IMPORT}\n"


def test_help_leaves_out_a_command_that_fails_to_import_and_names_it(tmp_path):
    answer, printed, stderr = probe_process(["--help"], tmp_path, broken_command(tmp_path))
    assert answer["status"] == 0
    assert "  run " in printed and "broken" not in printed
    assert stderr == f"Warning: {BROKEN_IMPORT}; not listed\n"


def test_a_command_that_is_not_a_click_command_is_named(tmp_path):
    folder = installed_package(tmp_path / "site", "odd_command", "[probe.commands]\nodd = odd_command:run\n",
                               "def run():\n    pass\n")
    answer, _, stderr = probe_process(["odd"], tmp_path, folder)
    assert answer["status"] == 1
    assert stderr == ("Error: command 'odd' (odd_command:run, entry-point group probe.commands) is a function, "
                      "not a click command\n")


def test_a_hook_command_of_an_installed_plugin_runs_by_name_and_help_leaves_the_plugin_alone(tmp_path):
    folder = installed_package(
        tmp_path / "site", "greeting_plugin", "[probe]\ngreeting = greeting_plugin\n",
        "import click\nfrom probe import hookimpl\n\n"
        "@hookimpl\ndef register_commands(cli):\n    @cli.command()\n    def greet():\n"
        "        click.echo('greetings from a hook')\n")
    answer, printed, stderr = probe_process(["greet"], tmp_path, folder)
    assert answer["status"] in (0, None), stderr
    assert printed == "greetings from a hook"
    answer, printed, stderr = probe_process(["--help"], tmp_path, folder)
    assert "greeting_plugin" not in answer["modules"] and "greet " not in printed
