"""A cache entry proves what it is, and a full disk is said plainly.

Every cache entry carries the key it was written under and a digest of its content, checked on read: an
entry swapped, copied or moved under another name is named in a warning, removed and rebuilt, and the run's
results equal a clean run's. Local weights are fingerprinted by content (hashed once per file version); a
converted GGUF checkpoint carries its files' digests. A write that finds the disk full (ENOSPC, EDQUOT)
names the folder and what it needed, and leaves nothing half-written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import fake_gguf_conversion
from tiny_gpt2 import build_tiny_gpt2

from probe import plugins
from probe.cli import main
from probe.pipeline.results import without_provenance
from probe.store import caches
from probe.store.chunks import damage, write_chunk
from probe.store.files import DiskFull, write_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
MOLE = ROOT / "probe" / "builtin" / "data" / "mole.jsonl"

pytestmark = pytest.mark.usefixtures("builtins_only")


def mole_rows(n_per_label: int = 12) -> list[dict]:
    everything = [json.loads(line) for line in MOLE.read_text().splitlines() if line.strip()]
    return [r for label in ("animal", "unit") for r in [r for r in everything if r["label"] == label][:n_per_label]]


class Lab:
    """A tiny model, mole rows, a config, and runs of it into fresh output folders."""

    def __init__(self, base: Path, model: Path | None = None, **fields):
        self.base = base
        self.model = model or build_tiny_gpt2(base / "model", n_layer=2, n_embd=32, seed=3)
        data = base / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in mole_rows()), encoding="utf-8")
        raw = {"model": str(self.model), "dataset": {"name": "file", "path": str(data)}, "folds": 3,
               "controls": ["majority"], "reporters": ["json"], "batch_size": 8, **fields}
        self.config = base / "exp.yaml"
        self.config.write_text(yaml.safe_dump(raw), encoding="utf-8")

    def run(self, out: str, cache: Path) -> tuple[int, dict | None]:
        """Exit code and results.json (less provenance) of ``probe run`` into ``base/out``."""
        args = ["run", str(self.config), "--output", str(self.base / out), "--cache-dir", str(cache), "--quiet",
                "--jobs", "1"]
        plugins.reset_plugin_manager()
        try:
            main(args)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            plugins.reset_plugin_manager()
        path = self.base / out / "results.json"
        results = without_provenance(json.loads(path.read_text())) if path.exists() and code == 0 else None
        return code, results


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")
        lab = Lab(tmp_path_factory.mktemp("cache-integrity"))
        code, results = lab.run("clean", lab.base / "cache")
    assert code == 0
    lab.clean = results
    return lab


def fresh_cache(lab: Lab, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(lab.base / "cache", cache)
    return cache


# ---------------------------------------------------------------- fits


def test_two_fit_entries_swapped_by_name_are_named_refit_and_give_a_clean_runs_results(lab, tmp_path, caplog):
    cache = fresh_cache(lab, tmp_path)
    entries = sorted((cache / "probes").glob("*.npz"), key=lambda p: p.stat().st_size)
    a, b = entries[0], entries[-1]  # a control's fit and a layer's: their predictions differ
    assert a.read_bytes() != b.read_bytes()
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    code, results = lab.run("swapped", cache)
    assert code == 0
    assert f"cached fit {a}" in caplog.text and f"cached fit {b}" in caplog.text
    assert "written under another key" in caplog.text
    assert results == lab.clean
    for entry in (a, b):  # rebuilt under its own key
        assert caches.load(entry.parent, entry.stem) is not None


def test_a_fit_entry_with_changed_predictions_or_no_key_is_refit(tmp_path, caplog):
    folds = [np.array([0, 1, 1]), np.array([1, 0])]
    caches.save(tmp_path, "k1", folds)
    assert [f.tolist() for f in caches.load(tmp_path, "k1")] == [[0, 1, 1], [1, 0]]
    with np.load(tmp_path / "k1.npz") as saved:  # a well-formed file whose predictions were altered
        kept = dict(saved)
    kept["fold0"] = np.array([1, 1, 1])
    np.savez(tmp_path / "k1.npz", **kept)
    assert caches.load(tmp_path, "k1") is None and not (tmp_path / "k1.npz").exists()
    assert "differ from the digest" in caplog.text
    np.savez(tmp_path / "k2.npz", fold0=folds[0], fold1=folds[1])  # as an older probe wrote it
    assert caches.load(tmp_path, "k2") is None and "carries no key" in caplog.text


# ---------------------------------------------------------------- feature chunks


def test_a_chunk_moved_to_another_keys_folder_is_damaged(tmp_path):
    tensors = {"rows": torch.arange(3), "target": torch.ones(2, 3, 4)}
    write_chunk(tmp_path / "key-a" / "chunk-00000.safetensors", tensors)
    assert damage(tmp_path / "key-a" / "chunk-00000.safetensors") is None
    (tmp_path / "key-b").mkdir()
    shutil.copy(tmp_path / "key-a" / "chunk-00000.safetensors", tmp_path / "key-b" / "chunk-00000.safetensors")
    shutil.copy(tmp_path / "key-a" / "chunk-00000.safetensors", tmp_path / "key-a" / "chunk-00001.safetensors")
    assert "another key" in damage(tmp_path / "key-b" / "chunk-00000.safetensors")
    assert "another key" in damage(tmp_path / "key-a" / "chunk-00001.safetensors")


def test_a_chunks_bytes_do_not_depend_on_the_write(tmp_path):
    """Its proof is one metadata entry: safetensors orders several entries differently from write to write,
    and two clean runs must leave the same bytes."""
    tensors = {"rows": torch.arange(3), "target": torch.ones(2, 3, 4)}
    written = set()
    for _ in range(8):
        write_chunk(tmp_path / "key-a" / "chunk-00000.safetensors", tensors)
        written.add((tmp_path / "key-a" / "chunk-00000.safetensors").read_bytes())
    assert len(written) == 1


# ---------------------------------------------------------------- the attention viewer and figures


def test_a_well_formed_but_wrong_attention_entry_is_named_and_computed_again(tmp_path, caplog):
    from probe.report.extras import build_report_data
    from probe.store.caches import load_json_entry, save_json_entry

    entry = tmp_path / "attention" / "k123.json"
    loads = []

    def run_once():
        results = type("R", (), {"rows": []})()
        rows = {"text": ["a mole"], "label": ["animal"], "span_start": [2], "span_end": [6]}
        return build_report_data(results, rows, lambda p, l: np.zeros((1, 2)), [], lambda: loads.append(1),
                                 attention_cache=entry)

    save_json_entry(entry, [{"tokens": ["a", "mole"], "row": 0}])
    assert load_json_entry(entry) == [{"tokens": ["a", "mole"], "row": 0}]
    save_json_entry(tmp_path / "attention" / "other.json", [{"tokens": ["wrong"], "row": 0}])
    shutil.copy(tmp_path / "attention" / "other.json", entry)  # valid, but another key's
    assert load_json_entry(entry) is None and not entry.exists()
    assert f"cache entry {entry}" in caplog.text and "another key" in caplog.text
    entry.write_text(json.dumps([{"tokens": ["wrong"], "row": 0}]))  # as an older probe wrote it: no key
    with pytest.raises(TypeError):  # not read: the viewer computes it again (here, with a stand-in model)
        run_once()
    assert loads == [1] and not entry.exists()


def test_the_attention_viewers_entry_swapped_in_a_run_is_rebuilt_to_a_clean_runs_data(tmp_path, caplog):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")
        lab = Lab(tmp_path, reporters=["json", "html"], positions=["target"])
        cache = tmp_path / "cache"
        assert lab.run("clean", cache)[0] == 0
        clean = json.loads((tmp_path / "clean" / "report_data.json").read_text())
        [entry] = (cache / "attention").glob("*.json")
        header, body = entry.read_text().split("\n", 1)
        value = json.loads(body)
        value[0]["tokens"] = ["not", "these"]  # well-formed, key intact, content changed
        entry.write_text(header + "\n" + json.dumps(value))
        assert lab.run("again", cache)[0] == 0
    assert f"cache entry {entry}" in caplog.text and "differs from the digest" in caplog.text
    assert json.loads((tmp_path / "again" / "report_data.json").read_text()) == clean


def test_figures_kept_under_another_key_are_drawn_again(tmp_path, caplog):
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    (drawn / "accuracy.png").write_bytes(b"one picture")
    caches.keep_drawn(tmp_path / "cache", "key1", [drawn / "accuracy.png"])
    (drawn / "accuracy.png").write_bytes(b"another picture")
    caches.keep_drawn(tmp_path / "cache", "key2", [drawn / "accuracy.png"])
    figures = tmp_path / "cache" / "figures"
    assert caches.drawn_before(tmp_path / "cache", "key1", tmp_path / "out")
    assert (tmp_path / "out" / "accuracy.png").read_bytes() == b"one picture"
    assert not (tmp_path / "out" / caches.MANIFEST).exists()
    shutil.rmtree(figures / "key1")
    shutil.copytree(figures / "key2", figures / "key1")  # a whole entry under another name
    assert not caches.drawn_before(tmp_path / "cache", "key1", tmp_path / "out2")
    assert "kept under another key" in caplog.text and not (figures / "key1").exists()
    (figures / "key2" / "accuracy.png").write_bytes(b"edited")
    assert not caches.drawn_before(tmp_path / "cache", "key2", tmp_path / "out2")
    assert "accuracy.png differs" in caplog.text


# ---------------------------------------------------------------- weights


def test_weights_replaced_with_the_same_size_and_time_are_not_taken_for_the_old(lab, tmp_path):
    """Other weights of the same size, put in place with the old file's mtime to the nanosecond (a new
    inode, as a copy or download renames into place), give a clean run's results on the new weights."""
    model = tmp_path / "model"
    shutil.copytree(lab.model, model)
    other = build_tiny_gpt2(tmp_path / "other", n_layer=2, n_embd=32, seed=4)
    weights = model / "model.safetensors"
    assert weights.stat().st_size == (other / "model.safetensors").stat().st_size
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")
        local = Lab(tmp_path, model=model)
        before = local.run("before", tmp_path / "cache")[1]
        stat = weights.stat()
        shutil.copy(other / "model.safetensors", tmp_path / "incoming")
        os.replace(tmp_path / "incoming", weights)
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        after = local.run("after", tmp_path / "cache")[1]
        clean = local.run("clean", tmp_path / "clean-cache")[1]
    assert after == clean and after != before


def test_weights_are_hashed_once_per_file_version(tmp_path, monkeypatch):
    from probe.pipeline import models
    from probe.store import digests

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights one")
    (model / "config.json").write_text("{}")
    memos = tmp_path / "digests"
    first = models.weights_fingerprint(model, memos)
    hashed = []
    original = digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda path: hashed.append(path.name) or original(path))
    assert models.weights_fingerprint(model, memos) == first and hashed == []
    stat = (model / "model.safetensors").stat()
    with open(model / "model.safetensors", "r+b") as handle:  # in place: same inode and size
        handle.write(b"weights two")
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same second
    assert models.weights_fingerprint(model, memos) != first and hashed == ["model.safetensors"]
    assert models.weights_fingerprint("some/hub-name", memos) == ""


# ---------------------------------------------------------------- converted checkpoints


def test_a_damaged_converted_checkpoint_is_named_removed_and_converted_again(tmp_path, monkeypatch, caplog):
    from probe.pipeline import models
    from probe.store import digests

    conversions = []

    def save_weights(model, folder):
        conversions.append(folder)
        (Path(folder) / "config.json").write_text("{}")
        (Path(folder) / "model.safetensors").write_bytes(b"dequantized weights " * 100)

    fake_gguf_conversion(monkeypatch, save_weights)
    checkpoint = tmp_path / "model.gguf"
    checkpoint.write_bytes(b"GGUF, or so it says")
    folder = models.gguf_folder(checkpoint, tmp_path / "models")
    recorded = json.loads((folder / models.DIGESTS).read_text())
    assert set(recorded) == {"config.json", "model.safetensors", "tokenizer.json"}
    hashed = []
    original = digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda path, *a: hashed.append(Path(path).name) or original(path))
    assert models.gguf_folder(checkpoint, tmp_path / "models") == folder
    hashed.clear()
    assert models.gguf_folder(checkpoint, tmp_path / "models") == folder and hashed == []  # verified from memos
    assert len(conversions) == 1
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-8:] = b"\xff" * 8  # the NaNs a damaged file would give
    (folder / "model.safetensors").write_bytes(bytes(data))
    models.gguf_folder(checkpoint, tmp_path / "models")
    assert f"converted checkpoint {folder} can't be trusted" in caplog.text
    assert "model.safetensors differs from the digest" in caplog.text
    assert len(conversions) == 2
    assert (folder / "model.safetensors").read_bytes() == b"dequantized weights " * 100


def test_a_conversion_without_digests_is_converted_again(tmp_path, monkeypatch, caplog):
    from probe.pipeline import models

    def save_weights(model, folder):
        (Path(folder) / "config.json").write_text("{}")
        (Path(folder) / "model.safetensors").write_bytes(b"w")

    fake_gguf_conversion(monkeypatch, save_weights)
    checkpoint = tmp_path / "model.gguf"
    checkpoint.write_bytes(b"GGUF, or so it says")
    folder = models.gguf_folder(checkpoint, tmp_path / "models")
    (folder / models.DIGESTS).unlink()  # as an older probe converted it
    models.gguf_folder(checkpoint, tmp_path / "models")
    assert "carries no digests" in caplog.text and (folder / models.DIGESTS).exists()


# ---------------------------------------------------------------- full disks


def _full_after(data_written: int):
    """A write that puts ``data_written`` bytes on disk, then finds it full."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"x" * data_written)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    return write


def test_a_full_disk_at_the_atomic_write_names_the_folder_and_leaves_no_part(tmp_path):
    folder = tmp_path / "cache" / "probes"
    with pytest.raises(DiskFull) as raised:
        write_atomic(folder / "k.npz", _full_after(1500), size=4000)
    message = str(raised.value)
    assert message.startswith(f"{folder} is full (ENOSPC): writing k.npz needed 4.0 KB, ")
    assert "free there" in message and "--cache-dir" in message
    assert list(folder.iterdir()) == []
    with pytest.raises(DiskFull, match=r"needed more than the 1.5 KB it wrote before the disk filled"):
        write_atomic(folder / "k.npz", _full_after(1500))
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(DiskFull, match="over its disk quota"):
        write_atomic(folder / "k.npz", lambda tmp: (_ for _ in ()).throw(quota))
    assert list(folder.iterdir()) == []


def _run_with_full_disk(lab, tmp_path, capsys):
    """Run into an output folder holding a previous run (with the fits to do again); returns the exit code,
    stderr and the cache, after checking that the previous run is left byte for byte and no staging."""
    out, cache = tmp_path / "out", fresh_cache(lab, tmp_path)
    shutil.copytree(lab.base / "clean", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    shutil.rmtree(cache / "probes")  # the fits are written again
    args = ["run", str(lab.config), "--output", str(out), "--cache-dir", str(cache), "--quiet", "--jobs", "1"]
    plugins.reset_plugin_manager()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    plugins.reset_plugin_manager()
    err = capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.*staging*"))
    return exit_.value.code, err, cache


def test_a_full_output_disk_is_said_with_the_folder_and_leaves_the_previous_run(lab, tmp_path, monkeypatch, capsys):
    real = Path.write_bytes

    def write_bytes(self, data):  # what write_text_atomic writes with
        if ".out.staging" in str(self):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    code, err, _ = _run_with_full_disk(lab, tmp_path, capsys)
    assert code != 0 and "Traceback" not in err and "did not expect" not in err and "raised" not in err
    assert f"{tmp_path / 'out'} is full (ENOSPC): writing results.json needed " in err


def test_a_full_cache_disk_is_said_with_the_folder(lab, tmp_path, monkeypatch, capsys):
    def savez(handle, **arrays):  # what the fit cache writes with
        handle.write(b"PK half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez)
    code, err, cache = _run_with_full_disk(lab, tmp_path, capsys)
    assert code != 0 and "Traceback" not in err and "did not expect" not in err
    assert f"{cache / 'probes'} is full (ENOSPC): writing " in err
    assert "needed more than the 13 B it wrote before the disk filled" in err
    assert list((cache / "probes").glob("*")) == []  # no half-written entry (nor the new empty folder)


def test_a_reporter_that_finds_the_disk_full_is_not_blamed(lab, tmp_path, monkeypatch, capsys):
    from probe.report import writers

    def full(results, output_dir, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir / "results.json"))

    monkeypatch.setattr(writers, "write_json", full)
    out = tmp_path / "out"
    args = ["run", str(lab.config), "--output", str(out), "--cache-dir", str(fresh_cache(lab, tmp_path)),
            "--quiet", "--jobs", "1"]
    plugins.reset_plugin_manager()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    plugins.reset_plugin_manager()
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and "reporter 'json' raised" not in err and "did not expect" not in err
    assert f"{out} is full (ENOSPC): writing results.json needed room" in err and not out.exists()  # nothing published
    assert not list(tmp_path.glob(".out.*staging*"))


def test_text_written_atomically_knows_its_size(tmp_path, monkeypatch):
    real = Path.write_bytes

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFull, match="writing a.json needed 6 B"):  # bytes, not characters
        write_text_atomic(tmp_path / "a.json", "héllo")
    monkeypatch.setattr(Path, "write_bytes", real)
    assert not list(tmp_path.iterdir())
