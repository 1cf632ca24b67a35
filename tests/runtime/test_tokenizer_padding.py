"""A tokenizer without a pad token (Llama 3, Mistral) pads with a token it already has; nothing is added."""

import json

import pytest

from ftplan.schemas.model import ModelSpec
from ftplan.schemas.runtime_args import ModelSource
from ftplan_runtime import model_loading
from ftplan_runtime.tiny import build_tiny_model


@pytest.fixture(scope="module")
def no_pad_model(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("nopad") / "m")
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    special = path / "special_tokens_map.json"
    if special.exists():
        smap = json.loads(special.read_text())
        smap.pop("pad_token", None)
        special.write_text(json.dumps(smap))
    return path


def _load(path):
    source = ModelSource(weights=str(path), tokenizer=str(path))
    return model_loading.load_tokenizer(source, ModelSpec(base=str(path)))


def test_a_reserved_padding_token_in_the_vocabulary_is_used(no_pad_model, capsys):
    tok, changed = _load(no_pad_model)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == tok.convert_tokens_to_ids("<pad>")
    assert not changed  # the saved tokenizer stays byte-identical
    assert "has no pad token" in capsys.readouterr().err


def test_without_a_reserved_token_the_eos_token_pads(no_pad_model, monkeypatch):
    monkeypatch.setattr(model_loading, "_PAD_CANDIDATES", ())
    tok, _ = _load(no_pad_model)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
