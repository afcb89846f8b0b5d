"""Services: what one run's stages read and never change — the config, the cache, this process among
torchrun's, and the model, its config and tokenizer, each loaded at most once (and only when a stage
needs it)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from probe import plugins
from probe.errors import first_line
from probe.pipeline.config import ConfigError, ExperimentConfig
from probe.pipeline.results import ReporterLog
from probe.scale.ranks import Ranks
from probe.store.usage import default_cache_dir

@dataclass(frozen=True)
class Services:
    """What the stages of one run read and never change: the config, where the model and cache are, this
    process among torchrun's, and, lazily, the model's config, tokenizer and the one shared model (read
    from disk at most once, by ``models``). Assigning to a field raises; the lazily read values are
    computed on first use and kept."""

    config: ExperimentConfig
    model_path: str  # what the config's model resolved to: a hub name, a folder or a .gguf file
    cache_dir: Path = field(default_factory=default_cache_dir)  # the user's: see probe.store.usage
    progress: bool | str = True  # bars; "line": --quiet's one line per long phase (pipeline/progress.py)
    ranks: Ranks = field(default_factory=Ranks)  # this process among those torchrun started (see scale/ranks.py)

    # ------------------------------------------------------------ what the model is, read once

    @cached_property
    def device(self):
        """The torch.device the config's ``device`` names here, one GPU per process when torchrun started
        several (checked before any model work, with the dtype, which the device must be able to do)."""
        from probe.scale.devices import check_dtype, resolve_device
        from probe.scale.ranks import rank_device

        device = rank_device(resolve_device(self.config.device), self.ranks)
        check_dtype(self.config.dtype, device)
        return device

    @property
    def attention_path(self) -> str:
        """How probe's attention runs: ``fast`` (scaled_dot_product_attention in every block whose scores
        and pattern no hook reads; equal to the exact path up to rounding) unless the run compares it with
        Hugging Face's attention (``attention: both``), which needs the bit-identical ``exact`` path."""
        return "exact" if self.config.attention == "both" else "fast"

    @cached_property
    def source(self) -> str:
        """Where weights load from: a GGUF file's converted safetensors folder (see models.gguf_folder)."""
        from probe.pipeline.models import NotWritten, gguf_folder

        if str(self.model_path).endswith(".gguf") and Path(self.model_path).is_file():
            try:
                return str(gguf_folder(self.model_path, self.cache_dir / "models"))
            except NotWritten as error:
                raise ConfigError(f"{self.config.source or 'config'}: field 'model': {self.model_path} was read, but "
                                  f"{error}; make room there or give another --cache-dir") from None
            except Exception as error:  # not a GGUF file, or one transformers can't convert
                raise ConfigError(f"{self.config.source or 'config'}: field 'model': {self.model_path} can't be "
                                  f"read as a GGUF checkpoint ({type(error).__name__}: {error})") from None
        return self.model_path

    @cached_property
    def model_config(self):
        """The transformers config; the first place a bad model name shows, so its error says what works."""
        from probe.pipeline.models import load_config

        try:
            return load_config(self.source, revision=self.config.revision)
        except (OSError, ValueError) as error:  # ValueError: a config.json whose model_type nobody knows
            raise ConfigError(f"{self.config.source}: {model_load_error(self.config.model, error)}") from None

    @cached_property
    def config_fields(self) -> dict:
        """The model config's fields: a local config.json read as JSON (no transformers import), else the
        transformers config's."""
        import json

        path = Path(self.source) / "config.json"
        if not path.is_file():
            return self.model_config.to_dict()
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ConfigError(f"{self.config.source or 'config'}: field 'model': {path} is not valid JSON "
                              f"({error})") from None

    @cached_property
    def n_blocks(self) -> int:
        """The number of blocks, as the model's config gives it."""
        for name in ("num_hidden_layers", "n_layer"):
            if isinstance(self.config_fields.get(name), int):
                return self.config_fields[name]
        return self.model_config.num_hidden_layers

    @cached_property
    def tokenizer(self):
        """The model's tokenizer; a folder without one, or one without character offsets (which finding the
        target's tokens needs), is a ConfigError that says how to fix it."""
        from probe.pipeline.models import is_empty_tokenizer, load_tokenizer

        where = f"{self.config.source or 'config'}: field 'model' ({self.config.model})"
        try:
            tokenizer = load_tokenizer(self.source, revision=self.config.revision)
        except (OSError, ValueError, TypeError) as error:
            reason = first_line(error)
            raise ConfigError(f"{where}: no usable tokenizer at {self.source} ({reason}); save the model's "
                              f"tokenizer there with tokenizer.save_pretrained({str(self.source)!r})") from None
        if is_empty_tokenizer(tokenizer):
            raise ConfigError(f"{where}: no tokenizer files at {self.source} (what loads has an empty "
                              f"vocabulary); save the model's tokenizer there with "
                              f"tokenizer.save_pretrained({str(self.source)!r})")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{where}: its tokenizer ({type(tokenizer).__name__}) is a slow one, which gives no "
                              "character offsets, and probe needs them to find the target's tokens; save a fast "
                              "tokenizer (tokenizer.json) beside the model")
        return tokenizer

    # ------------------------------------------------------------ the shared model

    @cached_property
    def models(self) -> ModelProvider:
        """The one shared model of this run, loaded on first use."""
        return ModelProvider(self)

    @property
    def loads(self) -> int:
        """How many times weights were read from disk (tests and benchmarks check it)."""
        return self.models.loads

    def model(self, attention: str = "reimplemented"):
        """The base model (no LM head), loaded once; ``reimplemented`` swaps probe's attention in and
        attaches the plugins' activation hooks, ``reference`` gives Hugging Face's attention back."""
        return self.models.get(attention)

    def load_model(self, attention: str = "reimplemented"):
        """(model, tokenizer): what extraction and reporters call; nothing is read from disk twice."""
        tokenizer = self.tokenizer  # first: a missing tokenizer is found before the weights are read
        return self.model(attention), tokenizer

    def load_weights(self, model_class):
        """A model of ``model_class`` (e.g. AutoModelForCausalLM) from the run's weights, placed as the run's
        model is; weights that fail to load are a ConfigError naming the model. Not shared: each call reads."""
        from probe.pipeline.models import load_model
        from probe.scale.devices import parse_dtype

        try:
            return self._place(load_model, model_class, parse_dtype(self.config.dtype))
        except (ConfigError, plugins.PluginError):
            raise
        except Exception as error:  # missing files, a truncated safetensors file (SafetensorError), bad shapes
            reason = first_line(error)
            raise ConfigError(f"{self.config.source or 'config'}: field 'model': the weights at {self.source} "
                              f"can't be loaded ({type(error).__name__}: {reason})") from None

    def _place(self, load_model, model_class, dtype):
        """On ``device``, or spread by accelerate when the config gives a ``device_map`` (offloading what
        ``max_memory`` leaves over to a folder in the cache)."""
        config = self.config
        if config.device_map is None:
            return load_model(self.source, revision=config.revision, dtype=dtype, model_class=model_class).to(self.device)
        return load_model(self.source, revision=config.revision, dtype=dtype, model_class=model_class,
                          device_map=config.device_map, max_memory=config.max_memory,
                          offload_folder=str(self.cache_dir / "offload"))

    def random_weights_model(self):
        """The same architecture with fresh random weights (seeded): what structure alone gives."""
        import torch
        from transformers import AutoModel

        from probe.core.swap import swap_attention
        from probe.scale.devices import parse_dtype

        torch.manual_seed(self.config.seed)
        model = AutoModel.from_config(self.model_config, dtype=parse_dtype(self.config.dtype),
                                      attn_implementation="eager").to(self.device).eval()
        swap_attention(model, fast=self.attention_path == "fast", adapters=plugins.adapters_for(model))
        attach_activation_hooks(model, self.config)
        return model, self.tokenizer

    def make_probe(self) -> Callable[[], object]:
        return probe_factory(self.config)


class ModelProvider:
    """Holds the run's one base model and which attention it runs now; the only state behind Services,
    so that extraction and every reporter share one copy of the weights."""

    def __init__(self, services: Services):
        self.services = services
        self.loads = 0
        self._model = None
        self._attention: str | None = None  # which attention the model has now: reference | reimplemented
        self._hook_handles: list = []

    def get(self, attention: str):
        if self._model is None:
            from transformers import AutoModel

            self._model = self.services.load_weights(AutoModel)
            self.loads += 1
            self._attention = "reference"
        if attention != self._attention:
            self._switch(attention)
        return self._model

    @property
    def loaded_model(self):
        """The model with probe's attention and the plugins' activation hooks on it, if it was loaded so;
        else None (nothing is loaded for asking)."""
        return self._model if self._attention == "reimplemented" else None

    def _switch(self, attention: str) -> None:
        from probe.core.swap import restore_attention, swap_attention

        if attention == "reimplemented":
            fast = self.services.attention_path == "fast"
            swap_attention(self._model, fast=fast, adapters=plugins.adapters_for(self._model))
            self._hook_handles = attach_activation_hooks(self._model, self.services.config)
        else:
            for handle in self._hook_handles:
                handle.remove()
            self._hook_handles = []
            restore_attention(self._model)
        self._attention = attention


def probe_factory(config: ExperimentConfig) -> Callable[[], object]:
    factory = plugins.lookup("probe", config.probe_name).value
    return lambda: factory(seed=config.seed, **config.probe_options)


def resolve_model(name: str, revision: str | None) -> str:
    """A registered model source's path or hub name; anything else is passed to from_pretrained as is."""
    sources = plugins.registry("model")
    if name in sources:
        return str(sources[name].value(revision))
    return name


def model_load_error(name: str, error: OSError) -> str:
    """Why a model name led nowhere: a registered name whose source can't be reached, a path with no folder,
    or a name that is none of these — with the registered names."""
    sources = plugins.registry("model")
    known, reason = ", ".join(sorted(sources)), first_line(error)
    if name in sources:
        return (f"cannot load model {name!r}: it is registered (by plugin {sources[name].plugin!r}) as "
                f"{resolve_model(name, None)!r}, which can't be loaded from here ({reason})")
    if looks_like_path(name):
        path = Path(name).expanduser().absolute()
        if not path.exists():
            return f"cannot load model {name!r}: there is no file or folder at {path} (registered names: {known})"
        return f"cannot load model {name!r}: {path} holds no model transformers can read ({reason})"
    return (
        f"cannot load model {name!r}: it is not a registered name ({known}), an existing local folder, "
        f"or a hub model reachable from here ({reason})"
    )


def looks_like_path(name: str) -> bool:
    """A filesystem path rather than a hub name (``namespace/repo``, or ``namespace/repo/file.gguf``): one that
    exists, or starts at the root, ~, . or .. (or a Windows drive or backslash)."""
    return (Path(name).exists() or name.startswith(("/", "~", "./", "../", ".\\", "..\\", "\\"))
            or re.match(r"[A-Za-z]:[\\/]", name) is not None)


def attach_activation_hooks(model, config: ExperimentConfig) -> list:
    """Hook functions that plugins return from ``activation_hooks``, attached by hook point name;
    returns the handles."""
    from probe.core.hooks import add_hook

    handles = []
    for plugin, fns in plugins.call_each("activation_hooks", model=model, config=config):
        for name, fn in (fns or {}).items():
            try:
                if getattr(fn, "probe_owner", None) is None:  # so that a bad return value names the plugin
                    try:
                        fn.probe_owner = f"{getattr(fn, '__qualname__', repr(fn))} (plugin {plugin!r}, activation_hooks)"
                    except AttributeError:  # a bound method or builtin can't take attributes
                        pass
                handles += add_hook(model, name, fn)
            except KeyError as error:
                raise plugins.PluginError(f"plugin {plugin!r} (activation_hooks): {error.args[0]}") from None
    return handles


def activation_plugins() -> list[str]:
    """Plugins that may change activations: part of the cache key, so their runs never share a cache."""
    hook = plugins.get_plugin_manager().hook.activation_hooks
    return sorted(impl.plugin_name for impl in hook.get_hookimpls())


# ---------------------------------------------------------------- the values the stages pass on


def column(table, name: str) -> list:
    """A column of the rows' table as a list, read at once: a datasets column indexed row by row costs a read
    per row (about 35 µs: 3.5 s for 100,000 rows)."""
    return table[name][:]


class Spans(Sequence):
    """Each row's (start, end) character span, or (None, None) in a row without one, as two int64 arrays:
    16 bytes a row, where a list of tuples of ints took about 60 (6 MiB at 100,000 rows)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray):
        self.starts, self.ends = starts, ends  # -1 where a row has no span

    @classmethod
    def of(cls, starts, ends) -> Spans:
        """From two columns of offsets, None where a row has no span."""
        def array(values):
            return np.array([-1 if value is None else value for value in values], dtype=np.int64)

        return cls(array(starts), array(ends))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Spans(self.starts[index], self.ends[index])
        start = int(self.starts[index])
        return (None, None) if start < 0 else (start, int(self.ends[index]))

    def __iter__(self):
        for start, end in zip(self.starts.tolist(), self.ends.tolist()):
            yield (None, None) if start < 0 else (start, end)


@dataclass(frozen=True)
class Rows:
    """The prepared rows (a datasets.Dataset: text, target, label, cue, group, span_start, span_end and the
    source's other columns) and the problems of the rows left out."""

    table: Any
    skipped: tuple = ()
    numbers: tuple = ()  # each row's 1-based number in its source, for messages that name rows
    diagnostics: tuple = ()  # what loading found that a reader should know (rows left out, …): Diagnostics

    def __len__(self) -> int:
        return len(self.table)

    @cached_property
    def spans(self) -> Spans:
        """Each row's target span; (None, None) in a row without a target (when no position reads one)."""
        return Spans.of(column(self.table, "span_start"), column(self.table, "span_end"))

    @cached_property
    def fingerprint(self) -> str:
        """A digest of every row's text and target span (extract.data_fingerprint), read once: each cache key of
        the run's features names it."""
        from probe.pipeline.extract import data_fingerprint

        return data_fingerprint(self.table["text"], self.spans)

    @cached_property
    def texts_repeat(self) -> bool:
        """Whether some rows share a text (a token task's words): extraction then runs each text once."""
        return len(set(self.table["text"])) < len(self)


@dataclass(frozen=True)
class Split:
    """One subset of rows with its folds, computed once and shared by every layer and control."""

    name: str
    index: Any  # np.ndarray: row numbers in the prepared rows
    y: Any  # np.ndarray: their labels
    folds: list
    shuffled_y: Any = None  # the shuffled-label control: permuted labels and their own folds
    shuffled_folds: list | None = None
    dev_folds: list | None = None  # a fixed split's (train, dev) fold, when the config names a dev part


@dataclass(frozen=True)
class Splits:
    """Every subset's Split: ``all`` first, then the config's ``split_by`` values."""

    subsets: tuple[Split, ...]

    def __iter__(self):
        return iter(self.subsets)

    def folds(self, subset: str = "all") -> list:
        """A subset's folds under the run's evaluation protocol (k folds, a fixed split's train/test, or a
        splitter's), for a reporter that fits probes of its own."""
        for split in self.subsets:
            if split.name == subset:
                return split.folds
        known = ", ".join(split.name for split in self.subsets) or "none"
        raise ValueError(f"no subset {subset!r} in this run's splits; its subsets: {known}")


@dataclass(frozen=True)
class Features:
    """A FeatureStore per attention mode (and the random-weights control); ``main`` is the one probed."""

    stores: dict
    main_mode: str

    @property
    def main(self):
        return self.stores[self.main_mode]


@dataclass(frozen=True)
class RunData:
    """What a reporter reads beside the Results: the services and every stage's value. Read-only."""

    services: Services
    rows: Rows
    splits: Splits
    features: Features
    layers: list
    reporters: ReporterLog = field(default_factory=ReporterLog)  # what each finished reporter did

    @property
    def config(self) -> ExperimentConfig:
        return self.services.config

    def __getattr__(self, name: str):
        # Called only for a name the class lacks: a reporter written for RunContext gets a sentence, not a riddle.
        if name in _MOVED:
            raise AttributeError(f"the run object has no {name!r} since RunContext was replaced; use run.{_MOVED[name]} "
                                 "(see docs/plugins.md, 'The run object')")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# RunContext's names → where they are now (for the message above).
_MOVED = {"load_model": "services.load_model()", "model": "services.model()", "tokenizer": "services.tokenizer",
          "random_weights_model": "services.random_weights_model()", "stores": "features.stores",
          "cache_dir": "services.cache_dir", "progress": "services.progress", "loads": "services.loads",
          "model_path": "services.model_path", "device": "services.device", "n_blocks": "services.n_blocks",
          "model_config": "services.model_config", "spans": "rows.spans", "make_probe": "services.make_probe()",
          "folds": "splits.folds()", "ranks": "services.ranks", "attention_path": "services.attention_path"}
