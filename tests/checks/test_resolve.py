"""resolve(): the declared GPU, the architecture (config.json > model.architecture > catalog hub id) and the
stage graph."""

from ftplan.diagnostics import Severity
from ftplan.lineage import StageLink

TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "max_position_embeddings": 512}


def test_clean_pipeline_resolves_gpu_shape_and_links(tools):
    ctx, diags = tools.resolve_ctx(tools.build())
    assert diags == []
    assert ctx.gpu.key == "h100-sxm-80gb"
    assert ctx.shape.key == "llama-3.1-8b" and ctx.shape_source == "catalog:llama-3.1-8b"
    assert set(ctx.links) == {"data", "sft", "dpo", "merge", "gguf"}
    assert isinstance(ctx.links["dpo"], StageLink) and ctx.links["dpo"].continues_adapter
    assert ctx.pipeline_path == "pipeline.yaml"


def test_ft010_unknown_gpu_suggests_the_h100_variants(tools):
    _, diags = tools.resolve_ctx(tools.build(hardware={"gpu": "h100-80"}))
    [d] = tools.codes(diags, "FT010")
    assert d.severity is Severity.ERROR and d.path == ("hardware", "gpu")
    assert d.message == "unknown GPU 'h100-80'"
    assert d.hint == "did you mean 'h100-sxm-80gb' or 'h100-pcie-80gb'?"


def test_ft010_near_miss_alias_resolves(tools):
    ctx, diags = tools.resolve_ctx(tools.build(hardware={"gpu": "H100"}))
    assert not tools.codes(diags, "FT010") and ctx.gpu.key == "h100-sxm-80gb"


def test_ft011_unknown_hub_id_hints_architecture_and_config(tools):
    ctx, diags = tools.resolve_ctx(tools.build(model={"base": "acme/secret-model"}))
    [d] = tools.codes(diags, "FT011")
    assert d.message.startswith("unknown architecture for 'acme/secret-model'")
    assert "model.architecture" in d.hint and "llama-3.1-8b" in d.hint and "config.json" in d.hint
    assert ctx.shape is None


def test_ft011_unknown_architecture_key_did_you_mean(tools):
    _, diags = tools.resolve_ctx(tools.build(model={"base": "acme/x", "architecture": "llama-3.1-8"}))
    [d] = tools.codes(diags, "FT011")
    assert d.path == ("model", "architecture") and "'llama-3.1-8b'" in d.hint


def test_architecture_key_used_for_private_models(tools):
    ctx, diags = tools.resolve_ctx(tools.build(model={"base": "acme/x", "architecture": "qwen2.5-7b"}))
    assert not diags and ctx.shape.family == "qwen2" and ctx.shape_source == "catalog:qwen2.5-7b"


def test_local_config_json_comes_first(tools):
    inputs = tools.Inputs(model_config=TINY_CONFIG)
    ctx, diags = tools.resolve_ctx(tools.build(model={"base": "./tiny"}), inputs)
    assert not diags and ctx.shape_source == "config.json" and ctx.shape.hidden_size == 64


def test_ft011_unusable_config_json_carries_the_parser_message(tools):
    bad = dict(TINY_CONFIG, model_type="gpt2")
    _, diags = tools.resolve_ctx(tools.build(model={"base": "./tiny"}), tools.Inputs(model_config=bad))
    [d] = tools.codes(diags, "FT011")
    assert "model_type 'gpt2' is not supported" in d.message and d.path == ("model", "base")
    _, diags = tools.resolve_ctx(tools.build(model={"base": "./tiny"}),
                                 tools.Inputs(model_config_error="line 3: Expecting ',' delimiter"))
    [d] = tools.codes(diags, "FT011")
    assert "Expecting ',' delimiter" in d.message


def test_ft012_cuda_without_gpu_and_gpu_with_cpu(tools):
    _, diags = tools.resolve_ctx(tools.build(hardware={"gpu": None}))
    [d] = tools.codes(diags, "FT012")
    assert "hardware.gpu" in d.message and "h100-sxm-80gb" in d.hint
    _, diags = tools.resolve_ctx(tools.build(hardware={"device": "cpu"}))
    [d] = tools.codes(diags, "FT012")
    assert d.path == ("hardware", "gpu")
    ctx, diags = tools.resolve_ctx(tools.build(hardware={"device": "cpu", "gpu": None}))
    assert not diags and ctx.gpu is None


def test_ft013_architecture_disagreeing_with_config_json(tools):
    pipeline = tools.build(model={"base": "./tiny", "architecture": "llama-3.1-8b"})
    ctx, diags = tools.resolve_ctx(pipeline, tools.Inputs(model_config=TINY_CONFIG))
    [d] = tools.codes(diags, "FT013")
    assert d.severity is Severity.WARNING and "hidden_size 64 vs 4096" in d.message
    assert ctx.shape.hidden_size == 64


def test_stage_graph_diagnostics_are_returned(tools):
    _, diags = tools.resolve_ctx(tools.build(merge={"input": "dpoo"}))
    assert [d.code for d in diags] == ["FT202"]


def test_ft201_a_duplicated_id_is_one_error_and_nothing_is_looked_up_by_it(tools):
    from ftplan.checks import run_checks
    from ftplan.estimate import estimate

    first = dict(tools.BASE["stages"][0])
    second = {"id": "data", "kind": "data", "max_seq_len": 8192, "packing": True, "val_fraction": 0.1,
              "datasets": [{"path": "data/other.jsonl", "format": "messages"}]}
    sft = {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 2e-4, "adapter": {"type": "lora"},
           "eval_steps": 10, "attention": "sdpa"}
    ctx, diags = tools.resolve_ctx(tools.build(stages=[first, second, sft]))
    [d] = diags
    assert (d.code, d.path) == ("FT201", ("stages", 1, "id"))
    assert d.related == ((("stages", 0, "id"), "stage id 'data' first used here"),)
    assert "`id: data_2`" in d.hint
    assert "data" not in ctx.links and ctx.links["sft"].result is None
    # neither 'data' stage is guessed: no eval split (FT605) or packing (FT307) finding read off the wrong one
    assert [x.code for x in run_checks(ctx) if x.severity is Severity.ERROR] == []
    estimates, _ = estimate(ctx)
    assert set(estimates) == set()  # nothing estimated from the other stage's wiring


def test_ft204_a_data_stage_as_dpo_input_says_where_data_goes(tools):
    _, diags = tools.resolve_ctx(tools.build(dpo={"input": "data"}))
    [d] = tools.codes(diags, "FT204")
    assert d.message == ("'data' is a data stage; input needs a training stage (sft, cpt, dpo, orpo, kto) "
                         "or a merge stage")
    assert d.hint == ("a data stage goes in `data:`; `input` names the model to start from: point `input` at 'sft', "
                      "or omit `input` to start from the base model")
    _, diags = tools.resolve_ctx(tools.build(sft={"input": "data"}))
    [d] = tools.codes(diags, "FT204")
    assert d.hint.endswith("omit `input` to start from the base model")
    _, diags = tools.resolve_ctx(tools.build(dpo={"data": "sft"}))
    [d] = tools.codes(diags, "FT204")
    assert d.hint == "point `data` at 'data'"
