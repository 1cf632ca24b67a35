"""Resolving one stage into its ``RuntimeArgs`` (``args.json``): defaults filled, paths, model source and the
stages it consumes computed from the stage graph, and the hardware promise the runtime verifies before it starts.

Folders, all relative to the project root: a stage writes into ``<output_dir>/<id>/``; a trained adapter is
saved in its ``adapter/`` subfolder and full weights (full fine-tune, merge) in its ``model/`` subfolder.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from ..estimate.types import StageEstimate
from ..lineage import AdapterLink, Result, StageLink
from ..schemas import (DataStage, DistributedSpec, DpoStage, GgufStage, HardwareSpec, MergeStage, Pipeline,
                       SftStage)
from ..schemas.runtime_args import AdapterRef, ModelSource, Promise, RuntimeArgs, UpstreamRef
from .accelerate import DISTRIBUTED_TYPES
from .deepspeed import zero_stage

ADAPTER_SUBDIR = "adapter"
"""Subfolder of a stage's output holding its PEFT adapter."""
MODEL_SUBDIR = "model"
"""Subfolder of a stage's output holding full weights (full fine-tune or merge)."""


def stage_output_dir(pipeline: Pipeline, stage_id: str) -> str:
    """``<output_dir>/<stage id>``, normalised, as written in scripts and ``args.json``."""
    return posixpath.normpath(posixpath.join(pipeline.output_dir, stage_id))


def resolve_distributed(stage: SftStage | DpoStage, hardware: HardwareSpec) -> DistributedSpec:
    """The stage's distributed settings with ``auto`` resolved: ``none`` on one process, ``ddp`` on more."""
    spec = stage.distributed_spec()
    if spec.strategy == "auto":
        spec = spec.model_copy(update={"strategy": "none" if hardware.world_size == 1 else "ddp"})
    return spec


def merge_on_gpu(hardware: HardwareSpec, estimate: StageEstimate | None) -> bool:
    """A merge runs on one GPU when the target has GPUs and the estimate says the model fits one; otherwise on
    the CPU (slower, needs host RAM for the full-precision model, never runs out of GPU memory)."""
    return (hardware.device == "cuda" and estimate is not None and estimate.verdict == "fits"
            and estimate.peak_bytes > 0)


def _resolved_stage(stage, hardware: HardwareSpec):
    """The stage with everything ``auto`` or implied written out."""
    if not isinstance(stage, (SftStage, DpoStage)):
        return stage
    update: dict = {"distributed": resolve_distributed(stage, hardware)}
    if stage.epochs is None and stage.max_steps is None:
        update["epochs"] = 1.0
    if stage.warmup_ratio is None and stage.warmup_steps is None:
        update["warmup_steps"] = 0
    return stage.model_copy(update=update)


def _weights(pipeline: Pipeline, result: Result) -> tuple[str, str | None]:
    if result.weights is None:
        return pipeline.model.base, pipeline.model.revision
    return posixpath.join(stage_output_dir(pipeline, result.weights), MODEL_SUBDIR), None


def _adapter(pipeline: Pipeline, link: AdapterLink) -> AdapterRef:
    return AdapterRef(stage=link.stage, type=link.type,
                      path=posixpath.join(stage_output_dir(pipeline, link.stage), ADAPTER_SUBDIR))


def model_source(pipeline: Pipeline, stage, link: StageLink) -> ModelSource | None:
    """Where a stage's model comes from: weights, the adapters merged into them first, the adapter it continues.

    Training stages: ``adapter: continue`` continues the input's last adapter (earlier ones are merged);
    ``merge_input`` merges the input's whole chain; otherwise the input has no adapters. A merge stage merges its
    input's whole chain, in order. A GGUF stage reads merged or fully fine-tuned weights."""
    if isinstance(stage, DataStage):
        return None
    src = link.input
    if src is None:
        raise ValueError(f"stage '{stage.id}' has a broken input; run `ftplan check` for the details")
    weights, revision = _weights(pipeline, src)
    merge: list[AdapterLink] = []
    cont: AdapterLink | None = None
    if isinstance(stage, (SftStage, DpoStage)):
        if link.continues_adapter:
            merge, cont = list(src.adapters[:-1]), src.adapters[-1]
        elif link.merges_input:
            merge = list(src.adapters)
        elif src.adapters:
            raise ValueError(f"stage '{stage.id}' does not say how it takes over its input's adapter; run "
                             "`ftplan check` for the details")
    elif isinstance(stage, MergeStage):
        merge = list(src.adapters)
    elif isinstance(stage, GgufStage) and src.adapters:
        raise ValueError(f"stage '{stage.id}' reads an unmerged adapter; run `ftplan check` for the details")
    return ModelSource(
        weights=weights, revision=revision, merge=[_adapter(pipeline, a) for a in merge],
        continue_adapter=_adapter(pipeline, cont) if cont is not None else None,
        tokenizer=pipeline.model.tokenizer or pipeline.model.base,
    )


def consumed_stages(stage, link: StageLink) -> list[str]:
    """Ids of the earlier stages whose outputs ``stage`` reads, in order, without repeats: its data stage, the
    stage that wrote the weights it starts from, the stages whose adapters it merges or continues.

    Every adapter of the input's chain is read (merged first or continued), whatever the hand-off; a GGUF stage
    reads merged weights only. The single place that decides ``RuntimeArgs.upstream``."""
    ids: list[str] = []
    if isinstance(stage, (SftStage, DpoStage)):
        ids.append(stage.data)
    src = link.input
    if src is not None and not isinstance(stage, DataStage):
        if src.weights is not None:
            ids.append(src.weights)
        ids.extend(a.stage for a in src.adapters)
    return list(dict.fromkeys(ids))


def upstream_refs(stage, link: StageLink, args_paths: Mapping[str, str]) -> list[UpstreamRef]:
    """``RuntimeArgs.upstream``: each consumed stage with its args file (``args_paths``: stage id -> the path of
    its ``args.json`` relative to the project root)."""
    return [UpstreamRef(stage=sid, args=args_paths[sid]) for sid in consumed_stages(stage, link)]


def promise(stage, hardware: HardwareSpec, gpu, estimate: StageEstimate | None) -> Promise:
    """What the plan assumes about the machine the stage runs on."""
    on_gpu = hardware.device == "cuda"
    if isinstance(stage, (SftStage, DpoStage)):
        spec = resolve_distributed(stage, hardware)
        return Promise(device=hardware.device, world_size=hardware.world_size,
                       num_machines=hardware.nodes if on_gpu else 1,
                       distributed_type=DISTRIBUTED_TYPES[spec.strategy], zero_stage=zero_stage(spec),
                       precision=stage.precision, attention=stage.attention, kernels=stage.kernels,
                       gpu_name=gpu.key if on_gpu and gpu else None,
                       gpu_memory_mib=gpu.memory_mib if on_gpu and gpu else None)
    if isinstance(stage, MergeStage) and merge_on_gpu(hardware, estimate):
        return Promise(device="cuda", world_size=1, num_machines=1, distributed_type="NO",
                       precision=stage.dtype, attention="eager", kernels="none",
                       gpu_name=gpu.key if gpu else None, gpu_memory_mib=gpu.memory_mib if gpu else None)
    precision = stage.dtype if isinstance(stage, MergeStage) else "fp32"
    attention = "none" if isinstance(stage, DataStage) else "eager"
    return Promise(device="cpu", world_size=1, num_machines=1, distributed_type="NO", precision=precision,
                   attention=attention, kernels="none")


def runtime_args(pipeline: Pipeline, stage, link: StageLink, gpu, estimate: StageEstimate | None,
                 args_paths: Mapping[str, str] | None = None) -> RuntimeArgs:
    """The complete ``args.json`` contents of one stage; ``args_paths`` maps stage ids to their ``args.json``
    relative to the project root (needed for stages that consume others)."""
    data_dir = (stage_output_dir(pipeline, stage.data) if isinstance(stage, (SftStage, DpoStage)) else None)
    peak = None
    if estimate is not None and estimate.peak_bytes > 0:
        peak = round(estimate.peak_bytes / 2**30, 2)
    return RuntimeArgs(
        pipeline=pipeline.name, stage=_resolved_stage(stage, pipeline.hardware), model=pipeline.model,
        source=model_source(pipeline, stage, link), data_dir=data_dir,
        output_dir=stage_output_dir(pipeline, stage.id),
        promise=promise(stage, pipeline.hardware, gpu, estimate), estimate_peak_gib=peak,
        upstream=upstream_refs(stage, link, args_paths or {}),
    )
