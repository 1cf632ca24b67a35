"""One stage's ``RuntimeArgs`` (``args.json``): the stage with its defaults and resolved strategy written out, the
model it starts from and the stages it consumes (from the stage graph), and the hardware promise the runtime
verifies before it starts. Everything is read from the stage's ``ResolvedStage``; nothing is derived twice.

Folders, all relative to the project root: a stage writes into ``<output_dir>/<id>/``; a trained adapter is
saved in its ``ADAPTER_SUBDIR`` subfolder and full weights (full fine-tune, merge) in its ``MODEL_SUBDIR`` one
(both named in the contract, ``schemas/runtime_args.py``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from ..catalog.gpus import GpuSpec
from ..estimate.types import StageEstimate
from ..lineage import AdapterLink, Result, StageLink
from ..resolved_stage import ResolvedStage, stage_output_dir
from ..schemas import TRAIN_STAGE_TYPES, DataStage, GgufStage, MergeStage, Pipeline
from ..schemas.runtime_args import (ADAPTER_SUBDIR, MODEL_SUBDIR, AdapterRef, ModelSource, Promise, RuntimeArgs,
                                    UpstreamRef)
from ..schemas.stages import Stage
from ..units import gib_value


def _written_stage(stage: Stage, facts: ResolvedStage) -> Stage:
    """The stage with everything ``auto`` or implied written out: the resolved strategy, 1 epoch without
    ``max_steps``, no warm-up without a warm-up setting."""
    if not isinstance(stage, TRAIN_STAGE_TYPES) or facts.train is None:
        return stage
    update: dict[str, Any] = {
        "distributed": stage.distributed_spec().model_copy(update={"strategy": facts.train.strategy})}
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


def model_source(pipeline: Pipeline, stage: Stage, link: StageLink) -> ModelSource | None:
    """Where a stage's model comes from: weights, the adapters merged into them first, the adapter it continues.

    Training stages: ``adapter: continue`` continues the input's last adapter (earlier ones are merged);
    ``merge_input`` merges the input's whole chain; otherwise the input has no adapters. A merge stage merges its
    input's whole chain, in order. A GGUF stage reads merged or fully fine-tuned weights. A broken link is a bug
    here: the checks report it, and a plan is built only from a checked pipeline."""
    if isinstance(stage, DataStage):
        return None
    src = link.input
    if src is None:
        raise AssertionError(f"stage '{stage.id}' has a broken input; plans are built from checked pipelines only")
    weights, revision = _weights(pipeline, src)
    merge: list[AdapterLink] = []
    cont: AdapterLink | None = None
    if isinstance(stage, TRAIN_STAGE_TYPES):
        if link.continues_adapter:
            merge, cont = list(src.adapters[:-1]), src.adapters[-1]
        elif link.merges_input:
            merge = list(src.adapters)
        elif src.adapters:
            raise AssertionError(f"stage '{stage.id}' does not say how it takes over its input's adapter (FT206)")
    elif isinstance(stage, MergeStage):
        merge = list(src.adapters)
    elif isinstance(stage, GgufStage) and src.adapters:
        raise AssertionError(f"stage '{stage.id}' reads an unmerged adapter (FT208)")
    return ModelSource(
        weights=weights, revision=revision, merge=[_adapter(pipeline, a) for a in merge],
        continue_adapter=_adapter(pipeline, cont) if cont is not None else None,
        tokenizer=pipeline.model.tokenizer or pipeline.model.base,
    )


def consumed_stages(stage: Stage, link: StageLink) -> list[str]:
    """Ids of the earlier stages whose outputs ``stage`` reads, in order, without repeats: its data stage, the
    stage that wrote the weights it starts from, the stages whose adapters it merges or continues.

    Every adapter of the input's chain is read (merged first or continued), whatever the hand-off; a GGUF stage
    reads merged weights only. The single place that decides ``RuntimeArgs.upstream``."""
    ids: list[str] = []
    if isinstance(stage, TRAIN_STAGE_TYPES):
        ids.append(stage.data)
    src = link.input
    if src is not None and not isinstance(stage, DataStage):
        if src.weights is not None:
            ids.append(src.weights)
        ids.extend(a.stage for a in src.adapters)
    return list(dict.fromkeys(ids))


def upstream_refs(stage: Stage, link: StageLink, args_paths: Mapping[str, str]) -> list[UpstreamRef]:
    """``RuntimeArgs.upstream``: each consumed stage with its args file (``args_paths``: stage id -> the path of
    its ``args.json`` relative to the project root)."""
    return [UpstreamRef(stage=sid, args=args_paths[sid]) for sid in consumed_stages(stage, link)]


def promise(stage: Stage, facts: ResolvedStage, gpu: GpuSpec | None) -> Promise:
    """What the plan assumes about the machine the stage runs on, as resolved in ``facts``."""
    on_gpu = facts.device == "cuda"
    gpu_name = gpu.key if on_gpu and gpu else None
    gpu_mib = gpu.memory_mib if on_gpu and gpu else None
    if isinstance(stage, TRAIN_STAGE_TYPES) and facts.train is not None:
        t = facts.train
        return Promise(device=facts.device, world_size=facts.world_size, num_machines=facts.nodes,
                       distributed_type=t.distributed_type, zero_stage=t.zero_stage, precision=stage.precision,
                       attention=stage.attention, kernels=stage.kernels, gpu_name=gpu_name, gpu_memory_mib=gpu_mib)
    precision = stage.dtype if isinstance(stage, MergeStage) else "fp32"
    attention = "none" if isinstance(stage, DataStage) else "eager"
    return Promise(device=facts.device, world_size=facts.world_size, num_machines=facts.nodes,
                   distributed_type="NO", precision=precision, attention=attention, kernels="none",
                   gpu_name=gpu_name, gpu_memory_mib=gpu_mib)


def runtime_args(pipeline: Pipeline, stage: Stage, facts: ResolvedStage, link: StageLink, gpu: GpuSpec | None,
                 estimate: StageEstimate | None, args_paths: Mapping[str, str] | None = None) -> RuntimeArgs:
    """The complete ``args.json`` contents of one stage; ``args_paths`` maps stage ids to their ``args.json``
    relative to the project root (needed for stages that consume others)."""
    peak = None
    if estimate is not None and estimate.peak_bytes > 0:
        peak = gib_value(estimate.peak_bytes)
    return RuntimeArgs(
        pipeline=pipeline.name, stage=_written_stage(stage, facts), model=pipeline.model,
        source=model_source(pipeline, stage, link), data_dir=facts.data_dir, output_dir=facts.output_dir,
        promise=promise(stage, facts, gpu), estimate_peak_gib=peak,
        upstream=upstream_refs(stage, link, args_paths or {}),
    )
