"""GGUF stage: export merged (or fully fine-tuned) weights to one ``<name>-<quant>.gguf`` per requested type.

``f16``, ``bf16`` and ``q8_0`` are written directly by ``gguf_export``; ``q4_k_m`` is quantized by llama.cpp
from an f16 export (the requested ``f16`` file, or a temporary one). With ``verify``, every file is run through
llama.cpp and compared with the HF model (``gguf_verify``: identical token ids, logits within the type's
bound); the numbers go to ``metrics.json``.

Every file is written to a hidden ``.<file>.<pid>.tmp`` beside it and renamed into place; what a killed run
leaves of those is removed when the stage runs again (``stamps.clean_leftovers``, before any work).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftplan.schemas.runtime_args import RuntimeArgs
from ftplan.schemas.stages import GgufStage

from .installed import DIRECT_GGUF_TYPES
from .metrics import StageRecorder
from .preflight import StageError

DIRECT_TYPES = DIRECT_GGUF_TYPES
"""Types the exporter writes itself; everything else is quantized by llama.cpp from f16."""


def gguf_name(args: RuntimeArgs, quant: str) -> str:
    """File name of one output: ``<pipeline>-<quant>.gguf``."""
    return f"{args.pipeline}-{quant}.gguf"


def run_gguf(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run a GGUF stage; returns the metrics written."""
    from .gguf_export import export_gguf

    stage = args.stage
    if not isinstance(stage, GgufStage):
        raise StageError(f"stage '{stage.id}' is a {stage.kind} stage, not a gguf stage")
    if args.source is None:
        raise StageError(f"gguf stage '{stage.id}' has no model source in its args file; recompile the plan")
    model_dir = Path(args.source.weights)
    if not (model_dir / "config.json").is_file():
        raise StageError(f"no merged model at '{model_dir}' (no config.json); run the stage that writes it first")
    recorder = StageRecorder(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # f16 first, so a q4_k_m can be quantized from it
    order = sorted(stage.quant, key=lambda q: (q != "f16", stage.quant.index(q)))
    files: dict[str, dict[str, Any]] = {}
    temp: Path | None = None
    try:
        for quant in order:
            path = out / gguf_name(args, quant)
            try:
                if quant in DIRECT_TYPES:
                    export_gguf(model_dir, path, quant, name=args.pipeline)
                else:
                    f16 = out / gguf_name(args, "f16")
                    if "f16" not in stage.quant:
                        temp = out / f".{gguf_name(args, 'f16')}.{os.getpid()}.tmp"
                        export_gguf(model_dir, temp, "f16", name=args.pipeline)
                        f16 = temp
                    from .llamacpp import quantize

                    quantize(f16, path, quant)
            except (ValueError, ImportError, RuntimeError) as e:
                raise StageError(f"GGUF export of '{model_dir}' to {quant} failed: {e}") from e
            files[quant] = {"path": str(path), "bytes": path.stat().st_size}
            if stage.verify:
                files[quant]["verify"] = _verify(path, model_dir, quant)
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
    extra = {"steps": 0, "files": files, "verified": stage.verify, "result": str(out)}
    recorder.write(out, extra)
    return extra


def _verify(path: Path, model_dir: Path, quant: str) -> dict[str, Any]:
    from .gguf_verify import STAGE_BOUNDS, GgufVerificationError, verify_gguf

    try:
        report = verify_gguf(path, model_dir, None, quant, bounds=STAGE_BOUNDS)
    except GgufVerificationError as e:
        raise StageError(f"{path.name} does not match the HF model: {e}") from e
    except ImportError as e:
        raise StageError(f"cannot verify {path.name}: {e}; or set `verify: false` on the gguf stage") from e
    return {"max_abs_err": report.max_abs_err, "max_rel_err": report.max_rel_err, "rel_bound": report.rel_bound,
            "argmax_agreement": report.argmax_agreement, "passed": report.passed}
