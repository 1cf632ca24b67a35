"""Resolve what a validated pipeline refers to: the declared GPU, the model architecture and the stage graph.

``resolve`` turns a ``Pipeline`` and its ``Inputs`` snapshot into the ``Context`` every later step reads. It
never looks at the local machine: the GPU is the one ``hardware.gpu`` declares, looked up in the catalog.
The architecture comes, in order, from a local ``config.json``, from ``model.architecture``, or from the
catalog entry that lists ``model.base`` as a hub id.
"""

from __future__ import annotations

from .catalog import from_hf_config, get_gpu, get_model, gpu_keys, model_keys
from .catalog.gpus import GPUS, GpuSpec
from .catalog.models import MODELS, ModelShape
from .context import Context, Inputs
from .diagnostics import Diagnostic, error, warning
from .lineage import trace
from .schemas import Pipeline
from .suggest import close_keys, did_you_mean, suggestion

CODES = {
    "FT010": "unknown GPU",
    "FT011": "the model architecture cannot be determined",
    "FT012": "hardware.device and hardware.gpu disagree",
    "FT013": "model.architecture is ignored because a local config.json defines the architecture",
}

_SHAPE_FIELDS = ("family", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "vocab_size", "num_experts")


def resolve(pipeline: Pipeline, inputs: Inputs, *, pipeline_path: str,
            pipeline_sha256: str) -> tuple[Context, list[Diagnostic]]:
    """Look up the declared GPU and the architecture, trace the stage graph; return the context and every
    diagnostic found on the way (FT010-FT013 here, plus the stage-graph codes FT2xx)."""
    diags: list[Diagnostic] = []
    gpu = _resolve_gpu(pipeline, diags)
    shape, source = _resolve_shape(pipeline, inputs, diags)
    links, graph_diags = trace(pipeline)
    diags.extend(graph_diags)
    ctx = Context(pipeline=pipeline, pipeline_path=pipeline_path, pipeline_sha256=pipeline_sha256,
                  inputs=inputs, gpu=gpu, shape=shape, shape_source=source, links=links)
    return ctx, diags


def did_you_mean_gpu(word: str) -> str | None:
    """``did you mean 'h100-sxm-80gb' or 'h100-pcie-80gb'?`` for an unknown GPU name (compared with every catalog
    key and alias), or None."""
    return suggestion(close_keys(word, {key: (key, *spec.aliases) for key, spec in GPUS.items()}))


def _resolve_gpu(pipeline: Pipeline, diags: list[Diagnostic]) -> GpuSpec | None:
    hw = pipeline.hardware
    if hw.device == "cpu":
        if hw.gpu is not None:
            diags.append(error("FT012", ("hardware", "gpu"), f"`gpu: {hw.gpu}` is set but `device: cpu` runs "
                               "every stage on the CPU", hint="remove `gpu`, or set `device: cuda` to train on "
                               "GPUs"))
        return None
    if hw.gpu is None:
        diags.append(error("FT012", ("hardware",), "`device: cuda` needs the GPU type the plan is checked "
                           "against, and `hardware.gpu` is not set",
                           hint="add e.g. `gpu: h100-sxm-80gb` (`ftplan gpus` lists the catalog), or set "
                           "`device: cpu`"))
        return None
    spec = get_gpu(hw.gpu)
    if spec is None:
        hint = did_you_mean_gpu(hw.gpu) or "`ftplan gpus` lists the catalog"
        diags.append(error("FT010", ("hardware", "gpu"), f"unknown GPU '{hw.gpu}'", hint=hint,
                           notes=[f"known GPUs: {', '.join(gpu_keys())}"]))
    return spec


def _resolve_shape(pipeline: Pipeline, inputs: Inputs,
                   diags: list[Diagnostic]) -> tuple[ModelShape | None, str]:
    model = pipeline.model
    if inputs.model_config_error is not None:
        diags.append(error("FT011", ("model", "base"), f"cannot use the config.json of '{model.base}': "
                           f"{inputs.model_config_error}", hint="fix the file, or point `model.base` at a "
                           "folder with a valid config.json"))
        return None, "unknown"
    if inputs.model_config is not None:
        try:
            shape = from_hf_config(inputs.model_config)
        except ValueError as exc:
            diags.append(error("FT011", ("model", "base"), f"cannot use the config.json of '{model.base}': {exc}",
                               hint="fix config.json, or remove it and set `model.architecture` to a catalog "
                               "key (`ftplan models`)"))
            return None, "unknown"
        if model.architecture is not None:
            _compare_architecture(model.architecture, shape, diags)
        return shape, "config.json"
    if model.architecture is not None:
        named = get_model(model.architecture)
        if named is None:
            hint = did_you_mean(model.architecture, model_keys()) or (
                "catalog keys include " + _few_keys() + " (`ftplan models` lists them all)")
            diags.append(error("FT011", ("model", "architecture"),
                               f"unknown architecture '{model.architecture}'", hint=hint))
            return None, "unknown"
        return named, f"catalog:{named.key}"
    catalogued = get_model(model.base)
    if catalogued is not None:
        return catalogued, f"catalog:{catalogued.key}"
    if any(path == ("model", "base") for path, _ in inputs.missing):
        return None, "unknown"  # the missing folder itself is reported (FT413)
    diags.append(error("FT011", ("model", "base"), f"unknown architecture for '{model.base}': it is not a "
                       "catalogued hub id and no local config.json was found",
                       hint="set `model.architecture` to the catalog key of its shape (e.g. " + _few_keys()
                       + "; `ftplan models` lists them), or point `model.base` at a local folder with "
                       "config.json"))
    return None, "unknown"


def _compare_architecture(key: str, shape: ModelShape, diags: list[Diagnostic]) -> None:
    """Warn when ``model.architecture`` names something other than what config.json defines."""
    declared = get_model(key)
    if declared is None:
        diags.append(warning("FT013", ("model", "architecture"), f"`architecture: {key}` is not a catalog key and "
                             "is ignored: the local config.json defines the architecture",
                             hint="remove `model.architecture`"))
        return
    differs = [f for f in _SHAPE_FIELDS if getattr(declared, f) != getattr(shape, f)]
    if differs:
        detail = ", ".join(f"{f} {getattr(shape, f)} vs {getattr(declared, f)}" for f in differs[:3])
        diags.append(warning("FT013", ("model", "architecture"), f"`architecture: {key}` differs from the local "
                             f"config.json ({detail}); config.json is used",
                             hint="remove `model.architecture`, or fix it to match the weights"))


def _few_keys() -> str:
    keys = [k for k in ("llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-7b", "qwen3-8b") if k in MODELS]
    return ", ".join(keys or model_keys()[:4])
