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


def test_every_format_but_text_needs_a_template(check, tools):
    """Preference strings are rendered as one-turn conversations at run time, so they need the template too
    (the runtime refused them with a tokenizer that has none; check used to accept them)."""
    pairs_only = [{"id": "data", "kind": "data", "max_seq_len": 1024,
                   "datasets": [{"path": "data/pairs.jsonl", "format": "preference"}]},
                  {"id": "sft", "kind": "sft", "data": "data0", "learning_rate": 1e-4, "adapter": {"type": "full"}},
                  {"id": "data0", "kind": "data", "max_seq_len": 1024,
                   "datasets": [{"path": "data/corpus.jsonl", "format": "text"}]},
                  {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "learning_rate": 1e-6,
                   "adapter": {"type": "lora"}}]
    pipeline = tools.build(stages=pairs_only)
    ctx, _ = tools.resolve_ctx(pipeline, tools.Inputs(datasets=tools.heads(pipeline, data_0=[tools.PAIR_ROW])))
    assert chat_datasets(ctx) == ["data/pairs.jsonl"]
    inputs = tools.Inputs(tokenizer=tools.llama_tokenizer(has_chat_template=False))
    [d] = tools.codes(check(pipeline, inputs), "FT406")
    assert "data/pairs.jsonl" in d.message


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


def test_ft407_template_file_must_be_readable_text(check, tools):
    for problem in ("'chat.jinja' is a folder, not a template file", "'chat.jinja' is a binary file, not a Jinja "
                    "template", "'chat.jinja' is not UTF-8 text (line 3); save it as UTF-8"):
        inputs = tools.Inputs(chat_template_error=problem)
        [d] = tools.codes(check(tools.build(model={"chat_template": "chat.jinja"}), inputs), "FT407")
        assert d.message == f"chat template: {problem}" and "Jinja text file" in d.hint


def test_ft412_tool_calls_need_a_template_that_renders_them(check, tools):
    stages = [{"id": "data", "kind": "data", "max_seq_len": 1024,
               "datasets": [{"path": "data/tools.jsonl", "format": "sharegpt"}]},
              {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4, "adapter": {"type": "lora"}}]
    row = {"conversations": [{"from": "human", "value": "weather in Paris?"},
                             {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}],
           "tools": '[{"name": "weather", "parameters": {"type": "object"}}]'}
    pipeline = tools.build(stages=stages, model={"chat_template": "chatml"})
    inputs = tools.Inputs(datasets=tools.heads(pipeline, data_0=[row]))
    [d] = tools.codes(check(pipeline, inputs), "FT415")
    assert d.path == ("stages", 0, "datasets", 0, "path")
    assert "the built-in `chatml` template cannot render" in d.message and "tool calls" in d.message
    # the tokenizer's own template with tool support renders them
    tooled = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}" \
             "{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}{% endfor %}"
    own = tools.build(stages=stages)
    inputs = tools.Inputs(datasets=tools.heads(own, data_0=[row]),
                          tokenizer=tools.llama_tokenizer(chat_template=tooled))
    assert not tools.codes(check(own, inputs), "FT415")
    # a hub tokenizer's template is only known at run time: nothing to say offline
    assert not tools.codes(check(own, tools.Inputs(datasets=tools.heads(own, data_0=[row]))), "FT415")


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
