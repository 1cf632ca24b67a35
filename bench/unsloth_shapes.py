"""Unsloth's LoRA/QLoRA training step at several shapes with one loaded model: the Unsloth arm of the step
benchmark and of the max-context comparison (`bench/max_context.py`), measured exactly as
`runtime_step_probe.py --shapes` measures ftplan (same random tokens, loss on every token, fused AdamW, warm-up
steps, allocator peaks reset per shape; shapes as in `step_shapes.py`).

    python3 bench/unsloth_shapes.py --dir /tmp/m8b --mode qlora --shapes 2048x2 8192x1 16384x1:1 32768x1:1

One JSON line per shape, fewest tokens first; a shape that runs out of memory ends the list with "oom": true.
Runs with Unsloth's own wheel set (bench/gpu/env.sh installs it), its default `use_gradient_checkpointing="unsloth"`
(checkpoints offloaded to host memory).
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
import unsloth  # noqa: E402  (Unsloth patches transformers when imported first)
import torch  # noqa: E402
from unsloth import FastLanguageModel  # noqa: E402

from step_shapes import parse_shapes, step_record, time_steps  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ensure_tokenizer(model_dir: str) -> None:
    """Unsloth loads a tokenizer with the model: give a random-init checkpoint without one a small word-level one
    (the arms feed token ids, so its vocabulary does not matter)."""
    if os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        return
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(256)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w1", eos_token="w2", pad_token="w3",
                            unk_token="w0").save_pretrained(model_dir)


def measure(a, m, opt, shape, base_free):
    """Median step time and peak memory of a shape's warm-up and timed training steps."""
    seq, batch = shape.seq, shape.batch
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()

    def step(ids):
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    host = []
    times = time_steps(step, lambda: torch.randint(0, m.config.vocab_size, (batch, seq), device="cuda"),
                       shape.warmup, shape.steps, host)
    return {"arm": "unsloth", "mode": a.mode, "gc": a.gc, **step_record(times, shape, base_free, host),
            "unsloth": unsloth.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="a model folder (bench/gpu/speed.sh prepares one; a tokenizer is added if missing)")
    p.add_argument("--mode", default="qlora", choices=["lora", "qlora"])
    p.add_argument("--shapes", nargs="+", required=True, help="SEQxBATCH or SEQxBATCH:STEPS (step_shapes.py)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gc", default="unsloth", help="Unsloth's use_gradient_checkpointing")
    a = p.parse_args()
    shapes = parse_shapes(a.shapes, a.warmup, a.steps)
    ensure_tokenizer(a.dir)
    torch.manual_seed(0)
    base_free = torch.cuda.mem_get_info()[0]
    m, _ = FastLanguageModel.from_pretrained(model_name=a.dir, max_seq_length=max(s.seq for s in shapes), dtype=torch.bfloat16,
                                             load_in_4bit=(a.mode == "qlora"), local_files_only=True)
    m = FastLanguageModel.get_peft_model(m, r=a.rank, lora_alpha=a.rank, lora_dropout=0, bias="none",
                                         target_modules=TARGETS, use_gradient_checkpointing=a.gc, random_state=0)
    m.train()
    opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4, fused=True)
    for shape in shapes:
        try:
            line = measure(a, m, opt, shape, base_free)
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            print(json.dumps({"arm": "unsloth", "mode": a.mode, "seq": shape.seq, "batch": shape.batch, "oom": True,
                              "gpu": torch.cuda.get_device_name()}), flush=True)
            break
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
