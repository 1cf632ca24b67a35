"""Catalog tests: GPU lookups, model shapes, config.json parsing, parameter and LoRA arithmetic."""

import pytest

from ftplan.catalog import (
    GPUS,
    MODELS,
    from_hf_config,
    get_gpu,
    get_model,
    gguf_supported,
    gpu_keys,
    largest_layer_params,
    linear_modules,
    lora_params,
    matmul_params,
    model_keys,
    param_counts,
    target_module_names,
    unknown_targets,
)

# --------------------------------------------------------------------------------------------------- GPUs

REQUIRED_GPUS = {
    # key: (driver-reported MiB, dense bf16 TFLOP/s)
    "t4": (15109, 65.0),
    "a10g": (23028, 70.0),
    "l4": (23034, 121.0),
    "l40s": (46068, 362.0),
    "rtx-3090": (24576, 71.0),
    "rtx-4090": (24564, 165.2),
    "rtx-5090": (32607, 209.5),
    "a100-sxm-40gb": (40960, 312.0),
    "a100-sxm-80gb": (81920, 312.0),
    "h100-sxm-80gb": (81559, 989.0),
    "h100-pcie-80gb": (81559, 756.0),
    "h200-sxm-141gb": (143771, 989.0),
    "b200-180gb": (183359, 2250.0),
    "mi300x-192gb": (196592, 1307.4),
}


@pytest.mark.parametrize("key", sorted(REQUIRED_GPUS))
def test_required_gpu_present(key):
    spec = GPUS[key]
    assert (spec.memory_mib, spec.peak_bf16_tflops) == REQUIRED_GPUS[key]
    assert spec.key == key == key.lower()
    assert spec.memory_bandwidth_gbs > 0


@pytest.mark.parametrize("name, key", [
    ("h100", "h100-sxm-80gb"),
    ("H100-SXM-80GB", "h100-sxm-80gb"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm-80gb"),
    ("nvidia h100 pcie", "h100-pcie-80gb"),
    ("H200", "h200-sxm-141gb"),
    ("A100-80GB", "a100-sxm-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb"),
    ("Tesla T4", "t4"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("rtx_3090", "rtx-3090"),
    ("  L40S ", "l40s"),
    ("MI300X", "mi300x-192gb"),
    ("b200", "b200-180gb"),
])
def test_gpu_lookup_aliases_and_case(name, key):
    assert get_gpu(name) is GPUS[key]


@pytest.mark.parametrize("name", ["a100", "h100-120gb", "v100", ""])
def test_gpu_lookup_unknown(name):
    assert get_gpu(name) is None


def test_gpu_catalog_properties():
    assert gpu_keys() == sorted(GPUS) == list(GPUS)
    assert GPUS["h100-sxm-80gb"].memory_gib == pytest.approx(79.647, abs=1e-3)
    t4 = GPUS["t4"]
    assert not t4.bf16 and not t4.flash_attention_2 and t4.compute_capability == (7, 5)
    mi300x = GPUS["mi300x-192gb"]
    assert mi300x.vendor == "amd" and mi300x.compute_capability is None and mi300x.arch == "cdna3"
    for spec in GPUS.values():
        if spec.vendor == "nvidia":
            assert spec.flash_attention_2 == (spec.compute_capability >= (8, 0))
            assert spec.bf16 == (spec.compute_capability >= (8, 0))


# --------------------------------------------------------------------------------------------------- model catalog

REQUIRED_MODELS = [
    "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-7b-v0.3",
    "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b",
    "qwen2.5-72b", "qwen3-8b", "qwen3-32b", "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "gemma-3-1b", "gemma-3-4b",
    "gemma-3-12b", "gemma-3-27b", "phi-3.5-mini",
]


def test_required_models_present():
    assert set(REQUIRED_MODELS) <= set(model_keys())


@pytest.mark.parametrize("key", sorted(MODELS))
def test_model_shape_is_consistent(key):
    m = MODELS[key]
    assert m.key == key and (m.hub_ids or key == "ftplan-tiny")  # the demo model lives on local disk only
    assert m.num_heads % m.num_kv_heads == 0
    assert m.head_dim in (64, 96, 128, 256) or key == "ftplan-tiny"
    # q width is hidden, or a small multiple / fraction of it (Gemma, Qwen3-32B)
    assert 0.5 <= m.num_heads * m.head_dim / m.hidden_size <= 2
    assert m.sliding_window is None or m.sliding_window < m.max_position_embeddings
    assert (m.num_experts == 0) == (m.experts_per_token == 0)


def test_llama_31_8b_exact_shape():
    m = MODELS["llama-3.1-8b"]
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim) == (
        4096, 14336, 32, 32, 8, 128)
    assert (m.vocab_size, m.max_position_embeddings, m.tie_word_embeddings, m.rope_scaling) == (
        128256, 131072, False, True)


def test_llama_32_1b_exact_shape():
    m = MODELS["llama-3.2-1b"]
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim) == (
        2048, 8192, 16, 32, 8, 64)
    assert m.vocab_size == 128256 and m.tie_word_embeddings


@pytest.mark.parametrize("name, key", [
    ("llama-3.1-8b", "llama-3.1-8b"),
    ("LLAMA-3.1-8B", "llama-3.1-8b"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ("meta-llama/meta-llama-3.1-8b", "llama-3.1-8b"),
    ("meta-llama/Llama-3.3-70B-Instruct", "llama-3.1-70b"),
    ("google/gemma-3-4b-it", "gemma-3-4b"),
    ("qwen/qwen2.5-7b-instruct", "qwen2.5-7b"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b-v0.3"),
])
def test_get_model(name, key):
    assert get_model(name) is MODELS[key]


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B-Chat", "llama-3.1", "meta-llama/Llama-2-7b-hf", ""])
def test_get_model_no_guessing(name):
    assert get_model(name) is None


# --------------------------------------------------------------------------------------------------- param counts

@pytest.mark.parametrize("key, total", [
    # embedding 128256*4096 = 525,336,576 (x2, untied) + 32 layers x (attn 41,943,040 + mlp 176,160,768
    # + norms 8,192) + final norm 4,096
    ("llama-3.1-8b", 8_030_261_248),
    # tied: embedding 262,668,288 + 16 x (60,817,408 + 4,096) + 2,048
    ("llama-3.2-1b", 1_235_814_400),
    # Llama-3.1-8B layers with a 32768-row vocabulary: 2 x 134,217,728 + 32 x 218,112,000 + 4,096
    ("mistral-7b-v0.3", 7_248_023_552),
    # untied 152064*3584 x2 + 28 x (233,046,016 weights + 4,608 q/k/v bias + 7,168 norms) + 3,584
    ("qwen2.5-7b", 7_615_616_512),
    # 8 experts x 3 x 4096*14336 + router 4096*8 per layer
    ("mixtral-8x7b", 46_702_792_704),
    # fused qkv 3072 -> 9216, gate_up 3072 -> 16384
    ("phi-3.5-mini", 3_821_079_552),
    # q_norm/k_norm (2 x 128) per layer
    ("qwen3-8b", 8_190_735_360),
    # four norms per layer
    ("gemma-2-9b", 9_241_705_984),
    # four norms + q_norm/k_norm per layer, tied
    ("gemma-3-1b", 999_885_952),
])
def test_param_totals(key, total):
    assert param_counts(MODELS[key]).total == total


def test_llama_31_8b_param_parts():
    m = MODELS["llama-3.1-8b"]
    pc = param_counts(m)
    assert pc.embedding == pc.lm_head == 525_336_576
    assert pc.per_layer_linear == 218_103_808 and pc.per_layer_norm == 8_192 and pc.final_norm == 4_096
    # 32 x 218,103,808 linears = 6,979,321,856, plus lm_head 525,336,576. (The 7,504,924,672 sometimes quoted is
    # total minus embedding, which also counts the 266,240 norm weights.)
    assert matmul_params(m) == 7_504_658_432
    assert largest_layer_params(m) == 525_336_576


def test_tied_model_has_no_lm_head_but_still_projects():
    m = MODELS["llama-3.2-1b"]
    assert param_counts(m).lm_head == 0
    assert matmul_params(m) == 16 * 60_817_408 + 262_668_288


def test_moe_matmul_counts_routed_experts_only():
    m = MODELS["mixtral-8x7b"]
    per_layer = 41_943_040 + 4096 * 8 + 2 * 3 * 4096 * 14336
    assert matmul_params(m) == 32 * per_layer + 32000 * 4096
    # transformers 5 fuses the experts' gate/up weights into one experts x 2*inter x hidden tensor
    assert largest_layer_params(m) == 8 * 2 * 14336 * 4096


# --------------------------------------------------------------------------------------------------- linears / LoRA

def test_linear_module_layouts():
    assert target_module_names(MODELS["llama-3.1-8b"]) == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert target_module_names(MODELS["phi-3.5-mini"]) == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert target_module_names(MODELS["mixtral-8x7b"]) == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate", "w1", "w3", "w2")
    by_name = {m.name: m for m in linear_modules(MODELS["mixtral-8x7b"])}
    assert by_name["w1"].per_layer == 8 and by_name["gate"].d_out == 8
    qwen = {m.name: m for m in linear_modules(MODELS["qwen2.5-7b"])}
    assert qwen["q_proj"].bias and qwen["v_proj"].bias and not qwen["o_proj"].bias
    phi = {m.name: m for m in linear_modules(MODELS["phi-3.5-mini"])}
    assert phi["qkv_proj"].d_out == 3 * 3072 and phi["gate_up_proj"].d_out == 2 * 8192


def test_lora_params_llama_31_8b():
    m = MODELS["llama-3.1-8b"]
    # per layer 16 x (8192 + 5120 + 5120 + 8192 + 3 x 18432) = 1,310,720; x 32 layers
    assert lora_params(m, 16, "all-linear") == 41_943_040
    assert lora_params(m, 16, "ALL-LINEAR") == 41_943_040
    assert lora_params(m, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) == (
        41_943_040)
    assert lora_params(m, 8, ["q_proj", "v_proj"]) == 32 * 8 * (8192 + 5120)
    # dotted suffixes and a full module path match like PEFT does
    assert lora_params(m, 8, ["self_attn.q_proj", "model.layers.0.mlp.down_proj"]) == 32 * 8 * (8192 + 18432)
    assert lora_params(m, 8, ["lm_head"]) == 8 * (128256 + 4096)
    assert lora_params(m, 8, []) == 0


def test_lora_params_moe_and_errors():
    m = MODELS["mixtral-8x7b"]
    experts = 8 * (2 * 16 * (4096 + 14336) + 16 * (14336 + 4096))
    attn = 16 * (8192 + 5120 + 5120 + 8192)
    router = 16 * (4096 + 8)
    assert lora_params(m, 16, ["w1", "w2", "w3"]) == 32 * experts
    assert lora_params(m, 16, "all-linear") == 32 * (attn + router + experts)
    with pytest.raises(ValueError, match="rank"):
        lora_params(m, 0, "all-linear")
    with pytest.raises(ValueError, match="list of module names"):
        lora_params(m, 8, "q_proj")


def test_unknown_targets():
    llama = MODELS["llama-3.1-8b"]
    assert unknown_targets(llama, "all-linear") == []
    assert unknown_targets(llama, ["q_proj", "qkv_proj", "w1", "mlp.q_proj", "down_proj", "lm_head"]) == [
        "qkv_proj", "w1", "mlp.q_proj"]
    assert unknown_targets(llama, ["layers.31.self_attn.o_proj", "layers.32.self_attn.o_proj"]) == [
        "layers.32.self_attn.o_proj"]
    mixtral = MODELS["mixtral-8x7b"]
    # "gate" is the router here; dense Llama has gate_proj, which the suffix rule does not confuse with "gate"
    assert unknown_targets(mixtral, ["gate", "w2", "gate_proj", "experts.7.w1", "experts.8.w1"]) == [
        "gate_proj", "experts.8.w1"]
    assert unknown_targets(llama, ["gate"]) == ["gate"]
    assert unknown_targets(MODELS["phi-3.5-mini"], ["q_proj", "qkv_proj"]) == ["q_proj"]


def test_gguf_supported():
    assert gguf_supported(MODELS["llama-3.1-8b"]) and gguf_supported(MODELS["qwen2.5-7b"])
    assert gguf_supported(MODELS["mistral-7b-v0.3"])
    assert not gguf_supported(MODELS["gemma-2-9b"]) and not gguf_supported(MODELS["mixtral-8x7b"])


# --------------------------------------------------------------------------------------------------- from_hf_config

LLAMA_31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
}


def _same_shape(parsed, catalogued):
    return parsed == catalogued.__class__(**{**catalogued.__dict__, "key": parsed.key, "hub_ids": ()})


def test_from_hf_config_llama():
    shape = from_hf_config(LLAMA_31_8B_CONFIG)
    assert shape.key == "local" and shape.family == "llama"
    assert _same_shape(shape, MODELS["llama-3.1-8b"])
    assert from_hf_config(LLAMA_31_8B_CONFIG, key="mine").key == "mine"


def test_from_hf_config_qwen2_bias_and_disabled_window():
    cfg = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
           "max_position_embeddings": 131072, "sliding_window": 131072, "use_sliding_window": False,
           "tie_word_embeddings": False, "rope_theta": 1000000.0}
    shape = from_hf_config(cfg)
    assert shape.attention_bias and shape.head_dim == 128 and shape.sliding_window is None
    assert _same_shape(shape, MODELS["qwen2.5-7b"])
    assert param_counts(shape).total == 7_615_616_512


def test_from_hf_config_gemma3_multimodal_text_config():
    # google/gemma-3-4b-it style: sparse text_config, omitted keys take Gemma3TextConfig defaults
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                           "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"}}
    shape = from_hf_config(cfg)
    assert (shape.family, shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.vocab_size) == (
        "gemma3", 8, 4, 256, 262208)
    assert _same_shape(shape, MODELS["gemma-3-4b"])


def test_from_hf_config_gemma3_text():
    cfg = {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
           "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
           "max_position_embeddings": 32768, "sliding_window": 512, "rope_scaling": None}
    shape = from_hf_config(cfg)
    assert shape.tie_word_embeddings and not shape.rope_scaling
    assert _same_shape(shape, MODELS["gemma-3-1b"])


def test_from_hf_config_phi3_fused():
    cfg = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
           "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
           "rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]},
           "sliding_window": 262144, "tie_word_embeddings": False}
    shape = from_hf_config(cfg)
    assert shape.fused_qkv and shape.fused_gate_up and shape.rope_scaling and shape.sliding_window is None
    assert _same_shape(shape, MODELS["phi-3.5-mini"])


def test_from_hf_config_mixtral():
    cfg = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
           "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2,
           "sliding_window": None, "rope_theta": 1e6, "tie_word_embeddings": False}
    shape = from_hf_config(cfg)
    assert (shape.num_experts, shape.experts_per_token, shape.sliding_window) == (8, 2, None)
    assert _same_shape(shape, MODELS["mixtral-8x7b"])


@pytest.mark.parametrize("rope_parameters, scaled", [
    ({"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}, True),
    ({"rope_type": "default", "rope_theta": 500000.0}, False),
    ({"full_attention": {"rope_type": "linear", "factor": 8.0},
      "sliding_attention": {"rope_type": "default"}}, True),
])
def test_from_hf_config_transformers5_rope_parameters(rope_parameters, scaled):
    cfg = {k: v for k, v in LLAMA_31_8B_CONFIG.items() if k not in ("rope_scaling", "rope_theta")}
    cfg["rope_parameters"] = rope_parameters
    cfg["head_dim"] = None  # transformers 5 may write null for "derive it"
    shape = from_hf_config(cfg)
    assert shape.rope_scaling is scaled and shape.head_dim == 128


def test_from_hf_config_defaults():
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 100}
    shape = from_hf_config(cfg)
    assert (shape.num_kv_heads, shape.head_dim, shape.max_position_embeddings) == (4, 16, 2048)
    assert not shape.tie_word_embeddings and not shape.rope_scaling and shape.sliding_window is None
    gemma2 = from_hf_config({**cfg, "model_type": "gemma2"})
    assert gemma2.tie_word_embeddings and gemma2.head_dim == 256  # Gemma2Config defaults
    # Gemma 2 caps its attention logits unless the config turns it off; Gemma 3 and the others do not by default
    assert gemma2.attention_softcap and MODELS["gemma-2-2b"].attention_softcap
    assert not from_hf_config({**cfg, "model_type": "gemma2", "attn_logit_softcapping": None}).attention_softcap
    assert not shape.attention_softcap and not MODELS["gemma-3-4b"].attention_softcap


@pytest.mark.parametrize("cfg, message", [
    ({"hidden_size": 64}, "no 'model_type'"),
    ({**LLAMA_31_8B_CONFIG, "model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != "hidden_size"}, "no 'hidden_size'"),
    ({k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != "vocab_size"}, "no 'vocab_size'"),
    ({**LLAMA_31_8B_CONFIG, "num_hidden_layers": "32"}, "'num_hidden_layers' must be a positive integer"),
    ({**LLAMA_31_8B_CONFIG, "num_key_value_heads": 5}, "not a multiple"),
    ({"model_type": "gemma3"}, "no 'text_config'"),
    ({"model_type": "mixtral", **{k: 8 for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "vocab_size")},
      "num_local_experts": 2, "num_experts_per_tok": 4}, "exceeds"),
])
def test_from_hf_config_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        from_hf_config(cfg)
