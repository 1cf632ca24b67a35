"""The estimator's terms for the kinds beyond SFT and DPO are the ones ``estimate/stage.py``, ``logits.py``,
``states.py`` and ``throughput.py`` document: CPT is SFT's step; ORPO runs chosen and rejected in one forward with
full logits, a second log-softmax over the chosen half and no reference; KTO adds a KL forward and, live, reference
forwards over the batch and the KL batch; a reward model has a one-value head and no vocabulary logits."""

from __future__ import annotations

import pytest

from ftplan.catalog import get_gpu, get_model, param_counts
from ftplan.catalog.architecture import matmul_params
from ftplan.estimate import estimate_training, resolve, states
from ftplan.estimate.logits import compute as loss_terms
from ftplan.estimate.throughput import flops_per_token, no_grad_forwards
from ftplan.schemas import CptStage, KtoStage, OrpoStage, RewardStage, SftStage

H100 = get_gpu("h100-sxm-80gb")
LLAMA_8B = get_model("llama-3.1-8b")
LORA = {"type": "lora", "r": 16, "alpha": 16}


def stage(cls, kind: str, adapter=LORA, **kw):
    return cls.model_validate({"id": kind, "kind": kind, "data": "data", "learning_rate": 1e-5, "adapter": adapter,
                               "micro_batch": 2, **kw})


def term(e, name: str) -> int:
    return sum(t.bytes for t in e.terms if t.name == name)


def names(e) -> set[str]:
    return {t.name for t in e.terms}


def test_cpt_is_sft_s_step():
    for packed in (False, True):
        cpt = estimate_training(LLAMA_8B, H100, stage(CptStage, "cpt"), seq_len=4096, packed=packed)
        sft = estimate_training(LLAMA_8B, H100, stage(SftStage, "sft"), seq_len=4096, packed=packed)
        assert cpt.terms == sft.terms and cpt.peak_bytes == sft.peak_bytes and cpt.step_time_s == sft.step_time_s


def test_orpo_one_forward_over_both_answers_full_logits_and_no_reference():
    s = stage(OrpoStage, "orpo")
    r = resolve(LLAMA_8B, s, seq_len=1024)
    assert (r.sequences, r.tokens, r.reference, r.loss_path, r.loop.padded) == (4, 4096, "none", "orpo", True)
    assert r.tokens_per_step == 2 * 1024 * 2  # micro_batch 2 pairs × 2 sequences × 1,024
    v = LLAMA_8B.vocab_size
    loss = loss_terms(r)
    half = 2048 * v  # the chosen half of the 4,096 tokens
    assert [t.bytes for t in loss.forward if t.name == "chosen NLL log-softmax (fp32)"] == [half * 4]
    assert [t.bytes for t in loss.backward if t.name == "chosen NLL gradient (fp32)"] == [2 * half * 4]
    e = estimate_training(LLAMA_8B, H100, s, seq_len=1024)
    assert term(e, "logits + loss") == 3 * 4096 * v * 4  # hf backward: fp32 log-softmax, its gradient, logits grad
    assert not any("reference" in n for n in names(e))
    assert "loss tile" not in names(e)  # not TRL's chunked head: ORPO computes the full logits


def test_kto_kl_batch_and_reference_forwards():
    continued = KtoStage.model_validate({"id": "k", "kind": "kto", "data": "d", "learning_rate": 1e-6,
                                         "adapter": LORA}).adapter  # the continued adapter's spec
    live = resolve(LLAMA_8B, stage(KtoStage, "kto", adapter="continue"), seq_len=2048, adapter=continued)
    assert (live.sequences, live.reference, live.kl_batch, live.loss_path) == (2, "adapter_copy", True, "trl_chunked")
    assert no_grad_forwards(live) == 3  # the KL forward, the reference over the batch and over the KL batch
    pre = resolve(LLAMA_8B, stage(KtoStage, "kto", reference="precomputed"), seq_len=2048)
    assert (pre.reference, no_grad_forwards(pre)) == ("none", 1)
    apo = resolve(LLAMA_8B, stage(KtoStage, "kto", reference="precomputed", loss_type="apo_zero_unpaired"),
                  seq_len=2048)
    assert (apo.kl_batch, no_grad_forwards(apo)) == (False, 0)
    n_mm_fwd = flops_per_token(pre, states.trainable_params(pre)) - flops_per_token(apo, states.trainable_params(apo))
    attn = 2 * LLAMA_8B.num_layers * 2048 * LLAMA_8B.num_heads * LLAMA_8B.head_dim
    assert n_mm_fwd == 2 * matmul_params(LLAMA_8B) + attn  # one no-grad forward
    e = estimate_training(LLAMA_8B, H100, stage(KtoStage, "kto", adapter={"type": "full"}), seq_len=2048)
    total = param_counts(LLAMA_8B).total
    assert term(e, "reference model (frozen copy)") == total * 2  # a full KTO stage keeps the starting weights


def test_kto_phases_include_the_kl_forward():
    from ftplan.estimate import activations, logits
    from ftplan.estimate.stage import _phases

    r = resolve(LLAMA_8B, stage(KtoStage, "kto"), seq_len=2048)
    phases = {p.name: p for p in _phases(r, states.compute(r), activations.compute(r), logits.compute(r))}
    assert {"KTO KL forward", "KTO reference forward"} <= set(phases)
    kl = {t.name for t in phases["KTO KL forward"].terms}
    assert "KL forward layer" in kl and "activation checkpoints" not in kl  # nothing is saved yet


def test_reward_model_has_a_score_head_and_no_vocabulary_logits():
    pc = param_counts(LLAMA_8B)
    h, v = LLAMA_8B.hidden_size, LLAMA_8B.vocab_size
    r = resolve(LLAMA_8B, stage(RewardStage, "reward", adapter={"type": "full"}), seq_len=2048)
    assert (r.sequences, r.loss_path, r.reference) == (4, "score", "none")
    assert states.loaded_params(r) == pc.total - pc.lm_head + h
    assert states.trainable_params(r) == pc.total - pc.lm_head + h
    lora = resolve(LLAMA_8B, stage(RewardStage, "reward"), seq_len=2048)
    sft = resolve(LLAMA_8B, stage(SftStage, "sft"), seq_len=2048)
    assert states.trainable_params(lora) == states.trainable_params(sft) + h  # the score head trains in full
    e = estimate_training(LLAMA_8B, H100, stage(RewardStage, "reward"), seq_len=2048)
    assert term(e, "weights (bf16)") == (pc.total - pc.lm_head + h) * 2
    loss = loss_terms(lora)
    assert [t.bytes for t in loss.forward if t.name == "reward scores"] == [4 * 2048 * 4]
    assert [t.bytes for t in loss.backward if t.name == "hidden-state gradient"] == [4 * 2048 * h * 2]
    assert not any(t.bytes % v == 0 and str(f"{v:,}") in t.detail for t in e.terms)  # no N × V term
    assert flops_per_token(lora, states.trainable_params(lora)) < flops_per_token(sft, states.trainable_params(sft))


@pytest.mark.parametrize("kind", ["orpo", "reward"])
def test_pair_kinds_double_the_tokens_per_step(kind):
    cls = {"orpo": OrpoStage, "reward": RewardStage}[kind]
    e = estimate_training(LLAMA_8B, H100, stage(cls, kind, grad_accum=4), seq_len=1024)
    assert e.tokens_per_step == 2 * 4 * 1024 * 2
