"""Built-in model sources: short names for the published GPT-2 checkpoints on the Hugging Face hub."""

from probe.hookspecs import hookimpl

HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


@hookimpl
def register_models(register):
    for name, hub_name in HUB_NAMES.items():
        register(name, lambda revision, hub_name=hub_name: hub_name)
