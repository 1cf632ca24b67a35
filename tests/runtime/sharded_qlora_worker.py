"""One process of a sharded-QLoRA training run on the CPU, for ``test_sharded_qlora.py`` (not a test module).

Run from a project folder with a compiled plan, as ``python sharded_qlora_worker.py SPEC_JSON``. The spec names the
stage's ``args.json``, how to shard (``fsdp2``, ``zero3`` or ``none``), this process's rank, the world size, a
``FileStore`` path for the gloo group, and the ``accelerate launch`` environment of the stage's compiled
accelerate.yaml (FSDP2) or its deepspeed.json (ZeRO-3). The process:

1. loads the stage's model with the runtime's own ``load_for_training`` (the contract's 4-bit storage; under FSDP2 in
   host memory, every trainable parameter fp32);
2. shards it the way the launched trainer would: FSDP2 through accelerate's ``fsdp2_prepare_model`` (what
   ``Accelerator.prepare`` runs for FSDP2) with the FSDP plugin accelerate builds from the launch environment, or
   DeepSpeed ZeRO-3 through ``deepspeed.initialize`` with the plan's JSON;
3. trains ``steps`` steps on its share of a fixed batch (rows ``rank::world`` of ``batch`` sequences), torch AdamW at
   the stage's learning rate and weight decay, gradients clipped to its ``max_grad_norm``, with the stage's
   non-reentrant gradient checkpointing;
4. on rank 0 writes the mean loss of each step over all ranks, the trained LoRA weights gathered whole, and for each
   4-bit weight its dtype and how many of its elements this process holds (``torch.save`` to ``out``).

With ``contrast_uint8`` (FSDP2) it also shards a second copy of the model whose 4-bit codes keep bitsandbytes'
``uint8`` storage, and records which of its 4-bit weights accelerate left whole.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace


def _four_bit(model) -> dict[str, tuple[str, int, int]]:
    """{name: (dtype, elements this process holds, elements in all)} of every 4-bit weight (a Linear4bit's)."""
    import bitsandbytes as bnb
    from torch.distributed.tensor import DTensor

    out = {}
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        p = mod.weight
        if isinstance(p, DTensor):
            held, whole = p.to_local().numel(), p.numel()
        elif hasattr(p, "ds_numel"):
            held, whole = p.ds_tensor.numel(), p.ds_numel
        else:
            held = whole = p.numel()
        out[f"{mod_name}.weight"] = (str(p.dtype).removeprefix("torch."), held, whole)
    return out


def _fsdp2(model, rank: int):
    """Shard ``model`` as ``Accelerator.prepare`` does under FSDP2, with the plugin of this launch environment."""
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin()
    mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mixed != "no":
        plugin.set_mixed_precision(mixed)  # as AcceleratorState does
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                                  parallelism_config=None, is_main_process=rank == 0, mixed_precision=mixed,
                                  device=torch.device("cpu"))
    return fsdp2_prepare_model(accelerator, model)


def main(spec: dict) -> None:
    os.environ.update(spec.get("env", {}))
    import torch
    import torch.distributed as dist

    from ftplan.schemas.runtime_args import RuntimeArgs
    from ftplan_runtime.model_loading import load_for_training, load_weights, lora_config, torch_dtype

    rank, world, strategy = spec["rank"], spec["world"], spec["strategy"]
    torch.set_num_threads(1)
    if strategy != "none":
        # what torchrun tells each process (DeepSpeed reads it)
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
        dist.init_process_group("gloo", store=dist.FileStore(spec["store"], world), rank=rank, world_size=world)
    args = RuntimeArgs.model_validate_json(Path(spec["args"]).read_text())
    stage = args.stage
    model = load_for_training(args, zero_stage=3 if strategy == "zero3" else None, device_map={"": "cpu"}).model
    model.train()  # as the Trainer does (bitsandbytes' CPU backend repacks 4-bit weights in place in eval mode)
    if stage.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine = None
    if strategy == "fsdp2":
        model = _fsdp2(model, rank)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=stage.learning_rate,
                                  weight_decay=stage.weight_decay)
    if strategy == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        config = json.loads(Path(spec["deepspeed"]).read_text())
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    four_bit = _four_bit(engine.module if engine is not None else model)

    batch = torch.randint(6, spec["vocab"], (spec["batch"], spec["seq"]), generator=torch.Generator().manual_seed(7))
    ids = batch[rank::world]
    losses = []
    for _ in range(spec["steps"]):
        if engine is not None:
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()  # clips to the JSON's gradient_clipping
        else:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], stage.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        mean = loss.detach().float().clone()
        if strategy != "none":
            dist.all_reduce(mean)
        losses.append(mean.item() / world)

    if engine is not None:
        state = engine._zero3_consolidated_16bit_state_dict()  # what accelerate's get_state_dict gathers
    elif strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = model.state_dict()
    lora = {k: v.detach().float().clone() for k, v in (state or {}).items() if "lora_" in k}

    contrast = None
    if spec.get("contrast_uint8"):
        from peft import get_peft_model

        plain = load_weights(args.source.weights, dtype=torch_dtype(stage.precision), quantize_4bit=True,
                             device_map={"": "cpu"}, storage="uint8")
        plain = _fsdp2(get_peft_model(plain, lora_config(stage.adapter)), rank)
        contrast = _four_bit(plain)
    if rank == 0:
        torch.save({"losses": losses, "lora": lora, "four_bit": four_bit, "contrast": contrast}, spec["out"])
    if strategy != "none":
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
