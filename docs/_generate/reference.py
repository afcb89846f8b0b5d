"""Reference pages generated from probe's own source, so the docs cannot drift from the code.

Used as an mkdocs hook (mkdocs.yml ``hooks:``): a page that holds ``<!-- generated: NAME -->`` gets the
Markdown that ``GENERATORS[NAME]`` returns in its place. The tests import it too (tests/test_docs_site.py).
Nothing here builds a model: the architecture table is read, not run.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def _type_name(annotation) -> str:
    """A field's type as a reader writes it in YAML terms: `'a' or 'b'`, `list of int`, `str or null`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(repr(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in args)
    if origin is list:
        return f"list of {_grouped(args[0])}" if args else "list"
    if origin is dict or annotation is dict:
        return f"mapping of {_grouped(args[0])} to {_grouped(args[1])}" if args else "mapping"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _grouped(annotation) -> str:
    """A type inside another, in parentheses when it is a choice: `list of (int or str)`."""
    name = _type_name(annotation)
    return f"({name})" if " or " in name else name


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "as_written"):  # a typed spec (dataset, probe, evaluation): shown as a config writes it
        value = value.as_written()
    return "`null`" if value is None else f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _nested_models(annotation) -> list[type]:
    """The pydantic models a field's type refers to (a discriminated union's members, a sub-config)."""
    from pydantic import BaseModel

    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _nested_models(arg)]


def field_descriptions() -> dict[str, dict[str, str]]:
    """What each field means, for fields whose model carries no ``description`` of its own: the fallback
    in config_fields.yaml, by model name then field name."""
    return yaml.safe_load((HERE / "config_fields.yaml").read_text(encoding="utf-8"))


def config_models() -> list[type]:
    """ExperimentConfig first, then every model its fields refer to, each once, in the order met."""
    from probe.pipeline.config import ExperimentConfig

    found, queue = [], [ExperimentConfig]
    while queue:
        model = queue.pop(0)
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            queue.extend(_nested_models(field.annotation))
    return found


def missing_descriptions() -> list[str]:
    """``Model.field`` for each config field that has no description anywhere (the tests require none)."""
    fallback = field_descriptions()
    return [f"{model.__name__}.{name}" for model in config_models() for name, field in model.model_fields.items()
            if not field.description and name not in fallback.get(model.__name__, {})]


def config_reference() -> str:
    fallback = field_descriptions()
    parts = []
    for model in config_models():
        doc = _rst_to_markdown(inspect.cleandoc(model.__doc__ or ""))
        rows = [f"## `{model.__name__}`\n", doc + "\n" if doc else "",
                "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            meaning = field.description or fallback.get(model.__name__, {}).get(name, "")
            rows.append(f"| `{name}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} | {_cell(meaning)} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


def _rst_to_markdown(text: str) -> str:
    return text.replace("``", "`")


def hook_specs() -> list:
    """probe's hook specifications in the order probe/hookspecs.py declares them."""
    from probe import hookspecs

    specs = [fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "probe_spec")]
    return sorted(specs, key=lambda fn: fn.__code__.co_firstlineno)


def hook_reference() -> str:
    parts = []
    for spec in hook_specs():
        options = [name for name in ("firstresult", "historic") if spec.probe_spec.get(name)]
        calling = "one answer: the first implementation that returns something wins" if "firstresult" in options \
            else "every implementation is called"
        parts.append(f"## `{spec.__name__}`\n\n```\n{spec.__name__}{inspect.signature(spec)}\n```\n\n"
                     f"{_rst_to_markdown(inspect.cleandoc(spec.__doc__ or ''))}\n\n*Called:* {calling}.\n")
    return "\n".join(parts)


def architecture_table() -> str:
    """probe/core/architectures.py's table as read (no model built): type, a real checkpoint, kind."""
    from probe.core.architectures import ARCHITECTURES

    rows = ["| architecture | e.g. | kind |", "|---|---|---|"]
    rows += [f"| {name} | {arch.example} | {'decoder (causal)' if arch.causal else 'encoder (bidirectional)'} |"
             for name, arch in sorted(ARCHITECTURES.items())]
    return "\n".join(rows) + f"\n\n{len(ARCHITECTURES)} architectures.\n"


GENERATORS = {"config": config_reference, "hooks": hook_reference, "architectures": architecture_table}


def render(markdown: str) -> str:
    """``markdown`` with each marker replaced by its generated text; an unknown marker is an error."""
    def generated(match: re.Match) -> str:
        if match.group(1) not in GENERATORS:
            raise KeyError(f"no generator {match.group(1)!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[match.group(1)]()

    return MARKER.sub(generated, markdown)


def on_page_markdown(markdown, page, config, files):  # the mkdocs hook
    return render(markdown)
