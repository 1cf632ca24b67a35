"""DPO and KTO with `kernels: ftplan` on the tiny model (fp32; on the CPU under the Triton interpreter, compiled on a
GPU): the log-probs of the policy and of its reference (a frozen copy, the adapter switched off or to TRL's `ref`
copy, or precomputed) come from the fused linear log-prob op, never from TRL's chunked head, and one training step's
loss, trainable gradients and logged metrics equal those of the same stage with `kernels: none`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU machine the same steps run the compiled kernels
PROMISE = {"device": DEVICE, "world_size": 1, "num_machines": 1, "distributed_type": "NO", "precision": "fp32",
           "attention": "sdpa"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base, seeded_lora):
    """Arithmetic preference pairs and KTO examples through the data stage, and a non-trivial 'SFT' adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftplan_runtime.data import run_data_stage

    root = tmp_path_factory.mktemp("dpo-kernels")
    rng = random.Random(5)
    pairs = []
    for _ in range(2):  # the precomputed reference scores every pair through the interpreted kernels
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        pairs.append((f"What is {a} + {b}?", f"The answer is {a + b}.", f"It is {a * b + 1}, I think."))
    raw = root / "raw"
    raw.mkdir()
    (raw / "prefs.jsonl").write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                                             for p, c, r in pairs))
    (raw / "kto.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": ans}],
                    "label": good}) + "\n" for p, c, r in pairs for ans, good in ((c, True), (r, False))))
    run_data_stage(RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": str(tiny_base)}, "output_dir": str(root / "data"),
        "promise": {**PROMISE, "device": "cpu", "kernels": "none"},
        "stage": {"id": "data", "kind": "data", "max_seq_len": 64,
                  "datasets": [{"path": str(raw / "prefs.jsonl"), "format": "preference"},
                               {"path": str(raw / "kto.jsonl"), "format": "kto"}]}}), "s")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    seeded_lora(model, 0, b_scale=0.3)
    model.save_pretrained(str(root / "sft" / "adapter"))
    return {"root": root, "base": tiny_base}


def _args(project, out: str, kernels: str, *, kind="dpo", adapter=None, reference="live", continued=False,
          **stage) -> RuntimeArgs:
    root, base = project["root"], str(project["base"])
    source = {"weights": base, "tokenizer": base}
    if continued:
        source["continue_adapter"] = {"stage": "sft", "path": str(root / "sft" / "adapter"), "type": "lora"}
    fields = {"id": kind, "kind": kind, "data": "data", "learning_rate": 1e-3, "precision": "fp32", "max_steps": 1,
              "micro_batch": 4, "logging_steps": 1, "report_to": [], "gradient_checkpointing": False,
              "adapter": "continue" if continued else (adapter or {"type": "lora", "r": 4, "alpha": 8}),
              "reference": reference, "kernels": kernels, **stage}
    if continued:
        fields["input"] = "sft"
    return RuntimeArgs.model_validate({
        "pipeline": "t", "stage": fields, "model": {"base": base}, "source": source,
        "data_dir": str(root / "data"), "output_dir": str(root / out), "promise": {**PROMISE, "kernels": kernels}})


def _spec(args):
    from ftplan_runtime.dpo import dpo_spec
    from ftplan_runtime.kto import kto_spec

    return kto_spec(args) if args.stage.kind == "kto" else dpo_spec(args)


def _one_step(args, rows: int = 1):
    """(loss, {trainable parameter: gradient}, logged metrics, prepared stage) of one training micro-step on the
    first `rows` examples (the Triton interpreter is slow: one pair, two short sequences)."""
    from ftplan_runtime.train_common import prepare_training

    # host tensors by default, as in a run: the trainer's data loader pins its batches before moving them (the
    # conftest makes CUDA the default device on a GPU machine; the model still loads where the promise says)
    with torch.device("cpu"):
        prep = prepare_training(args, "0" * 64, _spec(args))
        trainer = prep.trainer
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(rows)]))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss), grads, logged, prep


@pytest.fixture
def no_trl_head(monkeypatch):
    """Fail the test if TRL's own chunked head runs (the fused op must replace it everywhere)."""
    from trl.trainer import utils

    def refuse(*args, **kwargs):
        raise AssertionError("TRL's chunked log-prob head ran under kernels: ftplan")

    yield lambda: monkeypatch.setattr(utils._ChunkedLogProbFunction, "apply", refuse)


@pytest.fixture
def spy_fused(monkeypatch):
    """Counts of the fused op's calls with and without a gradient."""
    from ftplan_runtime.kernels.logprobs import FusedLinearLogprobsFunction

    calls = {"grad": 0, "no_grad": 0}
    original = FusedLinearLogprobsFunction.apply

    def apply(*args):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return original(*args)

    monkeypatch.setattr(FusedLinearLogprobsFunction, "apply", apply)
    return calls


@pytest.fixture(autouse=True)
def _revert_rope():
    """`kernels: ftplan` rebinds the modeling module's RoPE process-wide: restore it after each test."""
    yield
    from ftplan_runtime.kernels.patch import _ORIGINAL_ROPE
    import sys

    for name, original in list(_ORIGINAL_ROPE.items()):
        sys.modules[name].apply_rotary_pos_emb = original
        del _ORIGINAL_ROPE[name]


CASES = {
    # new LoRA on the base: the reference is the policy with the adapter off
    "lora-live": dict(),
    # continued SFT adapter: the reference is TRL's frozen `ref` copy of it
    "lora-continue": dict(continued=True),
    # reference log-probs computed once in the trainer's constructor; RPO's supervised term reads the per-token
    # log-probs as well
    "lora-precomputed-rpo": dict(reference="precomputed", loss_type="ipo", sft_weight=0.5),
    # full fine-tune: a frozen copy of the weights, lm_head trainable (the op's recomputing backward)
    "full-live": dict(adapter={"type": "full"}),
    "full-precomputed": dict(adapter={"type": "full"}, reference="precomputed"),
    "kto-lora-live": dict(kind="kto"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_fused_step_equals_the_plain_step(project, case, no_trl_head, spy_fused):
    over = CASES[case]
    plain_loss, plain_grads, plain_logged, plain_prep = _one_step(_args(project, f"{case}-none", "none", **over))
    assert spy_fused == {"grad": 0, "no_grad": 0}
    no_trl_head()
    loss, grads, logged, prep = _one_step(_args(project, f"{case}-ftplan", "ftplan", **over))

    full = over.get("adapter", {}).get("type") == "full"
    live = over.get("reference", "live") == "live"
    heads = 2 if (full and live) else 1  # a frozen reference copy gets its own head
    assert prep.trainer.fused_logprob_heads == heads and prep.kernel_report.counts()["logprobs"] == heads
    assert spy_fused["grad"] >= 1 and (spy_fused["no_grad"] >= 1 or not live)
    assert loss == pytest.approx(plain_loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == plain_grads.keys() and len(grads) > 0
    if full:
        assert any("lm_head" in n for n in grads)  # the head trains: dW from the op's backward
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # what the trainer logs (entropy, logits/*, mean_token_accuracy, rewards, log-probs) agrees with TRL's head
    assert logged.keys() == plain_logged.keys() and "entropy" in logged
    for key, value in logged.items():
        if key == "rewards/accuracies" and abs(plain_logged["rewards/margins"]) < 1e-4:
            continue  # policy = reference at the first step: chosen > rejected compares rounding noise
        assert value == pytest.approx(plain_logged[key], rel=1e-4, abs=1e-5), key
    if not live:  # the reference log-probs the constructor stored in the dataset are TRL's own
        for col in ("ref_chosen_logps", "ref_rejected_logps") if over.get("kind") != "kto" else ("ref_logps",):
            got, want = (torch.tensor(t.train_dataset[col]) for t in (prep.trainer, plain_prep.trainer))
            assert got.abs().min() > 0
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_simpo_and_orpo_keep_trl_s_logits():
    """SimPO (TRL's CPO trainer) and ORPO take the full logits: no fused log-prob head (check says FT326)."""
    from ftplan.schemas.runtime_args import fused_head
    from ftplan.schemas.stages import DpoStage, KtoStage, OrpoStage

    from ftplan_runtime.dpo import FtplanDPOTrainer
    from ftplan_runtime.kto import FtplanKTOTrainer
    from ftplan_runtime.logprob_head import FusedLogprobTrainerMixin
    from ftplan_runtime.orpo import FtplanORPOTrainer
    from ftplan_runtime.simpo import FtplanCPOTrainer

    common = {"data": "d", "learning_rate": 1e-5, "adapter": {"type": "lora"}}
    assert fused_head(DpoStage.model_validate({"id": "a", "kind": "dpo", **common})) == "logprobs"
    assert fused_head(KtoStage.model_validate({"id": "a", "kind": "kto", **common})) == "logprobs"
    assert fused_head(DpoStage.model_validate({"id": "a", "kind": "dpo", "loss_type": "simpo", **common})) is None
    assert fused_head(OrpoStage.model_validate({"id": "a", "kind": "orpo", **common})) is None
    assert issubclass(FtplanDPOTrainer, FusedLogprobTrainerMixin) and issubclass(FtplanKTOTrainer,
                                                                                 FusedLogprobTrainerMixin)
    assert not issubclass(FtplanCPOTrainer, FusedLogprobTrainerMixin)
    assert not issubclass(FtplanORPOTrainer, FusedLogprobTrainerMixin)


def test_a_scaled_or_capped_head_is_refused(tiny_base):
    from transformers import AutoModelForCausalLM

    from ftplan_runtime.logprob_head import check_plain_head
    from ftplan_runtime.preflight import StageError

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)
    check_plain_head(model)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(StageError, match="final_logit_softcapping"):
        check_plain_head(model)


def test_fused_logprobs_refused_under_zero3(project):
    """The preflight stops DPO and KTO with kernels under ZeRO-3 / FSDP2, as check's FT320 does."""
    from ftplan_runtime.dpo import _make_config
    from ftplan_runtime.preflight import PreflightError
    from ftplan_runtime.train_common import config_kwargs

    args = _args(project, "z3", "ftplan")
    fsdp = args.model_copy(update={"promise": args.promise.model_copy(
        update={"distributed_type": "FSDP", "world_size": 1})})
    with pytest.raises(PreflightError, match="fsdp2"):
        _make_config(fsdp, config_kwargs(fsdp, has_eval=False), None)
    _make_config(args, config_kwargs(args, has_eval=False), None)  # the same stage on one process starts
