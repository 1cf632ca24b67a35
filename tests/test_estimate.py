"""The VRAM estimator: term arithmetic on hand-computed cases, monotonicity, suggestions, pipeline diagnostics."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftplan.catalog import get_gpu, get_model, linear_modules, param_counts
from ftplan.codes import all_codes
from ftplan.context import Context, Inputs
from ftplan.diagnostics import Severity
from ftplan.estimate import BASELINE_LOOP, CODES, estimate, estimate_training, resolve, states, verdict
from ftplan.estimate.constants import NF4_BYTES_PER_PARAM
from ftplan.lineage import trace
from ftplan.schemas import DistributedSpec, DpoStage, Pipeline, SftStage

GIB = 1 << 30
H100 = get_gpu("h100-sxm-80gb")
H200 = get_gpu("h200-sxm-141gb")
RTX4090 = get_gpu("rtx-4090")
LLAMA_8B = get_model("llama-3.1-8b")
LLAMA_70B = get_model("llama-3.1-70b")


def sft(adapter="lora", **kw) -> SftStage:
    spec = adapter if isinstance(adapter, dict) else (
        {"type": "full"} if adapter == "full" else {"type": adapter, "r": 16, "alpha": 16})
    return SftStage.model_validate({"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4,
                                    "adapter": spec, **kw})


def dpo(adapter="lora", **kw) -> DpoStage:
    spec = adapter if isinstance(adapter, (dict, str)) and adapter == "continue" else (
        {"type": "full"} if adapter == "full" else {"type": adapter, "r": 16, "alpha": 16})
    return DpoStage.model_validate({"id": "dpo", "kind": "dpo", "input": "sft", "data": "data",
                                    "learning_rate": 1e-6, "adapter": spec, **kw})


def est(stage, gpu=H100, shape=LLAMA_8B, seq=2048, **kw):
    return estimate_training(shape, gpu, stage, seq_len=seq, **kw)


def term(e, name: str) -> int:
    return sum(t.bytes for t in e.terms if t.name == name)


def names(e) -> set[str]:
    return {t.name for t in e.terms}


# --- term arithmetic -----------------------------------------------------------------------------------------------

def test_nf4_is_4_127_bits_on_decoder_linears_and_the_rest_stays_wide():
    assert NF4_BYTES_PER_PARAM * 8 == pytest.approx(4.127, abs=1e-3)
    e = est(sft("qlora"))
    pc = param_counts(LLAMA_8B)
    linear = LLAMA_8B.num_layers * pc.per_layer_linear
    assert term(e, "base weights (NF4)") == int(linear * NF4_BYTES_PER_PARAM)
    assert term(e, "base weights (NF4)") / 1e9 == pytest.approx(3.60, abs=0.01)  # 6.98B params, vram-anchors 2.2
    rest = pc.embedding + pc.lm_head + LLAMA_8B.num_layers * pc.per_layer_norm + pc.final_norm
    assert term(e, "embeddings, lm_head, norms (bf16)") == rest * 2  # the runtime keeps them at the compute dtype
    plain = est(sft("qlora"), loop=BASELINE_LOOP)
    assert term(plain, "embeddings, lm_head, norms (fp32)") == rest * 4  # prepare_model_for_kbit_training upcasts


def test_the_runtime_qlora_stream_is_16_bit_and_the_upcast_loop_is_fp32():
    """The runtime freezes a 4-bit base without PEFT's fp32 upcast: its residual stream and head stay bf16, so
    the same step needs less memory than the HF+PEFT loop's, whose upcast the baseline points measure."""
    runtime = resolve(LLAMA_8B, sft("qlora"), seq_len=2048)
    upcast = resolve(LLAMA_8B, sft("qlora"), seq_len=2048, loop=BASELINE_LOOP)
    assert (runtime.stream_bytes, runtime.lm_head_bytes) == (2, 2)
    assert (upcast.stream_bytes, upcast.lm_head_bytes) == (4, 4)
    lora = resolve(LLAMA_8B, sft("lora"), seq_len=2048, loop=BASELINE_LOOP)
    assert (lora.stream_bytes, lora.lm_head_bytes) == (2, 2)  # the upcast is a QLoRA-only step
    assert est(sft("qlora")).peak_bytes < est(sft("qlora"), loop=BASELINE_LOOP).peak_bytes


def test_lora_adapters_are_fp32_and_41_9m_params_for_8b_all_linear():
    e = est(sft("lora"))
    assert term(e, "trainable adapters (fp32)") == 41_943_040 * 4
    assert term(e, "optimizer states (AdamW)") == 41_943_040 * 8
    assert term(e, "weights (bf16)") == param_counts(LLAMA_8B).total * 2


def test_lora_on_two_modules_counts_only_those():
    e = est(sft({"type": "lora", "r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}))
    per_layer = 8 * ((4096 + 4096) + (4096 + 1024))
    assert term(e, "trainable adapters (fp32)") == 32 * per_layer * 4


def test_full_finetune_bf16_keeps_bf16_adam_states_and_fp16_keeps_fp32_masters():
    p = param_counts(LLAMA_8B).total
    bf16 = est(sft("full"), gpu=H200)
    assert term(bf16, "weights (bf16)") == 2 * p
    assert term(bf16, "optimizer states (AdamW)") == 4 * p  # torch AdamW: states in the parameter dtype
    fp16 = est(sft("full", precision="fp16"), gpu=H200)
    assert term(fp16, "weights (fp32)") == 4 * p
    assert term(fp16, "optimizer states (AdamW)") == 8 * p  # 4 + 4 + 8 = 16 B/param mixed precision


def test_eight_bit_optimizer_is_about_two_bytes_per_param():
    e = est(sft("lora", optimizer="adamw_8bit"))
    assert term(e, "optimizer states (8-bit AdamW)") == pytest.approx(41_943_040 * 2.03, rel=0.01)


def test_zero_sharding_divides_by_the_gpu_count():
    stage = sft("full", distributed="zero3", micro_batch=1)
    two, eight = est(stage, world_size=2), est(stage, world_size=8)
    p = param_counts(LLAMA_8B).total
    assert term(two, "optimizer states (DeepSpeed)") == p * 12 // 2
    assert term(eight, "optimizer states (DeepSpeed)") == p * 12 // 8
    assert term(two, "trainable weights (bf16)") == 4 * term(eight, "trainable weights (bf16)")
    z1 = est(sft("full", distributed="zero1"), world_size=8)
    assert term(z1, "trainable weights (bf16)") == 2 * p  # ZeRO-1 shards only the optimizer
    # fp32 master + m + v + the fp32 gradient partition the step builds (stage 1 runs stage 2's step)
    assert term(z1, "optimizer states (DeepSpeed)") == p * 16 // 8
    grads = {name: states.compute(resolve(LLAMA_8B, sft("full", distributed=name), seq_len=2048,
                                          world_size=8)).grads.bytes for name in ("zero1", "zero2", "zero3")}
    # 16-bit and whole under ZeRO-1; the 16-bit partition under ZeRO-2 (DeepSpeed's estimator: 2 + 18/N); the
    # fp32 partition under ZeRO-3
    assert grads == {"zero1": 2 * p, "zero2": 2 * p // 8, "zero3": 4 * p // 8}


def test_zero3_adds_the_largest_layer_gather_and_fsdp2_its_units():
    z3 = est(sft("lora", distributed="zero3"), world_size=8)
    assert term(z3, "ZeRO-3 largest layer gathered") == 128_256 * 4096 * 2  # the embedding, bf16 (frozen)
    assert term(z3, "weights (bf16)") == param_counts(LLAMA_8B).total * 2 // 8
    fsdp = est(sft("full", distributed="fsdp2"), world_size=8)
    assert term(fsdp, "FSDP2 unsharded units") > 0
    assert term(fsdp, "trainable weights (fp32 shards)") == param_counts(LLAMA_8B).total * 4 // 8


def test_offload_moves_the_optimizer_off_the_gpu():
    on = est(sft("full", distributed="zero3"), world_size=8)
    off = est(sft("full", distributed={"strategy": "zero3", "offload_optimizer": True}), world_size=8)
    assert term(on, "optimizer states (DeepSpeed)") > 0
    assert term(off, "optimizer states (DeepSpeed)") == 0
    assert off.peak_bytes < on.peak_bytes
    # DeepSpeed keeps the gradient partitions on the offload device too: no gradients on the GPU, and per node the
    # 8 GPUs' shards of master, m, v (12 B) and gradients (4 B)
    assert term(off, "gradients") == 0 and term(on, "gradients") == param_counts(LLAMA_8B).total * 4 // 8
    assert off.host_bytes == (term(on, "optimizer states (DeepSpeed)") + term(on, "gradients")) * 8
    both = est(sft("full", distributed={"strategy": "zero3", "offload_optimizer": True, "offload_params": True}),
               world_size=8)
    assert term(both, "trainable weights (bf16)") == 0 and both.peak_bytes < off.peak_bytes
    assert both.host_bytes == off.host_bytes + term(on, "trainable weights (bf16)") * 8


def test_gradient_checkpointing_shrinks_activations():
    with_gc, without = est(sft("lora", micro_batch=4)), est(sft("lora", micro_batch=4, gradient_checkpointing=False))
    assert term(without, "activations (no checkpointing)") > 5 * term(with_gc, "activation checkpoints")
    assert without.peak_bytes > with_gc.peak_bytes
    # checkpoints are the layer inputs: L x tokens x h x 2 B
    assert term(with_gc, "activation checkpoints") == 32 * 4 * 2048 * 4096 * 2


def test_the_fused_lora_functions_save_each_block_input_once_and_not_the_swiglu_product():
    """``kernels: ftplan`` on LoRA: q/k/v keep one input, o its own, the MLP its input, gate and up (not down's
    input), and each adapter its r-wide X Aᵀ; the MLP backward holds one intermediate-wide gradient. Against PEFT's
    layers under the same kernels (a 16-bit copy per module, down's input, two gradients)."""
    from ftplan.estimate.activations import compute

    def layer(stage):
        r = resolve(LLAMA_8B, stage, seq_len=2048)
        return compute(r), r

    fused, r = layer(sft("lora", kernels="ftplan"))
    assert r.fused_lora and not layer(sft("dora", kernels="ftplan"))[1].fused_lora
    h, q, kv, i, rank = 4096, 4096, 1024, 14336, 16
    attention = (2 * q + 2 * kv) * 2 + 4 * 32 + 4  # SDPA's q, k, v, out and lse; the norm's rstd (its input: the
    # checkpoint)
    linears = 2 * h + 3 * rank * 2 + rank * 2  # one q/k/v input and three X Aᵀ; o's X Aᵀ (its input: SDPA's output)
    assert fused.attn_tok == attention + linears
    mlp = 2 * i * 2 + (2 * h + 4) + 2 * h + 3 * rank * 2  # gate, up; the norm; the MLP input; three X Aᵀ
    assert fused.mlp_tok == mlp
    assert fused.inflight_mlp_tok == i * 2 + h * 2
    # the MLP runs fused only when gate, up and down all carry adapters: else PEFT's layers and the SwiGLU kernel
    partial, r = layer(sft({"type": "lora", "r": 16, "alpha": 16,
                            "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]},
                           kernels="ftplan"))
    assert r.fused_lora and partial.inflight_mlp_tok == 2 * i * 2 + h * 2
    assert partial.attn_tok == fused.attn_tok
    # PEFT's gate and up keep a 16-bit copy of their input and their fp32 lora_A output each; down (no adapter)
    # keeps nothing
    assert partial.mlp_tok == 2 * i * 2 + (2 * h + 4) + 2 * (2 * h + rank * 4)
    peft = est(sft("lora", kernels="none"))
    assert est(sft("lora", kernels="ftplan")).peak_bytes < peft.peak_bytes


def test_peft_layers_keep_16_bit_copies_of_their_adapters_for_backward():
    """Under autocast lora_A and lora_B save the 16-bit casts of their fp32 weights: r · (d_in + d_out) × 2 B per
    adapted module and layer, whatever the token count; the fused Functions cast inside themselves and keep none."""
    from ftplan.estimate.activations import compute

    def casts(stage):
        return compute(resolve(LLAMA_8B, stage, seq_len=2048)).adapter_casts

    assert casts(sft("lora")) * 32 == 41_943_040 * 2
    assert casts(sft("lora", kernels="ftplan")) == 0
    assert casts(sft("lora", precision="fp32")) == 0
    assert casts(sft("full")) == 0
    # without checkpointing every layer holds its copies until backward: once per layer in the activations term
    r = resolve(LLAMA_8B, sft("lora", gradient_checkpointing=False), seq_len=512)
    acts = compute(r)
    per_layer = (acts.layer_tok() + acts.input_tok) * r.tokens + acts.scores_saved
    no_gc = est(sft("lora", gradient_checkpointing=False), seq=512)
    assert term(no_gc, "activations (no checkpointing)") == 32 * per_layer + 41_943_040 * 2


def test_peft_lora_on_a_16_bit_base_holds_its_down_projection_input_three_times_in_the_forward():
    """In ``down_proj``'s LoRA forward under autocast the SwiGLU product, PEFT's fp32 cast of it, the residual, the
    normed input and the base output are alive beyond what the layer saves; with checkpointing that moment of the
    recompute is the recomputed layer's peak when it exceeds the backward's gradients in flight, and the backward's
    first two gradients (the layer output's and its scaled copy for ``lora_B``) are alive then too. The fused
    Functions, bitsandbytes' layers (no input cast), full fine-tunes and fp32 training hold no such copy."""
    from ftplan.estimate.activations import compute

    h, i = 4096, 14336
    r = resolve(LLAMA_8B, sft("lora"), seq_len=2048)
    acts = compute(r)
    assert acts.forward_transient_tok == (2 + 4) * i + 3 * 2 * h + 2 * 2 * h > acts.inflight_mlp_tok
    no_recompute = compute(resolve(LLAMA_8B, sft("lora", gradient_checkpointing=False), seq_len=2048))
    assert no_recompute.forward_transient_tok == (2 + 4) * i + 3 * 2 * h
    layer = term(est(sft("lora"), seq=2048), "recomputed layer")
    assert layer == (acts.layer_tok() + acts.forward_transient_tok) * r.tokens + acts.adapter_casts
    for other in (sft("lora", kernels="ftplan"), sft("qlora"), sft("full"), sft("lora", precision="fp32")):
        assert compute(resolve(LLAMA_8B, other, seq_len=2048)).forward_transient_tok == 0


def test_fused_cross_entropy_never_holds_the_logits():
    hf = est(sft("lora", micro_batch=4), loop=BASELINE_LOOP, seq=4096)
    fused = est(sft("lora", micro_batch=4, kernels="ftplan"), loop=BASELINE_LOOP, seq=4096)
    n = 4 * 4096
    assert term(hf, "logits + loss") == 3 * n * 128_256 * 4
    assert "logits + loss" not in names(fused) and "output logits held" not in names(fused)
    assert term(fused, "loss chunk") <= 2 * n * 4096 * 2  # about the size of the hidden states
    assert fused.peak_bytes < hf.peak_bytes - 20 * GIB


def test_runtime_loss_uses_trl_tiles_not_full_logits():
    from ftplan.estimate import logits, resolve

    loss = logits.compute(resolve(LLAMA_8B, sft("lora", micro_batch=4), seq_len=4096))
    backward = {t.name: t.bytes for t in loss.backward}
    assert backward["loss tile"] == 4096 * 32768 * 2  # TRL's (4096 x 32768) bf16 tile
    assert backward["hidden-state gradient (fp32)"] == 4 * 4096 * 4096 * 4
    assert "logits + loss" not in backward and loss.held is None


def test_dpo_doubles_the_sequences_and_adds_the_reference():
    s, d = est(sft("lora", micro_batch=2)), est(dpo("lora", micro_batch=2))
    assert term(d, "activation checkpoints") == 2 * term(s, "activation checkpoints")
    assert d.tokens_per_step == 2 * s.tokens_per_step
    p = param_counts(LLAMA_8B).total
    full = est(dpo("full", distributed="zero2"), gpu=H200, world_size=8)
    assert term(full, "reference model (frozen copy)") == 2 * p  # TRL replicates it under ZeRO-1/2
    z3 = est(dpo("full", distributed="zero3"), gpu=H200, world_size=8)
    assert term(z3, "reference model (frozen copy)") == 2 * p // 8
    pre = est(dpo("full", reference="precomputed", distributed="zero3"), gpu=H200, world_size=8)
    assert "reference model (frozen copy)" not in names(pre)
    cont = est(dpo("continue"), quantized_base=True)
    assert term(cont, "reference adapter (frozen copy)") == 41_943_040 * 4
    assert "base weights (NF4)" in names(cont)


def test_dpo_reference_forward_is_a_phase_of_its_own():
    from ftplan.estimate import activations, logits, resolve, states
    from ftplan.estimate.stage import _phases

    def phases(stage):
        r = resolve(LLAMA_8B, stage, seq_len=4096, loop=BASELINE_LOOP)
        return {p.name: p for p in _phases(r, states.compute(r), activations.compute(r), logits.compute(r))}

    live, pre = phases(dpo("lora", micro_batch=4)), phases(dpo("lora", micro_batch=4, reference="precomputed"))
    assert "DPO reference forward" not in pre
    ref = {t.name: t.bytes for t in live["DPO reference forward"].terms}
    n = 2 * 4 * 4096  # chosen + rejected
    assert ref["reference logits"] == n * 128_256 * (2 + 4)  # bf16 logits + fp32 log-softmax, no grad
    assert ref["saved log-softmax"] == n * 128_256 * 4  # the policy's loss state stays alive meanwhile
    assert est(dpo("lora"), gpu=H200).step_time_s > est(dpo("lora", reference="precomputed"), gpu=H200).step_time_s


def test_eager_attention_adds_an_s_squared_term_and_sdpa_does_not():
    sdpa, eager = est(sft("lora"), seq=8192), est(sft("lora", attention="eager"), seq=8192)
    assert "attention scores" not in names(sdpa)
    assert term(eager, "attention scores") >= 4 * 32 * 8192 * 8192  # at least the fp32 probabilities
    assert eager.peak_bytes > sdpa.peak_bytes + 8 * GIB


def test_capped_attention_logits_keep_their_tanh_output_under_eager():
    """Gemma 2 caps its logits with tanh before the softmax (attn_logit_softcapping): one more bf16 score block a
    layer keeps, beside the fp32 softmax and the bf16 probabilities."""
    gemma = get_model("gemma-2-2b")
    capped = est(sft("lora", attention="eager"), shape=gemma, seq=4096)
    plain = est(sft("lora", attention="eager"), shape=dataclasses.replace(gemma, attention_softcap=False), seq=4096)
    scores = gemma.num_heads * 4096 * 4096  # one sequence, one layer (checkpointing on)
    assert term(capped, "attention scores") - term(plain, "attention scores") == 2 * scores
    assert "tanh-capped logits" in next(t.detail for t in capped.terms if t.name == "attention scores")


def test_nccl_only_with_more_than_one_gpu():
    one = est(sft("lora"))
    two = est(sft("lora"), world_size=2)
    assert "NCCL buffers" not in names(one) and "NCCL buffers" in names(two)
    assert "NCCL NVLS buffers" in names(est(sft("lora"), world_size=8, nvls=True))


def test_terms_add_up_and_are_sorted():
    e = est(sft("qlora", micro_batch=2))
    assert sum(t.bytes for t in e.terms) == e.peak_bytes
    sizes = [t.bytes for t in e.terms]
    assert sizes == sorted(sizes, reverse=True)
    assert len({t.name for t in e.terms}) == len(e.terms)


# --- monotonicity ----------------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(method=st.sampled_from(["lora", "qlora", "full"]), mb=st.integers(1, 8), seq=st.sampled_from([512, 2048, 8192]),
       gc=st.booleans(), kernels=st.sampled_from(["none", "ftplan"]))
def test_peak_grows_with_micro_batch_and_sequence(method, mb, seq, gc, kernels):
    stage = sft(method, micro_batch=mb, gradient_checkpointing=gc, kernels=kernels)
    bigger_batch = sft(method, micro_batch=mb + 1, gradient_checkpointing=gc, kernels=kernels)
    base = est(stage, seq=seq).peak_bytes
    assert est(bigger_batch, seq=seq).peak_bytes > base
    assert est(stage, seq=seq * 2).peak_bytes > base


# --- verdicts and suggestions ----------------------------------------------------------------------------------------

def test_verdict_thresholds_at_their_edges():
    from ftplan.estimate.constants import TIGHT_FRACTION
    from ftplan.estimate.stage import verdict_thresholds

    cap = H100.memory_mib << 20
    tight_from, oom_from = verdict_thresholds(cap)
    assert oom_from == cap and tight_from == math.ceil(cap * TIGHT_FRACTION)
    assert verdict(tight_from - 1, cap) == "fits"
    assert verdict(tight_from, cap) == "tight"
    assert verdict(cap - 1, cap) == "tight"
    assert verdict(cap, cap) == "oom"  # 100 % of the card cannot run, whatever the estimate's error
    assert verdict(cap + 1, cap) == "oom"
    assert verdict(cap, None) == "n/a"


def test_the_tight_band_covers_what_the_estimate_reads_low():
    from ftplan.estimate.constants import MEASURED_UNDERESTIMATE, OOM_FRACTION, TIGHT_FRACTION

    assert OOM_FRACTION == 1.0
    assert 1 - TIGHT_FRACTION >= MEASURED_UNDERESTIMATE > 0


def test_a_stage_at_the_whole_card_is_an_ft101_error():
    stage = sft("lora", micro_batch=2)
    peak = est(stage).peak_bytes
    exact = dataclasses.replace(H100, memory_mib=peak / (1 << 20))  # a card of exactly the stage's peak
    estimates, diags = estimate(_context(_pipeline(stage), LLAMA_8B, exact))
    assert estimates["sft"].capacity_bytes == peak and estimates["sft"].verdict == "oom"
    (d,) = diags
    assert d.code == "FT101" and d.severity is Severity.ERROR and "per GPU ≥ " in d.message
    just_below = dataclasses.replace(H100, memory_mib=(peak + 1) / (1 << 20))
    (d,) = estimate(_context(_pipeline(stage), LLAMA_8B, just_below))[1]
    assert d.code == "FT102" and " 99 % of " in d.message


def test_8b_qlora_fits_a_24gb_card():
    e = est(sft("qlora", micro_batch=2), gpu=RTX4090)
    assert e.verdict == "fits", e.peak_bytes / GIB
    assert e.capacity_bytes == RTX4090.memory_mib << 20


def test_70b_lora_on_one_80gb_card_is_oom_and_suggestions_fit_when_re_estimated():
    stage = sft("lora", micro_batch=2)
    e = est(stage, shape=LLAMA_70B)
    assert e.verdict == "oom"
    ctx = _context(_pipeline(stage, gpu="h100-sxm-80gb", shape="meta-llama/Llama-3.1-70B"), LLAMA_70B, H100)
    estimates, diags = estimate(ctx)
    got = estimates["sft"]
    assert got.suggestions, "an OOM stage must come with a computed fix"
    assert all(verdict(s.peak_bytes, H100.memory_mib << 20) == "fits" for s in got.suggestions)
    assert [s.change for s in got.suggestions] == ["adapter.type lora → qlora",
                                                   "hardware.gpus_per_node 1 → 4, distributed auto → zero3"]
    # the qlora suggestion, applied to the schema object and re-estimated from scratch, fits with the same peak
    q = got.suggestions[0]
    again = est(sft({"type": "qlora", "r": 16, "alpha": 16}, micro_batch=2), shape=LLAMA_70B)
    assert again.peak_bytes == q.peak_bytes and again.verdict == "fits"
    (ft101,) = [d for d in diags if d.code == "FT101"]
    assert ft101.severity is Severity.ERROR and ft101.path == ("stages", 1, "adapter")


def test_micro_batch_suggestion_keeps_the_effective_batch_and_fits():
    from ftplan.estimate.edits import parse

    stage = sft("lora", micro_batch=64, grad_accum=2)
    ctx = _context(_pipeline(stage, max_seq_len=4096), LLAMA_8B, H100)
    estimates, diags = estimate(ctx)
    e = estimates["sft"]
    assert e.verdict == "oom"
    mb = [s for s in e.suggestions if s.change.startswith("micro_batch")]
    assert mb, e.suggestions
    # "micro_batch 64 → 16, grad_accum 2 → 8": re-estimate exactly that stage
    settings = {key: (old, new) for key, old, new in parse(mb[0].change)}
    assert set(settings) == {"micro_batch", "grad_accum"} and settings["micro_batch"][0] == 64
    new_mb, new_accum = settings["micro_batch"][1], settings["grad_accum"][1]
    assert new_mb * new_accum == 64 * 2
    again = est(stage.model_copy(update={"micro_batch": new_mb, "grad_accum": new_accum}), seq=4096)
    assert again.peak_bytes == mb[0].peak_bytes and again.verdict == "fits"
    fitting = [d for d in (1, 2, 4, 8, 16, 32)
               if est(stage.model_copy(update={"micro_batch": d, "grad_accum": 128 // d}), seq=4096).verdict
               == "fits"]
    assert new_mb == max(fitting)  # the mildest cut that fits


def test_ft101_message_notes_and_path():
    stage = sft("lora", micro_batch=64, grad_accum=2, kernels="ftplan")
    ctx = _context(_pipeline(stage, max_seq_len=4096), LLAMA_8B, H100)
    _, diags = estimate(ctx)
    (d,) = [d for d in diags if d.code == "FT101"]
    assert d.message.startswith("peak ") and "per GPU > 79.6 GiB (H100 SXM 80GB)" in d.message
    assert len([n for n in d.notes if not n.startswith("would fit")]) == 3  # the three largest terms
    assert all(" GiB (" in n and " × " in n for n in d.notes[:3])
    assert any(n.startswith("would fit (") and " GiB of 79.6 GiB): micro_batch 64 → " in n for n in d.notes)
    assert d.path == ("stages", 1, "micro_batch") and d.hint.startswith("micro_batch 64 → ")


def test_tight_stage_warns_with_ft102():
    # find a (micro_batch, seq) that lands between 90 % and 100 % of an H100
    cap = H100.memory_mib << 20
    found = next(((mb, seq) for seq in range(1024, 8193, 256) for mb in range(1, 33)
                  if est(sft("lora", micro_batch=mb), seq=seq).verdict == "tight"), None)
    assert found, "no tight configuration found"
    mb, seq = found
    assert 0.9 * cap < est(sft("lora", micro_batch=mb), seq=seq).peak_bytes <= cap
    _, diags = estimate(_context(_pipeline(sft("lora", micro_batch=mb), max_seq_len=seq), LLAMA_8B, H100))
    (d,) = diags
    assert d.code == "FT102" and d.severity is Severity.WARNING and " % of 79.6 GiB (H100 SXM 80GB)" in d.message
    assert d.hint.startswith("for headroom")


def test_offload_suggestion_when_sharding_is_already_on():
    stage = sft("full", distributed="zero3", micro_batch=1)
    ctx = _context(_pipeline(stage, gpu="rtx-4090", gpus_per_node=2, max_seq_len=1024), LLAMA_8B, RTX4090)
    estimates, diags = estimate(ctx)
    e = estimates["sft"]
    assert e.verdict == "oom"
    # offload_optimizer alone fits since the gradient partitions go to the host with the optimizer; 8 GPUs
    # (23.3 GiB of 24.0) would be tight, not a fit
    (s,) = e.suggestions
    assert s.change == "distributed zero3 → {strategy: zero3, offload_optimizer: true}"
    (d,) = diags
    assert d.path == ("stages", 1, "distributed")
    again = est(sft("full", distributed={"strategy": "zero3", "offload_optimizer": True}, micro_batch=1),
                gpu=RTX4090, seq=1024, world_size=2)
    assert again.peak_bytes == s.peak_bytes and again.verdict == "fits"
    assert s.host_bytes == again.host_bytes == param_counts(LLAMA_8B).total * 16  # 2 GPUs × 16 B / 2
    assert est(stage, gpu=RTX4090, seq=1024, world_size=8).verdict == "tight"


# --- pipeline-level behaviour ----------------------------------------------------------------------------------------

def _pipeline(*train, gpu="h100-sxm-80gb", gpus_per_node=1, device="cuda", shape="meta-llama/Llama-3.1-8B",
              max_seq_len=2048, extra=()) -> Pipeline:
    stages = [{"id": "data", "kind": "data", "max_seq_len": max_seq_len,
               "datasets": [{"path": "a.jsonl", "format": "messages"}, {"path": "b.jsonl", "format": "preference"}]}]
    stages += [t.model_dump(exclude_defaults=True) | {"kind": t.kind} for t in train]
    stages += list(extra)
    hw = {"device": device, "gpus_per_node": gpus_per_node} | ({"gpu": gpu} if device == "cuda" else {})
    return Pipeline.model_validate({"name": "p", "model": {"base": shape}, "hardware": hw, "stages": stages})


def _context(pipeline: Pipeline, shape, gpu) -> Context:
    links, _ = trace(pipeline)
    return Context(pipeline, "p.yaml", "0" * 64, Inputs(), gpu, shape, "catalog", links)


def test_pipeline_estimates_every_stage_kind():
    p = _pipeline(sft("qlora", micro_batch=2), dpo("continue", reference="precomputed"), gpu="rtx-4090",
                  extra=[{"id": "merge", "kind": "merge", "input": "dpo"},
                         {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["q8_0", "q4_k_m"]}])
    estimates, diags = estimate(_context(p, LLAMA_8B, RTX4090))
    assert set(estimates) == {"data", "sft", "dpo", "merge", "gguf"}
    assert estimates["data"].verdict == "n/a"
    assert estimates["sft"].verdict == "fits" and estimates["dpo"].verdict == "fits"
    assert "base weights (NF4)" in names(estimates["dpo"])  # continue on a 4-bit base
    total = param_counts(LLAMA_8B).total
    assert estimates["merge"].host_bytes >= 2 * total and estimates["merge"].peak_bytes == 0
    # q4_k_m is quantized from an f16 export; verification loads the HF model in fp32 beside it (gguf_verify)
    assert estimates["gguf"].host_bytes == int(total * 2) + total * 4
    assert not [d for d in diags if d.code in ("FT101", "FT102")]
    s = estimates["sft"]
    assert s.tokens_per_step == 2 * 2048 * 1 * 1
    assert s.step_time_s and s.step_time_s > 0


def test_cpu_device_estimates_host_memory_without_ft101():
    p = _pipeline(sft("full", micro_batch=64), device="cpu")
    estimates, diags = estimate(_context(p, LLAMA_8B, None))
    e = estimates["sft"]
    assert e.verdict == "n/a" and e.peak_bytes == 0 and e.capacity_bytes is None
    assert e.host_bytes > 3 * param_counts(LLAMA_8B).total
    assert "CUDA context" not in names(e)
    assert not diags


def test_broken_links_and_missing_shape_are_skipped():
    p = _pipeline(sft("lora"))
    links, _ = trace(p)
    links = dict(links)
    links["sft"] = type(links["sft"])(links["sft"].input, links["sft"].data, None)
    ctx = Context(p, "p.yaml", "0" * 64, Inputs(), H100, LLAMA_8B, "catalog", links)
    estimates, _ = estimate(ctx)
    assert "sft" not in estimates and "data" in estimates
    assert estimate(Context(p, "p.yaml", "0" * 64, Inputs(), H100, None, "", trace(p)[0])) == ({}, [])


def test_step_time_scales_with_tokens_and_is_slower_for_qlora():
    a = est(sft("lora", micro_batch=2, grad_accum=1), gpu=H200)
    b = est(sft("lora", micro_batch=2, grad_accum=4), gpu=H200)
    assert b.step_time_s == pytest.approx(4 * a.step_time_s, rel=0.01)
    # calibration points on H200 at s2048 b2: 7,669 tok/s HF+PEFT LoRA under autocast (the runtime's mode),
    # 6,283 tok/s with the plain fp32-adapter loop of baselines.md
    assert 4096 / a.step_time_s == pytest.approx(7669, rel=0.05)
    plain = est(sft("lora", micro_batch=2), gpu=H200, loop=BASELINE_LOOP)
    assert 4096 / plain.step_time_s == pytest.approx(6283, rel=0.05)
    assert est(sft("qlora", micro_batch=2), gpu=H200).step_time_s > a.step_time_s


def test_codes_are_registered():
    assert set(CODES) == {"FT101", "FT102"}
    assert all(code in all_codes() for code in CODES)


def test_linear_module_table_matches_the_lora_count():
    mods = linear_modules(LLAMA_8B)
    assert sum(m.d_in + m.d_out for m in mods) == 81_920  # kernel-anchors section 3


def test_nvls_buffers_follow_the_node_and_the_environment():
    stage = sft("lora", distributed="zero3")
    on = estimate(_context(_pipeline(stage, gpus_per_node=8), LLAMA_8B, H100))[0]["sft"]
    assert term(on, "NCCL NVLS buffers") == 2304 << 20
    p = _pipeline(stage, gpus_per_node=8)
    off_hw = p.hardware.model_copy(update={"env": {"NCCL_NVLS_ENABLE": "0"}})
    off = estimate(_context(p.model_copy(update={"hardware": off_hw}), LLAMA_8B, H100))[0]["sft"]
    assert "NCCL NVLS buffers" not in names(off) and "NCCL buffers" in names(off)
    two = estimate(_context(_pipeline(stage, gpus_per_node=2), LLAMA_8B, H100))[0]["sft"]
    assert "NCCL NVLS buffers" not in names(two)


def test_several_changes_when_no_single_one_fits():
    a100 = get_gpu("a100-sxm-40gb")
    stage = sft({"type": "lora", "r": 64, "alpha": 128}, distributed="ddp", micro_batch=4, grad_accum=2)
    p = _pipeline(stage, gpu="a100-sxm-40gb", gpus_per_node=8, shape="meta-llama/Llama-3.1-70B", max_seq_len=8192)
    estimates, diags = estimate(_context(p, LLAMA_70B, a100))
    (d,) = [d for d in diags if d.code == "FT101"]
    assert d.hint.startswith("no single change fits; together: ")
    (s,) = estimates["sft"].suggestions
    both = DistributedSpec(strategy="zero3", offload_optimizer=True, offload_params=True)
    # a quarter of the micro-batch (the effective batch kept), the states to the CPU with ZeRO-3
    assert s.change == ("micro_batch 4 → 1, grad_accum 2 → 8, distributed ddp → {strategy: zero3, "
                        "offload_optimizer: true, offload_params: true}")
    again = est(stage.model_copy(update={"micro_batch": 1, "grad_accum": 8, "distributed": both}), gpu=a100,
                shape=LLAMA_70B, seq=8192, world_size=8)
    assert again.peak_bytes == s.peak_bytes and again.verdict == "fits"
    assert s.host_bytes == again.host_bytes  # offloaded states of the node's 8 processes
    # each change alone is not enough, and neither is a milder one of either kind
    for alone in ({"micro_batch": 1, "grad_accum": 8}, {"distributed": both}, {"gradient_checkpointing": "offload"},
                  {"gradient_checkpointing": "offload", "distributed": "zero3"},
                  {"micro_batch": 2, "grad_accum": 4, "distributed": both},
                  {"micro_batch": 1, "grad_accum": 8, "distributed": "zero3"}):
        e = est(stage.model_copy(update=alone), gpu=a100, shape=LLAMA_70B, seq=8192, world_size=8)
        assert e.verdict != "fits", alone