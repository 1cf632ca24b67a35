"""Our GGUF exporter, checked against real llama.cpp (llama-cpp-python) on tiny models."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from ftplan_runtime import gguf_export  # noqa: E402
from ftplan_runtime.gguf_export import SUPPORTED_ARCHITECTURES, export_gguf  # noqa: E402


@pytest.fixture(scope="module")
def llama_cpp():
    """Skip a test when llama-cpp-python is missing (CI installs it, so these tests run there)."""
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from ftplan_runtime.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gguf") / "llama")


def _reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key: str):
    return reader.fields[key].contents()


# --------------------------------------------------------------------------- no llama.cpp needed


def test_supported_architectures():
    assert set(SUPPORTED_ARCHITECTURES) >= {"llama", "mistral", "qwen2"}


def test_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"does not support architecture 'gpt2'.*supported: llama, mistral, qwen2"):
        export_gguf(tmp_path, tmp_path / "out.gguf", "f16")
    assert not (tmp_path / "out.gguf").exists()


def test_unsupported_rope_and_outtype_are_refused(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
           "intermediate_size": 128, "vocab_size": 10, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope type 'dynamic'"):
        export_gguf(tmp_path, tmp_path / "out.gguf", "f16")
    with pytest.raises(ValueError, match="outtype"):
        export_gguf(tmp_path, tmp_path / "out.gguf", "q4_k_m")  # type: ignore[arg-type]


def _rope_halves(x: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """HF Llama RoPE on one head: component i rotates with i + d/2."""
    h = x.shape[-1] // 2
    a, b = x[:h], x[h:]
    return np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)])


def _rope_pairs(x: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """llama.cpp 'normal' RoPE on one head: component 2i rotates with 2i+1."""
    out = x.copy()
    a, b = x[0::2], x[1::2]
    out[0::2] = a * np.cos(ang) - b * np.sin(ang)
    out[1::2] = b * np.cos(ang) + a * np.sin(ang)
    return out


def test_qk_permutation_turns_rotate_half_into_adjacent_pairs():
    """q.k after HF RoPE equals q'.k' after llama.cpp RoPE on the permuted projections."""
    rng = np.random.default_rng(0)
    n_heads, d, n_in = 3, 8, 5
    wq, wk = rng.standard_normal((n_heads * d, n_in)), rng.standard_normal((n_heads * d, n_in))
    x1, x2 = rng.standard_normal(n_in), rng.standard_normal(n_in)
    freqs = 10000.0 ** (-np.arange(0, d, 2) / d)
    pq, pk = gguf_export._halves_to_pairs(wq, n_heads), gguf_export._halves_to_pairs(wk, n_heads)
    for h in range(n_heads):
        rows = slice(h * d, (h + 1) * d)
        ref = _rope_halves(wq[rows] @ x1, 7 * freqs) @ _rope_halves(wk[rows] @ x2, 3 * freqs)
        got = _rope_pairs(pq[rows] @ x1, 7 * freqs) @ _rope_pairs(pk[rows] @ x2, 3 * freqs)
        assert got == pytest.approx(ref, rel=1e-12)
    # biases are permuted the same way as weight rows
    bias = np.arange(n_heads * d, dtype=float)
    assert np.array_equal(gguf_export._halves_to_pairs(bias, n_heads), gguf_export._halves_to_pairs(bias[:, None], n_heads)[:, 0])
    assert list(gguf_export._halves_to_pairs(bias, n_heads)[:d]) == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize(
    ("pre", "expected"),
    [
        ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
        ({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": gguf_export._LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}, "llama-bpe"),
        ({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": gguf_export._QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}, "qwen2"),
    ],
)
def test_bpe_pre_tokenizer_names(pre, expected):
    assert gguf_export._bpe_pre_name({"normalizer": None, "pre_tokenizer": pre}) == expected


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"pre_tokenizer": {"type": "Metaspace"}}, "BPE pre-tokenizer is not supported"),
        ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "add_prefix_space"),
        ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}}, "split regex"),
        ({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "ByteLevel"}}, "normalizer 'Lowercase'"),
    ],
)
def test_unsupported_bpe_pre_tokenizers_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        gguf_export._bpe_pre_name(spec)


def test_missing_llama_cpp_gives_install_hint(monkeypatch):
    from ftplan_runtime import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match="GGML_NATIVE=OFF"):
        llamacpp.quantize("a.gguf", "b.gguf")


# --------------------------------------------------------------------------- with llama.cpp


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_export_and_verify_llama(llama_cpp, tiny_llama, tmp_path, outtype):
    import gguf

    from ftplan_runtime.gguf_verify import REL_BOUNDS, verify_gguf

    out = export_gguf(tiny_llama, tmp_path / f"m.{outtype}.gguf", outtype)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind
    report = verify_gguf(out, tiny_llama, None, outtype)
    assert report.passed and all(r.tokens_equal for r in report.results)
    assert report.max_rel_err <= REL_BOUNDS[outtype]
    if outtype == "f32":
        assert report.max_rel_err < 1e-5 and report.argmax_agreement == 1.0

    r = _reader(out)
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "tokenizer.ggml.model") == "llama"
    assert _field(r, "llama.block_count") == 2 and _field(r, "llama.attention.head_count_kv") == 2
    assert _field(r, "tokenizer.ggml.eos_token_id") == 4  # <|im_end|>
    assert _field(r, "tokenizer.ggml.add_bos_token") is True
    template = _field(r, "tokenizer.chat_template")
    assert "<|im_start|>" in template and "{% generation %}" not in template and "endgeneration" not in template
    types = {t.name: t.tensor_type for t in r.tensors}
    want = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
    assert types["blk.0.attn_q.weight"] == want and types["output.weight"] == want
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


@pytest.mark.slow
def test_export_is_deterministic_and_overwrites(tiny_llama, tmp_path):
    a = export_gguf(tiny_llama, tmp_path / "a.gguf", "q8_0")
    b = export_gguf(tiny_llama, tmp_path / "b.gguf", "q8_0")
    assert a.read_bytes() == b.read_bytes()
    export_gguf(tiny_llama, a, "f16")  # replaces the existing file in place
    assert a.stat().st_size > b.stat().st_size


@pytest.mark.slow
def test_q4_k_m_via_llama_cpp_quantize(llama_cpp, tiny_llama, tmp_path):
    from ftplan_runtime.gguf_verify import verify_gguf
    from ftplan_runtime.llamacpp import quantize

    f32 = export_gguf(tiny_llama, tmp_path / "m.f32.gguf", "f32")
    q4 = quantize(f32, tmp_path / "m.q4_k_m.gguf", "q4_k_m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.f32.gguf", "m.q4_k_m.gguf"]
    assert q4.stat().st_size < f32.stat().st_size
    report = verify_gguf(q4, tiny_llama, None, "q4_k_m")  # report only: no logit bound
    assert report.passed and report.rel_bound is None
    assert 0.5 < report.argmax_agreement <= 1.0
    assert report.max_rel_err > 1e-3  # it really is quantized
    with pytest.raises(ValueError, match="unknown llama.cpp quantization"):
        quantize(f32, tmp_path / "x.gguf", "q3_banana")  # type: ignore[arg-type]


@pytest.mark.slow
def test_wrong_qk_permutation_is_caught(llama_cpp, tiny_llama, tmp_path):
    from ftplan_runtime.gguf_verify import GgufVerificationError, verify_gguf

    bad = export_gguf(tiny_llama, tmp_path / "bad.gguf", "f32", _permute_qk=False)
    with pytest.raises(GgufVerificationError) as info:
        verify_gguf(bad, tiny_llama, None, "f32")
    report = info.value.report
    assert all(r.tokens_equal for r in report.results)  # only the logits are wrong
    assert report.max_rel_err > 100 * 1e-4  # far beyond f32's bound, and beyond f16's
    assert report.max_rel_err > 10 * 1e-3


@pytest.mark.slow
def test_qwen2_with_biases_and_bpe(llama_cpp, tmp_path):
    import gguf

    from ftplan_runtime.gguf_verify import verify_gguf
    from ftplan_runtime.tiny import build_tiny_model

    d = build_tiny_model(tmp_path / "qwen", arch="qwen2")
    for outtype in ("f32", "f16"):
        out = export_gguf(d, tmp_path / f"q.{outtype}.gguf", outtype)
        report = verify_gguf(out, d, None, outtype)
        assert report.passed
    r = _reader(out)
    assert _field(r, "general.architecture") == "qwen2"
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "qwen2"
    assert _field(r, "tokenizer.ggml.add_bos_token") is False
    assert len(r.fields["tokenizer.ggml.merges"].data) > 100
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert {"blk.1.attn_k.bias", "blk.1.attn_v.bias"} <= set(types)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt-2", "llama-bpe"])
def test_llama_with_byte_level_bpe(llama_cpp, tmp_path, kind):
    from ftplan_runtime.gguf_verify import verify_gguf
    from ftplan_runtime.tiny import build_tiny_model

    d = build_tiny_model(tmp_path / kind, tokenizer=kind)
    out = export_gguf(d, tmp_path / "m.gguf", "f32")
    assert verify_gguf(out, d, None, "f32").passed
    r = _reader(out)
    assert _field(r, "tokenizer.ggml.pre") == kind
    assert _field(r, "tokenizer.ggml.add_bos_token") is (kind == "llama-bpe")


@pytest.mark.slow
def test_llama3_rope_scaling_writes_rope_freqs(llama_cpp, tiny_llama, tmp_path):
    from ftplan_runtime.gguf_verify import verify_gguf

    d = tmp_path / "llama3"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    # original context 64 puts the tiny head's 8 frequencies in all three llama3 bands
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (d / "config.json").write_text(json.dumps(cfg))
    out = export_gguf(d, tmp_path / "l3.gguf", "f32")
    factors = {t.name: t for t in _reader(out).tensors}["rope_freqs.weight"].data
    # wavelengths 2*pi*10^(i/2): i=0 is short (kept), i=1,2 sit between 16 and 64 (blended), the rest long (/8)
    assert factors[0] == 1.0 and 1.0 < factors[1] < factors[2] < 8.0 and list(factors[3:]) == [8.0] * 5
    assert verify_gguf(out, d, None, "f32").passed
    # and the scaling matters: the plain-rope GGUF does not match the llama3 model
    plain = export_gguf(tiny_llama, tmp_path / "plain.gguf", "f32")
    assert not verify_gguf(plain, d, None, "f32", raise_on_failure=False).passed


@pytest.mark.slow
def test_complete_is_greedy_and_uses_the_chat_template(llama_cpp, tiny_llama, tmp_path):
    from ftplan_runtime import llamacpp

    out = export_gguf(tiny_llama, tmp_path / "m.gguf", "f16")
    a = llamacpp.complete(out, "What is 3 + 3?", max_tokens=8, chat=True)
    b = llamacpp.complete(out, "What is 3 + 3?", max_tokens=8, chat=True)
    c = llamacpp.complete(out, "What is 3 + 3?", max_tokens=8)
    assert isinstance(a, str) and a == b and isinstance(c, str)
    ids = llamacpp.tokenize(out, "<|im_start|>user\nhi<|im_end|>")
    assert ids[:2] == [1, 3]  # BOS, then <|im_start|> as one token
