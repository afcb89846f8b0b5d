"""probe.store.gguf, probe's own reader of the GGUF format: the same metadata and tensor bytes as gguf's
reader, a clear error naming a file it can't read; and the config probe's conversion derives from it."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.errors import UserError
from probe.store.gguf import GGUFFormatError, read_gguf


def write_gguf(path, metadata: dict, tensors: dict) -> None:
    """A GGUF file by gguf's own writer: ``metadata`` key → value (arrays as lists), ``tensors`` name → array."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        if key == "general.alignment":
            writer.add_custom_alignment(value)  # the writer's own padding, and the key
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        else:
            writer.add_uint32(key, value)
    for name, (array, kind) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantized_q8_0(values: np.ndarray) -> np.ndarray:
    import gguf

    return gguf.quantize(values, gguf.GGMLQuantizationType.Q8_0)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=40),
       st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=40),
       st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=10),
       st.lists(st.booleans(), min_size=1, max_size=5), st.text(max_size=20), st.integers(0, 2**32 - 1))
def test_metadata_and_tensors_read_as_ggufs_own_reader_reads_them(tmp_path_factory, strings, integers, floats,
                                                                  booleans, name, count):
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    rng = np.random.default_rng(0)
    plain, half = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float16)
    blocks = rng.standard_normal((2, 64)).astype(np.float32)
    write_gguf(path, {"general.name": name, "llama.block_count": count, "test.flag": booleans[0],
                      "test.strings": strings, "test.integers": integers, "test.floats": floats,
                      "test.booleans": booleans, "test.nested": [integers[:1], integers[-1:]]},
               {"plain": (plain, None), "half": (half, None),
                "blocks": (quantized_q8_0(blocks), gguf.GGMLQuantizationType.Q8_0)})

    theirs, ours = gguf.GGUFReader(str(path)), read_gguf(path)
    stored = {key: field for key, field in theirs.fields.items() if not key.startswith("GGUF.")}  # header's
    assert list(ours.metadata) == list(stored)
    assert ours.metadata.pop("test.nested") == [integers[:1], integers[-1:]]  # gguf's contents() flattens it
    for key, field in stored.items():
        if key == "test.nested":
            continue
        expected = field.contents()
        assert ours.metadata[key] == expected and type(ours.metadata[key]) is type(expected), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for info, tensor in zip(ours.tensors, theirs.tensors):
        got = ours.tensor_data(info)
        assert (got.dtype, got.shape) == (tensor.data.dtype, tensor.data.shape), info.name
        assert got.tobytes() == tensor.data.tobytes(), info.name
        assert np.array_equal(gguf.dequantize(got, info.ggml_type), gguf.dequantize(tensor.data, tensor.tensor_type))


@pytest.mark.parametrize("content, says", [
    (b"", "ends inside its header"),
    (b"PK\x03\x04 a zip file", "not a GGUF file"),
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "GGUF version 1"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 400) + b"general.na", "ends inside its header"),
])
def test_a_file_it_cannot_read_is_an_error_naming_it(tmp_path, content, says):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFFormatError, match=says) as caught:
        read_gguf(path)
    assert str(path) in str(caught.value) and isinstance(caught.value, UserError)


def test_an_unknown_value_type_is_named(tmp_path):
    path = tmp_path / "odd.gguf"
    key = b"general.odd"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                     + struct.pack("<I", 99) + b"\0" * 8)
    with pytest.raises(GGUFFormatError, match="unknown metadata value type 99"):
        read_gguf(path)


def test_the_data_starts_at_the_files_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_gguf(path, {"general.alignment": 64}, {"w": (values, None)})
    read = read_gguf(path)
    assert read.data_start % 64 == 0 and np.array_equal(read.tensor_data(read.tensors[0]), values)
    path.write_bytes(path.read_bytes()[:read.data_start + 8])  # the tensor cut short
    with pytest.raises(GGUFFormatError, match="ends inside tensor w"):
        read_gguf(path).tensor_data(read.tensors[0])


@pytest.mark.xdist_group("smollm2")
def test_the_config_probe_derives_is_the_one_transformers_reads():
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from probe.builtin.models import packaged_model_path
    from probe.pipeline.models import own_config_dict

    path = packaged_model_path("smollm2-135m")
    read = read_gguf(path)
    assert own_config_dict(read.metadata, read.tensors) == load_gguf_checkpoint(path, return_tensors=False)["config"]


def test_architectures_without_probes_reader_are_left_to_transformers():
    from probe.pipeline.models import own_config_dict

    assert own_config_dict({"general.architecture": "gpt2"}, ()) is None
    assert own_config_dict({"general.architecture": "llama", "general.name": "mistral 7b"}, ()) is None
    assert own_config_dict({"general.architecture": "llama", "llama.block_count": 2}, ())["num_hidden_layers"] == 2
