"""Configurations the runtime refuses when a stage starts (FT320-FT325), each with a near miss that passes, and what
`kernels: ftplan` does where the loss takes the full logits (FT326)."""

from ftplan.diagnostics import Severity

EIGHT = {"gpus_per_node": 8}
CPU = {"device": "cpu", "gpu": None}


def _cpu_lora_targets(check, targets, **dpo):
    """A CPU pipeline whose SFT adapter targets ``targets`` with ``kernels: ftplan``, DPO patched by ``dpo``."""
    sft = {"kernels": "ftplan", "precision": "fp32", "adapter": {"type": "lora", "targets": targets}}
    return check(hardware=CPU, sft=sft, **({"dpo": dpo} if dpo else {}))


# FT320: kernels: ftplan + ZeRO-3 or FSDP2 (runtime: preflight.check_fused_loss, stages with a fused loss head)

def test_ft320_fused_loss_under_zero3_refused(check, tools):
    [d] = tools.codes(check(hardware=EIGHT, sft={"kernels": "ftplan", "distributed": "zero3"}), "FT320")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "kernels")
    assert "kernels: none" in d.hint and "zero2" in d.hint and "fsdp2" not in d.hint


def test_ft320_fused_loss_under_fsdp2_refused(check, tools):
    [d] = tools.codes(check(hardware=EIGHT, sft={"kernels": "ftplan", "distributed": "fsdp2"}), "FT320")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "kernels") and "FSDP2" in d.message
    assert "kernels: none" in d.hint and "zero2" in d.hint
    assert not tools.codes(check(hardware=EIGHT, sft={"kernels": "none", "distributed": "fsdp2"}), "FT320")


def test_ft320_near_misses_zero2_kernels_none_and_simpo(check, tools):
    assert not tools.codes(check(hardware=EIGHT, sft={"kernels": "ftplan", "distributed": "zero2"}), "FT320")
    assert not tools.codes(check(hardware=EIGHT, sft={"kernels": "none", "distributed": "zero3"}), "FT320")
    assert not tools.codes(check(hardware=EIGHT, dpo={"kernels": "ftplan", "distributed": "zero2"}), "FT320")
    # SimPO and ORPO take TRL's full logits: no fused head to refuse (FT309 covers their fused LoRA layers)
    for patch in ({"loss_type": "simpo"}, {"kind": "orpo"}):
        diags = check(hardware=EIGHT, dpo={"kernels": "ftplan", "distributed": "zero3", **patch})
        assert not tools.codes(diags, "FT320") and tools.codes(diags, "FT309")


def test_ft320_dpo_and_kto_log_prob_head_under_zero3_and_fsdp2(check, tools):
    for strategy in ("zero3", "fsdp2"):
        [d] = tools.codes(check(hardware=EIGHT, dpo={"kernels": "ftplan", "distributed": strategy}), "FT320")
        assert d.path == ("stages", 2, "kernels") and "log-prob head" in d.message and strategy in d.hint
    [d] = tools.codes(check(hardware=EIGHT, dpo={"kernels": "ftplan", "distributed": "zero3", "kind": "kto"}),
                      "FT320")
    assert d.path == ("stages", 2, "kernels")


def test_ft320_with_the_strategy_in_a_block(check, tools):
    diags = check(hardware=EIGHT, sft={"kernels": "ftplan", "distributed": {"strategy": "zero3",
                                                                           "offload_params": True}})
    assert [d.path for d in tools.codes(diags, "FT320")] == [("stages", 1, "kernels")]


# FT321: adapters merged at load under ZeRO-3 (runtime: model_loading.load_for_training)

def test_ft321_merge_input_under_zero3_refused(check, tools):
    diags = check(hardware=EIGHT, dpo={"adapter": {"type": "lora"}, "merge_input": True, "distributed": "zero3"})
    [d] = tools.codes(diags, "FT321")
    assert d.severity is Severity.ERROR and d.path == ("stages", 2, "merge_input")
    assert "'sft'" in d.message and "remove `merge_input`" in d.hint
    assert "{id: sft_merged, kind: merge, input: sft}" in d.hint and "`input: sft_merged`" in d.hint


def test_ft321_following_the_hint_gives_a_clean_graph(check, tools):
    data, sft, dpo, merge, gguf = (dict(s) for s in tools.BASE["stages"])
    dpo.update(input="sft_merged", adapter={"type": "lora"}, distributed="zero3")
    stages = [data, sft, {"id": "sft_merged", "kind": "merge", "input": "sft"}, dpo, merge, gguf]
    diags = check(tools.build(hardware=EIGHT, stages=stages))
    assert not [d.code for d in diags if d.code == "FT321" or d.code.startswith("FT2")]  # no graph error either


def test_ft321_full_finetune_after_merge_input_refused(check, tools):
    diags = check(hardware=EIGHT, dpo={"adapter": {"type": "full"}, "merge_input": True, "distributed": "zero3"})
    assert [d.path for d in tools.codes(diags, "FT321")] == [("stages", 2, "merge_input")]


def test_ft321_near_misses(check, tools):
    lora = {"adapter": {"type": "lora"}, "merge_input": True}
    assert not tools.codes(check(hardware=EIGHT, dpo={**lora, "distributed": "zero2"}), "FT321")
    # a continued adapter with nothing merged underneath loads without a merge
    assert not tools.codes(check(hardware=EIGHT, dpo={"distributed": "zero3"}), "FT321")
    # QLoRA merges at 16-bit on the main process, then loads the merge in 4-bit and shards it
    diags = check(hardware=EIGHT, dpo={"adapter": {"type": "qlora"}, "merge_input": True, "distributed": "zero3"})
    assert not tools.codes(diags, "FT321")


def test_ft321_continued_chain_merges_the_earlier_adapters(check, tools):
    stages = [
        tools.BASE["stages"][0],
        {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 2e-4, "adapter": {"type": "lora"}},
        {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "learning_rate": 5e-6,
         "adapter": {"type": "lora"}, "merge_input": True, "distributed": "zero2"},
        {"id": "dpo2", "kind": "dpo", "input": "dpo", "data": "data", "learning_rate": 1e-6,
         "adapter": "continue", "distributed": "zero3"},
    ]
    [d] = tools.codes(check(tools.build(hardware=EIGHT, stages=stages)), "FT321")
    assert d.path == ("stages", 3, "distributed") and "'sft'" in d.message
    assert "merge_input` on 'dpo'" in d.hint and "zero2" in d.hint
    stages[3]["distributed"] = "zero2"
    assert not tools.codes(check(tools.build(hardware=EIGHT, stages=stages)), "FT321")


# FT322: LoRA on lm_head with the fused cross-entropy (runtime: kernels.patch._head_parameters)

def test_ft322_lora_on_lm_head_with_fused_loss_refused(check, tools):
    [d] = tools.codes(_cpu_lora_targets(check, ["q_proj", "lm_head"]), "FT322")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "adapter", "targets", 1)
    assert "modules_to_save" in d.hint and "kernels: none" in d.hint


def test_ft322_near_misses(check, tools):
    assert not tools.codes(_cpu_lora_targets(check, ["q_proj", "v_proj"]), "FT322")
    assert not tools.codes(_cpu_lora_targets(check, "all-linear"), "FT322")  # PEFT skips the output layer
    diags = check(hardware=CPU, sft={"precision": "fp32", "adapter": {"type": "lora", "targets": ["lm_head"]}})
    assert not tools.codes(diags, "FT322")  # kernels: none
    # lm_head trained in full next to the adapter is read through PEFT's wrapper
    diags = check(hardware=CPU, sft={"kernels": "ftplan", "precision": "fp32",
                                     "adapter": {"type": "lora", "modules_to_save": ["lm_head"]}})
    assert not tools.codes(diags, "FT322")
    # SimPO takes TRL's full logits through lm_head's own (PEFT) forward
    diags = check(hardware=CPU, sft={"precision": "fp32", "adapter": {"type": "lora", "targets": ["lm_head"]}},
                  dpo={"kernels": "ftplan", "precision": "fp32", "loss_type": "simpo"})
    assert not tools.codes(diags, "FT322")


def test_ft322_dpo_with_lora_on_lm_head(check, tools):
    """The fused log-prob head refuses an adapter on lm_head too: the DPO stage's own, or the one it continues."""
    sft = {"precision": "fp32", "adapter": {"type": "lora", "targets": ["q_proj", "lm_head"]}}
    [d] = tools.codes(check(hardware=CPU, sft=sft, dpo={"kernels": "ftplan", "precision": "fp32"}), "FT322")
    assert d.path == ("stages", 2, "kernels") and "'sft'" in d.message and "modules_to_save" in d.hint
    own = {"kernels": "ftplan", "precision": "fp32", "adapter": {"type": "lora", "targets": ["lm_head"]},
           "merge_input": True}
    [d] = tools.codes(check(hardware=CPU, sft={"precision": "fp32"}, dpo=own), "FT322")
    assert d.path == ("stages", 2, "adapter", "targets", 0) and "log-prob" in d.message


# FT323: fp16 on the CPU (runtime: preflight.check_device)

def test_ft323_fp16_on_cpu_refused(check, tools):
    [d] = tools.codes(check(hardware=CPU, sft={"precision": "fp16"}, dpo={"precision": "fp32"}), "FT323")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "precision") and "fp32" in d.hint


def test_ft323_near_misses(check, tools):
    assert not tools.codes(check(hardware=CPU, sft={"precision": "fp32"}, dpo={"precision": "bf16"}), "FT323")
    assert not tools.codes(check(hardware={"gpu": "t4-16gb"}, sft={"precision": "fp16"}), "FT323")


# FT324: a merge in fp16 runs on the CPU (runtime: preflight.check_device in merge.run_merge)

def test_ft324_fp16_merge_on_cpu_refused(check, tools):
    for hardware in (CPU, {}):  # the plan places merges on the CPU on GPU targets too
        [d] = tools.codes(check(hardware=hardware, merge={"dtype": "fp16"}), "FT324")
        assert d.severity is Severity.ERROR and d.path == ("stages", 3, "dtype") and "bf16" in d.hint


def test_ft324_near_misses(check, tools):
    assert not tools.codes(check(merge={"dtype": "bf16"}), "FT324")
    assert not tools.codes(check(hardware=CPU, merge={"dtype": "fp32"}), "FT324")


# FT325: DPO label_smoothing with a loss that ignores it (runtime: dpo.make_dpo_config)

def test_ft325_label_smoothing_with_sigmoid_refused(check, tools):
    [d] = tools.codes(check(dpo={"label_smoothing": 0.1}), "FT325")
    assert d.severity is Severity.ERROR and d.path == ("stages", 2, "label_smoothing") and "robust" in d.hint


def test_ft325_near_misses(check, tools):
    assert not tools.codes(check(dpo={"label_smoothing": 0.1, "loss_type": "robust"}), "FT325")
    assert not tools.codes(check(dpo={"loss_type": "ipo"}), "FT325")


# FT326: kernels: ftplan where the loss takes the full logits (ORPO, SimPO): a warning, the stage runs

def test_ft326_orpo_and_simpo_warn_that_the_loss_keeps_the_logits(check, tools):
    for patch, trainer in (({"kind": "orpo"}, "ORPO"), ({"loss_type": "simpo"}, "CPO (SimPO)")):
        [d] = tools.codes(check(dpo={"kernels": "ftplan", **patch}), "FT326")
        assert d.severity is Severity.WARNING and d.path == ("stages", 2, "kernels")
        assert trainer in d.message and "full logits" in d.message and "loss_type: sigmoid" in d.hint


def test_ft326_near_misses(check, tools):
    assert not tools.codes(check(dpo={"kernels": "ftplan"}), "FT326")  # sigmoid: the fused log-prob head
    assert not tools.codes(check(dpo={"kernels": "none", "kind": "orpo"}), "FT326")
    assert not tools.codes(check(dpo={"kernels": "ftplan", "kind": "kto"}), "FT326")
