"""Loading models and tokenizers: hub names, local folders or GGUF files, plus random-init GPT-2 shapes for offline work."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from probe.pipeline.config import GPT2_SHAPES

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


def gguf_folder(gguf_path: str | Path, cache_root: str | Path, progress: bool = True) -> Path:
    """A GGUF checkpoint converted once to a safetensors folder (model + tokenizer) under ``cache_root``,
    keyed by the file's hash and the transformers version; later loads read that folder.

    Parsing and dequantizing GGUF takes seconds per load (SmolLM2: about 10 s on 2 cores); reading the
    converted float32 safetensors gives the same tensors, since dequantizing already yields float32.
    """
    path = Path(gguf_path)
    digest = remembered_sha256(path, Path(cache_root) / "digests")
    folder = Path(cache_root) / f"{path.stem}-{conversion_key(digest)}"
    if is_converted(folder):
        return folder
    with _writing(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_conversions(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.{_process_space()}.{os.getpid()}."))
    try:
        _convert(path, tmp, folder, progress)
        with _writing(folder):
            os.chmod(tmp, 0o755)  # mkdtemp makes a private folder; a model cache is for everyone to read
            os.replace(tmp, folder)  # one step: a reader sees no folder or a complete one
    except OSError:
        if not is_converted(folder):  # another process's rename came first: its folder is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename happened
    return folder


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` is a finished conversion: it appears in one rename, complete, config.json and all."""
    return (folder / "config.json").exists()


def conversion_key(digest: str) -> str:
    """The end of a converted folder's name: the GGUF file's SHA-256 and the transformers version that
    converted it (another version may convert differently)."""
    from importlib.metadata import version

    return hashlib.sha256(f"{digest}:{version('transformers')}".encode()).hexdigest()[:20]


def conversion_sources(cache_root: Path) -> dict[str, str]:
    """``conversion_key`` → the GGUF file it was made from, for the files whose digest ``cache_root`` remembers."""
    sources = {}
    for memo in (Path(cache_root) / "digests").glob("*.json"):
        try:
            known = json.loads(memo.read_text(encoding="utf-8"))
            sources[conversion_key(known["sha256"])] = known["file"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sources


def _convert(path: Path, tmp: Path, folder: Path, progress: bool) -> None:
    """Dequantize the GGUF file at ``path`` and save it, model and tokenizer, into ``tmp``."""
    with _quiet_tqdm(not progress), _gguf_parsed_once(), ThreadPoolExecutor(1) as writer:
        model = load_model(str(path), dtype=torch.float32)
        # Writing the weights (SmolLM2: 540 MB, 0.6 s) releases the GIL: the tokenizer converts meanwhile.
        weights = writer.submit(_save_dequantized, model, tmp)
        tokenizer = load_tokenizer(str(path))
        with _writing(folder):
            tokenizer.save_pretrained(tmp)
            weights.result()  # raises what the writing raised


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


def remembered_sha256(path: Path, memo_folder: Path) -> str:
    """``file_sha256(path)``, hashed once per version of the file: the digest is kept in ``memo_folder`` with the
    file's size, modification time (ns) and inode, and read back while those are unchanged — as git's index
    trusts a file's stat. Hashing reads the whole file (about 1.5 GB/s here: 3 s for a 4 GB GGUF file)."""
    from probe.store.files import read_json_or_none, write_text_atomic

    path = path.resolve()
    stat = path.stat()
    version = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    memo = memo_folder / f"{hashlib.sha256(str(path).encode()).hexdigest()[:20]}.json"
    try:
        known = read_json_or_none(memo)
    except OSError:  # a memo this user can't read: hash the file, as if there were none
        known = None
    if isinstance(known, dict) and known.get("file") == version and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = file_sha256(path)
    with contextlib.suppress(OSError):  # a cache it can't write to: the digest is computed again next time
        write_text_atomic(memo, json.dumps({"file": version, "sha256": digest}))
    return digest


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within the block, each GGUF file is parsed once, over plain arrays, and gguf's tensor-name table is
    built once per shape.

    transformers reads the file three times (config, tokenizer, weights) and rebuilds the same name table for
    every submodule; for SmolLM2 those repeats were most of a 17 s conversion. Both are pure functions of
    their arguments, and the reader only reads its memory map. The reader slices its map once per string of
    the vocabulary (about 200,000 times); slicing an ``np.memmap`` runs Python code each time, slicing a
    plain array view of the same map does not (SmolLM2: 1.6 s → 0.7 s to read the file, the same values;
    transformers' own reader, which the tokenizer reads its vocabulary with, 0.14 s → 0.06 s).
    Metadata values are parsed by ``_parse_value_quickly``, the reader's arrays split by ``_array_parts_at_once``
    and common block formats dequantized by ``_dequantize_with_torch``, each giving what gguf and transformers
    give.
    """
    import gguf
    from gguf import gguf_reader
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.integrations.gguf import reader as transformers_reader

    patches = [  # every replacement is made before any is set: a failure here leaves nothing patched
        # transformers' own reader (the tokenizer's vocabulary and merges) slices its map per string too.
        (transformers_reader, "_mapped", _plain_map),
        (gguf.GGUFReader, "_get_field_parts", _array_parts_at_once(gguf.GGUFReader._get_field_parts)),
        (gguf, "GGUFReader", functools.lru_cache(maxsize=None)(gguf.GGUFReader)),
        (gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)),
        (gguf_reader, "np", _plain_memmap_numpy()),
        (gguf_utils, "load_gguf_checkpoint", _metadata_parsed_once(gguf_utils.load_gguf_checkpoint)),
        (gguf_utils, "_gguf_parse_value", _parse_value_quickly(gguf_utils._gguf_parse_value)),
        (gguf, "dequantize", _dequantize_with_torch(gguf.dequantize)),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, replacement in patches:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def _array_parts_at_once(get_field_parts):
    """gguf's ``GGUFReader._get_field_parts`` for the arrays of numbers or strings of a file in the machine's
    byte order: the same parts (one array per number; each string's length and bytes), listed in one loop
    instead of a recursive call per element, which took 0.5 s for SmolLM2's 147,000 vocabulary entries,
    types and merge rules. Anything else (a scalar, an empty or nested array, a file of the other byte
    order) goes to gguf's own."""
    import struct

    import numpy
    from gguf.constants import GGUFValueType

    read_length = struct.Struct("=Q").unpack_from  # "=": the byte order is the machine's, as byte_order "I" says

    def parts(self, start, raw_type):
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I":
            return get_field_parts(self, start, raw_type)
        item_type, count = self._get(start, numpy.uint32), self._get(start + 4, numpy.uint64)
        n, offset = int(count[0]), start + 12
        if n == 0:  # gguf's own never reads the type of an empty array's elements
            return get_field_parts(self, start, raw_type)
        kind = GGUFValueType(int(item_type[0]))
        found, types = [item_type, count], [GGUFValueType.ARRAY]
        number = self.gguf_scalar_to_np.get(kind)
        if number is None and kind != GGUFValueType.STRING:
            return get_field_parts(self, start, raw_type)
        types.append(kind)
        if number is not None:
            values = self._get(offset, number, n)
            found += list(values.reshape(n, 1))
            return 12 + int(values.nbytes), found, list(range(2, 2 + n)), types
        data, length_type = self.data, self._get(offset, numpy.uint64).dtype
        for _ in range(n):
            (length,) = read_length(data, offset)
            found += [data[offset : offset + 8].view(length_type), data[offset + 8 : offset + 8 + length]]
            offset += 8 + length
        return offset - start, found, list(range(3, 2 + 2 * n, 2)), types

    return parts


# The block formats whose torch kernels in transformers give gguf's numpy bits: Q4_0 d·(q−8), Q4_1 d·q + m,
# Q8_0 d·q — an fp16 scale times a small integer is exact in float32, and Q4_1's one sum rounds once in both.
TORCH_DEQUANTIZED = {"Q4_0", "Q4_1", "Q8_0"}


def _dequantize_with_torch(dequantize):
    """gguf's ``dequantize(data, qtype)``, through transformers' torch kernels for the block formats in
    TORCH_DEQUANTIZED (on every core; gguf's numpy runs on one, 0.6 s of SmolLM2's conversion); any other
    format goes to gguf's own."""
    import warnings

    import numpy
    from transformers.integrations.gguf import dequant

    def dequantize_blocks(data, qtype):
        if getattr(qtype, "name", None) not in TORCH_DEQUANTIZED or data.dtype != numpy.uint8:
            return dequantize(data, qtype)
        with warnings.catch_warnings():  # the file's read-only map: torch warns, and nothing writes to it
            warnings.simplefilter("ignore", UserWarning)
            blocks = torch.from_numpy(data)
        values = dequant.dequantize(blocks.reshape(-1), int(qtype), torch.float32)
        return values.reshape(*data.shape[:-1], -1).numpy()

    return dequantize_blocks


def _parse_value_quickly(parse_value):
    """transformers' ``_gguf_parse_value`` for one element of a GGUF field, without its per-call list checks
    and recursion, and a string decoded from its bytes at once rather than through a list of ints. It runs
    once per vocabulary entry and merge rule (SmolLM2: about 150,000), twice (metadata, then tensors). Any
    type it does not know goes to transformers' own function."""
    integers, floats = frozenset({0, 1, 2, 3, 4, 5, 10, 11}), frozenset({6, 12})
    array, string, boolean = 9, 8, 7

    def parse(value, data_type):
        kind = data_type
        if type(kind) is list:
            if len(kind) == 1:
                kind = kind[0]
            elif len(kind) == 2 and kind[0] == array:
                kind = kind[1]
            else:
                return parse_value(value, data_type)
        if kind == string:
            return bytes(value).decode()
        if kind in integers:
            return int(value[0])
        if kind in floats:
            return float(value[0])
        if kind == boolean:
            return bool(value[0])
        return parse_value(value, data_type)

    return parse


def _metadata_parsed_once(load_gguf_checkpoint):
    """transformers' ``load_gguf_checkpoint``, with the metadata-only answer (config and tokenizer, asked for
    by the config and the tokenizer loaders) computed once per file; each caller gets its own copy."""
    import copy

    parsed = {}

    def load(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return load_gguf_checkpoint(path, return_tensors=return_tensors, **kwargs)
        if path not in parsed:
            parsed[path] = load_gguf_checkpoint(path, return_tensors=False)
        return copy.deepcopy(parsed[path])

    return load


def _plain_memmap(*args, **kwargs):
    """``numpy.memmap(...)`` as a plain ndarray view (kept alive by its base): slicing it runs no Python code."""
    import numpy

    return numpy.memmap(*args, **kwargs).view(numpy.ndarray)


def _plain_map(path):
    """transformers' reader's ``_mapped``: the file's read-only map as a plain uint8 array view."""
    import numpy

    return _plain_memmap(path, mode="r", dtype=numpy.uint8)


def _plain_memmap_numpy():
    """numpy, for gguf's reader, except that ``memmap`` is ``_plain_memmap``. A namespace copy, not a proxy:
    the reader looks up ``np.uint8`` and the like some 450,000 times."""
    import types

    import numpy

    return types.SimpleNamespace(**{**vars(numpy), "memmap": _plain_memmap})


@contextlib.contextmanager
def _quiet_tqdm(quiet: bool):
    """transformers' GGUF reader calls tqdm directly, not through its logging's progress bars."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    real = gguf_utils.tqdm
    if quiet:
        gguf_utils.tqdm = functools.partial(real, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = real


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
