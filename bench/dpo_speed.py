"""DPO LoRA training steps: ftplan's runtime with `kernels: ftplan` against plain TRL DPOTrainer (HF+PEFT), tokens/s
and peak memory, one process per arm, Llama-3.1-8B shapes (random init) at s1024 pairs × 2 by default.

Every pair is a 512-token prompt with a 512-token chosen and rejected answer (sequences of --seq tokens, no
padding), two pairs per micro-step (4 sequences, 4,096 tokens), LoRA r 16 / alpha 16 / dropout 0 on the seven
projections, bf16, gradient checkpointing, beta 0.1, sigmoid loss, AdamW; the reference is the base model (the new
adapter switched off) run live each step, or precomputed once before training with --precompute. Arms:

  trl               trl.DPOTrainer on a PEFT model, as a TRL user runs it (TRL's own chunked log-prob head; only its
                    text tokenization is skipped, the pairs being token ids already)
  ftplan            the runtime's DPO stage as a compiled plan runs it (ftplan_runtime.train_common.prepare_training on
                    an args file): `kernels: ftplan` = fused RMSNorm/SwiGLU/RoPE/LoRA and the fused linear log-prob
                    head for the policy and the reference
  ftplan-trl-head   the same with TRL's head instead of the fused log-prob op (what the op adds)
  ftplan-none       the runtime with `kernels: none` (what the kernels add over the runtime's own TRL loop)

Each timed step is one optimizer step of the HF Trainer loop (forward, reference forward, backward, AdamW),
synchronised around it, after --warmup steps; tokens/s = tokens per step / median step time (every token is a
non-pad token; label tokens are the answers'). Memory: the allocator's peak allocated and reserved over the timed
steps, and the device memory in use (nvidia's view) at its highest step end, above what was in use before the
model loaded. MFU uses kernel-anchors.md §3's convention: F_tok = 4·N_mm + 6·N_lora + 6·L·s·d, plus 2·N_mm + 2·L·s·d
for a live reference forward, against 989 and 790 TFLOP/s.

    $ python bench/dpo_speed.py prep --dir /tmp/dpo8b                 # random-init Llama-3.1-8B + a tokenizer
    $ python bench/dpo_speed.py all --dir /tmp/dpo8b --out bench/results/dpo-speed.jsonl
    $ python bench/dpo_speed.py all --dir /tmp/dpo8b --precompute --arms trl ftplan
    $ python bench/dpo_speed.py run --dir /tmp/dpo8b --arm ftplan      # one arm, one JSON line
    $ python bench/dpo_speed.py smoke --work /tmp/dpo-smoke             # CPU: tiny shapes, every arm, 1 step

`all` runs each arm in its own process (its peak memory is its own) in one session on one card, and prints a last
line with each arm's tokens/s and peak allocated memory as ratios to the trl arm's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from step_shapes import flops_per_token as step_flops

ARMS = ("trl", "ftplan", "ftplan-trl-head", "ftplan-none")
SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prep", help="save a random-init model of --shape with the tiny local tokenizer")
    prep.add_argument("--dir", required=True)
    prep.add_argument("--shape", choices=SHAPES, default="8b")
    for name in ("run", "all"):
        q = sub.add_parser(name, help="one arm" if name == "run" else "every arm, one process each")
        q.add_argument("--dir", required=True, help="the model folder `prep` wrote")
        if name == "run":
            q.add_argument("--arm", choices=ARMS, required=True)
        else:
            q.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
            q.add_argument("--out", help="also append the JSON lines to this file")
            q.add_argument("--timeout", type=int, default=900, help="seconds per arm")
        q.add_argument("--work", help="data and output folder (default: <dir>-work)")
        q.add_argument("--seq", type=int, default=1024, help="tokens per sequence (prompt + answer)")
        q.add_argument("--prompt", type=int, default=512, help="prompt tokens of each sequence")
        q.add_argument("--pairs", type=int, default=2, help="pairs per micro-step")
        q.add_argument("--rank", type=int, default=16)
        q.add_argument("--precompute", action="store_true", help="reference log-probs once, before training")
        q.add_argument("--no-checkpointing", action="store_true")
        q.add_argument("--warmup", type=int, default=3)
        q.add_argument("--steps", type=int, default=10)
        q.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                       help="cpu: fp32 under TRITON_INTERPRET=1, a smoke run (timings and memory mean nothing)")
    smoke = sub.add_parser("smoke", help="CPU: prep tiny shapes and run every arm for one step")
    smoke.add_argument("--work", required=True)
    smoke.add_argument("--precompute", action="store_true", help="with precomputed reference log-probs")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ inputs


def prep(model_dir: Path, shape: str) -> None:
    """A random-init Llama of `shape` (bf16) with the runtime's tiny SentencePiece tokenizer beside it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftplan_runtime.tiny import build_tiny_model

    tok_dir = build_tiny_model(model_dir.parent / f"{model_dir.name}-tokenizer")
    ids = {k: v for k, v in json.loads((tok_dir / "config.json").read_text()).items()
           if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg = LlamaConfig(**SHAPES[shape], **ids, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False, initializer_range=0.02)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(model_dir)
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (model_dir / f.name).write_bytes(f.read_bytes())
    print(json.dumps({"prep": shape, "dir": str(model_dir), "params": sum(p.numel() for p in model.parameters())}))


def write_pairs(data_dir: Path, a, vocab: int, n_rows: int) -> None:
    """`n_rows` pairs of random token ids in the data stage's tokenized preference format (what both arms read)."""
    import datasets
    import torch

    gen = torch.Generator().manual_seed(0)
    answer = a.seq - a.prompt
    low = 4  # clear of the special tokens
    rows = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for _ in range(n_rows):
        for key, n in (("prompt_ids", a.prompt), ("chosen_ids", answer), ("rejected_ids", answer)):
            rows[key].append(torch.randint(low, vocab, (n,), generator=gen).tolist())
    datasets.Dataset.from_dict(rows).save_to_disk(str(data_dir / "preference" / "train"))


# ------------------------------------------------------------------------------------------------ one arm


class StepTimer:
    """A TrainerCallback: the wall time of every optimizer step (synchronised), and the memory of the timed ones."""

    def __init__(self, warmup: int, cuda: bool):
        from transformers import TrainerCallback

        self.warmup, self.cuda, self.times, self.used_before = warmup, cuda, [], None
        self.max_used = 0
        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.sync()
                if state.global_step == timer.warmup and timer.cuda:
                    import torch

                    torch.cuda.reset_peak_memory_stats()
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.sync()
                if state.global_step > timer.warmup:
                    timer.times.append(time.perf_counter() - timer.t0)
                    if timer.cuda:
                        import torch

                        free, total = torch.cuda.mem_get_info()
                        timer.max_used = max(timer.max_used, total - free)

        self.callback = _Callback()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def _stage(a, arm: str) -> dict:
    return {"id": "dpo", "kind": "dpo", "data": "data", "learning_rate": 5e-6, "beta": 0.1, "loss_type": "sigmoid",
            "adapter": {"type": "lora", "r": a.rank, "alpha": a.rank, "dropout": 0.0, "targets": TARGETS},
            "micro_batch": a.pairs, "grad_accum": 1, "max_steps": a.warmup + a.steps, "logging_steps": 1000,
            "save_steps": None, "report_to": [], "precision": "bf16" if a.device == "cuda" else "fp32",
            "gradient_checkpointing": not a.no_checkpointing, "attention": "sdpa",
            "kernels": "none" if arm == "ftplan-none" else "ftplan",
            "reference": "precomputed" if a.precompute else "live"}


def runtime_trainer(a, arm: str, model_dir: Path, work: Path):
    """The runtime's DPO stage from an args file (what `python -m ftplan_runtime args.json` prepares)."""
    from ftplan.schemas.runtime_args import RuntimeArgs

    from ftplan_runtime.dpo import dpo_spec
    from ftplan_runtime.train_common import prepare_training

    stage = _stage(a, arm)
    args = RuntimeArgs.model_validate({
        "pipeline": "dpo-speed", "stage": stage, "model": {"base": str(model_dir)},
        "source": {"weights": str(model_dir), "tokenizer": str(model_dir)},
        "data_dir": str(work / "data"), "output_dir": str(work / f"out-{arm}"),
        "promise": {"device": a.device, "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": stage["precision"], "attention": "sdpa", "kernels": stage["kernels"]}})
    if arm == "ftplan-trl-head":  # every kernel of the plan but the log-prob op: TRL's head stays
        from ftplan_runtime.logprob_head import FusedLogprobTrainerMixin

        FusedLogprobTrainerMixin._install_fused_heads = lambda self: None
    prep_ = prepare_training(args, "0" * 64, dpo_spec(args))
    report = prep_.kernel_report
    return prep_.trainer, (report.counts() if report is not None else None)


def trl_trainer(a, model_dir: Path, work: Path):
    """Plain TRL: DPOTrainer on a PEFT model with the same settings, nothing of ftplan's."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cuda = a.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa",
                                                 device_map={"": 0} if cuda else {"": "cpu"})
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.rank, lora_dropout=0.0, bias="none",
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    ckpt = not a.no_checkpointing
    config = DPOConfig(
        output_dir=str(work / "out-trl"), learning_rate=5e-6, beta=0.1, loss_type=["sigmoid"], max_length=None,
        per_device_train_batch_size=a.pairs, gradient_accumulation_steps=1, max_steps=a.warmup + a.steps,
        logging_steps=1000, logging_first_step=True, save_strategy="no", report_to="none", bf16=cuda,
        use_cpu=not cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch", gradient_checkpointing=ckpt,
        gradient_checkpointing_kwargs={"use_reentrant": False} if ckpt else None,
        precompute_ref_log_probs=a.precompute, padding_free=False, dataloader_num_workers=0, disable_tqdm=True,
        seed=0)
    class PretokenizedDPOTrainer(DPOTrainer):
        """TRL's trainer on token ids as they are: its tokenizer step reads text, and random ids are no text. The
        training step (what is timed) is TRL's own."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    train = datasets.load_from_disk(str(work / "data" / "preference" / "train"))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return PretokenizedDPOTrainer(model=model, args=config, train_dataset=train, processing_class=tok), None


def flops_per_token(config, a) -> float:
    """kernel-anchors.md §3 for this model and run (step_shapes.flops_per_token), a live reference forward included."""
    return step_flops(hidden=config.hidden_size, intermediate=config.intermediate_size,
                      layers=config.num_hidden_layers, vocab=config.vocab_size, rank=a.rank, seq=a.seq,
                      kv_dim=config.num_key_value_heads * (config.hidden_size // config.num_attention_heads),
                      reference_forward=not a.precompute)


def run_arm(a) -> dict:
    import torch

    cuda = a.device == "cuda"
    model_dir = Path(a.dir)
    work = Path(a.work or f"{a.dir}-work")
    used_before = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0] if cuda else 0
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    data_dir = work / "data"
    if not (data_dir / "preference" / "train").is_dir():
        write_pairs(data_dir, a, config.vocab_size, a.pairs * (a.warmup + a.steps + 2))
    if a.arm == "trl":
        trainer, kernels = trl_trainer(a, model_dir, work)
    else:
        trainer, kernels = runtime_trainer(a, a.arm, model_dir, work)
    timer = StepTimer(a.warmup, cuda)
    trainer.add_callback(timer.callback)
    trainer.train()
    times = sorted(timer.times)
    if not times:
        raise SystemExit("no timed step: raise --steps")
    tokens = a.pairs * 2 * a.seq
    labels = a.pairs * 2 * (a.seq - a.prompt)
    med = statistics.median(times)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    row = {"arm": a.arm, "precompute": a.precompute, "seq": a.seq, "prompt": a.prompt, "pairs": a.pairs,
           "tokens_per_step": tokens, "steps": len(times), "kernels": kernels,
           "fused_logprob_heads": getattr(trainer, "fused_logprob_heads", 0),
           "step_s_median": round(med, 4), "step_s_p10": round(times[len(times) // 10], 4),
           "step_s_p90": round(times[min(len(times) - 1, (9 * len(times)) // 10)], 4),
           "tok_per_s": round(tokens / med, 1), "label_tok_per_s": round(labels / med, 1),
           "loss_last": losses[-1] if losses else None}
    if cuda:
        f_tok = flops_per_token(config, a)
        row.update({
            "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
            "device_used_gib": round((timer.max_used - used_before) / 2**30, 3),
            "gflop_per_token": round(f_tok / 1e9, 2),
            "mfu_989": round(tokens / med * f_tok / 989e12, 4), "mfu_790": round(tokens / med * f_tok / 790e12, 4),
            "gpu": torch.cuda.get_device_name()})
    row.update(_versions())
    return row


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "triton", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------ every arm


def run_all(a) -> list[dict]:
    """Each arm in its own process; a last line of ratios to the trl arm."""
    rows = []
    env = dict(os.environ)
    if a.device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    flags = ["--dir", a.dir, "--seq", str(a.seq), "--prompt", str(a.prompt), "--pairs", str(a.pairs),
             "--rank", str(a.rank), "--warmup", str(a.warmup), "--steps", str(a.steps), "--device", a.device]
    flags += ["--work", a.work] if a.work else []
    flags += ["--precompute"] if a.precompute else []
    flags += ["--no-checkpointing"] if a.no_checkpointing else []
    for arm in a.arms:
        cmd = [sys.executable, str(Path(__file__).resolve()), "run", "--arm", arm, *flags]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout, cwd=REPO)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "arm": arm, "error": f"exit {proc.returncode}", "stderr": proc.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            row = {"arm": arm, "error": f"timed out after {a.timeout} s"}
        _emit(row, a.out)
        rows.append(row)
    base = next((r for r in rows if r.get("arm") == "trl" and "tok_per_s" in r), None)
    if base is not None:
        ratios = {r["arm"]: {"tok_per_s": round(r["tok_per_s"] / base["tok_per_s"], 3),
                             **({"peak_alloc": round(r["peak_alloc_gib"] / base["peak_alloc_gib"], 3)}
                                if "peak_alloc_gib" in r else {})}
                  for r in rows if "tok_per_s" in r}
        _emit({"summary": "ratios to the trl arm", "precompute": a.precompute, "seq": a.seq, "pairs": a.pairs,
               "ratios": ratios}, a.out)
    return rows


def _emit(row: dict, out: str | None) -> None:
    call = os.environ.get("SPEED_CALL")  # which run of bench/gpu/speed.sh measured it
    line = json.dumps({**row, "call": call} if call else row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def smoke(work: Path, precompute: bool = False) -> list[dict]:
    """Every arm on the CPU at tiny shapes (Triton interpreted), one timed step each."""
    model_dir = work / "model"
    if not (model_dir / "config.json").is_file():
        prep(model_dir, "tiny")
    common = ["--dir", str(model_dir), "--work", str(work / "w"), "--device", "cpu", "--seq", "24", "--prompt",
              "12", "--pairs", "1", "--warmup", "0", "--steps", "1", "--timeout", "600"]
    return run_all(parse_args(["all", *common, *(["--precompute"] if precompute else [])]))


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.cmd == "prep":
        prep(Path(a.dir), a.shape)
    elif a.cmd == "run":
        _emit(run_arm(a), None)
    elif a.cmd == "all":
        run_all(a)
    else:
        rows = smoke(Path(a.work), a.precompute)
        failed = [r for r in rows if "error" in r]
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
