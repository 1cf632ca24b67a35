"""The DPO loss family on the tiny model (CPU, fp32), from raw preference pairs through the real data stage, and DPO
straight from the base model: each loss (sigmoid, IPO, hinge, robust, SimPO, and the RPO supervised term) reaches
TRL as configured and trains on a learnable toy task (its loss on a fixed batch goes down and the chosen answer
gains on the rejected one), and a DPO stage without ``input`` uses the base model as its reference (the base with
the new adapter off, a frozen copy for a full fine-tune, or log-probs precomputed from it)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402
from ftplan.schemas.stages import DpoStage  # noqa: E402

PROMISE = {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO", "precision": "fp32",
           "attention": "sdpa", "kernels": "none"}
COMMON = dict(output_dir="unused", use_cpu=True, report_to="none")


def _pairs(n: int, seed: int) -> list[dict]:
    """Arithmetic prompts with the right answer chosen and a wrong one rejected."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": f"The answer is {a + b}.",
                     "rejected": f"It is {a * b + 1}."})
    return rows


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base):
    """Preference pairs through the data stage (ChatML, max_seq_len 64)."""
    from ftplan_runtime.data import run_data_stage

    root = tmp_path_factory.mktemp("losses")
    raw = root / "raw" / "prefs.jsonl"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in _pairs(48, seed=3)), encoding="utf-8")
    run_data_stage(RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": str(tiny_base)}, "output_dir": str(root / "prefs"), "promise": PROMISE,
        "stage": {"id": "prefs", "kind": "data", "max_seq_len": 64,
                  "datasets": [{"path": str(raw), "format": "preference"}]}}), "s")
    return {"root": root, "base": tiny_base}


def _args(project, out: str, **stage) -> RuntimeArgs:
    base = str(project["base"])
    fields = {"id": "dpo", "kind": "dpo", "data": "prefs", "learning_rate": 5e-3, "precision": "fp32",
              "max_steps": 12, "micro_batch": 4, "logging_steps": 1, "report_to": [], "gradient_checkpointing": False,
              "adapter": {"type": "lora", "r": 8, "alpha": 16}}
    fields.update(stage)
    return RuntimeArgs.model_validate({
        "pipeline": "t", "stage": fields, "model": {"base": base}, "source": {"weights": base, "tokenizer": base},
        "data_dir": str(project["root"] / "prefs"), "output_dir": str(project["root"] / out), "promise": PROMISE})


def _prepare(args):
    from ftplan_runtime.dpo import dpo_spec
    from ftplan_runtime.train_common import prepare_training

    return prepare_training(args, "0" * 64, dpo_spec(args))


def _batch_loss(trainer, batch) -> tuple[float, float]:
    """(loss, mean reward margin of chosen over rejected) of one fixed batch, without a gradient (the DPO trainer
    logs the margin under its eval metrics with the model in eval mode, the CPO trainer under its stored train
    metrics)."""
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
    logged = trainer._stored_metrics["train"] if hasattr(trainer, "_stored_metrics") else trainer._metrics["eval"]
    margin = float(logged["rewards/margins"][-1])
    logged.clear()
    return loss, margin


# ------------------------------------------------------------------------------------------ the config TRL gets


def _stage(**over) -> DpoStage:
    return DpoStage.model_validate({"id": "dpo", "kind": "dpo", "data": "prep", "learning_rate": 1e-5,
                                    "adapter": {"type": "lora"}, **over})


def test_rpo_adds_trl_s_sft_loss_with_its_weight():
    from ftplan_runtime.dpo import make_dpo_config

    config = make_dpo_config(_stage(loss_type="ipo", sft_weight=0.5, beta=0.2), dict(COMMON), None)
    assert (config.loss_type, config.loss_weights, config.beta) == (["ipo", "sft"], [1.0, 0.5], 0.2)
    plain = make_dpo_config(_stage(), dict(COMMON), None)
    assert (plain.loss_type, plain.loss_weights) == (["sigmoid"], [1.0])


def test_simpo_runs_on_trl_s_cpo_trainer_with_its_settings():
    from ftplan_runtime.dpo import make_dpo_config
    from ftplan_runtime.preflight import StageError
    from ftplan_runtime.simpo import make_simpo_config

    ds = datasets.Dataset.from_dict({"chosen_input_ids": [[1, 2, 3]], "rejected_input_ids": [[1, 2, 3, 4, 5]]})
    stage = _stage(loss_type="simpo", beta=2.0, simpo_gamma=1.2, sft_weight=0.3, label_smoothing=0.1)
    config = make_simpo_config(stage, dict(COMMON), ds)
    assert (config.loss_type, config.beta, config.simpo_gamma, config.cpo_alpha, config.label_smoothing,
            config.max_length) == ("simpo", 2.0, 1.2, 0.3, 0.1, 5)
    assert make_simpo_config(_stage(loss_type="simpo"), dict(COMMON), ds).cpo_alpha == 0.0  # pure SimPO
    with pytest.raises(StageError, match="CPO trainer"):
        make_dpo_config(stage, dict(COMMON), None)
    with pytest.raises(StageError, match="DPO trainer"):
        make_simpo_config(_stage(), dict(COMMON), ds)


def test_the_runtime_refusal_of_label_smoothing_matches_the_check():
    from ftplan.checks.runtime_limits import SMOOTHED_LOSSES

    from ftplan_runtime import dpo

    assert set(dpo._SMOOTHED_LOSSES) == set(SMOOTHED_LOSSES) == {"robust", "simpo"}


# ------------------------------------------------------------------------------------------ each loss trains


@pytest.mark.parametrize("loss", [
    {"loss_type": "sigmoid"},
    {"loss_type": "ipo"},
    {"loss_type": "hinge"},
    {"loss_type": "robust", "label_smoothing": 0.1},
    {"loss_type": "sigmoid", "sft_weight": 1.0},
    {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0},
    {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "sft_weight": 1.0},
], ids=["sigmoid", "ipo", "hinge", "robust", "rpo", "simpo", "cpo-simpo"])
def test_each_loss_trains_from_the_base_model(project, loss):
    """A new LoRA adapter on the base (no input stage): the loss on a fixed batch falls and the chosen answers gain
    on the rejected ones."""
    name = "-".join(f"{k}{v}" for k, v in loss.items())
    prep = _prepare(_args(project, f"out-{name}", **loss))
    trainer = prep.trainer
    simpo = loss["loss_type"] == "simpo"
    assert type(trainer).__name__ == ("FtplanCPOTrainer" if simpo else "FtplanDPOTrainer")
    if not simpo:
        assert trainer.args.loss_type == [loss["loss_type"]] + (["sft"] if "sft_weight" in loss else [])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    before, margin_before = _batch_loss(trainer, batch)
    trainer.model.train()
    trainer.train()
    after, margin_after = _batch_loss(trainer, batch)
    assert after < before, (loss, before, after)
    assert margin_after > margin_before, (loss, margin_before, margin_after)
    assert trainer.tokens_trained > 0


# ------------------------------------------------------------------------------- the base model as the reference


def _base_logps(project, rows) -> torch.Tensor:
    """Sum of answer-token log-probs of the bare base model, chosen then rejected."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(project["base"]), dtype=torch.float32).eval()
    out = []
    for key in ("chosen_ids", "rejected_ids"):
        for row in rows:
            ids = torch.tensor([row["prompt_ids"] + row[key]])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            out.append(logp.gather(-1, ids[0, 1:, None])[:, 0][len(row["prompt_ids"]) - 1:].sum())
    return torch.stack(out)


def _rows(project, n=4):
    ds = datasets.load_from_disk(str(project["root"] / "prefs" / "preference" / "train"))
    return [ds[i] for i in range(n)]


def _ref_logps(trainer, rows, model=None) -> torch.Tensor:
    batch = trainer.data_collator([dict(r) for r in rows])
    chosen, rejected = trainer.compute_ref_log_probs(model if model is not None else trainer.model, batch)
    return torch.cat([chosen, rejected]).detach().float()


def test_new_adapter_on_the_base_refers_to_the_base_with_the_adapter_off(project):
    prep = _prepare(_args(project, "out-base-live", max_steps=4))
    trainer = prep.trainer
    assert "ref" not in trainer.model.peft_config and trainer.ref_model is None
    rows = _rows(project)
    want = _base_logps(project, rows)
    torch.testing.assert_close(_ref_logps(trainer, rows), want, atol=1e-4, rtol=1e-5)
    trainer.train()
    torch.testing.assert_close(_ref_logps(trainer, rows), want, atol=1e-4, rtol=1e-5)


def test_precomputed_reference_from_the_base(project):
    prep = _prepare(_args(project, "out-base-pre", reference="precomputed", max_steps=1))
    assert prep.config.precompute_ref_log_probs
    ds = prep.trainer.train_dataset
    rows = [ds[i] for i in range(len(ds))]
    got = torch.tensor([r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows])
    torch.testing.assert_close(got, _base_logps(project, rows), atol=1e-4, rtol=1e-5)


def test_full_fine_tune_from_the_base_keeps_a_frozen_base(project):
    prep = _prepare(_args(project, "out-base-full", adapter={"type": "full"}, learning_rate=1e-3, max_steps=2))
    trainer = prep.trainer
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    rows = _rows(project)
    trainer.train()
    torch.testing.assert_close(_ref_logps(trainer, rows, trainer.ref_model), _base_logps(project, rows), atol=1e-4,
                               rtol=1e-5)


def test_simpo_stage_saves_its_adapter_and_metrics(project):
    from ftplan_runtime.dpo import run_dpo

    args = _args(project, "out-simpo-run", loss_type="simpo", beta=2.0, max_steps=2)
    metrics = run_dpo(args, "1" * 64)
    out = Path(args.output_dir)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "dpo" and saved["steps"] == 2 == metrics["steps"] and saved["tokens_trained"] > 0
