"""Every code block of the documentation site (docs/*.md) is checked against the code it describes.

- python blocks run for real, page by page in one namespace (like a notebook's cells), in a scratch folder
  that sees the repository's experiments/, with the two pip-packaged offline models;
- `probe …` lines of bash blocks are parsed by probe's own command line: the command must exist, every
  option must be one it takes, with a value where it needs one and one of the listed choices where it has
  choices, and no positional argument too many. The cheap ones (COMMANDS_RUN_IN_FULL) also run;
- `make X` lines name a target of the Makefile; yaml and toml blocks parse.
Other shell lines (torchrun's and accelerate's own options, pytest, pip) are left to their tools.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# Lines of the docs run in full (seconds each, no model download, no run folder needed), with what each
# must print: a check that the page's claim holds, not only that the command parses.
COMMANDS_RUN_IN_FULL = {
    "probe compare --random-init gpt2 --reference eager --json": lambda out: json.loads(out)["max_abs_diff"] == 0.0,
    "probe plugins": lambda out: "head_ablation" in out and "register_datasets" in out,
}


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def blocks(page: Path, language: str) -> list[str]:
    return [code for lang, code in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def pages_with(language: str) -> list[Path]:
    return [page for page in pages() if blocks(page, language)]


def shell_lines(code: str) -> list[list[str]]:
    """Each command of a shell block as words: continuations joined, comments and `VAR=value` prefixes dropped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words = words[1:]
        if words:
            commands.append(words)
    return commands


def probe_arguments(words: list[str]) -> list[str] | None:
    """The arguments a line gives to probe: `probe …`, `torchrun … --no-python probe …`, `… -m probe.cli …`."""
    if "probe" in words:
        return words[words.index("probe") + 1:]
    if "probe.cli" in words and words[words.index("probe.cli") - 1] == "-m":
        return words[words.index("probe.cli") + 1:]
    return None


def probe_cli() -> click.Group:
    """probe's command group with every plugin's commands registered, as `probe` itself has them."""
    from probe import plugins
    from probe.cli.main import cli

    for _ in plugins.call_each("register_commands", cli=cli):
        pass
    return cli


def check_command_line(cli: click.Group, args: list[str]) -> None:
    """Parse ``args`` the way ``probe`` would, without running the command (click raises UsageError)."""
    command, path = cli, ["probe"]
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name, args = args[0], args[1:]
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            raise click.UsageError(f"no command {' '.join(path)} {name}")
        command, path = sub, [*path, name]
    context = click.Context(command, info_name=" ".join(path))
    values, extra, _ = command.make_parser(context).parse_args(args)
    if extra and not command.allow_extra_args:
        raise click.UsageError(f"unexpected extra arguments {extra}")
    for param in command.params:
        given = values.get(param.name)
        if isinstance(param.type, click.Choice) and given is not None:
            for value in given if isinstance(given, (list, tuple)) else [given]:
                param.type.convert(value, param, context)


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("page", pages_with("bash"), ids=lambda page: page.name)
def test_shell_blocks_name_real_commands_and_options(page):
    cli, targets, checked = probe_cli(), makefile_targets(), 0
    for code in blocks(page, "bash"):
        for words in shell_lines(code):
            args = probe_arguments(words)
            try:
                if args is not None:
                    check_command_line(cli, args)
                    checked += 1
                elif words[0] == "make":
                    assert set(words[1:]) <= targets, f"no such make target in {words}"
                    checked += 1
            except click.UsageError as error:
                pytest.fail(f"{page.name}: `{shlex.join(words)}`: {error.format_message()}")
    assert checked, f"{page.name} has bash blocks but no probe or make line was checked"


def test_a_wrong_option_would_be_caught():
    cli = probe_cli()
    with pytest.raises(click.UsageError):
        check_command_line(cli, ["run", "experiments/mole.yaml", "--modle", "gpt2"])
    with pytest.raises(click.UsageError):
        check_command_line(cli, ["compare", "--reference", "flash"])
    with pytest.raises(click.UsageError):
        check_command_line(cli, ["no-such-command"])


@pytest.mark.parametrize("line", sorted(COMMANDS_RUN_IN_FULL))
def test_cheap_commands_run_in_full_and_say_what_the_docs_say(line, tmp_path):
    documented = {shlex.join(words) for page in pages() for code in blocks(page, "bash") for words in shell_lines(code)}
    assert line in documented, f"`{line}` is no longer in the docs"
    result = subprocess.run([sys.executable, "-m", "probe.cli", *shlex.split(line)[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PROBE_PLUGINS": ""}
                            if line == "probe compare --random-init gpt2 --reference eager --json" else None)
    assert result.returncode == 0, result.stderr
    assert COMMANDS_RUN_IN_FULL[line](result.stdout), result.stdout


@pytest.mark.parametrize("page", pages_with("yaml") + pages_with("toml"), ids=lambda page: page.name)
def test_yaml_and_toml_blocks_parse(page):
    for code in blocks(page, "yaml"):
        assert isinstance(yaml.safe_load(code), dict)
    for code in blocks(page, "toml"):
        assert tomllib.loads(code)


@pytest.mark.xdist_group("minilm")
@pytest.mark.parametrize("page", pages_with("python"), ids=lambda page: page.name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    """The page's python blocks in order, in one namespace, in a scratch folder beside the experiments."""
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for number, code in enumerate(blocks(page, "python"), 1):
        exec(compile(code, f"{page.name} (python block {number})", "exec"), namespace)
    after_running(page.name, namespace, tmp_path)


def after_running(name: str, namespace: dict, folder: Path) -> None:
    """What a page's blocks leave behind that the page promises, beyond running without an error."""
    import probe

    if name == "api.md":
        assert (folder / "mole-attention.html").exists()
    if name in ("python-api.md", "getting-started.md"):
        assert isinstance(namespace["results"], probe.Results)
        assert (folder / "runs" / "api-example" / "results.json").exists()
        assert set(namespace["table"]["layer"]) == set(range(7))  # MiniLM: the embeddings and 6 blocks
