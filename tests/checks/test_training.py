"""Training-configuration rules (FT601-FT610)."""

from ftplan.diagnostics import Severity

EIGHT = {"gpus_per_node": 8}


def test_ft601_warmup_ratio_and_steps(check, tools):
    [d] = tools.codes(check(sft={"warmup_ratio": 0.03, "warmup_steps": 100}), "FT601")
    assert d.severity is Severity.ERROR and d.message.endswith("Choose one.")
    assert not tools.codes(check(sft={"warmup_ratio": 0.03}), "FT601")


def test_ft602_epochs_and_max_steps(check, tools):
    [d] = tools.codes(check(sft={"epochs": 3, "max_steps": 1000}), "FT602")
    assert "epochs: 3" in d.message and d.message.endswith("Choose one.")
    assert not tools.codes(check(sft={"max_steps": 1000}), "FT602")


def test_ft603_effective_batch_per_training_stage(check, tools):
    diags = tools.codes(check(hardware=EIGHT, sft={"micro_batch": 2, "grad_accum": 4}), "FT603")
    assert [d.path for d in diags] == [("stages", 1, "micro_batch"), ("stages", 2, "micro_batch")]
    assert diags[0].severity is Severity.INFO
    assert diags[0].message == ("effective batch 64 sequences per optimizer step = 8 GPUs × micro_batch 2 × "
                                "grad_accum 4")
    assert diags[1].message.startswith("effective batch 8 pairs")


def test_ft604_small_file_below_one_batch(check, tools):
    inputs = tools.Inputs(datasets=tools.heads(data_0=[tools.CHAT_ROW] * 30, data_1=[tools.PAIR_ROW] * 100))
    diags = check(tools.build(hardware=EIGHT, sft={"micro_batch": 2, "grad_accum": 4}), inputs)
    [d] = tools.codes(diags, "FT604")
    assert d.path == ("stages", 1, "micro_batch") and "30 training examples" in d.message and "(64)" in d.message
    # the first 200 rows of a bigger file are not the whole file: nothing is known
    inputs = tools.Inputs(datasets=tools.heads(data_0=[tools.CHAT_ROW] * 200, data_1=[tools.PAIR_ROW],
                                               partial=("data_0",)))
    diags = tools.codes(check(tools.build(hardware=EIGHT, sft={"grad_accum": 64}), inputs), "FT604")
    assert [d.path[1] for d in diags] == [2]  # only the DPO stage: its single pair is known to be too few
    # unless max_rows caps it
    capped = tools.build(hardware=EIGHT, sft={"grad_accum": 64},
                         data={"datasets": [{"path": "data/chat.jsonl", "format": "messages", "max_rows": 100},
                                            {"path": "data/pairs.jsonl", "format": "preference"}]})
    inputs = tools.Inputs(datasets=tools.heads(capped, data_0=[tools.CHAT_ROW] * 200, data_1=[tools.PAIR_ROW],
                                               partial=("data_0",)))
    d = tools.codes(check(capped, inputs), "FT604")[0]
    assert d.path[1] == 1 and "100 training examples" in d.message


def test_ft604_says_nothing_when_the_data_stage_has_no_data_of_the_stage_kind(check, tools):
    only_chat = tools.build(data={"datasets": [{"path": "data/chat.jsonl", "format": "messages"}]})
    diags = check(only_chat, tools.Inputs(datasets=tools.heads(only_chat, data_0=[tools.CHAT_ROW] * 100)))
    assert tools.codes(diags, "FT205") and not tools.codes(diags, "FT604")  # not "0 training pairs"


def test_ft604_says_nothing_when_bad_rows_stop_the_data_stage_first(check, tools):
    bad = {"messages": "not a list"}
    inputs = tools.Inputs(datasets=tools.heads(data_0=[bad] * 3, data_1=[tools.PAIR_ROW] * 100))
    diags = check(tools.build(), inputs)
    assert tools.codes(diags, "FT504") and not tools.codes(diags, "FT604")  # not "0 training examples"
    pipeline = tools.build(data={"on_bad_row": "drop"})
    inputs = tools.Inputs(datasets=tools.heads(pipeline, data_0=[bad] * 3, data_1=[tools.PAIR_ROW] * 100))
    [d] = tools.codes(check(pipeline, inputs), "FT604")
    assert "'data' has 0 training examples" in d.message  # dropped rows really leave nothing to train on


def test_ft605_eval_steps_without_validation_split(check, tools):
    [d] = tools.codes(check(sft={"eval_steps": 50}), "FT605")
    assert d.path == ("stages", 1, "eval_steps") and "val_fraction" in d.hint
    assert not tools.codes(check(sft={"eval_steps": 50}, data={"val_fraction": 0.05}), "FT605")


def test_ft606_load_best_needs_eval_and_save_agreement(check, tools):
    val = {"val_fraction": 0.05}
    [d] = tools.codes(check(data=val, sft={"load_best_model_at_end": True, "eval_steps": 50}), "FT606")
    assert "`save_steps` is not set" in d.message
    [d] = tools.codes(check(data=val, sft={"load_best_model_at_end": True, "eval_steps": 50, "save_steps": 120}),
                      "FT606")
    assert d.path == ("stages", 1, "save_steps") and "multiple of 50" in d.hint
    assert not tools.codes(check(data=val, sft={"load_best_model_at_end": True, "eval_steps": 50,
                                                "save_steps": 100}), "FT606")


def test_ft607_save_or_eval_beyond_max_steps(check, tools):
    diags = tools.codes(check(data={"val_fraction": 0.1}, sft={"max_steps": 100, "save_steps": 500,
                                                                "eval_steps": 200}), "FT607")
    assert [d.path[-1] for d in diags] == ["save_steps", "eval_steps"]
    assert all(d.severity is Severity.WARNING for d in diags)
    assert not tools.codes(check(sft={"max_steps": 100, "save_steps": 50}), "FT607")


def test_ft608_zero3_adapter_saves_gathered_weights(check, tools):
    [d] = tools.codes(check(hardware=EIGHT, sft={"distributed": "zero3"}), "FT608")
    assert d.severity is Severity.INFO and "stage3_gather_16bit_weights_on_model_save: true" in d.message
    assert not tools.codes(check(hardware=EIGHT, sft={"distributed": "zero3", "adapter": {"type": "full"}},
                                 dpo={"adapter": {"type": "lora"}}), "FT608")


def test_ft609_packing_on_dpo_data(check, tools):
    [d] = tools.codes(check(data={"packing": True}, sft={"attention": "flash_attention_2"}), "FT609")
    assert d.path == ("stages", 0, "packing") and "supervised examples only" in d.message
    assert not tools.codes(check(), "FT609")


def test_ft610_reference_model_described(check, tools):
    [d] = tools.codes(check(), "FT610")
    assert d.path == ("stages", 2, "reference") and "frozen copy of the adapter" in d.message
    assert "'sft'" in d.message and "computed live" in d.message
    [d] = tools.codes(check(dpo={"reference": "precomputed"}), "FT610")
    assert "computed once before training" in d.message and "as the input stage left it" in d.message
    [d] = tools.codes(check(dpo={"adapter": {"type": "lora"}, "merge_input": True}), "FT610")
    assert "merged in" in d.message and "new adapter switched off" in d.message
