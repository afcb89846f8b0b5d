"""The Python API checks its arguments as the command line does: a wrong one is probe's own error (a
UserError) naming the function, the argument and what it accepts, before any work."""

from __future__ import annotations

import inspect

import pytest
import torch

import probe
from probe.api import ArgumentError
from probe.errors import UserError

MOLE = {"model": "minilm-l6", "dataset": "mole"}
MODULE = torch.nn.Linear(2, 2)

# public function → (a call with one bad argument, the argument the error must name, words it must use)
BAD_CALLS = {
    "run": [
        (lambda: probe.run(None), "config", "a YAML config's path"),
        (lambda: probe.run(["exp.yaml"]), "config", "ExperimentConfig"),
        (lambda: probe.run(MOLE, output=123), "output", "pathlib.Path"),
        (lambda: probe.run(MOLE, n_jobs="many"), "n_jobs", "-1: all cores"),
        (lambda: probe.run(MOLE, n_jobs=0), "n_jobs", "≥ 1"),
        (lambda: probe.run(MOLE, n_jobs=True), "n_jobs", "≥ 1"),
        (lambda: probe.run(MOLE, cache_dir=""), "cache_dir", "non-empty"),
        (lambda: probe.run(MOLE, progress="yes"), "progress", "True or False"),
    ],
    "load_results": [(lambda: probe.load_results(None), "run_dir", "path")],
    "swap_attention": [(lambda: probe.swap_attention("gpt2"), "model", "torch.nn.Module"),
                       (lambda: probe.swap_attention(MODULE, fast=1), "fast", "True or False")],
    "swapped_attention": [(lambda: probe.swapped_attention(None), "model", "torch.nn.Module")],
    "run_with_cache": [(lambda: probe.run_with_cache("minilm-l6", 123), "text", "non-empty text"),
                       (lambda: probe.run_with_cache(42, "a mole"), "model", "a model's name"),
                       (lambda: probe.run_with_cache("minilm-l6", []), "text", "non-empty list"),
                       (lambda: probe.run_with_cache("minilm-l6", "a", names=7), "names", "hook point")],
    "attention": [(lambda: probe.attention("minilm-l6", "a mole", target=3), "target", "a str or None")],
    "plot": [(lambda: probe.plot({"layers": []}), "results", "a Results")],
    "add_hook": [(lambda: probe.add_hook(MODULE, "", print), "name", "non-empty str"),
                 (lambda: probe.add_hook(MODULE, "blocks.0.attn.pattern", "print"), "fn", "a function")],
    "hooks": [(lambda: probe.hooks(MODULE, ["blocks.*"]), "fns", "a mapping")],
    "capture": [(lambda: probe.capture(MODULE, None), "names", "hook point")],
    "hook_points": [(lambda: probe.hook_points("gpt2"), "model", "torch.nn.Module")],
    "is_swapped": [(lambda: probe.is_swapped(3), "model", "torch.nn.Module")],
    "restore_attention": [(lambda: probe.restore_attention([]), "model", "torch.nn.Module")],
    "set_fast_attention": [(lambda: probe.set_fast_attention(MODULE, enabled="no"), "enabled", "True or False")],
}


@pytest.mark.parametrize("function, case", [(f, n) for f, calls in BAD_CALLS.items() for n in range(len(calls))])
def test_a_bad_argument_is_a_user_error_naming_it(function, case):
    call, argument, words = BAD_CALLS[function][case]
    with pytest.raises(ArgumentError) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert isinstance(caught.value, TypeError)  # code that caught the TypeError of old still does
    assert message.startswith(f"probe.{function}: argument {argument!r} is "), message
    assert words in message, message


def test_every_public_function_checks_its_arguments():
    functions = [name for name in probe.__all__
                 if inspect.isfunction(getattr(probe, name)) and name != "hookimpl"]
    assert sorted(functions) == sorted(BAD_CALLS)


def test_a_call_that_does_not_fit_the_signature_names_its_parameters():
    with pytest.raises(ArgumentError, match=r"probe.run: too many positional arguments; it takes \(config, \*, "
                                            r"output=None"):
        probe.run("exp.yaml", "out")
    with pytest.raises(ArgumentError, match=r"probe.capture: missing a required argument: 'names'"):
        probe.capture(MODULE)


def test_config_values_from_python_are_checked_like_a_files():
    with pytest.raises(UserError, match=r"field 'dataset' option 'path' must be a file or folder's path.*got 42"):
        probe.run({"model": "minilm-l6", "dataset": {"name": "file", "path": 42}})
    with pytest.raises(UserError, match=r"field 'options' is 2,\d{3},\d{3} bytes written out; a field may be at "
                                        r"most 1,048,576"):
        probe.run({**MOLE, "options": {"notes": "x" * (2 << 20)}})
    looped: list = []
    looped.append(looped)
    with pytest.raises(UserError, match=r"field 'options' contains itself"):
        probe.run({**MOLE, "options": {"loop": looped}})


def test_good_arguments_reach_the_function_unchanged():
    model = torch.nn.Linear(2, 2)
    assert probe.is_swapped(model) is False
    with pytest.raises(ValueError, match="call probe.swap_attention\\(model\\) first") as caught:
        probe.hook_points(model)  # the function's own check, past the argument check
    assert not isinstance(caught.value, ArgumentError)
