"""Rules of the DPO loss family (``loss_type``), checked against what TRL does with each setting.

* FT620: SimPO (``loss_type: simpo``) has no reference policy: TRL's ``CPOTrainer`` compares the policy's own mean
  log-probabilities of the chosen and rejected answers. A ``reference`` written on such a stage would do nothing.
* FT621: ``simpo_gamma`` is SimPO's target margin; every other loss ignores it.
* FT622: SimPO's β scales a difference of *mean* per-token log-probabilities, about 1/length of DPO's summed ones;
  with DPO's β 0.1 the reward margin barely moves the loss. The SimPO paper trains with β 2 to 10.
* FT623: the robust loss with ``label_smoothing: 0`` is exactly the sigmoid (DPO) loss.
* FT624: what a SimPO stage or a stage with a supervised term (``sft_weight``, RPO) optimises (a note).

``label_smoothing`` with a loss that ignores it is FT325 (the runtime refuses it at start, ``runtime_limits``).
"""

from __future__ import annotations

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, error, info, warning
from ftplan.schemas import DpoStage

from ._common import train_stages

CODES = {
    "FT620": "a `reference` on a SimPO stage, which has no reference model",
    "FT621": "`simpo_gamma` with a loss other than SimPO",
    "FT622": "a SimPO stage with a β below 1",
    "FT623": "the robust DPO loss without label smoothing",
    "FT624": "what a SimPO stage or a DPO stage with a supervised term (RPO) optimises",
}

SIMPO_MIN_BETA = 1.0
"""Below this β a SimPO stage is warned (FT622): the SimPO paper's β are 2.0 to 10."""


def check(ctx: Context) -> list[Diagnostic]:
    """The loss-family rules of every DPO stage."""
    diags: list[Diagnostic] = []
    for i, stage, _facts in train_stages(ctx):
        if isinstance(stage, DpoStage):
            diags += _loss_settings(i, stage)
    return diags


def _written(stage: DpoStage, key: str) -> bool:
    """The pipeline file sets ``key`` on this stage (a default is not written)."""
    return key in stage.model_fields_set


def _loss_settings(i: int, stage: DpoStage) -> list[Diagnostic]:
    here = ("stages", i)
    diags = []
    simpo = stage.loss_type == "simpo"
    if simpo and _written(stage, "reference"):
        diags.append(error("FT620", here + ("reference",), f"`reference: {stage.reference}` on a SimPO stage: "
                           "`loss_type: simpo` has no reference model (it compares the policy's own mean "
                           "log-probabilities of the chosen and rejected answers), so there is nothing to compute "
                           "live or before training",
                           hint="remove `reference`, or choose a loss with a reference policy (`loss_type: sigmoid`)"))
    if not simpo and _written(stage, "simpo_gamma"):
        diags.append(error("FT621", here + ("simpo_gamma",), f"`simpo_gamma: {stage.simpo_gamma:g}` is the target "
                           f"margin of the SimPO loss; `loss_type: {stage.loss_type}` never reads it",
                           hint="set `loss_type: simpo` to train with SimPO, or remove `simpo_gamma`"))
    if simpo and stage.beta < SIMPO_MIN_BETA:
        diags.append(warning("FT622", here + ("beta",), f"`beta: {stage.beta:g}` with SimPO: its reward is β × the "
                             "mean log-probability per answer token, about 1/length of DPO's summed log-ratio, so "
                             f"a DPO-sized β leaves the margin γ/β = {stage.simpo_gamma / stage.beta:g} nats per "
                             "token to climb and the loss nearly flat",
                             hint="the SimPO paper trains with `beta` 2.0 to 10 and `simpo_gamma` about half of "
                             "it, e.g. `beta: 2.0, simpo_gamma: 1.0`"))
    if stage.loss_type == "robust" and stage.label_smoothing == 0:
        diags.append(warning("FT623", here + ("loss_type",), "`loss_type: robust` with `label_smoothing: 0` is "
                             "the sigmoid (DPO) loss: the robust loss corrects for the fraction of flipped labels "
                             "that `label_smoothing` assumes",
                             hint="set `label_smoothing` to the fraction of pairs you expect to be mislabelled "
                             "(the robust DPO paper uses 0.1), or use `loss_type: sigmoid`"))
    if simpo or stage.sft_weight > 0:
        diags.append(info("FT624", here + ("loss_type",), objective(stage),
                          hint="`sft_weight` weighs the supervised term (0 removes it)" if stage.sft_weight > 0
                          else "`sft_weight: 1.0` adds a supervised term on the chosen answers (CPO-SimPO)"))
    return diags


def objective(stage: DpoStage) -> str:
    """The loss a SimPO stage or a DPO stage with ``sft_weight`` minimises, in one sentence."""
    nll = (f" + {stage.sft_weight:g} × the mean negative log-likelihood of the chosen answer's tokens"
           if stage.sft_weight > 0 else "")
    if stage.loss_type == "simpo":
        smoothing = f", labels smoothed by {stage.label_smoothing:g}" if stage.label_smoothing else ""
        return (f"SimPO has no reference model: it minimises −log σ({stage.beta:g} × (mean log-probability per "
                f"token of the chosen answer − that of the rejected one) − {stage.simpo_gamma:g}){nll}"
                f"{smoothing}, on TRL's CPO trainer")
    return f"the {stage.loss_type} preference loss{nll} (RPO)"
