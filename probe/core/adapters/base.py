"""What every model-family adapter shares: where attention modules sit, and mask translation."""

from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers.cache_utils import EncoderDecoderCache

from probe.core.adapters.spec import FamilySpec
from probe.core.attention import STEPS

SUPPORTED_TRANSFORMERS = ">=5.24,<5.26"  # pyproject.toml's range

# What attention modules call their KV-cache argument, across families and releases.
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")


@dataclass
class AttentionSlot:
    """An attention module to replace: ``getattr(parent, attr)``, exposed as hook prefix ``prefix``."""

    parent: nn.Module
    attr: str
    prefix: str
    expected_class: type


def bool_mask(mask: torch.Tensor | None, checks: MaskChecks | None = None) -> torch.Tensor | None:
    """Hugging Face's 4-D attention mask (bool, or additive float 0 / dtype-min) as bool, True = attend.
    ``checks``: the swapped model's record of the masks already checked in the forward under way (each
    core holds its model's); without it every float mask is checked."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise TypeError(f"attention mask must be bool or floating point, got {mask.dtype}")
    allowed = mask == 0
    # Reading the mask's values stops a compiled graph (and waits for the device): under torch.compile the
    # check is left to the model's uncompiled runs, such as the parity tests.
    if torch.compiler.is_compiling():
        return allowed
    if checks is None or not checks.seen(mask):
        blocked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool((allowed | blocked).all()):
            raise ValueError(
                "attention mask holds additive biases other than 0 and -inf/dtype-min; "
                "probe's attention only supports masks that allow or block a key"
            )
        if checks is not None:
            checks.add(mask)
    return allowed


class MaskChecks:
    """The float masks already checked in the forward of one swapped model under way (one per swap, kept in
    its SwapState and handed to each of its cores). The model hands one mask to every block, and reading a
    GPU tensor's values makes the host wait for the device, so each is read once a forward. Every forward
    starts afresh (nested ones too: the outer one then checks again, which costs a read, never a check);
    outside a forward nothing is remembered, so a mask changed in place is checked. Two threads running
    one model at once can only make it check more often, never skip a check: a mask is skipped only when
    this very tensor was checked already."""

    def __init__(self):
        self.in_forward, self.checked = False, []  # whether a forward is under way, the masks checked in it

    def seen(self, mask: torch.Tensor) -> bool:
        return self.in_forward and any(ref() is mask for ref in self.checked)

    def add(self, mask: torch.Tensor) -> None:
        if self.in_forward:
            self.checked.append(weakref.ref(mask))

    def begin(self) -> None:
        self.in_forward, self.checked = True, []

    def end(self) -> None:
        self.in_forward, self.checked = False, []


def scope_mask_checks(model: nn.Module) -> list:
    """Torch hook handles that bracket each forward of ``model`` for its swap's MaskChecks (removed on
    restore): the start runs before any other pre-hook, the end even when the forward raises. Module-level
    functions that find the checks through the model, not bound methods: a deepcopy of the model copies
    its hooks, and its checks with it."""
    return [model.register_forward_pre_hook(_forward_begins, prepend=True),
            model.register_forward_hook(_forward_ends, always_call=True)]


@contextlib.contextmanager
def one_forward(model: nn.Module):
    """For blocks of a swapped ``model`` run one after another by hand (probe.pipeline.partial), sharing one
    mask as in the model's forward: inside the ``with``, each float mask is checked once, however many
    blocks it reaches."""
    checks = model._probe_swap.mask_checks
    checks.begin()
    try:
        yield
    finally:
        checks.end()


def _forward_begins(module, args) -> None:
    module._probe_swap.mask_checks.begin()


def _forward_ends(module, args, output) -> None:
    module._probe_swap.mask_checks.end()


def check_forward_signature(cls: type, required: tuple[str, ...], one_of: tuple[str, ...]) -> None:
    """Fail early, naming the supported range, when a transformers release changed the forward signature."""
    params = inspect.signature(cls.forward).parameters
    missing = [p for p in required if p not in params]
    if missing or not any(p in params for p in one_of):
        raise RuntimeError(
            f"{cls.__name__}.forward in transformers {transformers.__version__} has parameters "
            f"{list(params)}; probe expects {list(required)} and one of {list(one_of)}. "
            f"Supported transformers versions: {SUPPORTED_TRANSFORMERS}."
        )


def cached_cross_layer(cache, layer_idx: int):
    """The cross-attention cache layer once it holds this layer's encoder keys/values, else None."""
    if isinstance(cache, EncoderDecoderCache) and cache.is_updated.get(layer_idx):
        return cache.cross_attention_cache.layers[layer_idx]
    return None


def update_kv_cache(cache, k, v, layer_idx: int, is_cross_attention: bool):
    """Hugging Face's KV cache, as GPT-2 and BERT decoders use it: self-attention appends this step's
    keys/values; cross-attention stores the encoder's once and reuses them on later steps."""
    if cache is None:
        return k, v
    if isinstance(cache, EncoderDecoderCache):
        if is_cross_attention:
            layer = cached_cross_layer(cache, layer_idx)
            if layer is not None:
                return layer.keys, layer.values
            k, v = cache.cross_attention_cache.update(k, v, layer_idx)
            cache.is_updated[layer_idx] = True
            return k, v
        cache = cache.self_attention_cache
    return cache.update(k, v, layer_idx)


# PyTorch keeps a module's hooks in these dicts; a swap carries them over so that Hugging Face's
# output_attentions recorder (and any user hook) keeps firing on the replacement.
TORCH_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


class FamilyAdapter:
    """The full path: a family's attention modules are replaced by the core, projections included.

    A subclass says which models it takes (``model_classes``), which class it replaces
    (``attention_class``, whose forward must take ``expected_parameters`` and one of ``cache_parameters``)
    and with what (``replacement``, a core subclass, built from the original module and the spec's
    numerics where the spec has them). Where the blocks, their attention (and a decoder block's
    cross-attention) and their norms are is the family's ``spec``.
    """

    name: str
    path = "full"
    model_classes: tuple[type, ...]
    attention_class: type
    expected_parameters: tuple[str, ...]
    # `cache` was called `past_key_values` before transformers 5.24; some families say `layer_past`.
    cache_parameters: tuple[str, ...] = ("cache", "past_key_values")
    spec: FamilySpec
    replacement: type
    extra_steps: tuple[str, ...] = ()  # optional steps this family takes, e.g. ("biased_scores",) for ALiBi

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_classes)

    def check(self) -> None:
        check_forward_signature(self.attention_class, self.expected_parameters, self.cache_parameters)

    def spec_for(self, model: nn.Module) -> FamilySpec:
        return self.spec

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.get_submodule(self.spec.blocks))

    def slots(self, model: nn.Module) -> list[AttentionSlot]:
        parent_path, _, attr = self.spec.attn.rpartition(".")
        cross = self.spec.cross_attn
        slots = []
        for i, block in enumerate(self.blocks(model)):
            slots.append(AttentionSlot(block.get_submodule(parent_path), attr, f"blocks.{i}.attn", self.attention_class))
            if cross and hasattr(block, cross):
                slots.append(AttentionSlot(block, cross, f"blocks.{i}.cross_attn", self.attention_class))
        return slots

    def replace(self, original: nn.Module):
        if self.spec.numerics is None:  # the replacement writes its family's arithmetic out (Falcon)
            return self.replacement(original)
        return self.replacement(original, self.spec.numerics)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Each block's self-attention module, in block order."""
        return [getattr(s.parent, s.attr) for s in self.slots(model) if not s.prefix.endswith("cross_attn")]

    def install(self, model: nn.Module, state) -> None:
        """Replace every slot's module by the core; build all replacements before touching the model."""
        self.check()
        _install_hf_output_recorders(model)
        replacements = []
        for slot in self.slots(model):
            original = getattr(slot.parent, slot.attr)
            if not isinstance(original, slot.expected_class):
                raise TypeError(
                    f"{slot.prefix}: expected {slot.expected_class.__name__}, found {type(original).__name__}"
                )
            new = self.replace(original).train(original.training)  # a new module starts in training mode
            for step in STEPS + self.extra_steps + getattr(new, "extra_steps", ()):
                point = getattr(new, f"hook_{step}")
                point.name = f"{slot.prefix}.{step}"
                state.hook_points[point.name] = point
            replacements.append((slot, original, new))
        for slot, original, new in replacements:
            for name in TORCH_HOOK_DICTS:
                getattr(new, name).update(getattr(original, name))
            setattr(slot.parent, slot.attr, new)
            state.originals.append((slot.parent, slot.attr, original))
            state.cores.append(new)


def _install_hf_output_recorders(model: nn.Module) -> None:
    """Let transformers attach its output_attentions recorders now, so the swap can carry them over."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # older layouts record attentions from the return value instead
        return
    base = getattr(model, "base_model", model)
    if hasattr(type(base), "_can_record_outputs"):
        maybe_install_capturing_hooks(base)
