"""The GPU check's new scripts (make gpu-check) run end to end on the CPU with --smoke, so they are ready
the day a GPU is lent: each prints its rows and a JSON line with the fields the docs' table reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def smoke(script: str, *options: str) -> object:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", "--device", "cpu", *options],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.xdist_group("compile")
def test_throughput_script_reads_every_layer_by_each_reader():
    rows = smoke("throughput.py")
    measured = [row for row in rows if "tokens_per_s" in row]
    assert {row["shape"] for row in measured} == {"tiny-gpt2", "tiny-llama"}
    assert {"probe extract", "probe every hook point"} <= {row["reader"] for row in measured}
    assert all(row["tokens_per_s"] > 0 and row["peak_fraction"] is None for row in measured)  # no peak on a CPU
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        assert any(row.get("not_run") for row in rows)  # said, not silently left out


@pytest.mark.xdist_group("compile")
def test_compiled_script_finds_one_graph_and_the_compiled_eager_numbers():
    # aot_eager: the graph torch.compile traces, without inductor's C++ build (whose link step fails in a
    # checkout whose path holds a space); the GPU check runs inductor.
    result = smoke("compiled.py", "--backend", "aot_eager")
    assert result["backend"] == "aot_eager"
    assert result["one_graph"] == "yes"
    assert result["bitwise_vs_compiled_eager"] is True
    assert result["max_abs_vs_uncompiled_swapped"] < 1e-4
    assert set(result["median_ms"]) == {"eager", "eager compiled", "probe", "probe compiled"}
