"""Chat template and tokenizer rules (FT406-FT411)."""

from ftplan.checks import BUILTIN_TEMPLATES
from ftplan.checks.tokenizer import chat_datasets, is_template_name, jinja_problem
from ftplan.diagnostics import Severity

TEXT_ONLY = [{"id": "data", "kind": "data", "max_seq_len": 1024,
              "datasets": [{"path": "data/corpus.jsonl", "format": "text"}]},
             {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4, "adapter": {"type": "lora"}}]


def test_builtin_templates_exported():
    assert BUILTIN_TEMPLATES == ("chatml", "llama3")
    assert is_template_name("chatml") and not is_template_name("templates/chat.jinja")


def test_ft406_tokenizer_template_missing_for_chat_data(check, tools):
    inputs = tools.Inputs(tokenizer=tools.llama_tokenizer(has_chat_template=False))
    [d] = tools.codes(check(tools.build(), inputs), "FT406")
    assert d.severity is Severity.ERROR and d.path == ("model", "chat_template")
    assert "data/chat.jsonl" in d.message and "chatml" in d.hint
    # plain text is trained without a template
    assert not tools.codes(check(tools.build(stages=TEXT_ONLY), inputs), "FT406")
    # a built-in template replaces the tokenizer's
    assert not tools.codes(check(tools.build(model={"chat_template": "llama3"}), inputs), "FT406")


def test_preference_strings_need_no_template_but_message_lists_do(tools):
    pipeline = tools.build()
    strings = tools.Inputs(datasets=tools.heads(data_1=[tools.PAIR_ROW]))
    ctx, _ = tools.resolve_ctx(pipeline, strings)
    assert chat_datasets(ctx) == ["data/chat.jsonl"]
    listed = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
              "rejected": [{"role": "assistant", "content": "5"}]}
    ctx, _ = tools.resolve_ctx(pipeline, tools.Inputs(datasets=tools.heads(data_1=[listed])))
    assert chat_datasets(ctx) == ["data/chat.jsonl", "data/pairs.jsonl"]


def test_ft407_unknown_template_name_or_missing_file(check, tools):
    [d] = tools.codes(check(model={"chat_template": "chatm"}), "FT407")
    assert d.message == "unknown chat template 'chatm'" and "'chatml'" in d.hint
    inputs = tools.Inputs(missing=((("model", "chat_template"), "templates/chat.jinja"),))
    [d] = tools.codes(check(tools.build(model={"chat_template": "templates/chat.jinja"}), inputs), "FT407")
    assert "does not exist" in d.message
    assert not tools.codes(check(model={"chat_template": "chatml"}), "FT407")


def test_ft408_template_file_must_parse(check, tools):
    bad = tools.Inputs(chat_template="{% for m in messages %}{{ m.content }")
    [d] = tools.codes(check(tools.build(model={"chat_template": "chat.jinja"}), bad), "FT408")
    assert "line 1" in d.message
    good = tools.Inputs(chat_template="{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
                        "{{ m.content }}{% endgeneration %}{% endif %}{% endfor %}")
    assert not tools.codes(check(tools.build(model={"chat_template": "chat.jinja"}), good), "FT408")
    assert jinja_problem("{{ x }}") is None


def test_ft409_eos_token_must_be_in_the_vocabulary(check, tools):
    inputs = tools.Inputs(tokenizer=tools.llama_tokenizer(eos_token="</s>"))
    [d] = tools.codes(check(tools.build(), inputs), "FT409")
    assert "'</s>'" in d.message and d.path == ("model", "base")
    inputs = tools.Inputs(tokenizer=tools.llama_tokenizer(eos_token=None))
    [d] = tools.codes(check(tools.build(model={"tokenizer": "./tok"}), inputs), "FT409")
    assert d.path == ("model", "tokenizer") and "no eos_token" in d.message
    assert not tools.codes(check(tools.build(), tools.Inputs(tokenizer=tools.llama_tokenizer())), "FT409")


def test_ft410_added_tokens_already_in_vocab(check, tools):
    inputs = tools.Inputs(tokenizer=tools.llama_tokenizer())
    both = {"type": "lora", "modules_to_save": ["embed_tokens", "lm_head"]}
    [d] = tools.codes(check(tools.build(model={"add_special_tokens": ["<|eot_id|>", "<new>"]},
                                        sft={"adapter": both}), inputs), "FT410")
    assert d.severity is Severity.INFO and "<|eot_id|>" in d.message and "<new>" not in d.message


def test_ft411_builtin_template_tokens_missing(check, tools):
    inputs = tools.Inputs(tokenizer=tools.llama_tokenizer())
    [d] = tools.codes(check(tools.build(model={"chat_template": "chatml"}), inputs), "FT411")
    assert d.severity is Severity.WARNING and "<|im_start|>" in d.message
    assert not tools.codes(check(tools.build(model={"chat_template": "llama3"}), inputs), "FT411")
    both = {"type": "lora", "modules_to_save": ["embed_tokens", "lm_head"]}
    added = tools.build(model={"chat_template": "chatml", "add_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                        sft={"adapter": both})
    assert not tools.codes(check(added, inputs), "FT411")
