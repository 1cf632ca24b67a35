"""Data stage: chat templates, completion masks, preference/KTO splits and fitting to max_seq_len."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ftplan_runtime.data import CHATML, BadRow, DataError
from ftplan.data.rows import Conversation, Pair, Text, Unpaired
from ftplan_runtime.data.templates import resolve_template
from ftplan_runtime.data.tokenize import Encoder, KtoExample, PairExample, SftExample, fit

_spec = importlib.util.spec_from_file_location("data_fixtures", Path(__file__).with_name("test_data_fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

# ChatML without generation markers: masks must then come from prefix diffs
CHATML_PLAIN = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")


@pytest.fixture(scope="module")
def tok():
    return fx.build_tokenizer()


def t(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CONVERSATIONS = [
    Conversation(t(("system", "Be brief."), ("user", "What is 3 + 3?"), ("assistant", "The answer is 6."))),
    Conversation(t(("user", "Name three fruits."), ("assistant", "Apple, banana and orange."),
                   ("user", "Thanks, anything else?"), ("assistant", "No."))),
    Conversation(t(("user", "Hello"), ("assistant", "Hello, how can I help you today?"), ("user", "Go away."))),
    Conversation(t(("user", "Q"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")), train_from=3),
]


def encoder(tok, template=CHATML, loss_on="completion"):
    tok.chat_template = template
    return Encoder(tok, resolve_template("tokenizer", tok), loss_on)


def test_generation_masks_train_exactly_assistant_text_and_end_of_turn(tok):
    enc = encoder(tok)
    assert enc.masking == "generation"
    ex = enc.encode(CONVERSATIONS[1], 1)
    assert fx.trained_spans(tok, ex.input_ids, ex.completion_mask) == [
        "Apple, banana and orange.<|im_end|>", "No.<|im_end|>"]
    assert tok.decode(ex.input_ids).startswith("<|im_start|>user\nName three fruits.<|im_end|>\n")


def test_prompt_completion_trains_only_the_completion(tok):
    ex = encoder(tok).encode(CONVERSATIONS[3], 1)
    assert fx.trained_spans(tok, ex.input_ids, ex.completion_mask) == ["A2<|im_end|>"]


def test_prefix_diff_masks_equal_generation_masks(tok):
    with_markers = encoder(tok)
    gen = [with_markers.encode(c, 1) for c in CONVERSATIONS]
    plain = encoder(tok, CHATML_PLAIN)
    assert plain.masking == "prefix-diff"
    diff = [plain.encode(c, 1) for c in CONVERSATIONS]
    assert diff == gen
    # the newline after <|im_end|> is not trained, the end-of-turn token is
    assert fx.trained_spans(tok, diff[0].input_ids, diff[0].completion_mask) == ["The answer is 6.<|im_end|>"]


def test_end_of_turn_after_the_generation_block_is_trained(tok):
    short = CHATML.replace("{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
                           "{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}")
    assert short != CHATML
    ex = encoder(tok, short).encode(CONVERSATIONS[1], 1)
    assert fx.trained_spans(tok, ex.input_ids, ex.completion_mask) == [
        "Apple, banana and orange.<|im_end|>", "No.<|im_end|>"]


def test_loss_on_all_trains_every_token(tok):
    ex = encoder(tok, loss_on="all").encode(CONVERSATIONS[0], 1)
    assert ex.completion_mask == [1] * len(ex.input_ids)


def test_text_trains_every_token_and_ends_with_eos(tok):
    ex = encoder(tok).encode(Text("The quick brown fox"), 1)
    assert tok.decode(ex.input_ids) == "The quick brown fox<|im_end|>"
    assert ex.completion_mask == [1] * len(ex.input_ids)


def test_preference_is_split_at_the_common_prefix(tok):
    enc = encoder(tok)
    pair = Pair(t(("user", "What is 3 + 3?")), t(("assistant", "The answer is 6.")), t(("assistant", "Seven.")))
    ex = enc.encode(pair, 1)
    assert isinstance(ex, PairExample)
    assert tok.decode(ex.prompt_ids) == "<|im_start|>user\nWhat is 3 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex.chosen_ids) == "The answer is 6.<|im_end|>\n"
    assert tok.decode(ex.rejected_ids) == "Seven.<|im_end|>\n"
    full = tok.apply_chat_template(pair.prompt + pair.chosen, tokenize=True, return_dict=True)["input_ids"]
    assert ex.prompt_ids + ex.chosen_ids == list(full)


def test_kto_example(tok):
    ex = encoder(tok).encode(Unpaired(t(("user", "Hello")), t(("assistant", "Go away.")), False), 1)
    assert isinstance(ex, KtoExample) and ex.label is False
    assert tok.decode(ex.completion_ids) == "Go away.<|im_end|>\n"


def test_template_rejecting_a_row_is_a_bad_row(tok):
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be user') }}{% endif %}" \
        + CHATML
    with pytest.raises(BadRow, match="rejected this row: first turn must be user"):
        encoder(tok, strict).encode(CONVERSATIONS[0], 5)


def test_fit_truncate_and_drop():
    ex = SftExample(list(range(10)), [0] * 4 + [1] * 6)
    got = fit(ex, 6, "truncate")
    assert got.truncated and got.example == SftExample(list(range(6)), [0, 0, 0, 0, 1, 1])
    assert fit(ex, 10, "truncate") == fit(ex, 10, "drop")
    assert fit(ex, 10, "drop").example == ex
    assert fit(ex, 6, "drop").reason == "10 tokens, longer than max_seq_len 6 (truncation: drop)"
    gone = fit(ex, 4, "truncate")
    assert gone.example is None and gone.reason.startswith("no trained tokens left after truncation")
    assert fit(SftExample([1, 2], [0, 0]), 8, "truncate").reason.startswith("no trained tokens")


def test_fit_pairs():
    pair = PairExample([1, 2, 3], [4, 5, 6, 7], [8, 9])
    got = fit(pair, 5, "truncate")
    assert got.truncated and got.example == PairExample([1, 2, 3], [4, 5], [8, 9])
    assert fit(pair, 3, "truncate").reason.startswith("the prompt alone is 3 tokens")
    assert fit(pair, 6, "drop").reason == "7 tokens, longer than max_seq_len 6 (truncation: drop)"
    assert fit(KtoExample([1], [2, 3], True), 2, "truncate").example == KtoExample([1], [2], True)


def test_builtin_templates_resolve_and_check_tokens(tok):
    tok.chat_template = None
    assert resolve_template("chatml", tok).text == CHATML
    with pytest.raises(DataError, match=r"chat template 'llama3' needs the special tokens <\|start_header_id\|>"):
        resolve_template("llama3", tok)
    with pytest.raises(DataError, match="has no chat template; set model.chat_template"):
        resolve_template("tokenizer", tok)
    assert resolve_template("tokenizer", tok, needed=False).text == ""
    with pytest.raises(DataError, match="'nope' is neither tokenizer, a built-in template"):
        resolve_template("nope", tok)


def test_llama3_template_with_its_tokens_added(tok):
    tok2 = fx.build_tokenizer(template=None)
    tok2.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    enc = Encoder(tok2, resolve_template("llama3", tok2), "completion")
    ex = enc.encode(CONVERSATIONS[1], 1)
    assert fx.trained_spans(tok2, ex.input_ids, ex.completion_mask) == [
        "Apple, banana and orange.<|eot_id|>", "No.<|eot_id|>"]


def test_jinja_file_template(tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jinja").write_text(CHATML_PLAIN)
    resolved = resolve_template("t.jinja", tok)
    assert resolved.source == "t.jinja" and not resolved.has_generation
    assert tok.convert_tokens_to_ids("<|im_end|>") in resolved.end_of_turn_ids
