"""A rerun that has nothing to compute answers from the cache's index of finished runs, importing nothing
heavy (no torch, transformers, datasets or scikit-learn).

A finished run is kept (probe/store/finished.py) under a key of everything known before any work: the
config as validated, where its data and model paths point, the code that computes (probe's package, every
installed plugin's package and every plugin file, by content), probe's git commit, the versions of the
installed distributions, Python and the platform, and the device (only the CPU: an ``auto`` device is
trusted to mean the CPU only where no accelerator is visible). The entry records what the run read — each
model and data file with its SHA-256 — and the lines it printed. A rerun finds the entry, checks each file
it read against its digest (hashed once per file version, as the weights always were) and publishes the
kept files. Any doubt (a file changed or gone, an entry that does not prove itself, a plugin whose
side effects a copy would skip) is the normal path. See docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

from probe.pipeline.config import ExperimentConfig
from probe.store import finished as store
from probe.store.digests import remembered_sha256

# Hooks whose implementations act outside the run folder (trackers, notebooks): copying a run would skip them.
SIDE_EFFECT_HOOKS = ("experiment_started", "layer_result", "experiment_finished")
ENTRY_POINT_GROUP = "probe"
BUILTIN_DATASETS = "probe.builtin.datasets"  # the plugin whose datasets read only the files they are given


def run_key(config: ExperimentConfig, output_dir: Path, plugins_dir: str | Path | None) -> str | None:
    """The finished-run index's key for this run, or None when it can't be known without importing torch
    (a device other than the CPU, or several torchrun processes)."""
    if not _on_cpu_only(config) or os.environ.get("WORLD_SIZE", "1") != "1":
        return None
    try:
        parts = _key_parts(config, output_dir, plugins_dir)
    except OSError:  # a source or plugin file this user can't read: no answer from the index
        return None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _key_parts(config: ExperimentConfig, output_dir: Path, plugins_dir: str | Path | None) -> dict:
    from probe.pipeline.results import git_commit

    return {
        "config": config.model_dump(mode="json"),
        "dataset_path": _local_path(config.dataset_options.get("path")),
        "model_path": _local_path(config.model),
        "output": str(Path(output_dir).absolute()),
        "code": code_digest(config, plugins_dir),
        "git_commit": git_commit(),
        "distributions": _distributions(),
        "python": [sys.version, platform.machine(), sys.platform],
        "plugins_env": os.environ.get("PROBE_PLUGINS"),
    }


def _on_cpu_only(config: ExperimentConfig) -> bool:
    """Whether the run computes on the CPU, told without torch: ``cpu``, or ``auto`` with no GPU visible."""
    if config.device_map is not None or config.device not in ("cpu", "auto"):
        return False
    if config.device == "cpu":
        return True
    if sys.platform == "darwin":
        return platform.machine() != "arm64"  # Apple silicon has MPS
    dev = Path("/dev")
    return not (any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists() or (dev / "dxg").exists())


def _local_path(value) -> str | None:
    if not isinstance(value, str) or value.startswith("hf:") or not Path(value).exists():
        return None
    return str(Path(value).resolve())


def _distributions() -> list[str]:
    """Every installed distribution and its version (torch, transformers, scikit-learn and the rest), read
    from the names of the metadata folders in the import path's site-packages (``torch-2.13.0.dist-info``):
    no file is opened, where asking importlib.metadata for each one reads them all. The working folder is
    left out (``python -m`` puts it on the path; its ``*.egg-info`` is not what is installed)."""
    found = set()
    for entry in sys.path:
        if Path(entry).name not in ("site-packages", "dist-packages"):
            continue
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file or a folder that is gone
            continue
        found.update(name for name in names if name.endswith((".dist-info", ".egg-info")))
    return sorted(found)


def code_digest(config: ExperimentConfig, plugins_dir: str | Path | None) -> str:
    """SHA-256 over the source of probe's package, of each installed plugin's top-level package (found, not
    imported), and of the plugin files the config or ``--plugins-dir`` names."""
    import probe

    trees = [Path(probe.__file__).parent] + _plugin_packages()
    files = [Path(p) for p in config.plugins]
    if plugins_dir is not None and Path(plugins_dir).is_dir():
        files += sorted(p for p in Path(plugins_dir).glob("*.py") if not p.name.startswith("_"))
    digest = hashlib.sha256()
    for tree in trees:
        for path in _source_files(tree):
            digest.update(f"{path}\n".encode() + path.read_bytes())
    for path in files:
        digest.update(f"{path.resolve()}\n".encode() + (path.read_bytes() if path.is_file() else b"missing"))
    return digest.hexdigest()


def _plugin_packages() -> list[Path]:
    """Where each installed plugin's top-level package (or module) lives, as ``importlib`` finds it."""
    import importlib.util
    from importlib.metadata import entry_points

    found = []
    for top in sorted({entry.value.split(":")[0].split(".")[0] for entry in entry_points(group=ENTRY_POINT_GROUP)}):
        spec = importlib.util.find_spec(top)
        if spec is None:
            continue
        locations = list(spec.submodule_search_locations or [])
        found += [Path(location) for location in locations] or ([Path(spec.origin)] if spec.origin else [])
    return found


def _source_files(tree: Path) -> list[Path]:
    if tree.is_file():
        return [tree]
    return sorted(p for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


# ---------------------------------------------------------------- what a finished run read


def inputs_read(config: ExperimentConfig, model_path: str) -> list[Path] | None:
    """The files a run's outputs depend on besides its code: the model's and the data's; None when they
    can't all be named (a hub model or dataset, a dataset plugin that reads files of its own choosing)."""
    from probe import plugins

    model = Path(model_path)
    if not model.exists():
        return None
    model_files = sorted(p for p in model.iterdir() if p.is_file()) if model.is_dir() else [model]
    entry = plugins.lookup("dataset", config.dataset_name)
    if entry.plugin != BUILTIN_DATASETS:
        return None
    if config.dataset_name not in ("file", "coarsewsd"):  # probe's own sets live in its package: in the code
        return model_files
    data = _local_path(config.dataset_options.get("path"))
    if data is None:
        return None
    return model_files + _source_files(Path(data))


def copies_would_skip_side_effects() -> bool:
    """Whether a plugin other than probe's own implements a hook that acts outside the run folder."""
    from probe import plugins

    hooks = plugins.get_plugin_manager().hook
    return any(not impl.plugin_name.startswith("probe.builtin.")
               for name in SIDE_EFFECT_HOOKS for impl in getattr(hooks, name).get_hookimpls())


def record(config: ExperimentConfig, cache_dir: Path, model_path: str, printed: dict) -> dict | None:
    """What a finished run's entry holds: each file it read with its SHA-256, and the lines it printed
    (``printed``); None when the run can't be answered from the index (see ``inputs_read``)."""
    files = inputs_read(config, model_path)
    if files is None or copies_would_skip_side_effects():
        return None
    memos = memo_folder(cache_dir)
    folders = {str(p.resolve()): _listing(p) for p in (Path(model_path), _data_folder(config)) if p and p.is_dir()}
    return {"inputs": {str(p.resolve()): remembered_sha256(p, memos) for p in files}, "folders": folders,
            "printed": printed}


def _data_folder(config: ExperimentConfig) -> Path | None:
    data = _local_path(config.dataset_options.get("path"))
    return Path(data) if data else None


def _listing(folder: Path) -> list[str]:
    """A folder's files as a run reads them (a file added to a model's folder is another model)."""
    return [p.relative_to(folder).as_posix() for p in _source_files(folder)]


def memo_folder(cache_dir: Path) -> Path:
    """Where file digests are remembered: the folder the model weights' digests already use."""
    return Path(cache_dir) / "models" / "digests"


def finished_before(key: str | None, cache_dir: Path) -> dict | None:
    """The manifest (``files`` and ``record``) of the finished run kept under ``key`` when every file it
    read is unchanged, else None."""
    if key is None:
        return None
    manifest = store.load_finished(cache_dir, key)
    kept = manifest["record"] if manifest is not None else {}
    if not isinstance(kept.get("inputs"), dict) or not isinstance(kept.get("printed"), dict):
        return None
    folders = kept.get("folders")
    if not isinstance(folders, dict) or any(not Path(f).is_dir() or _listing(Path(f)) != names
                                            for f, names in folders.items()):
        return None
    memos = memo_folder(cache_dir)
    for path, digest in kept["inputs"].items():
        if not Path(path).is_file() or remembered_sha256(Path(path), memos) != digest:
            return None
    return manifest
