"""DPO stage → DPOConfig mapping: beta, loss type and label smoothing reach TRL, or the stage fails clearly."""

from __future__ import annotations

import pytest

from ftplan.schemas.stages import DpoStage

from ftplan_runtime.dpo import make_dpo_config
from ftplan_runtime.preflight import StageError

_COMMON = dict(output_dir="unused", use_cpu=True, report_to="none")


def _stage(**over) -> DpoStage:
    return DpoStage.model_validate({"id": "dpo", "kind": "dpo", "input": "sft", "data": "prep",
                                    "learning_rate": 1e-5, "adapter": "continue", **over})


def test_robust_loss_passes_beta_and_label_smoothing():
    config = make_dpo_config(_stage(loss_type="robust", beta=0.2, label_smoothing=0.1), dict(_COMMON), None)
    assert config.loss_type == ["robust"] and config.beta == 0.2 and config.label_smoothing == 0.1


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_label_smoothing_a_loss_ignores_is_refused(loss):
    """TRL's sigmoid/ipo/hinge losses never read label_smoothing: running would silently train without it."""
    with pytest.raises(StageError, match="label_smoothing"):
        make_dpo_config(_stage(loss_type=loss, label_smoothing=0.1), dict(_COMMON), None)


def test_no_smoothing_is_fine_for_every_loss():
    for loss in ("sigmoid", "ipo", "hinge", "robust"):
        assert make_dpo_config(_stage(loss_type=loss), dict(_COMMON), None).loss_type == [loss]
