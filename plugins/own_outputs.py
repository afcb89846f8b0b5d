"""The model's own predictions at a token, read from the last hidden state that a partial rerun ends with:
the next-token distribution for a checkpoint with a causal LM head, the masked-LM distribution for one with a
masked-LM head (read at the word itself, unmasked: what the model would fill in there). Shared by the
``steering`` and ``erasure`` reporters, so both report their effect on the model's outputs alike.

The head is the checkpoint's own (its LM model is loaded once more for it), after the base model's final
norm where the family has one. The first batch is checked against the LM model's own logits, so a family
that computes its logits otherwise fails loudly instead of reporting wrong numbers.
"""

from __future__ import annotations

CAUSAL = ("ForCausalLM", "LMHeadModel")
MASKED = ("ForMaskedLM",)


def output_kind(model_config) -> tuple[str | None, str | None]:
    """("next-token" | "masked-LM", None) from the checkpoint's architectures, or (None, why not)."""
    names = getattr(model_config, "architectures", None) or []
    if any(name.endswith(CAUSAL) for name in names):
        return "next-token", None
    if any(name.endswith(MASKED) for name in names):
        return "masked-LM", None
    kind = ", ".join(names) or model_config.model_type
    return None, f"not available: the checkpoint ({kind}) has no causal or masked language-model head"


def own_outputs(run):
    """(OwnOutputs, None) for a checkpoint with an LM head, or (None, why it is not available)."""
    kind, missing = output_kind(run.services.model_config)
    if missing:
        return None, missing
    try:
        return OwnOutputs(run, kind), None
    except LookupError as error:
        return None, f"not available: {error}"


class OwnOutputs:
    """``log_probs(batch, hidden)``: each row's log-probabilities over the vocabulary at its read position,
    from the whole last hidden state ``hidden`` (on the model's device) of a partial rerun."""

    def __init__(self, run, kind: str):
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        from probe.core.adapters import adapter_for
        from probe.core.adapters.spec import module_at
        from probe.core.points import spec_of

        self.kind = kind
        model, _ = run.services.load_model()
        spec = spec_of(model, adapter_for(model))
        base = getattr(model, "base_model", model)
        self.norm = module_at(base, spec.final_norm) if spec and spec.final_norm else None
        if kind == "next-token" and self.norm is None:
            raise LookupError(f"no final norm is known for model type {model.config.model_type!r}")
        self.lm = run.services.load_weights(AutoModelForCausalLM if kind == "next-token" else AutoModelForMaskedLM)
        self.head = self._head()
        self.checked = False

    def _head(self):
        if self.kind == "next-token":
            return self.lm.get_output_embeddings()
        # A masked-LM head is more than the output embeddings (BERT: dense, activation, norm, decoder):
        # the one child module beside the base model.
        heads = [module for module in self.lm.children() if module is not self.lm.base_model
                 and any(True for _ in module.parameters())]
        if len(heads) != 1:
            raise LookupError(f"{type(self.lm).__name__} has {len(heads)} modules beside its base model, "
                              "not one masked-LM head")
        return heads[0]

    def logits(self, hidden):
        import torch

        with torch.inference_mode():
            return self.head(self.norm(hidden) if self.norm is not None else hidden)

    def log_probs(self, batch, hidden, positions):
        """(rows, vocab) float32 log-probabilities at ``positions`` (one token index per row of ``batch``)."""
        import torch

        from probe.scale.devices import on_device

        if not self.checked:  # once, on the whole first batch
            self._check(self.logits(hidden), on_device(batch.encoding, hidden.device))
            self.checked = True
        rows = torch.arange(len(positions), device=hidden.device)
        picked = self.logits(hidden[rows, torch.as_tensor(positions, device=hidden.device)])  # only the read tokens
        return torch.log_softmax(picked.float(), -1).cpu()

    def _check(self, logits, encoding) -> None:
        import torch

        with torch.inference_mode():
            full = self.lm(**encoding).logits
        real = encoding["attention_mask"].bool()
        diff = (full - logits)[real].abs().max().item()
        tolerance = 50 * torch.finfo(logits.dtype).eps * full[real].abs().max().item()
        if diff > tolerance:
            raise ValueError(f"the {self.kind} head gives logits {diff:.3g} away from the LM model's own "
                             f"(tolerance {tolerance:.3g}): this family computes its logits differently")


def typical_tokens(log_probs, y, train, senses, top_k: int) -> dict:
    """sense → the ``top_k`` token ids whose mean probability over the training rows (``train``) of that
    sense most exceeds their mean over all training rows; ``log_probs``: (rows, vocab), unintervened."""
    import numpy as np
    import torch

    probs = log_probs[torch.as_tensor(train)].exp()
    overall = probs.mean(0)
    labels = np.asarray(y)[train]
    return {s: torch.topk(probs[torch.as_tensor(labels == s)].mean(0) - overall, top_k).indices
            for s in senses if (labels == s).any()}
