"""Build the inputs of llama8b-qlora-sft-dpo.yaml under work/: a random-init Llama-3.1-8B (bf16, on the GPU)
with the tiny local SentencePiece tokenizer, and long chat/preference rows that fill 2,048 tokens.

    python bench/gpu/make_inputs.py work [8b|tiny]
"""

import json
import random
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ftplan_runtime.tiny import build_tiny_model

WORDS = ("the model learns to answer support questions with short clear steps about accounts billing sync "
         "exports invoices passwords teammates storage limits offline mode uploads and the api").split()


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    # the same flow at toy size, to rehearse the run on a CPU machine (`--shape tiny`, `device: cpu`)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}


def main(work: Path, shape: str = "8b") -> None:
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = build_tiny_model(work / "tiny")           # the tokenizer files and its special-token ids are reused
    ids = {k: v for k, v in json.loads((tok_dir / "config.json").read_text()).items()
           if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = LlamaConfig(**SHAPES[shape], **ids, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    out = work / "llama8b"
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / f.name).write_bytes(f.read_bytes())
    rng = random.Random(0)
    with open(work / "long-chat.jsonl", "w") as fh:
        for _ in range(64):
            conv = [{"from": "human", "value": text(rng, 200)}, {"from": "gpt", "value": text(rng, 2000)}]
            fh.write(json.dumps({"conversations": conv}) + "\n")
    with open(work / "long-prefs.jsonl", "w") as fh:
        for _ in range(64):
            fh.write(json.dumps({"prompt": text(rng, 200), "chosen": text(rng, 900),
                                 "rejected": text(rng, 900)}) + "\n")
    print("built", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(sys.argv[2:3]))
