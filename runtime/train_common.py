"""What the training kinds (SFT, CPT, DPO, ORPO, KTO, reward) share: the stage → TrainingArguments mapping, data
loading, the run loop, the final save.

``run_training(args, sha, spec)`` is the whole life of a training stage after argument parsing:
preflight (device, attention package, kernels import) → datasets → trainer config → preflight (world size,
distributed type, ZeRO stage) → model → preflight (attention after load, kernels) → checkpoint offload
(``gradient_checkpointing: offload``, ``offload.py``) → trainer → resume from the newest complete checkpoint →
train (SIGTERM/SIGUSR1: checkpoint, then ``Requeue``) → save the adapter or full weights with the tokenizer →
metrics.
``spec`` supplies the trainer-specific parts (config class and extra fields, trainer construction) — see ``sft.py``,
``cpt.py``, ``dpo.py``, ``orpo.py``, ``kto.py`` and ``reward.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftplan.schemas.adapters import LoraAdapter
from ftplan.schemas.runtime_args import ADAPTER_SUBDIR, MODEL_SUBDIR, RuntimeArgs, checkpoint_mode
from transformers import TrainerCallback

from .metrics import StageRecorder, TokenCountingMixin, loss_summary, reduce_tokens
from .model_loading import (LoadedModel, check_saved_weights, load_for_training, load_tokenizer,
                            save_tokenizer)
from .offload import CheckpointOffload, offload_checkpoints, offloading_layers
from .preemption import (Preemption, PreemptionCallback, Requeue, checkpoint_state, finished_checkpoint,
                         guard_checkpoints, latest_checkpoint, publish_checkpoint, result_checkpoint)
from .preflight import (StageError, apply_promised_kernels, check_attention_available, check_attention_loaded,
                        check_consistent, check_device, check_distributed, check_fused_loss, prepare_kernel_import,
                        zero_stage)
from .progress import ProgressLogger, interactive

CHECKPOINTS_DIR = "checkpoints"
"""Trainer checkpoints (resumable) inside the stage output folder."""
ADAPTER_DIR = ADAPTER_SUBDIR
"""Final adapter (PEFT folder + tokenizer) of an adapter stage (the contract's name)."""
MODEL_DIR = MODEL_SUBDIR
"""Final full weights (+ tokenizer) of a full fine-tune or a merge (the contract's name)."""
LOGS_DIR = "logs"
"""TensorBoard event files."""

_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}


@dataclass
class TrainerSpec:
    """The trainer-specific parts of a training stage."""

    family: str
    """Data stage sub-folder: ``sft``, ``preference`` or ``kto`` (``TRAIN_KINDS[kind].group``)."""
    make_config: Callable[[dict[str, Any], Any], Any]
    """(common TrainingArguments kwargs, train dataset) → SFTConfig/DPOConfig."""
    make_trainer: Callable[..., Any]
    """(args, config, loaded model, train dataset, eval dataset) → trainer."""
    prepare_data: Callable[[Any], Any] | None = None
    """Lays the data stage's split out in the trainer's columns (ORPO), applied to train and validation."""


@dataclass
class Prepared:
    """A trainer ready to ``train()``, and what was measured/decided on the way."""

    trainer: Any
    loaded: LoadedModel
    config: Any
    kernel_report: Any
    resume_from: str | None
    recorder: StageRecorder
    offload: CheckpointOffload | None = None
    """The checkpoint offload of ``gradient_checkpointing: offload`` on a GPU (None otherwise)."""


def check_trackers(report_to: list[str]) -> None:
    """Every configured experiment tracker must be importable (no silent drop of wandb/mlflow)."""
    for name in report_to:
        if not any(importlib.util.find_spec(p) for p in _TRACKER_PACKAGES[name]):
            raise StageError(f"`report_to` lists {name}, but the `{_TRACKER_PACKAGES[name][0]}` package is not "
                             f"installed; install it in the training environment or remove {name} from report_to")


def load_split(args: RuntimeArgs, family: str, split: str, *, required: bool):
    """The data stage's pre-tokenized ``<data_dir>/<family>/<split>`` dataset (None if absent or empty)."""
    import datasets

    if args.data_dir is None:
        raise StageError(f"stage '{args.stage.id}' has no data folder in its args file; recompile the plan")
    path = Path(args.data_dir) / family / split
    if not path.is_dir():
        if required:
            raise StageError(f"tokenized data not found at '{path}'; run the data stage "
                             f"'{getattr(args.stage, 'data', '?')}' first")
        return None
    # Keep derived columns (labels, reference log-probs) out of the data stage's folder.
    datasets.disable_caching()
    ds = datasets.load_from_disk(str(path))
    if len(ds) == 0:
        if required:
            raise StageError(f"the {split} split at '{path}' is empty; check the data stage's datasets and filters")
        return None
    return ds


def checkpointing_fields(enabled: bool) -> dict[str, Any]:
    """The TrainingArguments fields that switch activation checkpointing on or off (non-reentrant).

    transformers renamed ``gradient_checkpointing`` to ``activation_checkpointing`` during 5.x and keeps the
    old name as a deprecated alias; the runtime supports releases on both sides of the rename.
    """
    from transformers import TrainingArguments

    name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def config_kwargs(args: RuntimeArgs, *, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments fields (shared by SFTConfig and DPOConfig) for a training stage."""
    stage = args.stage
    out = Path(args.output_dir)
    cpu = args.promise.device == "cpu"
    if stage.load_best_model_at_end and not (has_eval and stage.eval_steps):
        raise StageError("`load_best_model_at_end` needs evaluation: set `eval_steps` and a data stage "
                         "`val_fraction` > 0")
    if stage.optimizer == "adamw":
        optim = "adamw_torch" if cpu else "adamw_torch_fused"
    else:
        optim = _OPTIMIZERS[stage.optimizer]
    evaluate = has_eval and stage.eval_steps is not None
    warmup = stage.warmup_steps if stage.warmup_steps is not None else (stage.warmup_ratio or 0.0)
    # `lr_scheduler` is the schedule after warm-up; transformers' "constant" would ignore the warm-up
    scheduler = "constant_with_warmup" if stage.lr_scheduler == "constant" and warmup else stage.lr_scheduler
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / LOGS_DIR)
    kwargs: dict[str, Any] = dict(
        output_dir=str(out / CHECKPOINTS_DIR),
        learning_rate=stage.learning_rate,
        weight_decay=stage.weight_decay,
        max_grad_norm=stage.max_grad_norm,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup,
        num_train_epochs=stage.epochs if stage.epochs is not None else 1.0,
        max_steps=stage.max_steps if stage.max_steps is not None else -1,
        per_device_train_batch_size=stage.micro_batch,
        per_device_eval_batch_size=stage.micro_batch,
        gradient_accumulation_steps=stage.grad_accum,
        **checkpointing_fields(checkpoint_mode(stage.gradient_checkpointing, args.promise.device) != "off"),
        optim=optim,
        bf16=stage.precision == "bf16",
        fp16=stage.precision == "fp16",
        use_cpu=cpu,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=stage.eval_steps if evaluate else None,
        save_strategy="steps" if stage.save_steps else "no",
        save_steps=stage.save_steps or 500,
        save_total_limit=stage.save_total_limit,
        load_best_model_at_end=stage.load_best_model_at_end,
        metric_for_best_model="eval_loss" if stage.load_best_model_at_end else None,
        logging_strategy="steps",
        logging_steps=stage.logging_steps,
        logging_first_step=True,
        seed=stage.seed,
        data_seed=stage.seed,
        report_to=list(stage.report_to) or "none",
        run_name=f"{args.pipeline}/{stage.id}",
        disable_tqdm=not interactive(),
        dataloader_num_workers=0,
        save_only_model=False,
        push_to_hub=False,
    )
    return kwargs


def prepare_training(args: RuntimeArgs, sha256: str, spec: TrainerSpec) -> Prepared:
    """Everything up to ``trainer.train()``: preflight, data, config, resume point, model, trainer.

    When the newest checkpoint is already at the last step, nothing is loaded: ``trainer`` and ``loaded`` are
    None and ``run_training`` publishes that checkpoint."""
    promise = args.promise
    recorder = StageRecorder(args)
    check_consistent(args.stage, promise)
    check_device(promise)
    check_trackers(args.stage.report_to)
    check_attention_available(promise)
    prepare_kernel_import(promise)

    train_ds = load_split(args, spec.family, "train", required=True)
    eval_ds = load_split(args, spec.family, "validation", required=False)
    if spec.prepare_data is not None:
        train_ds = spec.prepare_data(train_ds)
        eval_ds = spec.prepare_data(eval_ds) if eval_ds is not None else None
    config = spec.make_config(config_kwargs(args, has_eval=eval_ds is not None), train_ds)
    check_distributed(promise, config)
    if spec.family == "sft":
        check_fused_loss(promise, zero_stage(config))
    state = config.distributed_state
    ckpt_dir = Path(args.output_dir) / CHECKPOINTS_DIR
    guard_checkpoints(ckpt_dir, sha256, write=state.is_main_process)
    state.wait_for_everyone()
    resume = latest_checkpoint(ckpt_dir, remove_incomplete=state.is_main_process)
    state.wait_for_everyone()
    if finished_checkpoint(resume):
        return Prepared(None, None, config, None, resume, recorder)

    device_map = {"": state.local_process_index} if promise.device == "cuda" else {"": "cpu"}
    loaded = load_for_training(args, zero_stage=zero_stage(config), device_map=device_map,
                               is_main_process=state.is_main_process, wait_for_everyone=state.wait_for_everyone)
    check_attention_loaded(promise, loaded.model)
    kernel_report = apply_promised_kernels(promise, loaded.model)
    offload = None
    if checkpoint_mode(args.stage.gradient_checkpointing, promise.device) == "offload":
        offload = offload_checkpoints(loaded.model, CheckpointOffload())

    trainer = spec.make_trainer(args, config, loaded, train_ds, eval_ds)
    if not interactive():
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(ProgressLogger(args.stage.id))
    trainer.add_callback(_MemorySampler(recorder))
    if offload is not None:
        trainer.add_callback(OffloadCheck(offload, args.stage.id, log=state.is_main_process))
    return Prepared(trainer, loaded, config, kernel_report, resume, recorder, offload)


def run_training(args: RuntimeArgs, sha256: str, spec: TrainerSpec) -> dict[str, Any]:
    """Run a training stage to completion (or to a checkpoint + ``Requeue`` on a signal); write metrics."""
    with Preemption() as preemption:
        prep = prepare_training(args, sha256, spec)
        if prep.trainer is None:
            return _publish_finished(args, prep)
        trainer = prep.trainer
        stopper = PreemptionCallback(preemption)
        trainer.add_callback(stopper)
        t0 = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=prep.resume_from)
        finally:
            if prep.offload is not None:
                prep.offload.close()
        train_s = time.perf_counter() - t0
        if stopper.stopped_early(trainer.state):
            raise Requeue(f"stage '{args.stage.id}' stopped at step {trainer.state.global_step} on a signal; "
                          "checkpoint saved, run it again to resume")
        # still under the handlers: a signal during the final save lets it finish, and the stage completes
        saved = save_result(trainer, prep.loaded, args)
        seen, trained = reduce_tokens(trainer)
    extra = {
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "resumed_from_step": _step_of(prep.resume_from),
        "epochs": trainer.state.epoch,
        "tokens_seen": seen,
        "tokens_trained": trained,
        "train_time_s": train_s,
        "tokens_per_s": seen / train_s if train_s > 0 else None,
        "kernels": prep.kernel_report.counts() if prep.kernel_report is not None else None,
        "attention": prep.loaded.model.config._attn_implementation,
        "world_size": prep.config.distributed_state.num_processes,
        "zero_stage": zero_stage(prep.config),
        "result": saved,
        **loss_summary(trainer.state.log_history),
    }
    if prep.offload is not None:
        extra["checkpoint_offload"] = prep.offload.report()
    prep.recorder.gather()  # every process's memory figures, for the main process's metrics.json
    if prep.config.distributed_state.is_main_process:
        prep.recorder.write(args.output_dir, extra)
    return extra


def _step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


def result_dir(args: RuntimeArgs) -> Path:
    """Where a stage's result is saved: ``<output_dir>/adapter`` for a stage that trains an adapter (its own or a
    continued one), ``<output_dir>/model`` for full weights (a full fine-tune or a merge). The compiler points
    the next stage at the same folder (``ftplan.plan.args``; tests/runtime/test_contract.py)."""
    adapter = getattr(args.stage, "adapter", None)
    trains_adapter = adapter == "continue" or isinstance(adapter, LoraAdapter)
    return Path(args.output_dir) / (ADAPTER_DIR if trains_adapter else MODEL_DIR)


def _publish_finished(args: RuntimeArgs, prep: Prepared) -> dict[str, Any]:
    """The newest checkpoint is at the last step: its weights are the result (no training, no model load)."""
    state = prep.config.distributed_state
    stage = args.stage
    dest = result_dir(args)
    ckpt = checkpoint_state(prep.resume_from)
    if state.is_main_process:
        publish_checkpoint(result_checkpoint(prep.resume_from, best=stage.load_best_model_at_end), dest)
        check_saved_weights(dest)
        tok, changed = load_tokenizer(args.source, args.model)
        save_tokenizer(tok, args.source.tokenizer, dest, changed=changed)
    state.wait_for_everyone()
    extra = {
        "steps": ckpt.get("global_step"), "max_steps": ckpt.get("max_steps"),
        "resumed_from_step": _step_of(prep.resume_from), "epochs": ckpt.get("epoch"),
        "tokens_seen": 0, "tokens_trained": 0, "train_time_s": 0.0, "tokens_per_s": None,
        "world_size": state.num_processes, "zero_stage": zero_stage(prep.config), "result": str(dest),
        **loss_summary(ckpt.get("log_history", [])),
    }
    prep.recorder.gather()
    if state.is_main_process:
        prep.recorder.write(args.output_dir, extra)
    return extra


class OffloadCheck(TrainerCallback):
    """``gradient_checkpointing: offload``, held to what it promises: once the trainer has switched checkpointing
    on (inside ``train()``), every checkpointed layer saves its input through the stage's ``CheckpointOffload``,
    and the first step moved something; otherwise the stage stops naming why (no silent fallback to checkpoints
    kept on the GPU). The main process says how many layers offload."""

    def __init__(self, offload: CheckpointOffload, stage_id: str, *, log: bool = True):
        self.offload = offload
        self.stage_id = stage_id
        self.log = log
        self._stepped = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Every checkpointed layer offloads."""
        ours, total = offloading_layers(model, self.offload)
        if total == 0 or ours != total:
            raise StageError(f"stage '{self.stage_id}': `gradient_checkpointing: offload`, but {ours} of the "
                             f"{total} checkpointed layers of the model offload their checkpoints (the model's "
                             "layers do not checkpoint through transformers' GradientCheckpointingLayer); use "
                             "`gradient_checkpointing: true` for this model and recompile")
        if self.log:
            print(f"ftplan_runtime: stage '{self.stage_id}': gradient_checkpointing: offload: the inputs of "
                  f"{total} checkpointed layers go to pinned host memory", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        """After the first step: something went to host memory."""
        if not self._stepped and self.offload.stats.tensors == 0:
            raise StageError(f"stage '{self.stage_id}': `gradient_checkpointing: offload`, but the first step "
                             "moved no checkpoint to host memory; use `gradient_checkpointing: true` and recompile")
        self._stepped = True


class _MemorySampler(TrainerCallback):
    """Samples device memory at each step end (for the device-level peak in metrics.json)."""

    def __init__(self, recorder: StageRecorder):
        self.recorder = recorder

    def on_step_end(self, args, state, control, **kwargs):
        """Record the free device memory."""
        self.recorder.sample()


def save_result(trainer, loaded: LoadedModel, args: RuntimeArgs) -> str:
    """Save the final adapter (``<out>/adapter``) or full weights (``<out>/model``) plus tokenizer; returns the
    folder. Under ZeRO-3 the parameters are gathered first, and the written tensors are checked to be real."""
    acc = trainer.accelerator
    dest = result_dir(args)
    if loaded.peft != (dest.name == ADAPTER_DIR):
        raise AssertionError(f"stage '{args.stage.id}' loaded {'an adapter' if loaded.peft else 'full weights'} "
                             f"but its result folder is {dest}")
    if loaded.peft:
        # the DeepSpeed engine (not the bare module) gathers ZeRO-3 shards
        state_dict = acc.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)
        if acc.is_main_process:
            model = acc.unwrap_model(trainer.model)
            model.save_pretrained(str(dest), state_dict=state_dict, selected_adapters=["default"],
                                  safe_serialization=True)
    else:
        trainer.save_model(str(dest))
    acc.wait_for_everyone()
    if acc.is_main_process:
        check_saved_weights(dest)
        save_tokenizer(loaded.tokenizer, args.source.tokenizer, dest, changed=loaded.tokenizer_changed)
        _drop_training_args(dest)
    acc.wait_for_everyone()
    return str(dest)


def _drop_training_args(folder: Path) -> None:
    (folder / "training_args.bin").unlink(missing_ok=True)
