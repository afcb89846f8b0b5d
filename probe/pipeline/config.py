"""Experiment configs: plain YAML, checked field by field with messages that say what to write instead."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    ValidationInfo,
)

from probe.core.architectures import GPT2_SHAPES
from probe.errors import UserError
from probe.scale.devices import DTYPE_NAMES as DTYPES  # one list of the dtype names

ATTENTION_MODES = ("reimplemented", "reference", "both")
POOLINGS = ("first", "last", "mean")
CONTROLS = ("majority", "shuffled", "random_weights", "mean", "permutation", "control_task")
DEFAULT_CONTROLS = ("majority", "shuffled", "random_weights")  # the permutation test and control task cost more
ON_BAD_ROWS = ("raise", "skip")
TASKS = ("classification", "regression")  # what the labels are: classes, or numbers (probe/pipeline/tasks.py)
LONG_TEXTS = ("refuse", "window")  # a text longer than the model's positions: a bad row, or cut around the target



class ConfigError(UserError, ValueError):
    """A config field is missing, misspelt or has a value probe does not accept."""


def plugin_options(config, key: str, accepted) -> dict:
    """``options.<key>`` of a config for a plugin: a mapping whose keys are all in ``accepted`` ({} when
    absent); anything else is a ConfigError naming the field and what it accepts."""
    options = config.options.get(key) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"options.{key}: must be a mapping of {', '.join(accepted)}, got {options!r}")
    unknown = sorted(set(map(str, options)) - set(accepted))
    if unknown:
        raise ConfigError(f"options.{key}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return options


class Named(BaseModel):
    """A registered name and the options its function takes: ``logreg`` or ``{name: logreg, C: 0.5}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the registered name (`probe plugins` lists them)")
    options: dict[str, Any] = Field({}, description="the other keys of the mapping, passed to the plugin as keyword options")

    @classmethod
    def parse(cls, value) -> Named:
        """From a name or a mapping with a ``name`` key; anything else is a ValueError saying what to write."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return cls(name=value["name"], options={k: v for k, v in value.items() if k != "name"})
        raise ValueError(f"must be a name or a mapping with a 'name' key and options, got {value!r}")

    def as_written(self) -> str | dict:
        """The form a config file writes (and results.json records): a bare name when there are no options."""
        return {"name": self.name, **self.options} if self.options else self.name


class DatasetSpec(Named):
    """The config's ``dataset``: a registered loader and its options (e.g. ``path``)."""


class ProbeSpec(Named):
    """The config's ``probe``: a registered probe factory and its options (``seed`` is the config's)."""


class CrossValidationSpec(BaseModel):
    """``evaluation: {}`` or ``{cv: N | splitter name}``: k-fold cross-validation (``folds`` when no cv)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cv: Union[int, str, None] = Field(None, description="the number of folds, or a splitter's name; none: `folds` folds, grouped and stratified where the rows allow")

    def protocol(self, folds: int):
        from probe.pipeline.evaluation import CrossValidation

        if isinstance(self.cv, int):
            return CrossValidation(self.cv)
        return CrossValidation(folds, self.cv or "auto")

    def as_written(self) -> dict:
        return self.model_dump(exclude_none=True)


class FixedSplitSpec(BaseModel):
    """``evaluation: {split_field, train, test[, dev]}``: a benchmark's own split, named by a column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split_field: str = Field(description="the column that names each row's part of the split")
    train: str = Field(description="the value of `split_field` that marks training rows")
    test: str = Field(description="the value of `split_field` that marks test rows")
    dev: Optional[str] = Field(None, description="the value that marks development rows, scored by the same train-only fit and reported as `dev_accuracy`")

    def protocol(self, folds: int):
        from probe.pipeline.evaluation import FixedSplit

        return FixedSplit(self.split_field, self.train, self.test, self.dev)

    def as_written(self) -> dict:
        return self.model_dump()


def _evaluation_kind(value) -> str:
    """Which protocol a parsed evaluation is: a fixed split names its column, cross-validation does not."""
    if isinstance(value, BaseModel):
        return "fixed" if isinstance(value, FixedSplitSpec) else "cv"
    return "fixed" if isinstance(value, dict) and "split_field" in value else "cv"


Evaluation = Annotated[
    Union[Annotated[CrossValidationSpec, Tag("cv")], Annotated[FixedSplitSpec, Tag("fixed")]],
    Discriminator(_evaluation_kind),
]


class ExperimentConfig(BaseModel):
    """A validated experiment. Build it with ``validate(raw)`` (or ``load_config(path)``), whose errors
    name the field and the accepted values; pydantic checks each field, these messages explain it."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=False)

    model: str
    dataset: DatasetSpec
    name: str = "experiment"
    revision: Optional[str] = None
    description: str = ""
    probe: ProbeSpec = ProbeSpec(name="logreg")
    task: Optional[Literal[TASKS]] = None  # None: regression when the probe is a regressor (e.g. ridge)
    positions: list[str] = ["target"]  # position names (probe/pipeline/positions.py), each spec parsed to its name
    pooling: Literal[POOLINGS] = "mean"
    layers: Union[Literal["all"], list[int]] = "all"
    attention: Literal[ATTENTION_MODES] = "reimplemented"
    folds: int = Field(5, ge=2)
    seed: int = 0
    batch_size: int = Field(16, ge=1)
    dtype: Literal[DTYPES] = "float32"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (see probe/devices.py)
    device_map: Optional[str] = None  # accelerate: auto | balanced | sequential … (then `device` is not used)
    max_memory: Optional[dict[Union[int, str], str]] = None  # e.g. {0: 20GiB, cpu: 60GiB}; the rest to disk
    filter: dict[str, list] = {}
    split_by: Optional[str] = None
    controls: list[Literal[CONTROLS]] = list(DEFAULT_CONTROLS)
    permutations: int = Field(100, ge=1)  # label permutations of the `permutation` control
    measures: list[str] = []  # registered per-layer measures (register_measures), e.g. [mdl]
    reporters: list[str] = ["json", "csv", "plots", "summary"]
    metrics: Optional[list[str]] = None  # registered metric names; None: all registered
    plugins: list[str] = []
    on_bad_rows: Literal[ON_BAD_ROWS] = "raise"
    long_texts: Literal[LONG_TEXTS] = "refuse"
    example: int = 0
    options: dict[str, Any] = {}  # free-form settings for plugins
    # How probes are scored, and what the last layer is (see probe/evaluation.py and probe/extract.py).
    evaluation: Evaluation = CrossValidationSpec()  # {} / {cv: 5 | StratifiedKFold …} / {split_field, train, test, dev}
    final_norm: bool = False  # the last layer after the model's final norm, as HF's last hidden_states
    source: str = ""  # the file the config came from, for messages

    @field_validator("controls", "reporters", "plugins", "metrics", "measures", mode="before")
    @classmethod
    def _one_becomes_a_list(cls, value):
        return value if value is None else _as_list(value)

    @field_validator("positions", mode="before")
    @classmethod
    def _position_names(cls, value):
        from probe.pipeline.positions import SPELLINGS, names

        value = _as_list(value)
        if not value:
            raise ValueError(f"needs at least one of {', '.join(SPELLINGS)}")
        try:
            return names(value)
        except ValueError as error:
            raise ValueError(f"has a bad entry: {error}") from None

    @field_validator("long_texts")
    @classmethod
    def _window_keeps_positions(cls, value, info: ValidationInfo):
        from probe.pipeline.positions import parse

        positions = info.data.get("positions", [])
        moved = [p for p in positions if parse(p).kind not in ("target", "last")]
        if value == "window" and (moved or "target" not in positions):
            why = f"would move what position(s) {', '.join(moved)} read" if moved else "needs positions: [target]"
            raise ValueError(f"is window, which cuts a long text around its target and so {why}; "
                             "use long_texts: refuse")
        return value

    @field_validator("device")
    @classmethod
    def _device_spelling(cls, value):
        from probe.scale.devices import DEVICE_PATTERN

        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_name_or_mapping(cls, value):
        spec = DatasetSpec.parse(value)
        path = spec.options.get("path")
        if "path" in spec.options and not (isinstance(path, str) and path.strip()):
            raise ValueError(f"option 'path' must be a file or folder's path, or hf:owner/name, as text; "
                             f"got {path!r} ({type(path).__name__})")
        return spec

    @field_validator("probe", mode="before")
    @classmethod
    def _probe_name_or_mapping(cls, value):
        return ProbeSpec.parse(value)

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_numbers(cls, value):
        if value == "all":
            return value
        layers = _as_list(value)
        if not layers or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers):
            raise ValueError(f"must be 'all' or a list of layer numbers ≥ 0, got {value!r}")
        return sorted(set(layers))

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_lists(cls, value):
        if not isinstance(value, dict):
            raise ValueError("must map a column to accepted values, e.g. {cue: [left]}")
        return {key: _as_list(values) for key, values in value.items()}

    @field_validator("evaluation", mode="before")
    @classmethod
    def _evaluation_protocol(cls, value):
        from probe.pipeline.evaluation import parse

        checked = parse(value)  # the sentences a person can act on; then the typed protocol
        return FixedSplitSpec(**checked) if "split_field" in checked else CrossValidationSpec(**checked)

    @property
    def dataset_name(self) -> str:
        return self.dataset.name

    @property
    def dataset_options(self) -> dict:
        return self.dataset.options

    @property
    def attention_modes(self) -> list[str]:
        """The attention(s) vectors are extracted with: both compares the reference with probe's."""
        return ["reference", "reimplemented"] if self.attention == "both" else [self.attention]

    @property
    def main_mode(self) -> str:
        """The attention whose vectors are probed (probe's own when both are extracted)."""
        return self.attention_modes[-1]

    @property
    def probe_name(self) -> str:
        return self.probe.name

    @property
    def probe_options(self) -> dict:
        return self.probe.options

    @property
    def protocol(self):
        """The evaluation protocol that makes the folds (probe/pipeline/evaluation.py)."""
        return self.evaluation.protocol(self.folds)

    def settings(self) -> dict:
        """Everything that shaped the results, for results.json, each field as a config file writes it."""
        written = {"dataset": self.dataset.as_written(), "probe": self.probe.as_written(),
                   "evaluation": self.evaluation.as_written()}
        return {name: written.get(name, getattr(self, name)) for name in FIELD_NAMES}


FIELD_NAMES = [name for name in ExperimentConfig.model_fields if name != "source"]


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                origins: dict[str, str] | None = None) -> ExperimentConfig:
    """Read, override (``--set key=value``) and validate a YAML experiment config. An error in an overridden
    field says so: "overridden", or where ``origins`` says it was given (e.g. "--set folds", "--model")."""
    path = Path(path)
    raw = paths_beside(read_yaml_mapping(path), path.parent)  # the file's paths; overrides' are the caller's
    raw.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        raw[key] = value
    origins = dict.fromkeys(overrides or {}, "overridden") | (origins or {})
    return validate(raw, source=str(path), origins=origins)


def paths_beside(raw: dict, folder: Path) -> dict:
    """The one rule for paths in a file: a relative path written in a config (or a sweep's ``set``) is
    relative to that file's folder, whatever folder probe runs in. Paths: ``plugins``, the dataset's
    ``path`` (not an ``hf:`` name), and a ``model`` that starts with ``./`` or ``../`` or names a file or
    folder there (anything else is a registered or hub name). Paths given on the command line or in Python
    stay relative to the current folder."""
    raw = dict(raw)
    if "plugins" in raw:
        raw["plugins"] = [_beside(folder, p) if isinstance(p, str) else p for p in _as_list(raw["plugins"] or [])]
    dataset = raw.get("dataset")
    if isinstance(dataset, dict) and _is_relative_path(dataset.get("path")) and \
            not dataset["path"].startswith("hf:"):
        raw["dataset"] = {**dataset, "path": _beside(folder, dataset["path"])}
    model = raw.get("model")
    if _is_relative_path(model) and (model.startswith(("./", "../", ".\\", "..\\")) or (folder / model).exists()):
        raw["model"] = _beside(folder, model)
    return raw


def _is_relative_path(value) -> bool:
    return isinstance(value, str) and bool(value.strip()) and not value.startswith("~") and \
        not Path(value).is_absolute()


def _beside(folder: Path, path: str) -> str:
    return str((folder / path).resolve()) if _is_relative_path(path) else path


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file's top-level mapping; a missing, unreadable, non-UTF-8 or malformed file is a ConfigError
    naming the file (and the line of a byte that is not UTF-8)."""
    from probe.pipeline.datafiles import utf8

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} can't be read: {error.strerror}") from None
    text = utf8(data, path, ConfigError, "save the config as UTF-8")
    try:
        raw = yaml.load(text, Loader=StrictLoader)
    except StrictYAMLError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(error, text)}") from None
    if raw is None:
        raise ConfigError(f"{what} {path} is empty: write its settings in it, one `field: value` per line")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    return raw


MAX_EXPANDED_NODES = 100_000  # a config whose aliases expand it beyond this many values is refused


class StrictYAMLError(ValueError):
    """A YAML construct probe refuses in a config: the same key twice, or too many aliases."""


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing what would make a config mean something other than it seems: a key
    given twice in one mapping (YAML keeps the last one silently) and alias expansion beyond a bound (a
    few hundred bytes of nested aliases — a "billion laughs" — would otherwise expand without end when the
    options are hashed)."""

    def construct_document(self, node):
        sizes: dict = {}
        expanded = _expanded_size(node, sizes)
        if expanded > MAX_EXPANDED_NODES:
            where = ""
            if isinstance(node, yaml.MappingNode) and node.value:  # name the field that grows the most
                key, _ = max(node.value, key=lambda pair: sizes[id(pair[1])])
                where = f"field {key.value!r}: "
            raise StrictYAMLError(f"{where}its aliases (*name) expand to more than {MAX_EXPANDED_NODES:,} "
                                  f"values ({expanded:,} in all); write the values out instead")
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor says so
                break
            if first is not None:
                raise StrictYAMLError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice in one "
                                      f"mapping (first on line {first}); keep one of them")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def _expanded_size(node, sizes: dict) -> int:
    """How many values ``node`` stands for once every alias is written out; each shared node is counted
    once per use but measured once, so a "billion laughs" is measured without being expanded."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a node that contains itself (a recursive alias) counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """PyYAML's message, with what to do when the cause is a tab used for indentation."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None and "\t" in str(error):
        line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
        if line[: len(line) - len(line.lstrip())].count("\t"):
            return f"line {mark.line + 1} is indented with a tab; YAML indents with spaces only"
    return str(error)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set folds=3")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: the field name before '=' is empty, e.g. --set folds=3")
    try:
        return key.strip(), yaml.load(value, Loader=StrictLoader)
    except (yaml.YAMLError, StrictYAMLError) as error:
        from probe.errors import first_line

        problem = first_line(error)
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({problem}); quote it, "
                          f"e.g. --set '{key.strip()}=\"{value}\"'") from None


def validate(raw: dict, source: str = "<config>", origins: dict[str, str] | None = None) -> ExperimentConfig:
    """``raw`` checked into an ExperimentConfig; an error names ``source`` and the field, and for a field
    given elsewhere (``origins``: field → e.g. "--set folds") that too."""
    origins = origins or {}

    def where(field: str) -> str:
        return f"{source} ({origins[field]}):" if field in origins else f"{source}:"

    unknown = [key for key in raw if key not in FIELD_NAMES]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(key, FIELD_NAMES, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{where(key)} unknown field {key!r}.{hint} Accepted fields: {', '.join(FIELD_NAMES)}")
    for required in ("model", "dataset"):
        if raw.get(required) in (None, ""):
            raise ConfigError(f"{where(required)} field {required!r} is required")
    for field, value in raw.items():
        _check_hashable_size(field, value, where(field))
    try:
        return ExperimentConfig.model_validate({**raw, "source": source})
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"{where(str(first['loc'][0]))} {_message(first, raw)}") from None


MAX_FIELD_BYTES = 1 << 20  # a field written out as JSON (as cache keys hash it) may be at most 1 MiB


def _check_hashable_size(field: str, value, where: str) -> None:
    """Refuse a field too big to hash into a cache key (its JSON form over MAX_FIELD_BYTES), or one that
    contains itself (a recursive YAML alias, ``&a [*a]``), naming the field."""
    import json

    if not isinstance(value, (dict, list, tuple, str)):
        return
    try:
        size = len(json.dumps(value, default=str).encode())
    except ValueError:  # json's "Circular reference detected"
        raise ConfigError(f"{where} field {field!r} contains itself (a recursive alias such as &a [*a]); "
                          "write its values out instead") from None
    except TypeError as error:  # a key json can't write (a tuple from a YAML complex key)
        raise ConfigError(f"{where} field {field!r} can't be written out as JSON ({error}); "
                          "use text, numbers, lists and mappings with text keys") from None
    if size > MAX_FIELD_BYTES:
        raise ConfigError(f"{where} field {field!r} is {size:,} bytes written out; a field may be at most "
                          f"{MAX_FIELD_BYTES:,} (fields are hashed into cache keys and recorded in results.json): "
                          "put large data in a file and give its path")


def _message(error: dict, raw: dict) -> str:
    """One pydantic error as a sentence that names the field and says what it accepts."""
    name = str(error["loc"][0])
    value = raw.get(name)
    kind = error["type"]
    if kind == "literal_error":
        got = error["input"]
        return f"field {name!r} is {got!r}; accepted values: {', '.join(_CHOICES[name])}"
    if kind == "greater_than_equal":
        return f"field {name!r} must be at least {error['ctx']['ge']}, got {value}"
    if kind == "value_error":
        return f"field {name!r} {error['ctx']['error']}"
    if kind in _TYPES:
        return f"field {name!r} must be {_TYPES[kind]}, got {value!r}"
    return f"field {name!r}: {error['msg']}, got {value!r}"


_CHOICES = {"attention": ATTENTION_MODES, "pooling": POOLINGS, "dtype": DTYPES, "on_bad_rows": ON_BAD_ROWS,
            "controls": CONTROLS, "task": TASKS, "long_texts": LONG_TEXTS}
_TYPES = {"int_type": "an int", "string_type": "a str", "list_type": "a list", "dict_type": "a mapping",
          "bool_type": "true or false"}


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
