"""The DPO loss family (sigmoid, IPO, hinge, robust, SimPO, the RPO supervised term) and DPO straight from the base
model, on the compiler side: the stage graph, the resolved reference policy, the rules FT620-FT624 and FT325, and
the memory estimate's reference and loss terms."""

from __future__ import annotations

import pytest
import yaml

from ftplan.api import check_text
from ftplan.catalog import get_gpu, get_model
from ftplan.checks.preference import objective
from ftplan.diagnostics import Severity
from ftplan.estimate import estimate_training, resolve
from ftplan.schemas import DpoStage

LORA = {"type": "lora", "r": 16, "alpha": 16}
H100 = get_gpu("h100-sxm-80gb")
LLAMA_8B = get_model("llama-3.1-8b")


def from_base(**dpo) -> list[dict]:
    """data -> DPO with no `input` (the base model) -> merge (of an adapter) -> GGUF."""
    stage = {"id": "dpo", "kind": "dpo", "data": "data", "learning_rate": 5e-6, "adapter": LORA, **dpo}
    full = stage["adapter"] == {"type": "full"}
    return [{"id": "data", "kind": "data", "max_seq_len": 2048,
             "datasets": [{"path": "data/pairs.jsonl", "format": "preference"}]}, stage,
            *([] if full else [{"id": "merge", "kind": "merge", "input": "dpo"}]),
            {"id": "gguf", "kind": "gguf", "input": "dpo" if full else "merge", "quant": ["q8_0"]}]


def errors(diags) -> list:
    return [d for d in diags if d.severity is Severity.ERROR]


def dpo_facts(tools, pipeline):
    ctx, _ = tools.resolve_ctx(pipeline)
    return ctx.stages[1].train


# ------------------------------------------------------------------------------------- DPO from the base model


@pytest.mark.parametrize("adapter,reference,want", [
    (LORA, "live", "adapter"), ({"type": "qlora"}, "precomputed", "adapter"), ({"type": "full"}, "live", "model_copy"),
])
def test_dpo_without_input_starts_from_the_base_model_which_is_its_reference(check, tools, adapter, reference, want):
    p = tools.build(stages=from_base(adapter=adapter, reference=reference))
    diags = check(p)
    assert errors(diags) == []
    facts = dpo_facts(tools, p)
    assert (facts.reference, facts.reference_live) == (want, reference == "live")
    [note] = tools.codes(diags, "FT610")
    assert f"the base model '{p.model.base}'" in note.message and "the model the stage starts from" in note.message
    if want == "adapter":
        assert "new adapter switched off" in note.message and "merged in" not in note.message
    ctx, _ = tools.resolve_ctx(p)
    assert ctx.links["dpo"].input.weights is None and ctx.links["dpo"].input.adapters == ()
    if want == "adapter":  # the merge folds the DPO adapter into the base
        assert [a.stage for a in ctx.links["merge"].input.adapters] == ["dpo"]
    else:  # the full fine-tune's weights are exported as they are
        assert ctx.links["gguf"].input.weights == "dpo"


def test_continue_without_input_has_no_adapter_to_continue(check, tools):
    [d] = tools.codes(check(tools.build(stages=from_base(adapter="continue"))), "FT206")
    assert d.path == ("stages", 1, "adapter") and "starts from the base model, which has none" in d.message
    assert "'None'" not in d.message and "set `input`" in d.hint
    assert not tools.codes(check(tools.build(stages=from_base(adapter="continue"))), "FT610")


def test_merge_input_without_input_is_refused(check, tools):
    [d] = tools.codes(check(tools.build(stages=from_base(merge_input=True))), "FT206")
    assert d.path == ("stages", 1, "merge_input")


def test_the_estimate_of_a_dpo_from_the_base_counts_the_reference_forward(check, tools):
    """The base with the adapter off is the reference: one no-grad forward, no second copy of the weights."""
    r = resolve(LLAMA_8B, DpoStage.model_validate(from_base()[1]), seq_len=2048)
    assert (r.reference, r.loss_path) == ("adapter", "trl_chunked")
    full = resolve(LLAMA_8B, DpoStage.model_validate(from_base(adapter={"type": "full"})[1]), seq_len=2048)
    assert full.reference == "model_copy"


# ------------------------------------------------------------------------------------------------- SimPO


def test_simpo_has_no_reference_policy(check, tools):
    p = tools.build(dpo={"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0})
    diags = check(p)
    assert errors(diags) == [] and not tools.codes(diags, "FT622")
    facts = dpo_facts(tools, p)
    assert (facts.reference, facts.reference_live, facts.reference_in_step) == (None, False, "none")
    assert not tools.codes(diags, "FT610")  # no reference to describe
    [note] = tools.codes(diags, "FT624")
    assert note.severity is Severity.INFO and "no reference model" in note.message
    assert "−log σ(2 × (mean log-probability per token of the chosen answer − that of the rejected one) − 1)" \
        in note.message


def test_simpo_estimate_has_no_reference_and_full_logits():
    """SimPO runs on TRL's CPO trainer: the full logits of both answers, no reference forward or copy; its
    supervised term adds the cross-entropy over the chosen half (ORPO's loss path)."""
    plain = DpoStage.model_validate(from_base(loss_type="simpo", beta=2.0, adapter={"type": "full"})[1])
    r = resolve(LLAMA_8B, plain, seq_len=1024)
    assert (r.reference, r.loss_path, r.loop.chunked_lm_head) == ("none", "hf", False)
    e = estimate_training(LLAMA_8B, H100, plain, seq_len=1024)
    assert not any("reference" in t.name for t in e.terms)
    dpo = estimate_training(LLAMA_8B, H100, DpoStage.model_validate(from_base(adapter={"type": "full"})[1]),
                            seq_len=1024)
    assert any(t.name == "reference model (frozen copy)" for t in dpo.terms)
    with_nll = DpoStage.model_validate(from_base(loss_type="simpo", beta=2.0, sft_weight=1.0)[1])
    r = resolve(LLAMA_8B, with_nll, seq_len=1024)
    assert (r.reference, r.loss_path) == ("none", "orpo")
    e = estimate_training(LLAMA_8B, H100, with_nll, seq_len=1024)
    assert any(t.name == "chosen NLL gradient (fp32)" for t in e.terms)


def test_ft620_reference_written_on_simpo(check, tools):
    for value in ("live", "precomputed"):
        [d] = tools.codes(check(dpo={"loss_type": "simpo", "beta": 2.0, "reference": value}), "FT620")
        assert d.severity is Severity.ERROR and d.path == ("stages", 2, "reference")
        assert f"`reference: {value}`" in d.message and "remove `reference`" in d.hint
    assert not tools.codes(check(dpo={"loss_type": "sigmoid", "reference": "precomputed"}), "FT620")


def test_ft621_simpo_gamma_with_another_loss(check, tools):
    [d] = tools.codes(check(dpo={"loss_type": "ipo", "simpo_gamma": 1.0}), "FT621")
    assert d.severity is Severity.ERROR and d.path == ("stages", 2, "simpo_gamma") and "loss_type: ipo" in d.message
    assert not tools.codes(check(dpo={"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0}), "FT621")
    assert not tools.codes(check(dpo={"loss_type": "ipo"}), "FT621")  # the default is not written


def test_ft622_simpo_with_a_dpo_sized_beta(check, tools):
    [d] = tools.codes(check(dpo={"loss_type": "simpo"}), "FT622")
    assert d.severity is Severity.WARNING and d.path == ("stages", 2, "beta")
    assert "γ/β = 5 nats per token" in d.message and "beta: 2.0" in d.hint
    assert not tools.codes(check(dpo={"loss_type": "simpo", "beta": 2.5}), "FT622")
    assert not tools.codes(check(dpo={"loss_type": "sigmoid", "beta": 0.1}), "FT622")


def test_ft623_robust_without_smoothing_is_sigmoid(check, tools):
    [d] = tools.codes(check(dpo={"loss_type": "robust"}), "FT623")
    assert d.severity is Severity.WARNING and d.path == ("stages", 2, "loss_type") and "sigmoid" in d.message
    assert not tools.codes(check(dpo={"loss_type": "robust", "label_smoothing": 0.1}), "FT623")


def test_ft325_label_smoothing_applies_to_robust_and_simpo_only(check, tools):
    for loss in ("robust", "simpo"):
        assert not tools.codes(check(dpo={"loss_type": loss, "beta": 2.0, "label_smoothing": 0.1}), "FT325")
    for loss in ("sigmoid", "ipo", "hinge"):
        [d] = tools.codes(check(dpo={"loss_type": loss, "label_smoothing": 0.1}), "FT325")
        assert "robust and simpo" in d.message


# --------------------------------------------------------------------------------------------- RPO (sft_weight)


def test_ft624_the_supervised_term_is_described(check, tools):
    [d] = tools.codes(check(dpo={"sft_weight": 1.0}), "FT624")
    assert d.message == ("the sigmoid preference loss + 1 × the mean negative log-likelihood of the chosen answer's "
                         "tokens (RPO)")
    assert not tools.codes(check(), "FT624")  # plain DPO: nothing to add
    stage = DpoStage.model_validate(from_base(loss_type="simpo", beta=2.0, sft_weight=0.5, label_smoothing=0.1)[1])
    assert objective(stage).endswith("+ 0.5 × the mean negative log-likelihood of the chosen answer's tokens, labels "
                                     "smoothed by 0.1, on TRL's CPO trainer")


def test_rpo_keeps_dpo_s_chunked_loss_and_reference(tools):
    r = resolve(LLAMA_8B, DpoStage.model_validate(from_base(sft_weight=1.0)[1]), seq_len=1024)
    assert (r.reference, r.loss_path) == ("adapter", "trl_chunked")


@pytest.mark.parametrize("field,value", [("sft_weight", -0.1), ("sft_weight", 11), ("simpo_gamma", -1),
                                         ("loss_type", "dpop")])
def test_out_of_range_settings_are_schema_errors(tools, tmp_path, field, value):
    doc = {**tools.BASE, "stages": [dict(s) for s in tools.BASE["stages"]]}
    doc["stages"][2] = {**doc["stages"][2], field: value}
    result = check_text(yaml.safe_dump(doc), "p.yaml", tmp_path)
    assert not result.ok
    assert [d.path[:3] for d in result.diagnostics if d.severity is Severity.ERROR] == [("stages", 2, field)]


def test_the_stage_table_names_the_loss(tools):
    """The `method` column: SimPO with its margin, the supervised term, and DPO from the base model."""
    from ftplan.describe import method

    p = tools.build(stages=from_base(loss_type="simpo", beta=2.0, simpo_gamma=1.0, sft_weight=0.5))
    ctx, _ = tools.resolve_ctx(p)
    assert method(p.stages[1], ctx.stages[1], ctx.links["dpo"]) == "SimPO β2 γ1 +NLL×0.5, LoRA r16 α16"
    p = tools.build(stages=from_base(loss_type="ipo"))
    ctx, _ = tools.resolve_ctx(p)
    assert method(p.stages[1], ctx.stages[1], ctx.links["dpo"]) == "DPO β0.1 ipo, LoRA r16 α16"
    p = tools.build(stages=from_base(adapter="continue"))
    ctx, _ = tools.resolve_ctx(p)
    assert method(p.stages[1], ctx.stages[1], ctx.links.get("dpo")) == "DPO β0.1 sigmoid, continues —"
