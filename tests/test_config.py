"""probe.pipeline.config: YAML experiment configs, checked field by field, with messages that say what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from probe import plugins
from probe.cli import cli
from probe.pipeline.config import (
    ATTENTION_MODES,
    FIELD_NAMES,
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_override,
    validate,
)
from probe.pipeline.run import run_experiment

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = {"model": "gpt2", "dataset": "mole"}


pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


def write_yaml(path: Path, raw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def error_for(raw: dict, source: str = "exp.yaml") -> str:
    with pytest.raises(ConfigError) as caught:
        validate(raw, source=source)
    return str(caught.value)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"PROBE_PLUGINS": ""})


# ---------------------------------------------------------------- defaults


def test_minimal_config_gets_the_documented_defaults():
    config = validate(dict(MINIMAL))
    assert isinstance(config, ExperimentConfig)
    assert (config.model, config.dataset_name, config.dataset_options) == ("gpt2", "mole", {})
    assert (config.probe_name, config.probe_options) == ("logreg", {})
    assert config.positions == ["target"] and config.pooling == "mean" and config.layers == "all"
    assert config.attention == "reimplemented" and config.folds == 5 and config.seed == 0
    assert config.controls == ["majority", "shuffled", "random_weights"]
    assert config.reporters == ["json", "csv", "plots", "summary"]
    assert config.on_bad_rows == "raise" and config.metrics is None and config.plugins == []


def test_mapping_fields_split_into_name_and_options():
    config = validate({**MINIMAL, "dataset": {"name": "file", "path": "x.jsonl", "text_field": "sentence"},
                       "probe": {"name": "logreg", "C": 0.1}})
    assert config.dataset_name == "file"
    assert config.dataset_options == {"path": "x.jsonl", "text_field": "sentence"}
    assert config.probe_name == "logreg" and config.probe_options == {"C": 0.1}


def test_single_values_become_lists():
    config = validate({**MINIMAL, "positions": "last", "controls": "shuffled", "reporters": "json",
                       "metrics": "cohen_kappa", "filter": {"cue": "left"}})
    assert config.positions == ["last"] and config.controls == ["shuffled"] and config.reporters == ["json"]
    assert config.metrics == ["cohen_kappa"] and config.filter == {"cue": ["left"]}


def test_settings_record_every_field_but_the_source(tmp_path):
    config = load_config(write_yaml(tmp_path / "exp.yaml", MINIMAL))
    settings = config.settings()
    assert "source" not in settings
    assert set(settings) == set(FIELD_NAMES)
    assert settings["model"] == "gpt2" and settings["name"] == "exp"  # name defaults to the file's stem


def test_shipped_experiment_configs_are_valid():
    paths = sorted((ROOT / "experiments").glob("*.yaml"))
    assert ROOT / "experiments" / "mole.yaml" in paths
    for path in paths:
        config = load_config(path)
        assert config.name and config.model and config.source == str(path)


# ---------------------------------------------------------------- unknown fields


def test_unknown_field_is_named_with_the_near_one():
    message = error_for({**MINIMAL, "fodls": 3}, source="exp.yaml")
    assert message.startswith("exp.yaml:")
    assert "unknown field 'fodls'" in message
    assert "Did you mean 'folds'?" in message


@pytest.mark.parametrize("typo, meant", [("atention", "attention"), ("layer", "layers"), ("seeds", "seed"),
                                         ("reporter", "reporters"), ("on_bad_row", "on_bad_rows")])
def test_other_near_misses_suggest_the_right_field(typo, meant):
    assert f"Did you mean {meant!r}?" in error_for({**MINIMAL, typo: 1})


def test_unknown_field_without_a_near_one_lists_the_accepted_fields():
    message = error_for({**MINIMAL, "zzzzzz": 1})
    assert "unknown field 'zzzzzz'" in message and "Did you mean" not in message
    assert "Accepted fields: " + ", ".join(FIELD_NAMES) in message


def test_source_is_not_a_settable_field():
    assert "unknown field 'source'" in error_for({**MINIMAL, "source": "elsewhere"})


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(lambda k: k not in FIELD_NAMES))
def test_any_unknown_field_is_rejected_by_name(key):
    with pytest.raises(ConfigError, match=f"unknown field '{key}'"):
        validate({**MINIMAL, key: 1})


def test_unknown_field_through_the_cli(tmp_path):
    config = write_yaml(tmp_path / "exp.yaml", {**MINIMAL, "fodls": 3})
    result = run_cli("run", config, "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a clean error, not a traceback
    assert "Error:" in result.output and "Did you mean 'folds'?" in result.output and str(config) in result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- choices


def test_bad_attention_lists_the_accepted_values():
    message = error_for({**MINIMAL, "attention": "fast"})
    assert "field 'attention' is 'fast'" in message
    assert "accepted values: " + ", ".join(ATTENTION_MODES) in message


@pytest.mark.parametrize("field, value, accepted", [
    ("pooling", "max", "first, last, mean"),
    ("dtype", "float64", "float32, float16, bfloat16"),
    ("on_bad_rows", "ignore", "raise, skip"),
    ("positions", ["target", "middle"], "target, first, last, mean, cls, {index: N}"),
    ("controls", ["magic"], "majority, shuffled, random_weights"),
])
def test_other_bad_choices_list_the_accepted_values(field, value, accepted):
    message = error_for({**MINIMAL, field: value})
    assert f"field {field!r}" in message and f"accepted values: {accepted}" in message


def test_every_accepted_attention_mode_validates():
    for mode in ATTENTION_MODES:
        assert validate({**MINIMAL, "attention": mode}).attention == mode


# ---------------------------------------------------------------- required fields and types


@pytest.mark.parametrize("missing", ["model", "dataset"])
@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_model_and_dataset_are_required(missing, how):
    raw = dict(MINIMAL)
    if how == "absent":
        del raw[missing]
    else:
        raw[missing] = None if how == "null" else ""
    assert f"field {missing!r} is required" in error_for(raw)


def test_wrong_type_names_field_type_and_value():
    message = error_for({**MINIMAL, "folds": "five"})
    assert "field 'folds' must be an int, got 'five'" in message


@pytest.mark.parametrize("field, value", [
    ("folds", 2.5), ("folds", True), ("seed", "0"), ("batch_size", None), ("example", [1]), ("model", 5),
    ("split_by", 3),
])
def test_other_wrong_types(field, value):
    message = error_for({**MINIMAL, field: value})
    assert f"field {field!r} must be a" in message and repr(value) in message


@pytest.mark.parametrize("field, value, expected", [
    ("folds", 1, "field 'folds' must be at least 2, got 1"),
    ("batch_size", 0, "field 'batch_size' must be at least 1, got 0"),
    ("dataset", 5, "field 'dataset' must be a name or a mapping with a 'name' key"),
    ("dataset", {"path": "x.jsonl"}, "field 'dataset' must be a name or a mapping with a 'name' key"),
    ("probe", ["logreg"], "field 'probe' must be a name or a mapping with a 'name' key"),
    ("filter", ["cue"], "field 'filter' must map a column to accepted values"),
])
def test_out_of_range_and_malformed_values(field, value, expected):
    assert expected in error_for({**MINIMAL, field: value})


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("value, expected", [("all", "all"), ([2, 0, 2], [0, 2]), (3, [3]), ([0], [0])])
def test_valid_layers(value, expected):
    assert validate({**MINIMAL, "layers": value}).layers == expected


@pytest.mark.parametrize("value", [[], [-1], [0, -2], ["a"], [True], "some", 1.5, [1.0], None])
def test_invalid_layers(value):
    message = error_for({**MINIMAL, "layers": value})
    assert "field 'layers' must be 'all' or a list of layer numbers" in message


# ---------------------------------------------------------------- --set overrides


@pytest.mark.parametrize("text, expected", [
    ("folds=3", ("folds", 3)),
    ("layers=[0, 2]", ("layers", [0, 2])),
    ("revision=null", ("revision", None)),
    ("attention=both", ("attention", "both")),
    ("filter={cue: [left]}", ("filter", {"cue": ["left"]})),
    (" seed = 7 ", ("seed", 7)),
    ("description=a=b", ("description", "a=b")),  # only the first = splits
    ("name=3.5", ("name", 3.5)),
    ("controls=", ("controls", None)),
])
def test_overrides_parse_their_value_as_yaml(text, expected):
    assert parse_override(text) == expected


@given(st.integers(min_value=-10**9, max_value=10**9))
def test_integer_overrides_round_trip(number):
    assert parse_override(f"seed={number}") == ("seed", number)


def test_override_without_equals_sign_says_what_to_write():
    with pytest.raises(ConfigError, match=r"--set 'folds': expected key=value, e.g. --set folds=3"):
        parse_override("folds")


def test_overrides_replace_yaml_values_and_are_validated(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {**MINIMAL, "folds": 5, "layers": "all"})
    config = load_config(path, dict(parse_override(t) for t in ["folds=3", "layers=[1]", "attention=both"]))
    assert (config.folds, config.layers, config.attention) == (3, [1], "both")
    with pytest.raises(ConfigError, match="field 'folds' must be an int, got 'five'"):
        load_config(path, {"folds": "five"})
    with pytest.raises(ConfigError, match="Did you mean 'folds'"):
        load_config(path, {"fold": 3})


def test_overrides_can_supply_a_missing_required_field(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {"dataset": "mole"})
    with pytest.raises(ConfigError, match="field 'model' is required"):
        load_config(path)
    assert load_config(path, {"model": "distilgpt2"}).model == "distilgpt2"


def test_an_error_in_a_field_given_elsewhere_says_where(tmp_path):
    """A field overridden outside the file (--set, --model, a keyword of probe.run) is named with its origin;
    the file's own fields are not."""
    path = write_yaml(tmp_path / "exp.yaml", {**MINIMAL, "pooling": "avg"})
    with pytest.raises(ConfigError, match=r"exp.yaml: field 'pooling'"):
        load_config(path, {"folds": 3})
    with pytest.raises(ConfigError, match=r"exp.yaml \(--model\): unknown field"):
        validate({**MINIMAL, "modle": "x"}, source="exp.yaml", origins={"modle": "--model"})
    with pytest.raises(ConfigError, match=r"ok.yaml \(overridden\): field 'folds' must be an int"):
        load_config(write_yaml(tmp_path / "ok.yaml", MINIMAL), {"folds": "x"})


def test_bad_override_through_the_cli(tmp_path):
    config = write_yaml(tmp_path / "exp.yaml", MINIMAL)
    for args, code, expected in [
        (["--set", "folds=five"], 1, "(--set folds): field 'folds' must be an int"),
        (["--set", "folds"], 2, "expected key=value"),  # not KEY=VALUE: a bad command-line option
        (["--set", "attention=fast"], 1, "(--set attention): field 'attention' is 'fast'; accepted values: "
                                         "reimplemented, reference, both"),
    ]:
        result = run_cli("run", config, "--output", tmp_path / "out", "--cache-dir", tmp_path / "c", *args)
        assert result.exit_code == code, args
        assert isinstance(result.exception, SystemExit), args
        assert expected in result.output, (args, result.output)


# ---------------------------------------------------------------- files


def test_missing_invalid_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write_yaml(tmp_path / "broken.yaml", "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping of settings at the top level, got list"):
        load_config(write_yaml(tmp_path / "list.yaml", "- model\n- dataset\n"))
    with pytest.raises(ConfigError, match=r"config file .*empty\.yaml is empty: write its settings in it"):
        load_config(write_yaml(tmp_path / "empty.yaml", "# only a comment\n"))


def test_yaml_a_config_would_misread_is_refused_with_its_line(tmp_path):
    """A key given twice (YAML keeps the last one silently), a tab used for indentation and aliases that
    expand without bound are each one message naming the line or field; merge keys stay allowed."""
    with pytest.raises(ConfigError, match="line 4: 'folds' is given twice in one mapping \\(first on line 2\\)"):
        load_config(write_yaml(tmp_path / "twice.yaml", "model: x\nfolds: 2\nlayers: [1]\nfolds: 3\n"))
    with pytest.raises(ConfigError, match="line 3 is indented with a tab; YAML indents with spaces only"):
        load_config(write_yaml(tmp_path / "tab.yaml", "model: x\noptions:\n\tplots: {}\n"))
    levels = ["  l0: &l0 [" + ", ".join(["v"] * 10) + "]"]
    levels += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 6)]
    with pytest.raises(ConfigError, match="field 'options': its aliases .* expand to more than 100,000 values"):
        load_config(write_yaml(tmp_path / "laughs.yaml", "model: x\noptions:\n" + "\n".join(levels) + "\n"))
    merge = "model: x\ndataset: mole\noptions: {shared: &base {C: 0.5}}\nprobe: {name: logreg, <<: *base}\n"
    merged = load_config(write_yaml(tmp_path / "merge.yaml", merge))
    assert merged.probe.options == {"C": 0.5}


def test_messages_name_the_config_file(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {**MINIMAL, "pooling": "max"})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:")


# ---------------------------------------------------------------- plugin paths


def test_plugin_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    path = write_yaml(tmp_path / "configs" / "exp.yaml",
                      {**MINIMAL, "plugins": ["local.py", "../shared/other.py", str(tmp_path / "abs.py")]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.plugins == [
        str((tmp_path / "configs" / "local.py").resolve()),
        str((tmp_path / "shared" / "other.py").resolve()),
        str((tmp_path / "abs.py").resolve()),
    ]


def test_relative_plugin_file_is_loaded_by_the_run_whatever_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sentinel_plugin.py").write_text(
        "from probe import hookimpl\n\n"
        "@hookimpl\n"
        "def experiment_started(config, output_dir):\n"
        "    raise RuntimeError('sentinel plugin loaded from ' + __file__)\n"
    )
    path = write_yaml(tmp_path / "configs" / "exp.yaml", {**MINIMAL, "plugins": ["sentinel_plugin.py"]})
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(path)
    # experiment_started is the first thing a run calls after loading plugins: no model or data is touched.
    with pytest.raises(plugins.PluginError, match="sentinel plugin loaded from .*configs/sentinel_plugin.py"):
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)


def test_a_single_plugin_path_is_one_plugin(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", {**MINIMAL, "plugins": "my_plugin.py"})
    assert load_config(path).plugins == [str((tmp_path / "my_plugin.py").resolve())]


@pytest.mark.parametrize("field, value", [("name", 2024), ("description", 5)])
def test_text_fields_are_checked_or_read_as_text(field, value):
    try:
        config = validate({**MINIMAL, field: value})
    except ConfigError as error:
        assert repr(field) in str(error)
    else:
        assert isinstance(getattr(config, field), str), f"{field}: {getattr(config, field)!r} is not text"
