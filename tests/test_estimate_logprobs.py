"""The estimator's loss terms for `kernels: ftplan` on DPO and KTO: the fused linear log-prob op's buffers
(`estimate/logits._fused_logprobs`, the formulas of `runtime/kernels/logprobs.py`) instead of TRL's chunked head,
on exactly the stages `runtime_args.fused_head` gives that head."""

from __future__ import annotations

import pytest

from ftplan.catalog import get_gpu, get_model
from ftplan.estimate import estimate_training, resolve
from ftplan.estimate.logits import compute as loss_terms
from ftplan.schemas import DpoStage, KtoStage, OrpoStage, SftStage
from ftplan.schemas.runtime_args import fused_head

H100 = get_gpu("h100-sxm-80gb")
LLAMA_8B = get_model("llama-3.1-8b")
LORA = {"type": "lora", "r": 16, "alpha": 16}


def stage(cls, kind: str, adapter=LORA, **kw):
    return cls.model_validate({"id": kind, "kind": kind, "data": "data", "learning_rate": 1e-6, "adapter": adapter,
                               "micro_batch": 2, "precision": "bf16", **kw})


def by_name(terms) -> dict[str, int]:
    return {t.name: t.bytes for t in terms}


@pytest.mark.parametrize("cls,kind,extra,path", [
    (SftStage, "sft", {}, "fused"),
    (DpoStage, "dpo", {}, "fused_logprobs"),
    (DpoStage, "dpo", {"loss_type": "ipo"}, "fused_logprobs"),
    (KtoStage, "kto", {}, "fused_logprobs"),
    (DpoStage, "dpo", {"loss_type": "simpo", "beta": 2.0}, "hf"),
    (OrpoStage, "orpo", {}, "orpo"),
])
def test_the_loss_path_follows_the_contract_s_fused_head(cls, kind, extra, path):
    s = stage(cls, kind, kernels="ftplan", **extra)
    r = resolve(LLAMA_8B, s, seq_len=1024)
    assert r.loss_path == path
    assert (path == "fused_logprobs") == (fused_head(s) == "logprobs")
    assert (path == "fused") == (fused_head(s) == "cross_entropy")
    plain = resolve(LLAMA_8B, stage(cls, kind, **extra), seq_len=1024)
    assert plain.loss_path in ("trl_chunked", "hf", "orpo")


def test_dpo_lora_s1024_counts_the_op_s_chunk_not_trl_s_tile():
    """Llama-3.1-8B, 2 pairs × 1,024 tokens × 2 sequences = 4,096 tokens per micro-step, frozen bf16 head: a chunk
    of C = 1,024 rows (the 256 MiB floor: 2^28 / (128,256 × 2) = 1,046, rounded down to a multiple of 64)."""
    h, v, n = LLAMA_8B.hidden_size, LLAMA_8B.vocab_size, 4096
    r = resolve(LLAMA_8B, stage(DpoStage, "dpo", kernels="ftplan"), seq_len=1024)
    assert r.tokens == n
    loss = loss_terms(r)
    forward = by_name(loss.forward)
    assert forward["log-prob chunk"] == 1024 * v * 2 + 1024 * h * 2
    assert forward["hidden-state gradient (prepared)"] == n * h * 2  # written in the forward, kept to the backward
    assert forward["per-token log-probs"] == n * 16
    assert "lm_head gradient" not in forward and "lm_head gradient" not in by_name(loss.backward)
    assert by_name(loss.saved) == {"hidden-state gradient (prepared)": n * h * 2, "per-token log-probs": n * 16}
    assert by_name(loss.reference) == {"log-prob chunk": 1024 * v * 2 + 1024 * h * 2, "reference log-probs": n * 4}
    assert loss.held is None and loss.largest_block == 1024 * v * 2 + 1024 * h * 2

    plain = loss_terms(resolve(LLAMA_8B, stage(DpoStage, "dpo"), seq_len=1024))  # TRL's chunked head
    assert "loss tile" in by_name(plain.forward) and "hidden-state gradient (fp32)" in by_name(plain.backward)
    fused = estimate_training(LLAMA_8B, H100, stage(DpoStage, "dpo", kernels="ftplan"), seq_len=1024)
    assert not {t.name for t in fused.terms} & {"loss tile", "loss hidden states", "logits + loss"}


def test_a_trainable_head_recomputes_in_the_backward():
    """Full fine-tune: the forward keeps the hidden states; the backward holds the chunk again, the hidden-state
    gradient and lm_head's gradient (in the weight's dtype)."""
    h, v, n = LLAMA_8B.hidden_size, LLAMA_8B.vocab_size, 4096
    r = resolve(LLAMA_8B, stage(DpoStage, "dpo", adapter={"type": "full"}, kernels="ftplan"), seq_len=1024)
    loss = loss_terms(r)
    forward, backward = by_name(loss.forward), by_name(loss.backward)
    assert "hidden-state gradient (prepared)" not in forward and "hidden states (saved)" not in forward
    assert backward["hidden states (saved)"] == backward["hidden-state gradient"] == n * h * 2
    assert backward["lm_head gradient"] == v * h * 2 and backward["log-prob chunk"] == forward["log-prob chunk"]
    assert by_name(loss.saved) == {"hidden states (saved)": n * h * 2, "per-token log-probs": n * 16}


def test_kto_reference_and_kl_forwards_use_the_op_s_chunk():
    e = estimate_training(LLAMA_8B, H100, stage(KtoStage, "kto", kernels="ftplan"), seq_len=1024)
    assert "loss tile" not in {t.name for t in e.terms}
    r = resolve(LLAMA_8B, stage(KtoStage, "kto", kernels="ftplan"), seq_len=1024)
    assert "log-prob chunk" in by_name(loss_terms(r).reference)
