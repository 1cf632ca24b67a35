"""The tiny local model + tokenizer builder (ftplan_runtime.tiny)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from ftplan_runtime import tiny  # noqa: E402


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.mark.slow
def test_files_and_config(tiny_dir, tok):
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_dir / name).is_file(), name
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (64, 2, 4, 2)
    assert cfg["intermediate_size"] == 128 and cfg["max_position_embeddings"] == 512
    assert 300 <= cfg["vocab_size"] <= 1000
    assert cfg["vocab_size"] == len(tok)
    assert cfg["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg["pad_token_id"] == tok.convert_tokens_to_ids("<pad>")
    assert json.loads((tiny_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_dir):
    again = tiny.build_tiny_model(tmp_path / "again")
    other = tiny.build_tiny_model(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.model", "tokenizer.json", "config.json"):
        assert _digest(again / name) == _digest(tiny_dir / name), name
    assert _digest(other / "model.safetensors") != _digest(tiny_dir / "model.safetensors")


@pytest.mark.slow
def test_weights_follow_init_std(tiny_dir):
    from safetensors.numpy import load_file

    sd = load_file(str(tiny_dir / "model.safetensors"))
    q = sd["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (64, 64)
    assert 0.025 < float(q.std()) < 0.035  # init_std=0.03
    norm = sd["model.layers.0.input_layernorm.weight"]
    assert abs(float(norm.mean()) - 1.0) < 0.05 and float(norm.std()) > 0.05


@pytest.mark.slow
def test_special_tokens_are_single_ids(tok):
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>" and tok.bos_token == "<s>"
    for t in ("<|im_start|>", "<|im_end|>", "<pad>"):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert ids == [tok.convert_tokens_to_ids(t)], t
    # BOS is added by default, EOS is not
    ids = tok("hello")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id


@pytest.mark.slow
def test_text_round_trips(tok):
    text = "What is 3 + 3? Zürich café 😀 two  spaces\n\nend"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids  # byte fallback covers everything
    assert tok.decode(ids) == text


@pytest.mark.slow
def test_chat_template_renders_chatml_and_masks_assistant(tok):
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 3 + 3?"},
        {"role": "assistant", "content": "The answer is 6."},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 3 + 3?<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 6.<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = [i for i, m in zip(ids, mask) if m]
    # exactly the assistant's content plus its closing <|im_end|> is marked for training
    assert tok.decode(trained) == "The answer is 6.<|im_end|>"
    assert tok.decode(ids) == text


@pytest.mark.slow
def test_qwen2_shape(tmp_path):
    from transformers import AutoTokenizer

    d = tiny.build_tiny_model(tmp_path / "q", arch="qwen2")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and not (d / "tokenizer.model").exists()
    t = AutoTokenizer.from_pretrained(str(d))
    assert cfg["vocab_size"] == len(t)
    assert t.bos_token_id is None and t.eos_token == "<|im_end|>"
    text = "Hello world!  Two  spaces\n\nnew line 12345 😀"
    assert t.decode(t(text)["input_ids"]) == text
    from safetensors.numpy import load_file

    sd = load_file(str(d / "model.safetensors"))
    assert float(abs(sd["model.layers.0.self_attn.q_proj.bias"]).max()) > 0  # biases are non-zero


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        tiny.build_tiny_model("/nonexistent/never-written", arch="gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokenizer kind"):
        tiny.build_tiny_model("/nonexistent/never-written", tokenizer="wordpiece")  # type: ignore[arg-type]


@pytest.mark.slow
def test_cli(tmp_path, capsys):
    assert tiny.main([str(tmp_path / "cli"), "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert (tmp_path / "cli" / "model.safetensors").is_file()
