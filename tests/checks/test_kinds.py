"""The training kinds beyond SFT and DPO (CPT, ORPO, KTO, reward): their hand-offs in the stage graph (FT205,
FT210-FT212) and their rules (FT611-FT616)."""

from __future__ import annotations

from ftplan.checks.kinds import kto_weight_ranges
from ftplan.diagnostics import Severity

KTO_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "label": True}
TEXT_ROW = {"text": "Acme Cloud bills monthly in arrears."}


def data(*datasets: tuple[str, str], **extra) -> dict:
    return {"id": "data", "kind": "data", "max_seq_len": 2048,
            "datasets": [{"path": p, "format": f} for p, f in datasets], **extra}


def train(sid: str, kind: str, **extra) -> dict:
    return {"id": sid, "kind": kind, "data": "data", "learning_rate": 1e-5, "adapter": {"type": "lora"}, **extra}


def stages(*more: dict, datasets=(("data/chat.jsonl", "messages"), ("data/pairs.jsonl", "preference")),
           **data_extra) -> list[dict]:
    return [data(*datasets, **data_extra), *more]


def errors(diags, code):
    return [d for d in diags if d.code == code]


# ------------------------------------------------------------------------------------------------ the graph


def test_every_new_kind_checks_clean_from_the_base_model(check, tools):
    """Each kind alone, from the base model, on the data it trains: no error."""
    for kind, fmt, extra in (("cpt", "text", {}), ("orpo", "preference", {}), ("kto", "kto", {"micro_batch": 2}),
                             ("reward", "preference", {})):
        p = tools.build(stages=stages(train("t", kind, **extra), datasets=(("data/x.jsonl", fmt),)))
        diags = check(p)
        assert [d for d in diags if d.severity is Severity.ERROR] == [], (kind, diags)


def test_ft205_each_kind_needs_its_data(check, tools):
    p = tools.build(stages=stages(train("k", "kto", micro_batch=2), train("c", "cpt"), train("o", "orpo"),
                                  datasets=(("data/chat.jsonl", "messages"),)))
    found = {d.path[1]: d.message for d in errors(check(p), "FT205")}
    assert sorted(found) == [1, 2, 3]
    assert "no kto datasets for this kto stage" in found[1]
    assert "no text datasets for this cpt stage" in found[2]
    assert "no preference datasets for this orpo stage" in found[3]


def test_ft210_a_reward_model_is_not_a_causal_lm(check, tools):
    """Nothing can start from, merge or export a reward model."""
    p = tools.build(stages=stages(
        train("rm", "reward"), {"id": "merge", "kind": "merge", "input": "rm"},
        {"id": "gguf", "kind": "gguf", "input": "rm", "quant": ["q8_0"]}, train("sft", "sft", input="rm")))
    diags = errors(check(p), "FT210")
    assert [d.path for d in diags] == [("stages", 2, "input"), ("stages", 3, "input"), ("stages", 4, "input")]
    assert all(d.severity is Severity.ERROR and "it is not a causal LM" in d.message for d in diags)
    assert diags[2].hint == "point `input` at 'merge', or omit `input` to start from the base model"
    assert not errors(check(p), "FT204")


def test_ft211_cpt_trains_raw_text_only(check, tools):
    p = tools.build(stages=stages(train("cpt", "cpt"), datasets=(("data/chat.jsonl", "messages"),
                                                                  ("data/docs.jsonl", "text"))))
    [d] = errors(check(p), "FT211")
    assert d.path == ("stages", 1, "data") and "also holds messages datasets" in d.message
    assert "data stage of its own" in d.hint
    # an SFT stage may still read raw text next to conversations
    p = tools.build(stages=stages(train("sft", "sft"), datasets=(("data/chat.jsonl", "messages"),
                                                                  ("data/docs.jsonl", "text"))))
    assert not errors(check(p), "FT211") and not errors(check(p), "FT205")


def test_ft212_a_reward_model_needs_merged_weights(check, tools):
    p = tools.build(stages=stages(train("sft", "sft"), train("rm", "reward", input="sft")))
    [d] = errors(check(p), "FT212")
    assert d.path == ("stages", 2, "input") and "kind: merge, input: sft" in d.hint
    merged = tools.build(stages=stages(train("sft", "sft"), {"id": "m", "kind": "merge", "input": "sft"},
                                       train("rm", "reward", input="m")))
    assert not [d for d in check(merged) if d.severity is Severity.ERROR]


def test_orpo_and_kto_take_over_an_adapter_like_dpo(check, tools):
    """``adapter: continue`` or ``merge_input``; a new adapter on an adapter stage says how to hand it over."""
    for kind in ("orpo", "kto"):
        cont = tools.build(stages=stages(train("sft", "sft"), train("x", kind, input="sft", adapter="continue",
                                                                    micro_batch=2),
                                         datasets=(("data/chat.jsonl", "messages"), ("data/x.jsonl", "preference"),
                                                   ("data/k.jsonl", "kto"))))
        assert not [d for d in check(cont) if d.severity is Severity.ERROR], kind
        new = tools.build(stages=stages(train("sft", "sft"), train("x", kind, input="sft", micro_batch=2),
                                        datasets=(("data/chat.jsonl", "messages"), ("data/x.jsonl", "preference"),
                                                  ("data/k.jsonl", "kto"))))
        [d] = errors(check(new), "FT206")
        assert "`merge_input: true`" in d.hint, kind


def test_kto_reference_note_names_the_base_when_it_starts_from_it(check, tools):
    p = tools.build(stages=stages(train("kto", "kto", micro_batch=2), datasets=(("data/k.jsonl", "kto"),)))
    [d] = errors(check(p), "FT610")
    assert d.message.startswith("reference model: the base model 'meta-llama/Llama-3.1-8B-Instruct', i.e. the "
                                "model the stage starts from, with the new adapter switched off")


# ------------------------------------------------------------------------------------------------ the rules


def test_ft611_kto_needs_two_examples_per_micro_batch(check, tools):
    p = tools.build(stages=stages(train("kto", "kto", grad_accum=8), datasets=(("data/k.jsonl", "kto"),)))
    [d] = errors(check(p), "FT611")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "micro_batch")
    assert "`micro_batch: 2`" in d.hint and "`grad_accum: 4`" in d.hint
    apo = tools.build(stages=stages(train("kto", "kto", loss_type="apo_zero_unpaired"),
                                    datasets=(("data/k.jsonl", "kto"),)))
    assert not errors(check(apo), "FT611")


def test_ft612_kto_data_with_one_label_only(check, tools):
    p = tools.build(stages=stages(train("kto", "kto", micro_batch=2), datasets=(("data/k.jsonl", "kto"),)))
    inputs = tools.Inputs(datasets=tools.heads(p, data_0=[KTO_ROW] * 5))
    [d] = errors(check(p, inputs), "FT612")
    assert d.severity is Severity.WARNING and "every answer (5) is labelled desirable" in d.message
    assert "add undesirable examples (label `false`)" in d.hint
    mixed = tools.Inputs(datasets=tools.heads(p, data_0=[KTO_ROW, {**KTO_ROW, "label": False}]))
    assert not errors(check(p, mixed), "FT612")


def test_ft613_kto_weights_follow_trl_s_recommendation(check, tools):
    rows = [KTO_ROW] * 8 + [{**KTO_ROW, "label": 0}] * 2
    p = tools.build(stages=stages(train("kto", "kto", micro_batch=2), datasets=(("data/k.jsonl", "kto"),)))
    inputs = tools.Inputs(datasets=tools.heads(p, data_0=rows))
    [d] = errors(check(p, inputs), "FT613")
    assert "8 desirable and 2 undesirable" in d.message
    # TRL's arithmetic: desirable_weight in [2/8, 2/8 * 1.33], or undesirable_weight in [8/2 / 1.33, 8/2]
    assert d.hint == ("set `desirable_weight` between 0.25 and 0.33, or `undesirable_weight` between 3.01 and 4 "
                      "(not both)")
    weighted = tools.build(stages=stages(train("kto", "kto", micro_batch=2, undesirable_weight=3.5),
                                         datasets=(("data/k.jsonl", "kto"),)))
    assert not errors(check(weighted, inputs), "FT613")
    assert kto_weight_ranges(5, 5, 1.0, 1.0) is None


def test_ft614_cpt_without_packing_on_a_gpu(check, tools):
    p = tools.build(stages=stages(train("cpt", "cpt"), datasets=(("data/docs.jsonl", "text"),)))
    [d] = errors(check(p), "FT614")
    assert d.severity is Severity.WARNING and d.path == ("stages", 0, "packing")
    packed = tools.build(stages=stages(train("cpt", "cpt", attention="flash_attention_2"),
                                       datasets=(("data/docs.jsonl", "text"),), packing=True))
    assert not errors(check(packed), "FT614") and not errors(check(packed), "FT307")
    # packing on an sdpa CPT stage is refused like an SFT stage's (FT307)
    sdpa = tools.build(stages=stages(train("cpt", "cpt"), datasets=(("data/docs.jsonl", "text"),), packing=True))
    assert errors(check(sdpa), "FT307")
    # on the CPU no variable-length attention trains, so unpacked text is the only way: no warning
    cpu = tools.build(hardware={"device": "cpu", "gpu": None},
                      stages=stages(train("cpt", "cpt", precision="fp32"), datasets=(("data/docs.jsonl", "text"),)))
    assert not errors(check(cpu), "FT614")


def test_ft615_orpo_says_what_it_optimises(check, tools):
    p = tools.build(stages=stages(train("orpo", "orpo", beta=0.2)))
    [d] = errors(check(p), "FT615")
    assert d.severity is Severity.INFO and "no reference model" in d.message and "0.2 × log σ" in d.message


def test_ft616_a_reward_model_has_no_lm_head(check, tools):
    adapter = {"type": "lora", "targets": ["q_proj", "lm_head"], "modules_to_save": ["embed_tokens", "lm_head"]}
    p = tools.build(stages=stages(train("rm", "reward", adapter=adapter)))
    diags = errors(check(p), "FT616")
    assert [d.path for d in diags] == [("stages", 1, "adapter", "targets", 1),
                                       ("stages", 1, "adapter", "modules_to_save", 1)]
    assert diags[0].hint == "remove `lm_head` from `targets`"


def test_the_packing_warning_names_each_kind(check, tools):
    p = tools.build(stages=stages(train("orpo", "orpo"), train("kto", "kto", micro_batch=2),
                                  datasets=(("data/pairs.jsonl", "preference"), ("data/k.jsonl", "kto")),
                                  packing=True))
    messages = [d.message for d in errors(check(p), "FT609")]
    assert any("the ORPO stage 'orpo' reads its preference pairs unpacked" in m for m in messages)
    assert any("the KTO stage 'kto' reads its labelled examples unpacked" in m for m in messages)
