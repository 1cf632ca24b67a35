"""Model-shape catalog: decoder shapes from public Hugging Face ``config.json`` files, and a parser for new ones.

Each entry cites the hub repository whose ``config.json`` it copies. One entry covers the base and instruct
repositories of a size; where their configs differ (only ``max_position_embeddings`` for Qwen2.5), the base
repository's value is kept and the difference noted. Gemma 3 4B/12B/27B entries are the text tower only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelShape", "MODELS", "get_model", "model_keys", "from_hf_config", "SUPPORTED_MODEL_TYPES"]


@dataclass(frozen=True)
class ModelShape:
    """The decoder-only transformer shape the estimator and checks work from."""

    key: str
    """Catalog key, e.g. ``"llama-3.1-8b"``; ``"local"`` for a parsed config."""
    family: str
    """Architecture family: llama, mistral, mixtral, qwen2, qwen3, gemma2, gemma3, phi3."""
    hub_ids: tuple[str, ...]
    """Hub repositories with exactly this shape (base and instruct variants are listed explicitly)."""
    hidden_size: int
    """Residual stream width."""
    intermediate_size: int
    """MLP inner width (per expert for MoE)."""
    num_layers: int
    """Decoder layers."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (GQA groups)."""
    head_dim: int
    """Per-head width; not always hidden_size / num_heads (Gemma, Qwen3)."""
    vocab_size: int
    """Embedding rows (padded vocabulary as stored)."""
    max_position_embeddings: int
    """Longest context the config declares."""
    tie_word_embeddings: bool
    """lm_head shares the input embedding matrix."""
    rope_scaling: bool
    """The config declares RoPE scaling (llama3, yarn, linear, longrope, ...)."""
    attention_bias: bool
    """q/k/v projections carry a bias (Qwen2)."""
    num_experts: int = 0
    """MoE experts per layer (Mixtral 8); 0 for dense models."""
    experts_per_token: int = 0
    """Experts routed per token (Mixtral 2); 0 for dense models."""
    fused_qkv: bool = False
    """Attention uses one fused ``qkv_proj`` (Phi-3)."""
    fused_gate_up: bool = False
    """MLP uses one fused ``gate_up_proj`` (Phi-3)."""
    sliding_window: int | None = None
    """Sliding-window attention span; None when disabled or not shorter than the context."""
    attention_softcap: bool = False
    """Attention logits are capped with tanh before the softmax (Gemma 2's ``attn_logit_softcapping``): under eager
    attention the tanh output is one more score-sized tensor autograd keeps."""


def _shape(key: str, family: str, hub_ids: tuple[str, ...], hidden: int, inter: int, layers: int, heads: int,
           kv: int, head_dim: int, vocab: int, max_pos: int, tied: bool, rope_scaling: bool,
           **extra: Any) -> ModelShape:
    return ModelShape(key, family, hub_ids, hidden, inter, layers, heads, kv, head_dim, vocab, max_pos, tied,
                      rope_scaling, extra.pop("attention_bias", False), **extra)


def _ids(*names: str) -> tuple[str, ...]:
    return tuple(names)


_LLAMA = "meta-llama/"
_QWEN = "Qwen/"

_ENTRIES: tuple[ModelShape, ...] = (
    # ftplan's built-in demo model (ftplan_runtime.tiny.build_tiny_model defaults): a random-init Llama with a
    # locally trained SentencePiece tokenizer of at most 512 tokens; used by examples/tiny-cpu.yaml and tests.
    _shape("ftplan-tiny", "llama", (), 64, 128, 2, 4, 2, 16, 512, 512, False, False),
    # meta-llama/Llama-3.2-1B config.json (rope_scaling llama3, tied)
    _shape("llama-3.2-1b", "llama", _ids(_LLAMA + "Llama-3.2-1B", _LLAMA + "Llama-3.2-1B-Instruct"),
           2048, 8192, 16, 32, 8, 64, 128256, 131072, True, True),
    # meta-llama/Llama-3.2-3B config.json (rope_scaling llama3, tied)
    _shape("llama-3.2-3b", "llama", _ids(_LLAMA + "Llama-3.2-3B", _LLAMA + "Llama-3.2-3B-Instruct"),
           3072, 8192, 28, 24, 8, 128, 128256, 131072, True, True),
    # meta-llama/Llama-3.1-8B config.json (rope_scaling llama3 factor 8)
    _shape("llama-3.1-8b", "llama",
           _ids(_LLAMA + "Llama-3.1-8B", _LLAMA + "Llama-3.1-8B-Instruct",
                _LLAMA + "Meta-Llama-3.1-8B", _LLAMA + "Meta-Llama-3.1-8B-Instruct"),
           4096, 14336, 32, 32, 8, 128, 128256, 131072, False, True),
    # meta-llama/Llama-3.1-70B config.json; meta-llama/Llama-3.3-70B-Instruct has the same shape
    _shape("llama-3.1-70b", "llama",
           _ids(_LLAMA + "Llama-3.1-70B", _LLAMA + "Llama-3.1-70B-Instruct",
                _LLAMA + "Meta-Llama-3.1-70B", _LLAMA + "Meta-Llama-3.1-70B-Instruct",
                _LLAMA + "Llama-3.3-70B-Instruct"),
           8192, 28672, 80, 64, 8, 128, 128256, 131072, False, True),
    # meta-llama/Llama-3.1-405B config.json
    _shape("llama-3.1-405b", "llama",
           _ids(_LLAMA + "Llama-3.1-405B", _LLAMA + "Llama-3.1-405B-Instruct",
                _LLAMA + "Meta-Llama-3.1-405B", _LLAMA + "Meta-Llama-3.1-405B-Instruct"),
           16384, 53248, 126, 128, 8, 128, 128256, 131072, False, True),
    # mistralai/Mistral-7B-v0.3 config.json (vocab 32768, sliding_window null)
    _shape("mistral-7b-v0.3", "mistral", _ids("mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3"),
           4096, 14336, 32, 32, 8, 128, 32768, 32768, False, False),
    # mistralai/Mixtral-8x7B-v0.1 config.json (8 local experts, 2 per token, sliding_window null)
    _shape("mixtral-8x7b", "mixtral", _ids("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
           4096, 14336, 32, 32, 8, 128, 32000, 32768, False, False, num_experts=8, experts_per_token=2),
    # Qwen/Qwen2.5-0.5B config.json (qkv bias, tied, use_sliding_window false)
    _shape("qwen2.5-0.5b", "qwen2", _ids(_QWEN + "Qwen2.5-0.5B", _QWEN + "Qwen2.5-0.5B-Instruct"),
           896, 4864, 24, 14, 2, 64, 151936, 32768, True, False, attention_bias=True),
    # Qwen/Qwen2.5-1.5B (qkv bias, tied); 32768 context per the model card
    _shape("qwen2.5-1.5b", "qwen2", _ids(_QWEN + "Qwen2.5-1.5B", _QWEN + "Qwen2.5-1.5B-Instruct"),
           1536, 8960, 28, 12, 2, 128, 151936, 32768, True, False, attention_bias=True),
    # Qwen/Qwen2.5-3B config.json (qkv bias, tied)
    _shape("qwen2.5-3b", "qwen2", _ids(_QWEN + "Qwen2.5-3B", _QWEN + "Qwen2.5-3B-Instruct"),
           2048, 11008, 36, 16, 2, 128, 151936, 32768, True, False, attention_bias=True),
    # Qwen/Qwen2.5-7B config.json (qkv bias; base declares 131072 positions, the -Instruct config 32768)
    _shape("qwen2.5-7b", "qwen2", _ids(_QWEN + "Qwen2.5-7B", _QWEN + "Qwen2.5-7B-Instruct"),
           3584, 18944, 28, 28, 4, 128, 152064, 131072, False, False, attention_bias=True),
    # Qwen/Qwen2.5-14B config.json (qkv bias; -Instruct config declares 32768 positions)
    _shape("qwen2.5-14b", "qwen2", _ids(_QWEN + "Qwen2.5-14B", _QWEN + "Qwen2.5-14B-Instruct"),
           5120, 13824, 48, 40, 8, 128, 152064, 131072, False, False, attention_bias=True),
    # Qwen/Qwen2.5-32B config.json (qkv bias; -Instruct config declares 32768 positions)
    _shape("qwen2.5-32b", "qwen2", _ids(_QWEN + "Qwen2.5-32B", _QWEN + "Qwen2.5-32B-Instruct"),
           5120, 27648, 64, 40, 8, 128, 152064, 131072, False, False, attention_bias=True),
    # Qwen/Qwen2.5-72B config.json (qkv bias; -Instruct config declares 32768 positions)
    _shape("qwen2.5-72b", "qwen2", _ids(_QWEN + "Qwen2.5-72B", _QWEN + "Qwen2.5-72B-Instruct"),
           8192, 29568, 80, 64, 8, 128, 152064, 131072, False, False, attention_bias=True),
    # Qwen/Qwen3-8B config.json (head_dim 128, q/k RMSNorm, untied)
    _shape("qwen3-8b", "qwen3", _ids(_QWEN + "Qwen3-8B", _QWEN + "Qwen3-8B-Base"),
           4096, 12288, 36, 32, 8, 128, 151936, 40960, False, False),
    # Qwen/Qwen3-32B config.json (64 heads x head_dim 128 = 8192 > hidden 5120)
    _shape("qwen3-32b", "qwen3", _ids(_QWEN + "Qwen3-32B",),
           5120, 25600, 64, 64, 8, 128, 151936, 40960, False, False),
    # google/gemma-2-2b config.json (head_dim 256, sliding_window 4096, tied)
    _shape("gemma-2-2b", "gemma2", _ids("google/gemma-2-2b", "google/gemma-2-2b-it"),
           2304, 9216, 26, 8, 4, 256, 256000, 8192, True, False, sliding_window=4096,
           attention_softcap=True),
    # google/gemma-2-9b config.json
    _shape("gemma-2-9b", "gemma2", _ids("google/gemma-2-9b", "google/gemma-2-9b-it"),
           3584, 14336, 42, 16, 8, 256, 256000, 8192, True, False, sliding_window=4096,
           attention_softcap=True),
    # google/gemma-2-27b config.json (head_dim 128)
    _shape("gemma-2-27b", "gemma2", _ids("google/gemma-2-27b", "google/gemma-2-27b-it"),
           4608, 36864, 46, 32, 16, 128, 256000, 8192, True, False, sliding_window=4096,
           attention_softcap=True),
    # google/gemma-3-1b-pt config.json (gemma3_text; sliding_window 512, no rope scaling, vocab 262144)
    _shape("gemma-3-1b", "gemma3", _ids("google/gemma-3-1b-pt", "google/gemma-3-1b-it"),
           1152, 6912, 26, 4, 1, 256, 262144, 32768, True, False, sliding_window=512),
    # google/gemma-3-4b-pt config.json text_config; omitted keys take Gemma3TextConfig defaults
    # (8 heads, 4 kv, head_dim 256, vocab 262208, 131072 positions); rope_scaling linear x8
    _shape("gemma-3-4b", "gemma3", _ids("google/gemma-3-4b-pt", "google/gemma-3-4b-it"),
           2560, 10240, 34, 8, 4, 256, 262208, 131072, True, True, sliding_window=1024),
    # google/gemma-3-12b-pt config.json text_config
    _shape("gemma-3-12b", "gemma3", _ids("google/gemma-3-12b-pt", "google/gemma-3-12b-it"),
           3840, 15360, 48, 16, 8, 256, 262208, 131072, True, True, sliding_window=1024),
    # google/gemma-3-27b-pt config.json text_config (head_dim 128)
    _shape("gemma-3-27b", "gemma3", _ids("google/gemma-3-27b-pt", "google/gemma-3-27b-it"),
           5376, 21504, 62, 32, 16, 128, 262208, 131072, True, True, sliding_window=1024),
    # microsoft/Phi-3.5-mini-instruct config.json (fused qkv/gate_up, longrope; its sliding_window 262144 exceeds
    # the context, so none)
    _shape("phi-3.5-mini", "phi3", _ids("microsoft/Phi-3.5-mini-instruct",),
           3072, 8192, 32, 32, 32, 96, 32064, 131072, False, True, fused_qkv=True, fused_gate_up=True),
)

MODELS: dict[str, ModelShape] = {shape.key: shape for shape in _ENTRIES}
"""Every catalogued model shape by key."""


def _build_lookup() -> dict[str, ModelShape]:
    lookup: dict[str, ModelShape] = {}
    for shape in _ENTRIES:
        for name in (shape.key, *shape.hub_ids):
            if name.lower() in lookup:
                raise AssertionError(f"model name {name!r} is claimed twice in the catalog")
            lookup[name.lower()] = shape
    return lookup


_LOOKUP = _build_lookup()


def get_model(key_or_hub_id: str) -> ModelShape | None:
    """Look a model up by catalog key or listed hub id, ignoring case; None if it is not catalogued."""
    return _LOOKUP.get(key_or_hub_id.strip().lower())


def model_keys() -> list[str]:
    """The catalog keys, in catalog order."""
    return list(MODELS)


# ---------------------------------------------------------------------------------------------------------------
# config.json parsing

_FAMILY_OF_MODEL_TYPE = {
    "llama": "llama", "mistral": "mistral", "mixtral": "mixtral", "qwen2": "qwen2", "qwen3": "qwen3",
    "gemma2": "gemma2", "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi3",
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_FAMILY_OF_MODEL_TYPE))
"""``model_type`` values :func:`from_hf_config` understands."""

# Values transformers' config classes use when config.json omits a key (transformers 5.x configuration_<family>.py).
# save_pretrained leaves out values equal to these defaults in nested configs (Gemma 3's text_config) and may leave
# out tie_word_embeddings at top level, so they are needed to read real files.
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "max_position_embeddings": 2048},
    "mistral": {"tie_word_embeddings": False, "max_position_embeddings": 131072, "num_key_value_heads": 8,
                "sliding_window": 4096},
    "mixtral": {"tie_word_embeddings": False, "max_position_embeddings": 131072, "num_key_value_heads": 8,
                "num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2": {"tie_word_embeddings": False, "max_position_embeddings": 32768, "num_key_value_heads": 32},
    "qwen3": {"tie_word_embeddings": False, "max_position_embeddings": 32768, "num_key_value_heads": 32,
              "head_dim": 128},
    "gemma2": {"tie_word_embeddings": True, "max_position_embeddings": 8192, "num_key_value_heads": 4,
               "head_dim": 256, "sliding_window": 4096},
    "gemma3": {"tie_word_embeddings": True, "max_position_embeddings": 131072, "num_key_value_heads": 4,
               "head_dim": 256, "sliding_window": 4096, "vocab_size": 262208, "hidden_size": 2304,
               "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8},
    "phi3": {"tie_word_embeddings": False, "max_position_embeddings": 4096},
}
_SOFTCAP_DEFAULT = {"gemma2": 50.0}
"""``attn_logit_softcapping`` when config.json omits it (Gemma2Config's default; Gemma 3's is None). An explicit
null turns the cap off."""
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _positive_int(cfg: dict[str, Any], name: str) -> int:
    if name not in cfg or cfg[name] is None:
        raise ValueError(f"config.json has no {name!r}; it is needed to size the model")
    value = cfg[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json {name!r} must be a positive integer, got {value!r}")
    return value


def _declares_rope_scaling(cfg: dict[str, Any]) -> bool:
    """True when rope_scaling (transformers 4) or rope_parameters (transformers 5) names a non-default type."""
    for field in ("rope_scaling", "rope_parameters"):
        block = cfg.get(field)
        if not isinstance(block, dict):
            continue
        # transformers 5 may key rope_parameters by layer type (Gemma 3: full_attention / sliding_attention)
        blocks = [b for b in block.values() if isinstance(b, dict)] or [block]
        for item in blocks:
            rope_type = item.get("rope_type", item.get("type", "default"))
            if rope_type not in (None, "default"):
                return True
    return False


def _text_config(cfg: dict[str, Any], model_type: str) -> tuple[dict[str, Any], str]:
    """The decoder's own config dict and its model_type (unwraps Gemma 3's multimodal ``text_config``)."""
    if model_type != "gemma3":
        return cfg, model_type
    text = cfg.get("text_config")
    if text is None:
        raise ValueError("config.json has model_type 'gemma3' but no 'text_config'")
    if not isinstance(text, dict):
        raise ValueError("config.json 'text_config' must be an object")
    merged = dict(text)
    if "tie_word_embeddings" in cfg:  # Gemma3Config keeps the tie flag at top level
        merged["tie_word_embeddings"] = cfg["tie_word_embeddings"]
    return merged, "gemma3_text"


def from_hf_config(cfg: dict[str, Any], key: str = "local") -> ModelShape:
    """Parse a Hugging Face ``config.json`` dict into a ModelShape; raise ValueError naming what is wrong."""
    if not isinstance(cfg, dict):
        raise ValueError("config.json must be a JSON object")
    model_type = cfg.get("model_type")
    if not model_type:
        raise ValueError("config.json has no 'model_type'")
    if model_type not in _FAMILY_OF_MODEL_TYPE:
        raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    text, text_type = _text_config(cfg, model_type)
    family = _FAMILY_OF_MODEL_TYPE[text_type]
    if family != "gemma3":  # Gemma 3's sparse text_config relies on the class defaults for these too
        for name in _REQUIRED:
            _positive_int(text, name)
    # null means "use the default", except for sliding_window where it means "no window"
    given = {k: v for k, v in text.items() if v is not None or k == "sliding_window"}
    values = {**_CLASS_DEFAULTS[family], **given}

    hidden = _positive_int(values, "hidden_size")
    heads = _positive_int(values, "num_attention_heads")
    values.setdefault("num_key_value_heads", heads)
    kv_heads = _positive_int(values, "num_key_value_heads")
    if heads % kv_heads:
        raise ValueError(f"config.json 'num_attention_heads' ({heads}) is not a multiple of "
                         f"'num_key_value_heads' ({kv_heads})")
    if "head_dim" not in values:
        if hidden % heads:
            raise ValueError(f"config.json has no 'head_dim' and 'hidden_size' ({hidden}) is not a multiple of "
                             f"'num_attention_heads' ({heads})")
        values["head_dim"] = hidden // heads
    max_pos = _positive_int(values, "max_position_embeddings")

    num_experts = experts_per_token = 0
    if family == "mixtral":
        num_experts = _positive_int(values, "num_local_experts")
        experts_per_token = _positive_int(values, "num_experts_per_tok")
        if experts_per_token > num_experts:
            raise ValueError(f"config.json 'num_experts_per_tok' ({experts_per_token}) exceeds "
                             f"'num_local_experts' ({num_experts})")

    window = values.get("sliding_window")
    if family in ("qwen2", "qwen3") and not values.get("use_sliding_window", False):
        window = None
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
            raise ValueError(f"config.json 'sliding_window' must be a positive integer or null, got {window!r}")
        if window >= max_pos:
            window = None

    attention_bias = family == "qwen2" or bool(values.get("attention_bias", False))
    return ModelShape(
        key=key,
        family=family,
        hub_ids=(),
        hidden_size=hidden,
        intermediate_size=_positive_int(values, "intermediate_size"),
        num_layers=_positive_int(values, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=_positive_int(values, "head_dim"),
        vocab_size=_positive_int(values, "vocab_size"),
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(values["tie_word_embeddings"]),
        rope_scaling=_declares_rope_scaling(values),
        attention_bias=attention_bias,
        num_experts=num_experts,
        experts_per_token=experts_per_token,
        fused_qkv=family == "phi3",
        fused_gate_up=family == "phi3",
        sliding_window=window,
        attention_softcap=text.get("attn_logit_softcapping", _SOFTCAP_DEFAULT.get(family)) is not None,
    )
