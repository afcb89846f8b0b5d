"""The universal adapter: any model whose attention dispatches through Hugging Face's attention
interface runs the core's steps 2–5 in its attention modules (probe/interface.py); the modules,
their projections, rotary and cache stay Hugging Face's own.

Hook points per block i, as in the full path: ``attn.q`` (after rotary), ``attn.k``/``attn.v`` (this
step's keys/values before the cache write, so an edit is what gets cached; without a cache, all of
them), ``attn.scores``, ``attn.capped_scores`` (families that soft-cap), ``attn.masked_scores``,
``attn.sink_logits`` (families with attention sinks), ``attn.pattern``, ``attn.z``, ``attn.head_out``
and ``attn.out`` (around the module that applies W_O).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from probe.core import interface
from probe.core.adapters.base import CACHE_ARGUMENTS
from probe.core.adapters.spec import SPECS, FamilySpec, blocks_of, module_at
from probe.core.attention import STEPS
from probe.core.heads import per_head_output, sum_heads, unchanged
from probe.core.hooks import HookPoint


class InterfaceAdapter:
    """Swaps in the core through the attention interface; ``specs`` (default: probe's) say where blocks
    and norms live, and a model of another type has its blocks and attention found (``guess``)."""

    name = "universal"
    path = "universal"

    def __init__(self, specs: Mapping[str, FamilySpec] | None = None, guess: bool = True):
        self.specs = SPECS if specs is None else specs
        self.guess = guess

    def spec_for(self, model: nn.Module) -> FamilySpec | None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in self.specs:
            return self.specs[model_type]
        return guess_spec(model) if self.guess else None

    def matches(self, model: nn.Module) -> bool:
        spec = self.spec_for(model) if hasattr(model, "set_attn_implementation") else None
        if spec is None:
            return False
        attentions = [module_at(block, spec.attn) for block in self.blocks(model)]
        # Hybrid models (Qwen3-Next, MiniMax, LFM2) have blocks without attention: those get no attn points.
        present = [a for a in attentions if a is not None]
        return bool(present) and all(_is_interface_attention(a) for a in present)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        spec = self.spec_for(model)
        return blocks_of(model, spec) if spec else []

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Each block's attention module, in block order (blocks without attention left out)."""
        attentions = (module_at(block, self.spec_for(model).attn) for block in self.blocks(model))
        return [a for a in attentions if a is not None]

    def install(self, model: nn.Module, state) -> None:
        """Attach a core to every attention module and switch the model to it; all or nothing."""
        spec = self.spec_for(model)
        plan = []
        for i, block in enumerate(self.blocks(model)):
            attention = module_at(block, spec.attn)
            if attention is None:
                continue
            core = interface.InterfaceCore(attention, interface.numerics_of(attention))
            points = _name_points(core, f"blocks.{i}.attn", attention)
            plan.append((attention, core, points, o_proj_of(block, spec)))
        interface.register()
        previous = model.config._attn_implementation
        model.set_attn_implementation(interface.IMPLEMENTATION)
        if any(a.config._attn_implementation != interface.IMPLEMENTATION for a, *_ in plan):
            model.set_attn_implementation(previous)
            raise ValueError(f"{type(model).__name__} does not let its attention implementation be switched")
        for attention, core, points, o_proj in plan:
            attention.__dict__["_probe_core"] = core
            state.cores.append(core)
            state.hook_points.update(points)
            state.torch_handles += _kv_cache_hooks(attention, core)
            state.torch_handles += _output_hooks(o_proj, core)
            state.undo.append(lambda a=attention: a.__dict__.pop("_probe_core", None))
        state.undo.append(lambda: model.set_attn_implementation(previous))


def _is_interface_attention(module) -> bool:
    return module is not None and interface.calls_the_interface(type(module))


def guess_spec(model: nn.Module) -> FamilySpec | None:
    """Blocks and attention of a model no spec names: the first ModuleList as long as the model is deep
    whose blocks hold a module on the attention interface; None when there is none."""
    base = getattr(model, "base_model", model)
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for list_path, modules in base.named_modules():
        if not isinstance(modules, nn.ModuleList) or len(modules) == 0 or (depth and len(modules) != depth):
            continue
        for block in modules:  # the first block may have none (hybrids with linear-attention blocks)
            for attn_path, sub in block.named_modules():
                if attn_path and _is_interface_attention(sub):
                    return FamilySpec(blocks=list_path, attn=attn_path)
    return None


# Where W_O usually sits inside an attention module whose spec does not say.
O_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "out_lin", "Wo", "wo")


def o_proj_of(block: nn.Module, spec: FamilySpec) -> nn.Module | None:
    if spec.o_proj is not None:
        return module_at(block, spec.o_proj)
    attention = module_at(block, spec.attn)
    if spec.projections is not None:
        return getattr(attention, spec.projections.o)
    return next((getattr(attention, n) for n in O_PROJ_NAMES if isinstance(getattr(attention, n, None), nn.Module)), None)


def _name_points(core, prefix: str, attention: nn.Module) -> dict[str, HookPoint]:
    steps = STEPS
    if getattr(attention, "attn_logit_softcapping", None):  # Gemma 2's soft-capping
        steps += ("capped_scores",)
    if isinstance(getattr(attention, "sinks", None), torch.Tensor):  # GPT-OSS's attention sinks
        steps += ("sink_logits",)
    points = {}
    for step in steps:
        point = getattr(core, f"hook_{step}")
        point.name = f"{prefix}.{step}"
        points[point.name] = point
    return points


def _kv_cache_hooks(attention: nn.Module, core) -> list:
    """While someone listens to k or v and the module gets a KV cache, fire those hook points inside the
    cache's ``update`` — on this step's keys and values, before they are stored."""

    def patch(module, args, kwargs):
        cache = next((kwargs[n] for n in CACHE_ARGUMENTS if kwargs.get(n) is not None), None)
        if cache is None or not (core.hook_k.active or core.hook_v.active):
            return None
        for target in _caches_in(cache):
            target.update = _hooked_update(target, core)
        module.__dict__["_probe_patched_caches"] = _caches_in(cache)
        return None

    def unpatch(module, args, kwargs, output):
        for target in module.__dict__.pop("_probe_patched_caches", ()):
            target.__dict__.pop("update", None)
        core.kv_hooked_by_cache = False

    return [
        attention.register_forward_pre_hook(patch, with_kwargs=True),
        attention.register_forward_hook(unpatch, with_kwargs=True, always_call=True),
    ]


def _caches_in(cache) -> list:
    subs = [getattr(cache, n, None) for n in ("self_attention_cache", "cross_attention_cache")]
    return [cache] + [s for s in subs if s is not None]


def _hooked_update(cache, core):
    original = type(cache).update.__get__(cache)

    def update(key_states, value_states, *args, **kwargs):
        key_states, value_states = core.hook_k(key_states), core.hook_v(value_states)
        core.kv_hooked_by_cache = True
        return original(key_states, value_states, *args, **kwargs)

    return update


def _output_hooks(o_proj: nn.Module | None, core) -> list:
    """attn.head_out and attn.out around W_O; head_out is computed only while someone listens."""
    if o_proj is None:
        return []

    def out(module, args, output):
        if core.hook_head_out.active and core.last_z is not None:
            output = _head_out(module, core, output)
        return core.hook_out(output) if core.hook_out.active else output

    return [o_proj.register_forward_hook(out)]


def _head_out(o_proj: nn.Module, core, output):
    """Each head's share of W_O's output (batch, pos, head, d_model); a replacement is summed back."""
    per_head = per_head_output(core.last_z, o_proj)
    edited = core.hook_head_out(per_head)
    core.last_z = None
    return output if unchanged(edited, per_head) else sum_heads(edited, o_proj)
