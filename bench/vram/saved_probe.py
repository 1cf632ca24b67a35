"""Count what autograd saves in one decoder layer of a catalog shape, against the estimator's figure.

A model of the shape with one and with two decoder layers (random init, bf16 base or, with ``--adapter qlora``,
the runtime's NF4 load of it; PEFT LoRA on every linear with fp32 adapters, bf16 autocast: the runtime's loop)
runs one forward under ``saved_tensors_hooks``; every tensor autograd keeps is recorded by its storage (views of one storage count once, parameters not at all). The
difference between the two models is one layer's saved bytes (counted once the forward is done, so tensors saved
into a branch of the graph the forward dropped are not), which this prints per token beside
``estimate.activations.compute(...)``'s ``layer_tok`` (+ its score blocks) for the same setup.

    python bench/vram/saved_probe.py phi-3.5-mini --seq 256 [--attention eager] [--adapter dora|qlora] [--batch 2]

It runs on the GPU when there is one (the attention kernels save what they save on that device) and on the CPU
otherwise. Allocator effects are not seen here: this checks the tensor count.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import weakref
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


@contextlib.contextmanager
def peft_sees_autocast(device: str):
    """PEFT's 4-bit LoRA layer asks ``torch.is_autocast_enabled()`` with no device, which reads CUDA's autocast: on
    the CPU it would cast every input to fp32, as it does without autocast. Inside this block the question is
    answered for ``device``, as it is on the GPU for the GPU."""
    import torch

    asked = torch.is_autocast_enabled
    torch.is_autocast_enabled = lambda *dev: asked(*dev) if dev else asked(device)
    try:
        yield
    finally:
        torch.is_autocast_enabled = asked


def saved_bytes(key: str, layers: int, seq: int, batch: int, attention: str, adapter: str) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward of a ``layers``-layer model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models import hf_config

    cfg = hf_config(key)
    cfg.num_hidden_layers = layers
    cfg.vocab_size = 512  # the head is not part of a layer
    cfg.pad_token_id = cfg.bos_token_id = cfg.eos_token_id = 0
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        cfg.layer_types = cfg.layer_types[:layers]
    cfg._attn_implementation = attention
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).to(device)
    if adapter == "qlora":  # the runtime's NF4 load (ftplan_runtime.model_loading), 16-bit parts kept as they are
        from ftplan_runtime.model_loading import load_weights

        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            model = load_weights(folder, dtype=torch.bfloat16, attention=attention, quantize_4bit=True,
                                 device_map={"": device})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear",
                                             use_dora=adapter == "dora"))
    model.train()
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, list] = {}  # storage address -> [(weak ref to a saved tensor, its storage's bytes)]

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.device.type != "meta":
            seen.setdefault(st.data_ptr(), []).append((weakref.ref(t), st.nbytes()))
        return t

    ids = torch.randint(0, 512, (batch, seq), device=device)
    with peft_sees_autocast(device), torch.autocast(device, dtype=torch.bfloat16), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, use_cache=False)  # as in training: a cache would copy k and v
    # only what the graph still holds once the forward is done: a tensor saved into a branch of the graph that the
    # forward then dropped (DoRA's weight-norm path through an identity matrix) was freed with that branch
    kept = sum(max((size for r, size in saved if r() is not None), default=0) for saved in seen.values())
    del out
    return kept


def estimated(key: str, seq: int, batch: int, attention: str, adapter: str) -> tuple[int, int]:
    """(bytes per token one layer saves, what the layer saves whatever the token count: score blocks, 16-bit adapter
    copies) from the estimator."""
    from ftplan.catalog import get_model
    from ftplan.estimate import activations
    from ftplan.estimate.stage import resolve
    from ftplan.schemas import SftStage

    stage = SftStage.model_validate({"id": "s", "kind": "sft", "data": "d", "learning_rate": 1e-4,
                                     "adapter": {"type": adapter, "r": 16, "alpha": 16, "targets": "all-linear"},
                                     "micro_batch": batch, "gradient_checkpointing": False,
                                     "attention": attention})
    r = resolve(get_model(key), stage, seq_len=seq)
    acts = activations.compute(r)
    return acts.layer_tok() + acts.input_tok, acts.scores_saved + acts.adapter_casts


def compare(key: str, seq: int = 256, batch: int = 1, attention: str = "sdpa", adapter: str = "lora") -> tuple[int, int]:
    """(measured, estimated) bytes one decoder layer saves for this setup: the two-layer model's count less the
    one-layer model's, against ``estimated``'s per-token figure times the tokens plus its fixed terms."""
    layer = saved_bytes(key, 2, seq, batch, attention, adapter) - saved_bytes(key, 1, seq, batch, attention, adapter)
    tok, fixed = estimated(key, seq, batch, attention, adapter)
    return layer, tok * seq * batch + fixed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--attention", default="sdpa")
    ap.add_argument("--adapter", default="lora", choices=["lora", "dora", "qlora"])
    a = ap.parse_args()
    layer, est = compare(a.model, a.seq, a.batch, a.attention, a.adapter)
    n = a.seq * a.batch
    print(f"{a.model} {a.adapter} {a.attention} seq {a.seq} x {a.batch}: measured {layer / n:,.0f} B/token/layer "
          f"({layer / 2**20:.1f} MiB); estimated {est / n:,.0f} B/token/layer ({est / 2**20:.1f} MiB); "
          f"{100 * (est - layer) / layer:+.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
