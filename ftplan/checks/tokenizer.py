"""Rules on the tokenizer and chat template: the template resolves and parses, the local tokenizer's EOS token
exists, added special tokens are new, a built-in template's markers are in the vocabulary, and the template can
render the tool calls the data holds."""

from __future__ import annotations

import re

from ftplan.context import Context
from ftplan.data.rows import missing_tool_support, needs_chat_template
from ftplan.data.templates import BUILTIN_TEMPLATES as SHIPPED
from ftplan.diagnostics import Diagnostic, error, info, warning
from ftplan.suggest import did_you_mean

from ._common import data_stages

CODES = {
    "FT406": "the chat data needs a chat template and the local tokenizer has none",
    "FT407": "the chat template is neither `tokenizer`, a built-in name, nor a readable text file",
    "FT408": "the chat template file is not valid Jinja",
    "FT409": "the local tokenizer's EOS token is missing from its vocabulary",
    "FT410": "tokens in add_special_tokens are already in the vocabulary",
    "FT411": "a built-in chat template's special tokens are not in the vocabulary",
    "FT415": "the data holds tool calls or tools that the chat template cannot render",
}

BUILTIN_TEMPLATES: tuple[str, ...] = tuple(SHIPPED)
"""Chat templates the runtime ships, usable as ``model.chat_template``."""

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_PATH = ("model", "chat_template")


def check(ctx: Context) -> list[Diagnostic]:
    """Template resolution, tokenizer vocabulary and tool-support rules."""
    diags = _template(ctx)
    diags += _vocabulary(ctx)
    diags += _tool_support(ctx)
    return diags


def is_template_name(value: str) -> bool:
    """True when ``model.chat_template`` is a name (``tokenizer``, ``chatml``) rather than a file path."""
    return bool(_NAME.match(value))


def chat_datasets(ctx: Context) -> list[str]:
    """Paths of the datasets rendered through the chat template: every format but plain ``text`` (preference
    and KTO strings are rendered as one-turn conversations)."""
    return [d.path for _, stage in data_stages(ctx) for d in stage.datasets if needs_chat_template(d.format)]


def _template(ctx: Context) -> list[Diagnostic]:
    value = ctx.pipeline.model.chat_template
    tok = ctx.inputs.tokenizer
    if value == "tokenizer":
        chats = chat_datasets(ctx)
        if chats and tok is not None and not tok.has_chat_template:
            return [error("FT406", _PATH, f"the local tokenizer has no chat template, and {chats[0]}"
                          f"{f' (and {len(chats) - 1} more)' if len(chats) > 1 else ''} is chat data rendered "
                          "through one", hint="set `chat_template:` to a built-in name ("
                          + ", ".join(BUILTIN_TEMPLATES) + ") or a path to a .jinja file")]
        return []
    if value in BUILTIN_TEMPLATES:
        return []
    if is_template_name(value):
        return [error("FT407", _PATH, f"unknown chat template '{value}'",
                      hint=did_you_mean(value, ("tokenizer", *BUILTIN_TEMPLATES)) or
                      "use `tokenizer`, " + ", ".join(f"`{n}`" for n in BUILTIN_TEMPLATES) +
                      " or a path to a .jinja file")]
    if any(path == _PATH for path, _ in ctx.inputs.missing):
        return [error("FT407", _PATH, f"chat template file '{value}' does not exist",
                      hint="check the path (relative to the pipeline file), or use `tokenizer`, "
                      + ", ".join(f"`{n}`" for n in BUILTIN_TEMPLATES))]
    if ctx.inputs.chat_template_error is not None:
        return [error("FT407", _PATH, f"chat template: {ctx.inputs.chat_template_error}",
                      hint="point `chat_template` at a Jinja text file (e.g. chat_template.jinja), or use "
                      "`tokenizer`, " + ", ".join(f"`{n}`" for n in BUILTIN_TEMPLATES))]
    if ctx.inputs.chat_template is not None:
        problem = jinja_problem(ctx.inputs.chat_template)
        if problem is not None:
            return [error("FT408", _PATH, f"chat template '{value}' is not valid Jinja: {problem}",
                          hint="fix the template (it is rendered with Jinja2, as transformers does)")]
    return []


def jinja_problem(source: str) -> str | None:
    """The Jinja syntax error of a chat template (with its line), or None when it parses.

    Accepts transformers' ``{% generation %}`` block and the loop-control tags chat templates use."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.parser import Parser

    class _Generation(Extension):
        tags = {"generation"}

        def parse(self, parser: Parser) -> nodes.Node:  # noqa: D401 - jinja hook
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", _Generation])
    try:
        env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    return None


def _vocabulary(ctx: Context) -> list[Diagnostic]:
    tok = ctx.inputs.tokenizer
    if tok is None:
        return []
    diags = []
    model = ctx.pipeline.model
    where = model.tokenizer or model.base
    tok_path = ("model", "tokenizer") if model.tokenizer else ("model", "base")
    if tok.eos_token is None:
        diags.append(error("FT409", tok_path, f"the tokenizer in '{where}' declares no eos_token, so sequences "
                           "cannot be ended", hint="set `eos_token` in its tokenizer_config.json"))
    elif tok.tokens and tok.eos_token not in tok.tokens:
        diags.append(error("FT409", tok_path, f"the tokenizer in '{where}' declares eos_token "
                           f"'{tok.eos_token}', which is not in its vocabulary",
                           hint="fix `eos_token` in tokenizer_config.json to a token of the vocabulary"))
    if tok.tokens:
        present = [t for t in model.add_special_tokens if t in tok.tokens]
        if present:
            diags.append(info("FT410", ("model", "add_special_tokens"), f"{len(present)} of the added tokens are "
                              f"already in the vocabulary ({', '.join(present[:3])}"
                              f"{', ...' if len(present) > 3 else ''}); they are not added again",
                              hint="remove them from `add_special_tokens` (nothing is resized for them)"))
        if model.chat_template in SHIPPED:
            known = tok.tokens | set(model.add_special_tokens)
            absent = [t for t in SHIPPED[model.chat_template].tokens if t not in known]
            if absent:
                diags.append(warning("FT411", _PATH, f"the `{model.chat_template}` template writes "
                                     f"{', '.join(absent)}, which the tokenizer does not have as tokens: they "
                                     "would be split into pieces and generation would not stop on them",
                                     hint="use the template of the model's own family, or add them with "
                                     "`add_special_tokens` (and train embed_tokens and lm_head)"))
    return diags


def template_text(ctx: Context) -> tuple[str | None, str]:
    """The chat template's text when it is known offline (a built-in, a local file or a local tokenizer's
    own), and where it comes from in words; None when it is only known at run time (a hub tokenizer)."""
    value = ctx.pipeline.model.chat_template
    if value in SHIPPED:
        return SHIPPED[value].text, f"the built-in `{value}` template"
    if value == "tokenizer":
        tok = ctx.inputs.tokenizer
        return (tok.chat_template if tok is not None else None), "the tokenizer's chat template"
    return ctx.inputs.chat_template, f"the chat template '{value}'"


def _tool_support(ctx: Context) -> list[Diagnostic]:
    text, source = template_text(ctx)
    if text is None:
        return []
    diags = []
    for i, stage in data_stages(ctx):
        for j, d in enumerate(stage.datasets):
            scan = ctx.inputs.datasets.get((i, j))
            missing = missing_tool_support(text, scan.tool_features) if scan is not None else []
            if scan is not None and missing:
                diags.append(error("FT415", ("stages", i, "datasets", j, "path"), f"{d.path} holds "
                                   f"{' and '.join(sorted(scan.tool_features)).replace('_', ' ')}, but {source} cannot "
                                   f"render {' or '.join(missing)}: they would be dropped from the training text",
                                   hint="use a chat template with tool support (the model family's own, via "
                                   "`chat_template: tokenizer` or a .jinja file), or remove the tool turns and the "
                                   "tools column from the data"))
    return diags
