"""Hugging Face checkpoint -> GGUF, written with the `gguf` package only (no llama.cpp script).

Supported: Llama-family decoders (``llama``, ``mistral``) and ``qwen2``, stored as safetensors,
with either a SentencePiece tokenizer (``tokenizer.model``) or a byte-level BPE
``tokenizer.json`` whose pre-tokenizer llama.cpp implements ("gpt-2", "llama-bpe", "qwen2").
Anything else raises ``ValueError`` naming what is not supported.

Layout notes (what llama.cpp expects, and why the tensors are transformed):

* GGUF shapes are the numpy shapes reversed; a HF ``nn.Linear`` weight ``[out, in]`` is
  written as is and llama.cpp sees ``ne = {in, out}``, which is the layout it wants.
* RoPE: HF Llama rotates *halves* of each head (``rotate_half``: dim ``i`` pairs with
  ``i + d/2``); llama.cpp's LLAMA architecture uses "normal" RoPE, which rotates *adjacent*
  pairs (``2i``, ``2i+1``). So the rows of q_proj/k_proj (and their biases) are reordered per
  head, see :func:`_halves_to_pairs`. Qwen2 runs NEOX-style RoPE in llama.cpp, which is the
  rotate-half convention already, so Qwen2 tensors are written unchanged.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ftplan.schemas.runtime_args import GGUF_FAMILIES

OutType = Literal["f32", "f16", "bf16", "q8_0"]
OUTTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0")

# HF `model_type` values this exporter handles: the contract's list, which the compiler checks GGUF stages against
# (`_ARCH` below has an entry for each; tests/runtime/test_contract.py holds them equal).
SUPPORTED_ARCHITECTURES: tuple[str, ...] = GGUF_FAMILIES

# HF model_type -> (llama.cpp architecture name, whether q/k need the halves->pairs permutation)
_ARCH = {
    "llama": ("llama", True),
    "mistral": ("llama", True),  # llama.cpp runs Mistral (dense) as LLAMA
    "qwen2": ("qwen2", False),
}

# Pre-tokenizer split regexes as written in tokenizer.json, and the llama.cpp name for each.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_PRE = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}

# `{% generation %}` / `{% endgeneration %}` are a transformers-only Jinja extension (they mark
# assistant tokens for training masks); llama.cpp's and llama-cpp-python's Jinja reject them.
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass(frozen=True)
class _HParams:
    arch: str  # HF model_type
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    n_vocab: int
    rms_eps: float
    rope_theta: float
    rope: dict[str, Any]  # the HF rope parameters (type, factor, ...)
    tied: bool


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    outtype: OutType = "f16",
    *,
    name: str | None = None,
    _permute_qk: bool = True,
) -> Path:
    """Convert the HF checkpoint in `model_dir` to a GGUF file at `out_path`; return the path.

    `outtype` sets the type of the 2-D weights: "f32", "f16", "bf16" or "q8_0" (rows whose
    length is not a multiple of 32 fall back to f16, as llama.cpp's converter does). 1-D
    tensors (norms, biases, rope factors) are always f32. The file is written to a temporary
    name in the destination folder and renamed into place, so a reader never sees a partial
    file. `name` sets ``general.name`` (default: the folder name). `_permute_qk=False` skips
    the RoPE layout fix and exists only to prove verification catches it.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
    model_dir = Path(model_dir)
    out_path = Path(out_path)
    hp = _read_hparams(model_dir)
    gguf_arch, needs_permute = _ARCH[hp.arch]

    writer = gguf.GGUFWriter(path=None, arch=gguf_arch)
    _write_hparams(writer, hp, outtype, name or model_dir.resolve().name)
    _write_tokenizer(writer, model_dir, hp.n_vocab)
    _write_tensors(writer, model_dir, hp, outtype, permute=needs_permute and _permute_qk)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out_path


# --------------------------------------------------------------------------- hyperparameters

def _read_hparams(model_dir: Path) -> _HParams:
    """Read config.json and refuse configurations this exporter cannot represent faithfully."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    cfg = json.loads(cfg_path.read_text())
    arch = cfg.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF export does not support architecture {arch!r} "
            f"(architectures={cfg.get('architectures')}); supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"GGUF export supports hidden_act='silu' only, got {cfg['hidden_act']!r}")
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise ValueError("GGUF export: qwen2 with use_sliding_window=true is not supported by llama.cpp's qwen2")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("GGUF export: partial_rotary_factor != 1 is not supported")

    n_embd, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or n_embd // n_head
    # transformers 5 writes `rope_parameters`; 4.x wrote `rope_theta` + `rope_scaling`
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    rope["rope_type"] = rope_type
    if rope_type not in ("default", "linear", "yarn", "llama3"):
        raise ValueError(
            f"GGUF export: rope type {rope_type!r} is not supported (supported: default, linear, yarn, llama3)"
        )
    return _HParams(
        arch=arch,
        n_layer=cfg["num_hidden_layers"],
        n_embd=n_embd,
        n_ff=cfg["intermediate_size"],
        n_head=n_head,
        n_head_kv=cfg.get("num_key_value_heads") or n_head,
        head_dim=head_dim,
        n_ctx=cfg.get("max_position_embeddings", 4096),
        n_vocab=cfg["vocab_size"],
        rms_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        rope=rope,
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )


def _file_type(outtype: str):
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]


def _write_hparams(writer, hp: _HParams, outtype: str, name: str) -> None:
    """Write the model metadata keys llama.cpp reads for llama/qwen2."""
    import gguf

    writer.add_name(name)
    writer.add_file_type(_file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(hp.n_vocab)
    if hp.head_dim != hp.n_embd // hp.n_head:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    kind = hp.rope["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(hp.rope["original_max_position_embeddings"]))
        for key, add in (("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow),
                         ("attention_factor", writer.add_rope_scaling_yarn_attn_factor)):
            if hp.rope.get(key) is not None:
                add(float(hp.rope[key]))
    # "llama3" has no metadata key: it is carried by the rope_freqs tensor (see _llama3_rope_factors)


def _llama3_rope_factors(hp: _HParams) -> np.ndarray:
    """Per-frequency divisors for Llama-3.1 RoPE scaling, as llama.cpp's `rope_freqs` tensor.

    For rotary frequency f_i = theta^(-2i/d) with wavelength w_i = 2*pi/f_i, Llama-3.1 keeps
    short wavelengths (w < L/high), divides long ones (w > L/low) by `factor`, and in between
    interpolates f' = (1-s) f/factor + s f with s = (L/w - low)/(high - low), L the original
    context. llama.cpp computes f / rope_freqs[i], so the tensor holds f / f' per frequency.
    """
    r = hp.rope
    factor = float(r.get("factor", 8.0))
    low, high = float(r.get("low_freq_factor", 1.0)), float(r.get("high_freq_factor", 4.0))
    orig = float(r.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float64) / hp.head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (orig / wavelen - low) / (high - low)
    divisor = 1.0 / ((1 - smooth) / factor + smooth)
    divisor = np.where(wavelen < orig / high, 1.0, divisor)
    divisor = np.where(wavelen > orig / low, factor, divisor)
    return divisor.astype(np.float32)


# --------------------------------------------------------------------------- tensors

def _halves_to_pairs(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k projection rows from HF's rotate-half layout to llama.cpp's pair layout.

    Within one head of size d, HF rotates component i together with i + d/2; llama.cpp's
    normal RoPE rotates 2i with 2i+1. Viewing the head's rows as [2, d/2] (half, index) and
    transposing to [d/2, 2] interleaves the halves: new row 2i = old i, 2i+1 = old i + d/2.
    Works for weights [n_heads*d, in] and biases [n_heads*d].
    """
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_state(model_dir: Path) -> dict[str, np.ndarray]:
    """Load every tensor of the (possibly sharded) safetensors checkpoint as float32 numpy."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{model_dir}: no model.safetensors or model.safetensors.index.json (only safetensors is supported)")
    state: dict[str, np.ndarray] = {}
    for fname in files:
        with safe_open(str(model_dir / fname), framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key).float().numpy()
    return state


def _block_sort_key(name: str) -> tuple[int, str]:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return (int(m.group(1)) if m else (-1 if "embed" in name else 1 << 30), name)


def _write_tensors(writer, model_dir: Path, hp: _HParams, outtype: str, *, permute: bool) -> None:
    """Map HF tensor names to GGUF names, fix the RoPE layout, convert dtypes, add to writer."""
    import gguf

    T = gguf.MODEL_TENSOR
    allowed = {T.TOKEN_EMBD, T.OUTPUT_NORM, T.OUTPUT, T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V,
               T.ATTN_OUT, T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN}
    gguf_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == _ARCH[hp.arch][0])
    name_map = gguf.get_tensor_name_map(gguf_arch, hp.n_layer)
    target = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]

    state = _load_state(model_dir)
    for hf_name in sorted(state, key=_block_sort_key):
        data = state[hf_name]
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from the metadata
        if hf_name == "lm_head.weight" and hp.tied and np.array_equal(data, state.get("model.embed_tokens.weight")):
            continue  # truly tied: llama.cpp reuses token_embd when `output` is absent
        found = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in allowed:
            raise ValueError(f"GGUF export ({hp.arch}): tensor {hf_name!r} {tuple(data.shape)} is not supported")
        kind, new_name = found
        if permute and kind is T.ATTN_Q:
            data = _halves_to_pairs(data, hp.n_head)
        elif permute and kind is T.ATTN_K:
            data = _halves_to_pairs(data, hp.n_head_kv)
        _add_tensor(writer, new_name, data, target)

    if hp.rope["rope_type"] == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight", _llama3_rope_factors(hp))


def _add_tensor(writer, name: str, data: np.ndarray, target) -> None:
    """Add one tensor: 1-D and norm tensors stay f32; others become `target` (q8_0 may fall back to f16)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    qtype = Q.F32 if data.ndim <= 1 or name.endswith("_norm.weight") else target
    try:
        packed = gguf.quants.quantize(data, qtype)
    except gguf.QuantError:  # q8_0 needs rows that are a multiple of 32 values
        qtype = Q.F16
        packed = gguf.quants.quantize(data, qtype)
    # quantized/bf16 data comes back as uint8 bytes; the writer derives the logical shape from raw_dtype
    writer.add_tensor(name, packed, raw_dtype=qtype)


# --------------------------------------------------------------------------- tokenizer

def _write_tokenizer(writer, model_dir: Path, n_vocab: int) -> None:
    """Write the vocabulary (SentencePiece or byte-level BPE), special ids and chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if (model_dir / "tokenizer.model").is_file():
        tokens, scores, types = _spm_vocab(model_dir / "tokenizer.model", tok, writer)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
    else:
        tokens, types, merges, pre = _bpe_vocab(tok)
        scores = None
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_merges(merges)

    if len(tokens) > n_vocab:
        raise ValueError(f"tokenizer has {len(tokens)} tokens but the model's embedding has only {n_vocab} rows")
    # the embedding may be padded beyond the tokenizer (e.g. to a multiple of 64): llama.cpp
    # needs one token per row, so add unused placeholders
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        types.append(5)  # UNUSED
        if scores is not None:
            scores.append(-1000.0)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)

    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        if (tid := getattr(tok, attr, None)) is not None:
            add(int(tid))
    # Whether BOS/EOS get added is decided by the tokenizer's post-processor; ask it directly.
    with_special = tok("a")["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    writer.add_add_bos_token(bool(tok.bos_token_id is not None and with_special[:1] == [tok.bos_token_id]
                                  and plain[:1] != [tok.bos_token_id]))
    writer.add_add_eos_token(bool(tok.eos_token_id is not None and with_special[-1:] == [tok.eos_token_id]
                                  and plain[-1:] != [tok.eos_token_id]))
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(_GENERATION_TAG.sub("", template))


def _spm_vocab(path: Path, tok, writer) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types from the SentencePiece ModelProto, plus the HF added tokens.

    SentencePiece piece types (NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5,
    BYTE=6) have the same numbers as GGUF token types. Tokens transformers treats as special
    become CONTROL so llama.cpp also treats them as special (and <|im_end|> as end-of-generation).
    The dummy-prefix flag is copied from the model; note that llama.cpp then prefixes "▁" after
    every special token too, which transformers does only with ``legacy=True``: a mismatch
    there shows up as differing token ids in :func:`ftplan_runtime.gguf_verify.verify_gguf`.
    """
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM, BPE
        raise ValueError(f"{path}: SentencePiece model type {proto.trainer_spec.model_type} is not supported")
    tokens = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]

    # the HF tokenizer must use the same ids for the same pieces, or the GGUF would disagree with training
    hf_pieces = tok.convert_ids_to_tokens(list(range(len(tokens))))
    bad = [i for i, (a, b) in enumerate(zip(tokens, hf_pieces)) if a.decode("utf-8") != b]
    if bad:
        i = bad[0]
        raise ValueError(f"{path} disagrees with the HF tokenizer at id {i}: {tokens[i]!r} vs {hf_pieces[i]!r}")
    for tid, added in sorted(tok.added_tokens_decoder.items()):
        while len(tokens) <= tid:
            tokens.append(f"[PAD{len(tokens)}]".encode())
            scores.append(-1000.0)
            types.append(5)
        tokens[tid] = added.content.encode("utf-8")
        types[tid] = 3 if added.special else 4  # CONTROL / USER_DEFINED
        scores[tid] = -1000.0 if types[tid] == 4 else scores[tid]

    norm = proto.normalizer_spec
    writer.add_add_space_prefix(bool(norm.add_dummy_prefix))
    writer.add_remove_extra_whitespaces(bool(norm.remove_extra_whitespaces))
    return tokens, scores, types


def _bpe_pre_name(spec: dict) -> str:
    """The llama.cpp pre-tokenizer name for a tokenizer.json pipeline, or ValueError."""
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ValueError(f"BPE tokenizer normalizer {normalizer.get('type')!r} is not supported (only none or NFC)")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise ValueError("ByteLevel pre-tokenizer with add_prefix_space=true is not supported by llama.cpp")
        if pre.get("use_regex", True):
            return "gpt-2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel"
                and not parts[1].get("use_regex", True) and not parts[1].get("add_prefix_space")
                and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert")):
            regex = (parts[0].get("pattern") or {}).get("Regex")
            if regex in _SPLIT_PRE:
                return _SPLIT_PRE[regex]
            raise ValueError(f"BPE pre-tokenizer split regex is not one llama.cpp knows as llama-bpe/qwen2: {regex!r}")
    raise ValueError(
        "BPE pre-tokenizer is not supported (supported: plain ByteLevel -> 'gpt-2', "
        f"Split(Llama-3 regex)+ByteLevel -> 'llama-bpe', Split(Qwen2 regex)+ByteLevel -> 'qwen2'): {json.dumps(pre)[:300]}"
    )


def _bpe_vocab(tok) -> tuple[list[bytes], list[int], list[str], str]:
    """Tokens, types, merges and pre-tokenizer name from the HF tokenizer's live tokenizers pipeline.

    The pipeline is read from the loaded tokenizer (not tokenizer.json on disk) because some
    transformers classes rebuild it on load; the GGUF must match what training used.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("no tokenizer.model and no fast (tokenizers) backend: cannot export the vocabulary")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError(f"tokenizer.json model {model.get('type')!r} (byte_fallback={model.get('byte_fallback')}) "
                         "without tokenizer.model is not supported; only byte-level BPE is")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError("byte-level BPE export expects a ByteLevel decoder")
    pre = _bpe_pre_name(spec)

    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added = tok.added_tokens_decoder
    for tid, a in added.items():
        by_id[tid] = a.content
    n = max(by_id) + 1
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]".encode())
            types.append(5)  # UNUSED
            continue
        tokens.append(by_id[i].encode("utf-8"))
        types.append((3 if added[i].special else 4) if i in added else 1)  # CONTROL / USER_DEFINED / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, pre
