"""``kernels: ftplan`` for the preference trainers that score answers by their per-token log-probs: TRL 1.16's
``DPOTrainer`` (every DPO loss but SimPO) and ``KTOTrainer``.

Those trainers never call ``lm_head``. In their constructor TRL's ``add_fused_lm_head`` gives the causal LM an
instance ``forward`` that, called with ``fused_lm_head=True``, runs the decoder and folds the head into per-token
statistics through TRL's chunked kernel; the policy forward, the reference forward (a frozen model copy, the policy
with its adapter off or switched to the ``ref`` copy) and the precomputed reference log-probs all go through that
call. ``install_logprob_head`` is the narrowest override: it replaces that forward, after TRL installed it, with one
that computes the same ``FusedCausalLMOutput`` from the decoder's last hidden states through
``kernels.fused_linear_logprobs`` (``kernels/logprobs.py``). Everything else (batching, the reference switch, the
loss types, the metrics) stays TRL's.

The fields TRL reads: ``log_probs`` (the losses, and the ``sft`` term of RPO), ``entropy``, ``mean_logits`` and
``is_top1`` (DPO's ``entropy``, ``logits/*`` and ``mean_token_accuracy`` metrics; KTO reads the first two) come from
the same pass of the kernel over each row's logits (``fused_linear_logprobs_stats``), computed only on the models
whose trainer asks for them (the reference model gets the log-probs alone). ``log_sum_sq_probs`` (WPO weighting,
``use_weighting``, which ftplan never sets) is not provided: asking for it raises. ``loss`` is the mean negative
log-likelihood of the labelled tokens, as TRL's.

``FusedLogprobTrainerMixin`` installs the head in the trainer's constructor, before TRL precomputes reference
log-probs (``reference: precomputed``), on the policy's causal LM and on a frozen reference copy.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

from .preflight import StageError

FUSED_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
"""Fields of TRL's ``FusedCausalLMOutput`` the fused head fills (the others are None)."""
_HEAD_ATTR = "_ftplan_logprob_head"
# Config fields by which TRL's fused head scales or caps the logits; the fused head computes plain logits only.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def _causal_lm(model):
    """The transformers *ForCausalLM under a PEFT wrapper (its forward is the one TRL patches)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_plain_head(model) -> None:
    """Raise StageError when the model's head is not ``hidden @ lm_head.weightᵀ (+ bias)``: a logit scale or
    softcapping, or MoE router logits the loss would need (TRL's own head handles those; the fused one does not)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    odd = [name for name in _LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    if getattr(config, "output_router_logits", False):
        odd.append("output_router_logits")
    if odd:
        raise StageError(f"`kernels: ftplan` computes the DPO/KTO log-probs from plain logits, but this model's "
                         f"config sets {', '.join(odd)}; use `kernels: none` for it")


def install_logprob_head(model, outputs: tuple[str, ...] = ("log_probs",)) -> bool:
    """Make ``model(..., labels=labels, fused_lm_head=True)`` compute TRL's per-token fields ``outputs`` through the
    fused linear log-prob op. ``model`` is a causal LM (PEFT-wrapped or not) whose forward TRL's ``add_fused_lm_head``
    has patched; calls without ``fused_lm_head`` still go to that forward (and so to the model's own). Returns
    False when the head was installed already (with the same outputs)."""
    lm = _causal_lm(model)
    wanted = tuple(o for o in FUSED_OUTPUTS if o in outputs)
    unknown = sorted(set(outputs) - set(FUSED_OUTPUTS))
    if unknown or "log_probs" not in outputs:
        asked = unknown or "outputs without log_probs"
        raise StageError(f"the fused log-prob head computes {list(FUSED_OUTPUTS)}; the trainer asked for {asked} "
                         "(WPO's `use_weighting` needs log_sum_sq_probs): use `kernels: none`")
    installed = lm.__dict__.get(_HEAD_ATTR)
    if installed is not None:
        if installed != wanted:
            raise StageError(f"the fused log-prob head was installed for {list(installed)}, now asked for "
                             f"{list(wanted)}")
        return False
    if "forward" not in lm.__dict__:
        raise StageError("TRL did not patch the model's forward with its fused LM head (add_fused_lm_head); this TRL "
                         "version is not supported by the runtime with `kernels: ftplan` (tested with trl 1.16)")
    check_plain_head(lm)
    lm._ftplan_trl_forward = lm.forward
    lm.__dict__[_HEAD_ATTR] = wanted
    lm.forward = types.MethodType(_fused_logprob_forward, lm)
    return True


def _fused_logprob_forward(self, *args, fused_lm_head: bool = False, labels=None, shift_labels=None,
                           num_items_in_batch=None, **kwargs) -> Any:
    """The causal LM's forward with TRL's ``fused_lm_head`` protocol, its head through the fused log-prob op."""
    if not fused_lm_head:
        return self._ftplan_trl_forward(*args, labels=labels, shift_labels=shift_labels,
                                        num_items_in_batch=num_items_in_batch, **kwargs)
    from trl.trainer.utils import FusedCausalLMOutput

    from .kernels import fused_linear_logprobs, fused_linear_logprobs_stats
    from .kernels.patch import _head_parameters

    outputs = self.__dict__[_HEAD_ATTR]
    kwargs["use_cache"] = False
    decoder = self.get_decoder() if hasattr(self, "get_decoder") else self.model
    hidden = decoder(*args, **kwargs).last_hidden_state  # (B, S, H)
    weight, bias = _head_parameters(self.get_output_embeddings())
    if shift_labels is None:
        if labels is None:
            raise ValueError("fused_lm_head=True needs labels or shift_labels")
        # position t predicts label t+1; the last position predicts nothing (TRL drops it from the outputs)
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    else:
        targets = shift_labels
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # a view: scoring every position avoids copying a slice
    flat_targets = targets.reshape(-1).to(flat_hidden.device)
    if len(outputs) > 1:
        fields = fused_linear_logprobs_stats(flat_hidden, weight, flat_targets, bias)
        per_token = {"log_probs": fields.logprobs, "entropy": fields.entropy, "mean_logits": fields.mean_logits,
                     "is_top1": fields.is_top1}
    else:
        per_token = {"log_probs": fused_linear_logprobs(flat_hidden, weight, flat_targets, bias)}

    def shaped(x: torch.Tensor) -> torch.Tensor:
        x = x.view(targets.shape)
        return x[:, :-1] if shift_labels is None else x

    result = {name: shaped(x) for name, x in per_token.items() if name in outputs}
    mask = shaped(flat_targets.view(targets.shape) != -100)
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -result["log_probs"].sum() / count
    return FusedCausalLMOutput(loss=loss, label_mask=mask, **result)


class FusedLogprobTrainerMixin:
    """A TRL DPO/KTO trainer whose ``fused_lm_head`` forwards run the fused log-prob op (``fused_logprobs=True``):
    the policy asks for ``policy_outputs``, a frozen reference copy for the log-probs alone. Installed in the
    constructor, before TRL precomputes reference log-probs."""

    policy_outputs: tuple[str, ...] = ("log_probs",)
    """The per-token fields the trainer reads from the policy (TRL 1.16)."""
    fused_logprob_heads = 0
    """Causal LMs whose head runs the fused op (the policy, and a frozen reference copy)."""

    def __init__(self, *args, fused_logprobs: bool = False, **kwargs):
        self.fused_logprobs = fused_logprobs
        super().__init__(*args, **kwargs)
        self._install_fused_heads()

    def _install_fused_heads(self) -> None:
        if not self.fused_logprobs:
            return
        if getattr(self, "use_weighting", False):
            raise StageError("WPO weighting (`use_weighting`) needs log_sum_sq_probs, which the fused log-prob head "
                             "does not compute; use `kernels: none`")
        policy = self.accelerator.unwrap_model(self.model)
        added = install_logprob_head(policy, self.policy_outputs)
        if self.ref_model is not None:
            added += install_logprob_head(self.accelerator.unwrap_model(self.ref_model))
        self.fused_logprob_heads += added
        report = getattr(policy, "_ftplan_kernel_report", None)  # apply_ftplan_kernels' report: metrics.json counts
        if report is not None:
            report.logprobs += added

    def _precompute_ref_logps(self, *args, **kwargs):
        """TRL's precompute (called from its constructor), with the fused head installed first."""
        self._install_fused_heads()
        return super()._precompute_ref_logps(*args, **kwargs)
