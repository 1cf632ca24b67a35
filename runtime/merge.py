"""Merge stage: fold an adapter chain into full-precision base weights and check the result on a probe batch.

The base is loaded at the merge dtype (``bf16``/``fp16``/``fp32``; a QLoRA adapter's base is never merged in
4-bit), each adapter of the chain is attached and merged in order (``merge_and_unload``), and the merged
weights are saved as safetensors with the tokenizer and chat template in ``<out>/model``. With ``verify``, the
logits of the adapter model and of the merged model on a probe batch must agree within a dtype-dependent
tolerance (relative to the logits' scale); the largest difference is reported in ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftplan.schemas.runtime_args import RuntimeArgs
from ftplan.schemas.stages import MergeStage

from .metrics import StageRecorder
from .model_loading import (require_adapter, fit_embeddings, load_tokenizer, load_weights, save_tokenizer,
                            torch_dtype)
from .preflight import StageError, check_device
from .train_common import result_dir

REL_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 4e-2}
"""Allowed max |adapter logits − merged logits| / max(1, max |adapter logits|), per merge dtype."""

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. What is 3 + 3? The answer is 6."
"""Text of the probe batch (also run through the chat template when the tokenizer has one)."""


def probe_batch(tok):
    """Token ids (1, T) of the probe text, in the chat format when the tokenizer has a template."""
    import torch

    ids = None
    if tok.chat_template:
        try:
            ids = tok.apply_chat_template([{"role": "user", "content": PROBE_TEXT}, {"role": "assistant",
                                           "content": "Six."}], tokenize=True, return_dict=False)
        except Exception:  # noqa: BLE001 - a template that rejects the probe only loses the chat framing
            ids = None
    if not ids:
        ids = tok(PROBE_TEXT)["input_ids"]
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return torch.tensor([list(ids)])


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def merge_chain(model, chain, *, verify: bool, probe, tolerance: float) -> tuple[Any, float, list[dict]]:
    """Merge each adapter of ``chain`` into ``model`` in order; returns (model, max rel diff, per-adapter rows)."""
    from peft import PeftModel

    rows: list[dict] = []
    worst = 0.0
    for ref in chain:
        require_adapter(ref)
        peft_model = PeftModel.from_pretrained(model, ref.path)
        peft_model.eval()
        before = _logits(peft_model, probe) if verify else None
        model = peft_model.merge_and_unload()
        row: dict[str, Any] = {"stage": ref.stage, "type": ref.type, "path": ref.path}
        if verify:
            after = _logits(model, probe)
            diff = float((before - after).abs().max())
            scale = max(1.0, float(before.abs().max()))
            row.update(max_abs_diff=diff, logits_scale=scale, rel_diff=diff / scale)
            worst = max(worst, diff / scale)
            if diff / scale > tolerance:
                raise StageError(f"merging the adapter of stage '{ref.stage}' changed the probe logits by "
                                 f"{diff:.3g} (relative {diff / scale:.3g} > tolerance {tolerance:g}); the merged "
                                 "model is not equivalent to the adapter model: check that the adapter was "
                                 "trained on this base, or merge at a wider dtype (`dtype: fp32`)")
        rows.append(row)
    return model, worst, rows


def run_merge(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run a merge stage: merged safetensors + tokenizer in ``<out>/model``; returns the metrics written."""
    stage = args.stage
    if not isinstance(stage, MergeStage):
        raise StageError(f"stage '{stage.id}' is a {stage.kind} stage, not a merge stage")
    src = args.source
    if src is None:
        raise StageError(f"merge stage '{stage.id}' has no model source in its args file; recompile the plan")
    chain = list(src.merge) + ([src.continue_adapter] if src.continue_adapter is not None else [])
    if not chain:
        raise StageError(f"merge stage '{stage.id}' has no adapters to merge; recompile the plan")
    recorder = StageRecorder(args)
    check_device(args.promise)

    tok, changed = load_tokenizer(src, args.model)
    model = load_weights(src.weights, dtype=torch_dtype(stage.dtype), revision=src.revision, attention="eager")
    fit_embeddings(model, tok)
    model = _to_merge_device(model, args.promise.device)
    model.eval()
    tolerance = REL_TOLERANCE[stage.dtype]
    model, worst, rows = merge_chain(model, chain, verify=stage.verify, probe=probe_batch(tok), tolerance=tolerance)

    dest = result_dir(args)
    model.to("cpu").save_pretrained(str(dest), safe_serialization=True)
    save_tokenizer(tok, src.tokenizer, dest, changed=changed)
    extra = {
        "steps": 0,
        "dtype": stage.dtype,
        "adapters_merged": rows,
        "verified": stage.verify,
        "merge_max_rel_diff": worst if stage.verify else None,
        "merge_max_abs_diff": max((r["max_abs_diff"] for r in rows), default=None) if stage.verify else None,
        "merge_tolerance": tolerance,
        "result": str(dest),
    }
    recorder.write(args.output_dir, extra)
    return extra


def _to_merge_device(model, device: str):
    """CUDA when the plan runs on GPUs and the weights fit in 80 % of free memory; CPU otherwise."""
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        return model
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    free, _ = torch.cuda.mem_get_info()
    return model.to("cuda") if need < 0.8 * free else model
