"""Random-init models of catalog shapes, and the data files the calibration points read.

A model folder holds ``config.json`` (the catalog shape as its family's transformers config), bf16 weights drawn on
the GPU, and the tiny local tokenizer (``ftplan_runtime.tiny``); random weights of a real shape have the speed and
memory of real weights. ``--tiny`` keeps the family but shrinks the shape (a CPU rehearsal of the whole flow).

    python bench/vram/models.py model KEY OUT_DIR [--tiny]
    python bench/vram/models.py data OUT_DIR SEQ...
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

WORDS = ("the model learns to answer support questions with short clear steps about accounts billing sync "
         "exports invoices passwords teammates storage limits offline mode uploads and the api").split()
ROWS = 32
"""Rows per data file: enough for three steps at micro-batch 8."""
TOKENS_PER_WORD = 4
"""The tiny tokenizer cuts these words into about four tokens each (measured: 4.03)."""

_CONFIG = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
           "gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig", "phi3": "Phi3Config"}
_TINY = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
             vocab_size=512)


def hf_config(key: str, tiny: bool = False, ids: dict | None = None):
    """The transformers config of a catalog shape (``tiny``: the same family at toy size)."""
    import transformers

    from ftplan.catalog import get_model

    shape = get_model(key)
    s = {**shape.__dict__, **(_TINY if tiny else {})}
    kw = dict(hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
              num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
              num_key_value_heads=s["num_kv_heads"], head_dim=s["head_dim"], vocab_size=s["vocab_size"],
              max_position_embeddings=max(shape.max_position_embeddings, 16384),
              tie_word_embeddings=shape.tie_word_embeddings, **(ids or {}))
    if shape.sliding_window:
        kw["sliding_window"] = shape.sliding_window
    return getattr(transformers, _CONFIG[shape.family])(**kw)


def tokenizer(folder: Path) -> Path:
    """The tiny tokenizer every model of a run shares, trained into ``folder`` unless it is already there (build it
    once before writing models in parallel)."""
    from ftplan_runtime.tiny import build_tiny_model

    return folder if (folder / "config.json").is_file() else build_tiny_model(folder)


def build_model(key: str, out: Path, tiny: bool = False) -> Path:
    """Write a random-init model of catalog shape ``key`` with the tiny tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    tok_dir = tokenizer(out.parent / ".tok")
    ids = {k: v for k, v in json.loads((tok_dir / "config.json").read_text()).items()
           if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = hf_config(key, tiny, ids)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_data(folder: Path, seqs: list[int]) -> None:
    """``chat-{full,varied}-SEQ.jsonl`` and ``prefs-{full,varied}-SEQ.jsonl``: full rows run past SEQ tokens
    (the data stage cuts them to exactly SEQ); varied rows take from a third of SEQ to all of it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    prompt = 8  # words (about 32 tokens)
    for seq in seqs:
        words = seq // TOKENS_PER_WORD
        for rows in ("full", "varied"):
            lengths = [words + words // 4 if rows == "full" else rng.randint(words // 3, words) - prompt
                       for _ in range(ROWS)]
            with open(folder / f"chat-{rows}-{seq}.jsonl", "w") as f:
                for n in lengths:
                    turns = [{"from": "human", "value": _text(rng, prompt)}, {"from": "gpt", "value": _text(rng, n)}]
                    f.write(json.dumps({"conversations": turns}) + "\n")
            with open(folder / f"prefs-{rows}-{seq}.jsonl", "w") as f:
                for n in lengths:
                    f.write(json.dumps({"prompt": _text(rng, prompt), "chosen": _text(rng, n),
                                        "rejected": _text(rng, n)}) + "\n")


if __name__ == "__main__":
    what, *rest = sys.argv[1:]
    if what == "model":
        build_model(rest[0], Path(rest[1]), tiny="--tiny" in rest)
    elif what == "tokenizer":
        tokenizer(Path(rest[0]))
    else:
        write_data(Path(rest[0]), [int(x) for x in rest[1:]])
