"""Hardware rules (FT301-FT309), checked against the declared GPU."""

from ftplan.diagnostics import Severity


def test_ft301_bf16_on_t4_suggests_fp16(check, tools):
    diags = tools.codes(check(hardware={"gpu": "t4"}), "FT301")
    assert len(diags) == 2  # sft and dpo both default to bf16
    d = diags[0]
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "precision")
    assert "sm75" in d.message and "T4" in d.message and "precision: fp16" in d.hint
    assert not tools.codes(check(hardware={"gpu": "t4"}, sft={"precision": "fp16"}, dpo={"precision": "fp16"}),
                           "FT301")
    assert not tools.codes(check(hardware={"gpu": "a10g"}), "FT301")


def test_ft302_flash_attention_2_needs_sm80(check, tools):
    [d] = tools.codes(check(hardware={"gpu": "t4"}, sft={"attention": "flash_attention_2", "precision": "fp16"}),
                      "FT302")
    assert d.path == ("stages", 1, "attention") and "sm75" in d.message and "sdpa" in d.hint
    assert not tools.codes(check(hardware={"gpu": "mi300x"}, sft={"attention": "flash_attention_2"}), "FT302")


def test_ft302_flash_attention_3_needs_hopper(check, tools):
    [d] = tools.codes(check(hardware={"gpu": "a100-80gb"}, sft={"attention": "flash_attention_3"}), "FT302")
    assert "Hopper" in d.message and "flash_attention_2" in d.hint
    assert not tools.codes(check(sft={"attention": "flash_attention_3"}), "FT302")


def test_ft302_flash_attention_on_cpu_or_fp32(check, tools):
    [d] = tools.codes(check(hardware={"device": "cpu", "gpu": None}, sft={"attention": "flash_attention_2"}),
                      "FT302")
    assert "CUDA" in d.message
    [d] = tools.codes(check(sft={"attention": "flash_attention_2", "precision": "fp32"}), "FT302")
    assert "fp32" in d.message


def test_ft303_kernels_need_a_supported_family(check, tools):
    [d] = tools.codes(check(model={"base": "google/gemma-2-9b-it"}, sft={"kernels": "ftplan"}), "FT303")
    assert "gemma2" in d.message and d.path == ("stages", 1, "kernels")
    assert not tools.codes(check(sft={"kernels": "ftplan"}), "FT303")


def test_ft309_kernels_refuse_dora_and_adapter_dropout(check, tools):
    """The fused LoRA kernels compute plain LoRA without dropout; the runtime's preflight refuses anything else."""
    [d] = tools.codes(check(sft={"kernels": "ftplan", "adapter": {"type": "dora"}}), "FT309")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "adapter", "type")
    assert "DoRA" in d.message and "kernels: none" in d.hint
    [d] = tools.codes(check(sft={"kernels": "ftplan", "adapter": {"type": "qlora", "dropout": 0.05}}), "FT309")
    assert d.path == ("stages", 1, "adapter", "dropout") and "dropout: 0.05" in d.message and "dropout: 0" in d.hint
    # a DPO stage with the kernels continues the SFT adapter: flagged at its own kernels, naming the declaring stage
    [d] = tools.codes(check(sft={"adapter": {"type": "lora", "dropout": 0.1}}, dpo={"kernels": "ftplan"}), "FT309")
    assert d.path == ("stages", 2, "kernels") and "declared by 'sft'" in d.message
    assert not tools.codes(check(sft={"kernels": "ftplan"}, dpo={"kernels": "ftplan"}), "FT309")  # dropout 0
    assert not tools.codes(check(sft={"adapter": {"type": "dora", "dropout": 0.1}}), "FT309")  # kernels: none
    # sharded weights: a SimPO stage under zero3 (a stage with a fused loss head there is FT320's already)
    eight = {"gpus_per_node": 8}
    [d] = tools.codes(check(hardware=eight, dpo={"kernels": "ftplan", "distributed": "zero3", "loss_type": "simpo"}),
                      "FT309")
    assert d.path == ("stages", 2, "distributed") and "sharded" in d.message and "zero2" in d.hint
    for stage in ("sft", "dpo"):
        diags = check(hardware=eight, **{stage: {"kernels": "ftplan", "distributed": "zero3"}})
        assert not tools.codes(diags, "FT309") and tools.codes(diags, "FT320")


def test_ft304_kernels_on_cpu_warn_interpreter(check, tools):
    [d] = tools.codes(check(hardware={"device": "cpu", "gpu": None}, sft={"kernels": "ftplan"}), "FT304")
    assert d.severity is Severity.WARNING and "interpreter" in d.message


def test_ft305_bitsandbytes_on_mi300x_warns(check, tools):
    diags = tools.codes(check(hardware={"gpu": "mi300x"}, sft={"adapter": {"type": "qlora"}}), "FT305")
    # the DPO stage continues the QLoRA adapter, so it is flagged too
    assert [d.path for d in diags] == [("stages", 1, "adapter"), ("stages", 2, "adapter")]
    assert all(d.severity is Severity.WARNING and "ROCm" in d.hint for d in diags)
    [d] = tools.codes(check(hardware={"gpu": "mi300x"}, sft={"optimizer": "adamw_8bit"}), "FT305")
    assert d.path == ("stages", 1, "optimizer")
    assert not tools.codes(check(sft={"adapter": {"type": "qlora"}, "optimizer": "adamw_8bit"}), "FT305")


def test_ft305_paged_optimizer_on_cpu(check, tools):
    [d] = tools.codes(check(hardware={"device": "cpu", "gpu": None}, sft={"optimizer": "paged_adamw_8bit"}),
                      "FT305")
    assert "paged" in d.message


def test_ft306_cpu_with_deepspeed_or_fsdp(check, tools):
    [d] = tools.codes(check(hardware={"device": "cpu", "gpu": None}, sft={"distributed": "zero2"}), "FT306")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "distributed")
    [d] = tools.codes(check(hardware={"device": "cpu", "gpu": None},
                            sft={"distributed": {"strategy": "fsdp2"}}), "FT306")
    assert d.path == ("stages", 1, "distributed", "strategy")
    assert not tools.codes(check(hardware={"device": "cpu", "gpu": None}), "FT306")


def test_ft307_packing_needs_a_varlen_backend(check, tools):
    [d] = tools.codes(check(data={"packing": True}), "FT307")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "attention")
    assert "sdpa" in d.message and "flash_attention_2" in d.hint and "packing: false" in d.hint
    [d] = tools.codes(check(hardware={"device": "cpu", "gpu": None}, data={"packing": True},
                            sft={"attention": "eager"}), "FT307")
    # on the CPU no varlen backend trains (FlexAttention has no CPU backward): the fix is to stop packing
    assert "packing: false" in d.hint and "flex_attention" not in d.hint and "flash_attention_2" not in d.hint
    [d] = tools.codes(check(hardware={"gpu": "t4"}, data={"packing": True}, sft={"precision": "fp16"},
                            dpo={"precision": "fp16"}), "FT307")
    assert "flex_attention" in d.hint and "flash_attention_2" not in d.hint
    for backend in ("flash_attention_2", "flex_attention"):
        assert not tools.codes(check(data={"packing": True}, sft={"attention": backend}), "FT307")
    assert not tools.codes(check(), "FT307")


def test_flex_attention_cannot_train_on_the_cpu(check, tools):
    """FlexAttention's backward raises NotImplementedError on the CPU at the first step; check accepted it (and
    FT307 even suggested it for CPU packing)."""
    [d] = tools.codes(check(hardware={"device": "cpu", "gpu": None}, sft={"attention": "flex_attention"}), "FT302")
    assert "no backward pass on the CPU" in d.message and "attention: sdpa" in d.hint
    assert not tools.codes(check(sft={"attention": "flex_attention"}), "FT302")


def test_ft308_gemma2_cannot_load_with_sdpa(check, tools):
    """The runtime failed at model load ("Gemma2ForCausalLM does not support ... scaled_dot_product_attention");
    check accepted the default `attention: sdpa`."""
    gemma = {"base": "google/gemma-2-2b"}
    d, dpo = tools.codes(check(tools.build(model=gemma)), "FT308")  # both training stages
    assert (d.path, dpo.path) == (("stages", 1, "attention"), ("stages", 2, "attention"))
    assert d.path == ("stages", 1, "attention") and "soft-caps" in d.message and "attention: eager" in d.hint
    assert not tools.codes(check(tools.build(model=gemma, sft={"attention": "eager"}, dpo={"attention": "eager"})),
                           "FT308")
    assert not tools.codes(check(), "FT308")  # Llama loads with sdpa
