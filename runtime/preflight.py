"""Preflight: assert, before any work, that this machine is the one the plan promised (no silent fallbacks).

The compiled ``args.json`` carries a ``Promise`` (device, world size, distributed type, ZeRO stage, precision,
attention backend, kernel set, GPU memory). Each check here compares one promised value with what the process
actually sees and raises ``PreflightError`` naming both and how to fix it; ``__main__`` turns that into a
one-line message and exit code 3. ``StageError`` is the general user-facing failure (exit code 1) and ``Requeue``
the request to be run again after a preemption checkpoint (exit code 75); they live here so the entry point can
catch them without importing the training stack.
"""

from __future__ import annotations

import importlib.util
import json
import os

from ftplan.schemas.runtime_args import Promise

FIX_PLAN = "recompile the plan for the machine it runs on (`ftplan compile` with the real target)"
"""How to fix a promise the hardware does not keep."""

# Attention backends and the package each needs importable (None: built into torch/transformers).
_ATTENTION_PACKAGES = {
    "flash_attention_2": "flash_attn",
    "flash_attention_3": "flash_attn_interface",
    "flex_attention": None,
    "sdpa": None,
    "eager": None,
}
# Backends that only run on CUDA GPUs.
_CUDA_ONLY_ATTENTION = {"flash_attention_2", "flash_attention_3"}

# The kernel ops `kernels: ftplan` must patch, per model_type (default: all three); "lora" joins them for a model
# with PEFT LoRA layers where the family's MLP is SwiGLU.
_EXPECTED_KERNEL_OPS = {"gemma": ("rms_norm", "rope")}
_ALL_KERNEL_OPS = ("rms_norm", "swiglu", "rope")


class StageError(Exception):
    """A user-facing failure of a stage: the message says what is wrong and how to fix it (exit code 1)."""

    exit_code = 1


class PreflightError(StageError):
    """The machine does not match the plan's promise (exit code 3)."""

    exit_code = 3


class Requeue(Exception):
    """Training stopped at a checkpoint because of a signal; the stage wants to be run again (exit code 75)."""


def _fail(what: str, promised: object, actual: object, fix: str = FIX_PLAN) -> None:
    raise PreflightError(f"preflight: the plan promised {what} = {promised}, but this process has {actual}; "
                         f"fix: {fix}")


def check_consistent(stage, promise: Promise) -> None:
    """A training stage and its promise must agree on precision, attention and kernels (one compiler run)."""
    for field in ("precision", "attention", "kernels"):
        if getattr(stage, field) != getattr(promise, field):
            raise StageError(f"the args file says `{field}: {getattr(stage, field)}` for the stage but promises "
                             f"{getattr(promise, field)}; it was edited by hand or mixed from two plans: "
                             "recompile it with `ftplan compile`")


def check_device(promise: Promise) -> None:
    """Device type, precision support and visible GPU memory (every stage, before loading anything)."""
    import torch

    cuda = torch.cuda.is_available()
    if promise.device == "cuda" and not cuda:
        _fail("device", "cuda", "no usable CUDA device (torch.cuda.is_available() is False)",
              "run on a GPU node with a CUDA build of torch, or " + FIX_PLAN + " with a CPU target")
    if promise.precision == "fp16" and promise.device != "cuda":
        _fail("precision", "fp16", "a CPU device (fp16 mixed precision needs a CUDA GPU)",
              "use `precision: fp32` or `bf16` for CPU runs, or run on a GPU")
    if promise.device == "cuda":
        # not torch.cuda.is_bf16_supported(): it accepts emulated bf16 (T4, V100) and probes GPU 0 on every rank
        if promise.precision == "bf16" and not (
                torch.version.hip or torch.cuda.get_device_capability(_local_device_index())[0] >= 8):
            name = torch.cuda.get_device_name(_local_device_index())
            _fail("precision", "bf16", f"a {name}, which does not support bf16",
                  "use `precision: fp16` for this GPU, or run on compute capability 8.0 or newer")
        if promise.gpu_memory_mib is not None:
            idx = _local_device_index()
            total_mib = torch.cuda.get_device_properties(idx).total_memory / 2**20
            if total_mib < 0.95 * promise.gpu_memory_mib:
                _fail(f"GPU memory ({promise.gpu_name or 'target GPU'})", f"{promise.gpu_memory_mib} MiB",
                      f"{torch.cuda.get_device_name(idx)} with {total_mib:.0f} MiB")


def check_attention_available(promise: Promise) -> None:
    """The promised attention backend's package is importable and its device is there (before loading)."""
    attn = promise.attention
    if attn not in _ATTENTION_PACKAGES:
        _fail("attention", attn, "no such backend (known: " + ", ".join(sorted(_ATTENTION_PACKAGES)) + ")")
    if attn in _CUDA_ONLY_ATTENTION and promise.device != "cuda":
        _fail("attention", attn, "a CPU device (this backend needs a CUDA GPU)", "use `attention: sdpa` on CPU")
    package = _ATTENTION_PACKAGES[attn]
    if package is not None and importlib.util.find_spec(package) is None:
        _fail("attention", attn, f"no importable `{package}` package",
              f"install `{package}` in the training environment, or use `attention: sdpa` and recompile")
    if attn == "flex_attention" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        _fail("attention", attn, "a torch without flex attention", "use torch >= 2.5, or `attention: sdpa`")


def check_launch(promise: Promise, env: "os._Environ[str] | dict[str, str]" = os.environ) -> None:
    """The process group the launchers formed, as torchrun tells each process before anything is loaded
    (``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_WORLD_SIZE``: processes in all, on this machine, machines), is
    the one the plan promised. torchrun's agents agree on one group even when their launchers were started for
    different sizes (another plan's accelerate.yaml, another ``--num_machines``), so every process of a mismatched
    launch fails here within seconds, naming both sizes, instead of after loading the model. Nothing to check
    for a process no launcher started (``python -m ftplan_runtime``): ``check_distributed`` compares later."""
    if "WORLD_SIZE" not in env:
        return
    world = int(env["WORLD_SIZE"])
    local = int(env.get("LOCAL_WORLD_SIZE", world))
    machines = int(env.get("GROUP_WORLD_SIZE", max(1, world // max(1, local))))
    per_machine = promise.world_size // max(1, promise.num_machines)
    if (world, local, machines) == (promise.world_size, per_machine, promise.num_machines):
        return
    here = f"machine rank {env['GROUP_RANK']}" if "GROUP_RANK" in env else "this machine"
    others = (f" and the other {machines - 1} machine(s) {world - local}" if machines > 1 else "")
    _fail("world size", f"{promise.world_size} ({promise.num_machines} machine(s) × {per_machine} process(es))",
          f"a launch of {world} process(es) on {machines} machine(s): {here} started {local}{others}",
          "start every machine's launcher with this stage's compiled accelerate.yaml and the same `--num_machines` "
          f"({promise.num_machines}), as the compiled run.sh and sbatch script do, or " + FIX_PLAN)


def check_distributed(promise: Promise, training_args) -> None:
    """World size, machines, distributed type and ZeRO stage, from accelerate's state (training stages)."""
    state = training_args.distributed_state
    world = int(state.num_processes)
    if world != promise.world_size:
        _fail("world size", promise.world_size, f"{world} process(es)",
              "launch with the compiled accelerate config (`accelerate launch --config_file ...`) on the planned "
              "GPUs, or " + FIX_PLAN)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    machines = max(1, world // max(1, local))
    if machines != promise.num_machines:
        _fail("number of machines", promise.num_machines, f"{machines} machine(s)",
              "launch with the compiled sbatch script/accelerate config, or " + FIX_PLAN)
    actual = state.distributed_type.value if hasattr(state.distributed_type, "value") else str(state.distributed_type)
    if training_args.deepspeed_plugin is not None:
        actual = "DEEPSPEED"
    if not _same_distributed_type(promise, actual):
        _fail("distributed type", promise.distributed_type, actual,
              "launch with the compiled accelerate config (`accelerate launch --config_file stages/<id>/"
              "accelerate.yaml`), or " + FIX_PLAN)
    stage = zero_stage(training_args)
    if promise.zero_stage is not None or stage is not None:
        if stage != promise.zero_stage:
            _fail("DeepSpeed ZeRO stage", promise.zero_stage, stage,
                  "launch with the compiled accelerate config and DeepSpeed JSON, or " + FIX_PLAN)


def _same_distributed_type(promise: Promise, actual: str) -> bool:
    if actual == promise.distributed_type:
        return True
    # accelerate reports CPU data parallelism (use_cpu with several processes) as MULTI_CPU
    return promise.device == "cpu" and promise.distributed_type == "MULTI_GPU" and actual == "MULTI_CPU"


def zero_stage(training_args) -> int | None:
    """The DeepSpeed ZeRO stage this process runs under (None without DeepSpeed)."""
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is None:
        return None
    stage = getattr(plugin, "zero_stage", None)
    if stage is None:
        path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if path and os.path.isfile(path):
            with open(path) as f:
                stage = json.load(f).get("zero_optimization", {}).get("stage")
    return None if stage is None else int(stage)


def check_fused_loss(promise: Promise, zero: int | None) -> None:
    """The fused loss head of ``kernels: ftplan`` (the linear cross-entropy of SFT and CPT, the linear log-probs of
    DPO and KTO: ``fused_head``) reads lm_head's full weight outside lm_head's own forward, and SFT's calls the
    decoder directly: not under ZeRO-3 (sharded head) nor FSDP2 (parameters gathered only inside the forwards it
    wraps; SFT's bypasses the root module's)."""
    if promise.kernels != "ftplan":
        return
    if zero == 3:
        _fail("kernels with ZeRO-3", "ftplan + zero3", "a ZeRO-3 run, whose sharded lm_head weight the fused "
              "loss head (cross-entropy or log-probs) cannot read", "use `kernels: none` with zero3, or "
              "`distributed: zero2`, and recompile")
    if promise.distributed_type == "FSDP":
        _fail("kernels with FSDP2", "ftplan + fsdp2", "an FSDP2 run, whose root module holds the embeddings, "
              "final norm and lm_head sharded outside the forwards it wraps, where the fused loss head reads them",
              "use `kernels: none` with fsdp2, or `distributed: zero2`, and recompile")


def check_attention_loaded(promise: Promise, model) -> None:
    """After loading: the model really runs the promised attention implementation."""
    config = getattr(model, "config", None)
    actual = getattr(config, "_attn_implementation", None)
    if actual != promise.attention:
        _fail("attention", promise.attention, f"a model running `{actual}` after loading",
              "install the backend's package or pick a backend the model supports, then recompile")


def check_4bit_storage(promise: Promise, model, storage: str) -> None:
    """After loading a QLoRA base: every 4-bit weight is stored in ``storage`` (the contract's ``quant_storage``:
    the compute dtype under ZeRO-3 and FSDP2, which can shard only such weights; ``uint8`` otherwise)."""
    found = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                    if type(p).__name__ == "Params4bit"})
    if not found:
        _fail("4-bit base", "bitsandbytes NF4 weights", "a model without 4-bit weights after loading",
              "check that bitsandbytes is installed with a backend for this device, and recompile")
    if found != [storage]:
        sharded = promise.zero_stage == 3 or promise.distributed_type == "FSDP"
        _fail("4-bit storage dtype", storage, f"4-bit weights stored as {', '.join(found)}"
              + (" (the sharded strategies partition only weights stored in the compute dtype)" if sharded else ""),
              "use a transformers release whose BitsAndBytesConfig honours `bnb_4bit_quant_storage` "
              "(ftplan's constraints.txt pins one), or recompile")


def apply_promised_kernels(promise: Promise, model):
    """Apply ``kernels: ftplan`` and require every expected op patched; returns the KernelReport (or None)."""
    if promise.kernels != "ftplan":
        return None
    from .kernels import KernelPatchError, apply_ftplan_kernels
    from .kernels.lora import is_lora_layer

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    ops = _EXPECTED_KERNEL_OPS.get(model_type, _ALL_KERNEL_OPS)
    if "swiglu" in ops and any(is_lora_layer(m) for m in model.modules()):
        ops = (*ops, "lora")  # the fused LoRA functions, on every LoRA layer of the projections (check: FT309)
        if promise.zero_stage == 3 or promise.distributed_type == "FSDP":
            _fail("kernels with sharded weights", f"ftplan + {'zero3' if promise.zero_stage == 3 else 'fsdp2'}",
                  "LoRA layers whose base and adapter weights stay sharded outside each module's own forward, which "
                  "the fused LoRA functions read directly", "use `kernels: none` with this strategy, or "
                  "`distributed: zero2`, and recompile")
    try:
        report = apply_ftplan_kernels(model, **{op: op in ops for op in (*_ALL_KERNEL_OPS, "lora")})
        report.require(*ops)
    except KernelPatchError as e:
        _fail("kernels", "ftplan", f"kernels not applied ({e})", "use `kernels: none` for this model and recompile")
    return report


def prepare_kernel_import(promise: Promise) -> None:
    """On a CPU run with ``kernels: ftplan``, make Triton interpret the kernels.

    Triton picks compiled or interpreted kernels when it (and the kernel modules) are imported, so the entry
    point calls this before importing the training stack; a later call only verifies it took effect."""
    if promise.kernels != "ftplan":
        return
    if importlib.util.find_spec("triton") is None:
        _fail("kernels", "ftplan", "no importable `triton` package", "install triton, or use `kernels: none`")
    if promise.device != "cpu":
        return
    import sys

    if "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif os.environ.get("TRITON_INTERPRET") != "1":
        _fail("kernels", "ftplan on CPU", "Triton already imported without TRITON_INTERPRET=1",
              "start the process with TRITON_INTERPRET=1 (python -m ftplan_runtime does this itself)")


def _local_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
