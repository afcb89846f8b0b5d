"""Loading models and tokenizers: hub names, local folders or GGUF files, plus random-init GPT-2 shapes for offline work."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from probe.pipeline.config import GPT2_SHAPES
from probe.store.conversions import conversion_key, conversion_sources, is_converted  # noqa: F401 - also named here
from probe.store.digests import (  # noqa: F401  (kept here too: callers and tests read them from models)
    file_sha256,
    remember_sha256,
    remembered_sha256,
    weights_fingerprint,
)

log = logging.getLogger("probe")

# transformers is imported inside the functions that need it: a rerun on a full cache needs none of them.


def split_gguf(name_or_path: str | Path) -> tuple[str, dict]:
    """``folder/file.gguf`` → ``(folder, {"gguf_file": "file.gguf"})``; anything else → ``(name_or_path, {})``.

    A GGUF checkpoint is one file inside a folder (or hub repo) that from_pretrained needs apart: the folder
    as the source and the file name as ``gguf_file``. Its weights are dequantized on load.
    """
    text = str(name_or_path)
    if not text.endswith(".gguf"):
        return text, {}
    path = Path(text)
    return str(path.parent), {"gguf_file": path.name}


def gguf_folder(gguf_path: str | Path, cache_root: str | Path) -> Path:
    """A GGUF checkpoint converted once to a safetensors folder (model + tokenizer) under ``cache_root``,
    keyed by the file's hash and the transformers version; later loads read that folder.

    Parsing and dequantizing GGUF takes seconds per load; reading the converted float32 safetensors gives
    the same tensors, since dequantizing already yields float32. probe's reader draws no progress bar;
    transformers' GGUF loading (other architectures) draws its own.
    """
    from probe.store.files import cache_lock

    path, memos = Path(gguf_path), Path(cache_root) / "digests"
    digest = remembered_sha256(path, memos)
    folder = Path(cache_root) / f"{path.stem}-{conversion_key(digest)}"
    if _trusted_conversion(folder, memos, path):  # no lock: a cache others own may be read-only here
        return folder
    with _writing(folder):  # the lock file's folder may not be writable either
        lock = cache_lock(folder)
    with lock:  # a second process waits for the conversion instead of converting again
        if not _trusted_conversion(folder, memos, path):
            _convert_into(path, folder, memos)
    return folder


def _trusted_conversion(folder: Path, memos: Path, gguf_path: Path) -> bool:
    """Whether ``folder`` holds a finished conversion whose files match their digests (its last use is
    recorded then, for `probe cache --prune`); a damaged one is named and removed."""
    from probe.store.usage import touch

    if not is_converted(folder):
        return False
    reason = conversion_damage(folder, memos / "converted")
    if reason is None:
        touch(folder)
        return True
    log.warning("converted checkpoint %s can't be trusted (%s); converting %s again", folder, reason, gguf_path)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def _convert_into(path: Path, folder: Path, memos: Path) -> None:
    """Convert the GGUF file at ``path`` into ``folder``: written in a temporary folder, renamed into place."""
    with _writing(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_conversions(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.{_process_space()}.{os.getpid()}."))
    try:
        _convert(path, tmp, folder)
        with _writing(folder):
            digests = record_digests(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes a private folder; a model cache is for everyone to read
            os.replace(tmp, folder)  # one step: a reader sees no folder or a complete one
            for name, file_digest in digests.items():  # the files keep their inode and mtime: no rehash
                remember_sha256(folder / name, memos / "converted", file_digest)
    except OSError:
        if not is_converted(folder):  # another process's rename came first: its folder is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename happened


DIGESTS = "probe-digests.json"  # in a converted folder: the SHA-256 of every other file, written at conversion


def record_digests(folder: Path) -> dict[str, str]:
    """Hash every file of a finished conversion and keep the digests in it (DIGESTS)."""
    digests = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != DIGESTS}
    (folder / DIGESTS).write_text(json.dumps(digests, indent=1), encoding="utf-8")
    return digests


def conversion_damage(folder: Path, memos: Path) -> str | None:
    """Why the converted checkpoint in ``folder`` can't be trusted, or None when its files match the digests
    recorded at conversion. Each file is hashed once per version (``remembered_sha256``), so a rerun reads
    only the memos."""
    from probe.store.files import read_json_or_none

    recorded = read_json_or_none(folder / DIGESTS)
    if not isinstance(recorded, dict):
        return "it carries no digests (converted by an older probe)"
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != DIGESTS}
    if present != set(recorded):
        return f"its files are not those it was converted with ({', '.join(sorted(present ^ set(recorded)))})"
    for name, digest in sorted(recorded.items()):
        if remembered_sha256(folder / name, memos) != digest:
            return f"{name} differs from the digest recorded when it was converted"
    return None


def _convert(path: Path, tmp: Path, folder: Path) -> None:
    """Dequantize the GGUF file at ``path`` and save it, model and tokenizer, into ``tmp``."""
    with ThreadPoolExecutor(1) as writer:
        model = dequantized_model(path)
        # Writing the weights (SmolLM2: 540 MB, 0.6 s) releases the GIL: the tokenizer converts meanwhile.
        weights = writer.submit(_save_dequantized, model, tmp)
        tokenizer = gguf_tokenizer(path, model.config.model_type)
        with _writing(folder):
            tokenizer.save_pretrained(tmp)
            weights.result()  # raises what the writing raised


# The GGUF architectures probe converts with its own reader (probe.store.gguf): those whose config
# transformers reads with no special case, and whose tensors need only the name map and, for llama, the
# rows of q and k put back in the order llama.cpp's converter permuted. Any other goes through
# transformers' own GGUF loading, which gives the same tensors and reads the file three times over
# (docs/libraries.md).
OWN_READER = {"llama"}


def dequantized_model(path: Path):
    """The GGUF file's model in float32, as ``load_model(path)`` gives it."""
    from probe.store.gguf import read_gguf

    gguf_file = read_gguf(path)
    config = own_config_dict(gguf_file.metadata, gguf_file.tensors)
    if config is None:
        return load_model(str(path), dtype=torch.float32)
    return _model_from_tensors(gguf_file, config)


def own_config_dict(metadata: dict, tensors) -> dict | None:
    """The config transformers reads from a GGUF file of an architecture in OWN_READER (its defaults, the
    renamed keys of its table, tied embeddings when there is no output matrix, the vocabulary's size when
    unstated); None for any other architecture."""
    from transformers.integrations import (
        GGUF_CONFIG_DEFAULTS_MAPPING,
        GGUF_CONFIG_MAPPING,
    )

    architecture = metadata.get("general.architecture")
    if architecture not in OWN_READER or "mistral" in str(metadata.get("general.name", "")):
        return None  # transformers reads a llama file named mistral as mistral
    config = {"tie_word_embeddings": all(info.name != "output.weight" for info in tensors)}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(architecture, {}).items():
        config.setdefault(key, value)
    for key, value in metadata.items():
        prefix, _, rest = key.partition(".")
        renamed = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if renamed is not None and renamed != -1:
            config[renamed] = value[0] if isinstance(value, list) and len(value) == 1 else value
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in metadata:
        config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    return config


def _model_from_tensors(gguf_file, config_dict: dict):
    """Each tensor dequantized by gguf and renamed by gguf's name table, in a model built on the meta device
    (no memory, no random init) that takes them as its parameters: a model to save, not to run."""
    import gguf
    import numpy
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    names = _transformers_names(model)
    state = {}
    for info in gguf_file.tensors:
        if info.name not in names:
            continue  # as transformers does: a tensor the model has no parameter for is left out
        weights = gguf.dequantize(gguf_file.tensor_data(info), info.ggml_type)
        if ".attn_q." in info.name or ".attn_k." in info.name:
            weights = _unpermuted(weights, config_dict, query=".attn_q." in info.name)
        state[names[info.name]] = torch.from_numpy(numpy.copy(weights))
    missing, _ = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if untied := [name for name in missing if model.get_parameter(name).is_meta]:
        raise ValueError(f"{gguf_file.path}: no tensor in the file for {', '.join(untied[:5])}")
    return model.eval()


def _transformers_names(model) -> dict[str, str]:
    """GGUF tensor name → the model's parameter name, through gguf's table of names for the architecture."""
    import gguf

    config = model.config
    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == config.model_type)
    table = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    names = {}
    for name in model.state_dict():
        stem, dot, suffix = name.rpartition(".") if name.endswith((".weight", ".bias")) else (name, "", "")
        found = table.get_name(stem)
        if found is not None:
            names[found + dot + suffix] = name
    return names


def _unpermuted(weights, config: dict, query: bool):
    """q or k rows back in the model's order: llama.cpp's converter interleaved each head's two rotary
    halves (the rows of head h are (h, 2, d/2) there, (h, d/2, 2) in the GGUF file)."""
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads is None or kv_heads is None:  # as transformers: no head counts, no reordering
        return weights
    heads = heads if query else kv_heads
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, half, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)


def gguf_tokenizer(path: Path, model_type: str):
    """The GGUF file's tokenizer, as ``load_tokenizer(path)`` gives it. For an architecture in OWN_READER,
    read by the class AutoTokenizer picks for it (a tokenizers backend built from the file's vocabulary),
    named here: AutoTokenizer would first read the whole file once more to find the model's config."""
    from transformers import TokenizersBackend

    if model_type not in OWN_READER:
        return load_tokenizer(str(path))
    tokenizer = TokenizersBackend.from_pretrained(str(path.parent), gguf_file=path.name)
    if tokenizer.pad_token is None:  # as load_tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class NotWritten(OSError):
    """The checkpoint was read and converted, but its folder could not be written (a full disk, no permission)."""


@contextlib.contextmanager
def _writing(folder: Path):
    """A file system error inside is a NotWritten naming where (safetensors reports a full disk as its own
    error type); anything else is not a writing problem and passes as it is."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as error:
        raise NotWritten(f"the converted model could not be written to {folder.parent} "
                         f"({type(error).__name__}: {error})") from error


def remove_abandoned_conversions(folder: Path) -> None:
    """Remove the half-written conversions into ``folder`` that processes on this machine left when they were
    killed (a failing conversion removes its own): each is named after its host and PID namespace and its
    process id, and one whose process is gone is never finished — a 7B model's is tens of GB. Another
    host's or container's are left alone."""
    here = _process_space()
    for tmp in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
        owner = tmp.name[len(folder.name) + 2:].rsplit(".", 2)  # processes, pid, mkdtemp's random part
        if len(owner) == 3 and owner[0] == here and owner[1].isdigit() and not _process_exists(int(owner[1])):
            shutil.rmtree(tmp, ignore_errors=True)


def _process_space() -> str:
    """Where this process's id means something: the host, and on Linux the PID namespace (containers that
    share a host name and a cache volume each have their own)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}-{namespace}"


def _process_exists(pid: int) -> bool:
    if os.name == "nt":  # Windows' os.kill ends the process whatever the signal: assume it is running
        return True
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists is checked
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _save_dequantized(model, folder: Path) -> None:
    """The weights are plain float32 tensors now; only the "gguf quantizer" marker forbids saving them."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)


def model_class_for(name_or_path: str | Path, revision: str | None = None):
    """The auto class to load a checkpoint with: the architecture its config names (``BertModel``,
    ``GPT2LMHeadModel``, …) when transformers has it, else a causal LM (GGUF files are read as causal LMs)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    source, gguf = split_gguf(name_or_path)
    if gguf:
        return AutoModelForCausalLM
    config = AutoConfig.from_pretrained(source, revision=revision)
    for name in getattr(config, "architectures", None) or []:
        model_class = getattr(transformers, name, None)
        if model_class is not None:
            return model_class
    return AutoModelForCausalLM


def load_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    model_class=None,
    **placement,
):
    """``from_pretrained`` with the settings probe relies on, in eval mode.

    ``name_or_path``: hub name, local folder, or a ``.gguf`` file (in a folder or hub repo).
    ``model_class``: default, the class the checkpoint's config names (see ``model_class_for``).
    ``placement``: accelerate's ``device_map``, ``max_memory`` and ``offload_folder``, for a model larger
    than one device (layers spread over GPUs, the CPU and disk).
    """
    source, gguf = split_gguf(name_or_path)
    if model_class is None:
        model_class = model_class_for(name_or_path, revision)
    model = model_class.from_pretrained(
        source, revision=revision, dtype=dtype, attn_implementation=attn_implementation, **gguf,
        **{k: v for k, v in placement.items() if v is not None},
    )
    return model.eval()


def load_config(name_or_path: str, *, revision: str | None = None):
    """The model's config from a hub name, a local folder or a ``.gguf`` file (AutoConfig alone reads no GGUF)."""
    from transformers import AutoConfig

    source, gguf = split_gguf(name_or_path)
    return AutoConfig.from_pretrained(source, revision=revision, **gguf)


def load_tokenizer(name_or_path: str, *, revision: str | None = None):
    from transformers import AutoTokenizer

    source, gguf = split_gguf(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, **gguf)
    if tokenizer.pad_token is None:  # GPT-2 ships without one; padded positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_empty_tokenizer(tokenizer) -> bool:
    """transformers makes an empty tokenizer of the config's class when a folder has no tokenizer files."""
    return len(tokenizer) <= 1 or not tokenizer("a word", add_special_tokens=False)["input_ids"]


def gpt2_config(name_or_json: str):
    """A GPT2Config from a published shape's name (gpt2, gpt2-medium, distilgpt2, …) or a JSON file."""
    from transformers import GPT2Config

    if name_or_json in GPT2_SHAPES:
        return GPT2Config(**GPT2_SHAPES[name_or_json])
    path = Path(name_or_json)
    if path.suffix == ".json" or path.exists():
        try:
            return GPT2Config(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValueError(f"--random-init: no such file {path}") from None
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"--random-init: {path} is not a GPT2Config JSON object: {error}") from None
    raise ValueError(
        f"--random-init: unknown shape {name_or_json!r}; give a GPT-2 shape ({', '.join(GPT2_SHAPES)}), a "
        "GPT2Config JSON file, or an architecture `probe architectures` lists (llama, qwen3, bert, …)"
    )


def save_random_gpt2(config, folder: str | Path | None = None, seed: int = 0) -> Path:
    """Random-init a GPT-2 LM with ``config`` (a GPT2Config) and save it, so it loads through ``from_pretrained``."""
    from transformers import GPT2LMHeadModel

    folder = Path(folder or tempfile.mkdtemp(prefix="probe-random-gpt2-"))
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder
