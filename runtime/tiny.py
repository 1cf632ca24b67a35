"""Tiny random-init models with locally trained tokenizers, for demos and tests.

Nothing here touches a model hub: the tokenizer is trained on a small built-in English
corpus and the weights are drawn from a seeded numpy generator, so the same arguments give
byte-identical ``model.safetensors`` on any machine with the same numpy version.

Two shapes are built:

* ``arch="llama"`` (default): ``LlamaForCausalLM`` with a SentencePiece BPE tokenizer
  (``tokenizer.model`` kept in the folder, loaded by transformers as ``LlamaTokenizer``).
* ``arch="qwen2"``: ``Qwen2ForCausalLM`` (q/k/v biases) with a byte-level BPE tokenizer
  trained with ``tokenizers``.

A byte-level BPE tokenizer can also be paired with the Llama shape (``tokenizer=...``) so
each GGUF pre-tokenizer flavour ("gpt-2", "llama-bpe", "qwen2") can be exercised.

CLI: ``python -m ftplan_runtime.tiny OUT_DIR [--arch llama|qwen2] [--seed N]``.
"""
from __future__ import annotations


import argparse
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from .data.templates import CHATML

Arch = Literal["llama", "qwen2"]
TokenizerKind = Literal["spm", "gpt-2", "llama-bpe", "qwen2"]

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<pad>"
SPM_BOS, SPM_EOS, UNK = "<s>", "</s>", "<unk>"
ENDOFTEXT, BEGIN_OF_TEXT = "<|endoftext|>", "<|begin_of_text|>"

# The tiny tokenizers carry the runtime's built-in ChatML template, whose `{% generation %}` markers tell
# `apply_chat_template(..., return_assistant_tokens_mask=True)` which tokens the assistant says.
CHAT_TEMPLATE = CHATML

# Pre-tokenizer split regexes, as the real tokenizers write them in tokenizer.json.
# "gpt-2" needs none: the plain ByteLevel pre-tokenizer applies GPT-2's regex itself.
_SPLIT_REGEX = {
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}

_BASE_SENTENCES = """\
The quick brown fox jumps over the lazy dog.
A small model can still learn simple patterns from a little data.
What is the capital of France? The capital of France is Paris.
What is 3 + 3? The answer is 6.
What is 12 times 4? The answer is 48.
Please write a short poem about the sea.
The sea is wide and blue, and the waves roll in all day.
Explain why the sky is blue in one sentence.
Sunlight is scattered by the air, and blue light is scattered the most.
Translate "good morning" into French. Bonjour.
List three colors: red, green and blue.
Name three fruits: apple, banana and orange.
How many days are there in a week? There are seven days in a week.
Summarize the text in two sentences.
The meeting starts at nine o'clock and ends at noon.
She reads a book every evening before she goes to sleep.
They walked to the park and sat under a tall tree.
Water boils at 100 degrees Celsius at sea level.
The train leaves the station at half past eight.
I'm not sure I'll make it, but I've been told it's easy.
You're right, we're going to need a bigger boat.
Can you help me write an email to my teacher?
Dear teacher, thank you for your help with the project.
Give me a recipe for a simple tomato soup.
Cook the tomatoes with onion and garlic, then blend them until smooth.
The function returns the sum of two numbers.
def add(a, b): return a + b
for i in range(10): print(i)
The cat sat on the mat, and the dog slept by the door.
Rain is expected tomorrow, so bring an umbrella.
Learning to code takes practice, patience and curiosity.
The library opens at ten and closes at six.
Music can make people feel happy, calm or sad.
The children played football in the garden after school.
A good answer is short, clear and correct.
The assistant answers questions politely and helpfully.
You are a helpful assistant.
User: hello! Assistant: Hello, how can I help you today?
Thank you very much. You are welcome.
The year has twelve months and four seasons.
Spring, summer, autumn and winter follow each other.
The moon goes around the earth, and the earth goes around the sun.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024 3.14
Punctuation: , . ! ? ; : ' " ( ) [ ] { } - + * / = < > @ # $ % & _
Is this sentence true or false? It is true.
Write a story about a robot who wants to paint.
Once upon a time, a little robot found a box of paints.
The robot painted the sky, the trees and the river.
Everyone in the town came to see the colorful pictures.
Good models are tested carefully before they are used.
"""


def _corpus() -> list[str]:
    """The built-in training corpus: base sentences plus templated question/answer lines."""
    lines = [s for s in _BASE_SENTENCES.splitlines() if s.strip()]
    names = ["Alice", "Bob", "Carol", "David", "Emma", "Frank"]
    things = ["apples", "books", "pencils", "cookies", "flowers", "stones"]
    for i, (name, thing) in enumerate((n, t) for n in names for t in things):
        a, b = i % 7 + 1, i % 5 + 2
        lines.append(f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?")
        lines.append(f"{name} has {a + b} {thing} now.")
        lines.append(f"What is {a} + {b}? The answer is {a + b}.")
    return lines


def _train_spm(vocab_size: int) -> bytes:
    """Train a SentencePiece BPE model in memory and return the serialized ModelProto."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,  # unknown characters become <0xNN> byte pieces, never <unk>
        hard_vocab_limit=False,  # the corpus is small: accept a smaller vocab than asked
        character_coverage=1.0,
        # identity normalization, no whitespace collapsing, no dummy prefix: llama.cpp and the
        # HF fast tokenizer only replace spaces by U+2581, so SPM must do no more than that.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=[IM_START, IM_END, PAD],
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _spm_tokenizer(tmp: Path, vocab_size: int):
    """Write tokenizer.model + tokenizer_config.json into tmp and load it with AutoTokenizer."""
    from transformers import AutoTokenizer

    (tmp / "tokenizer.model").write_bytes(_train_spm(vocab_size))
    added = {}
    for i, content in enumerate([UNK, SPM_BOS, SPM_EOS, IM_START, IM_END, PAD]):
        added[str(i)] = {
            "content": content, "lstrip": False, "rstrip": False,
            "normalized": False, "single_word": False, "special": True,
        }
    cfg = {
        # transformers converts tokenizer.model to a fast tokenizer only through this class name
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": SPM_BOS, "eos_token": IM_END, "unk_token": UNK, "pad_token": PAD,
        "add_bos_token": True, "add_eos_token": False,
        # no dummy "▁" prefix (matches add_dummy_prefix=False in the SPM model): transformers would
        # add it only at the very start, llama.cpp after every special token as well, so the two
        # tokenizers only agree, and decode(encode(x)) == x only holds, without it
        "legacy": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
        "added_tokens_decoder": added,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    tok = AutoTokenizer.from_pretrained(str(tmp))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _bpe_tokenizer(kind: TokenizerKind, vocab_size: int):
    """Train a byte-level BPE tokenizer with the pre-tokenizer of `kind` and wrap it for HF."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    if kind == "gpt-2":
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT_REGEX[kind]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tk.decoder = decoders.ByteLevel()
    # <|endoftext|> first: transformers' Qwen2Tokenizer insists on it as its unk token
    specials = [ENDOFTEXT, IM_START, IM_END, PAD]
    bos = None
    if kind == "llama-bpe":
        # Llama-3 style: a BOS token that the post-processor prepends to every sequence
        bos = BEGIN_OF_TEXT
        specials.append(bos)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(_corpus(), trainer=trainer)
    if bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tk.token_to_id(bos))],
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=IM_END, pad_token=PAD, unk_token=ENDOFTEXT,
        additional_special_tokens=[IM_START], clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _numpy_init(model, seed: int, init_std: float) -> None:
    """Overwrite every parameter with seeded numpy draws (portable across torch versions).

    Matrices and biases ~ N(0, init_std); norm weights ~ 1 + N(0, 0.1) so that swapping two
    norms in an exporter changes the output.
    """
    import torch

    rng = np.random.default_rng(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            t = state[name]
            if name.endswith("norm.weight"):
                arr = 1.0 + 0.1 * rng.standard_normal(t.shape)
            else:
                arr = init_std * rng.standard_normal(t.shape)
            t.copy_(torch.from_numpy(arr.astype(np.float32)))


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: Arch = "llama",
    tokenizer: TokenizerKind | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    init_std: float = 0.03,
) -> Path:
    """Build a tiny random-init causal LM plus tokenizer into `out_dir` and return its path.

    `tokenizer` defaults to "spm" for llama and "qwen2" for qwen2; `vocab_size` is an upper
    bound (the real size is whatever the small corpus yields, and the model's embedding
    matches the tokenizer exactly). `init_std` is the std of every weight. The default 0.03
    is chosen from measurements against llama.cpp: a q/k layout left in HF order moves the
    logits by 3-5e-2 of their max (an f32 export otherwise agrees to ~5e-7), while f16's own
    rounding stays at 6-8e-4, under the 1e-3 bound; larger stds amplify f16 rounding past it.
    Writes config.json, generation_config.json, model.safetensors and the tokenizer files
    (tokenizer.json, tokenizer_config.json, chat template, and tokenizer.model for SPM).
    """
    import torch
    from transformers import GenerationConfig

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    kind = tokenizer or ("spm" if arch == "llama" else "qwen2")
    if kind not in ("spm", "gpt-2", "llama-bpe", "qwen2"):
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as td:
        tok = _spm_tokenizer(Path(td), vocab_size) if kind == "spm" else _bpe_tokenizer(kind, vocab_size)
        tok.save_pretrained(str(out))
        if kind == "spm":
            # save_pretrained does not (re)write tokenizer.model; GGUF export needs it
            shutil.copyfile(Path(td) / "tokenizer.model", out / "tokenizer.model")

    common = dict(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5,
        initializer_range=init_std, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**common)
        model_cls = LlamaForCausalLM
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(**common, use_sliding_window=False)
        model_cls = Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = model_cls(cfg)
    _numpy_init(model, seed, init_std)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build a tiny model into OUT_DIR and print its path."""
    p = argparse.ArgumentParser(prog="python -m ftplan_runtime.tiny", description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    p.add_argument("--tokenizer", choices=["spm", "gpt-2", "llama-bpe", "qwen2"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=512)
    args = p.parse_args(argv)
    path = build_tiny_model(args.out_dir, arch=args.arch, tokenizer=args.tokenizer,
                            seed=args.seed, vocab_size=args.vocab_size)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
