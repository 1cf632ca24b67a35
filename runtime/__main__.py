"""Entry point of a compiled stage: ``python -m ftplan_runtime stages/NN-id/args.json``.

Training stages run under ``accelerate launch --config_file stages/NN-id/accelerate.yaml -m ftplan_runtime ...``;
data, merge and gguf stages under plain ``python -m``. The current directory is the project root (every path
in the args file is relative to it).

Exit codes: 0 done (the completion marker holds the args file's sha256); 1 the stage failed (one-line reason);
2 unreadable or invalid args file; 3 preflight: the machine is not the one the plan promised;
75 (``REQUEUE_EXIT_CODE``) a signal stopped training at a checkpoint: run the same command again to resume.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftplan.schemas.runtime_args import REQUEUE_EXIT_CODE, RuntimeArgs

from .metrics import StageRecorder, args_sha256, clear_complete_marker, write_complete_marker
from .preflight import Requeue, StageError, prepare_kernel_import

USAGE = "usage: python -m ftplan_runtime stages/NN-<id>/args.json"
BAD_ARGS_EXIT = 2


def _err(message: str) -> None:
    print(f"ftplan_runtime: error: {message}", file=sys.stderr, flush=True)


def parse_args_file(path: str | Path) -> tuple[RuntimeArgs, str]:
    """Read and validate an args file; returns (args, sha256 of its bytes). Raises ``StageError`` (exit 2)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _BadArgs(f"cannot read the arguments file '{path}': {e.strerror or e}") from None
    try:
        args = RuntimeArgs.model_validate_json(data)
    except ValidationError as e:
        errors = e.errors()
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise _BadArgs(f"'{path}' is not a valid ftplan arguments file: {where}: {first['msg']}{more}; regenerate "
                       "it with `ftplan compile` using the same ftplan version as this runtime") from None
    return args, args_sha256(data)


class _BadArgs(StageError):
    exit_code = BAD_ARGS_EXIT


def run_stage(args: RuntimeArgs, sha256: str) -> dict[str, Any] | None:
    """Dispatch on ``stage.kind`` and run the stage (no marker handling)."""
    kind = args.stage.kind
    if kind == "data":
        return _run_data(args, sha256)
    if kind == "sft":
        from .sft import run_sft

        return run_sft(args, sha256)
    if kind == "dpo":
        from .dpo import run_dpo

        return run_dpo(args, sha256)
    if kind == "merge":
        from .merge import run_merge

        return run_merge(args, sha256)
    if kind == "gguf":
        from .gguf_stage import run_gguf

        return run_gguf(args, sha256)
    raise StageError(f"this runtime cannot run {kind} stages; update ftplan_runtime")  # pragma: no cover


def _run_data(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    from .data import DataError, run_data_stage

    recorder = StageRecorder(args)
    try:
        manifest = run_data_stage(args, sha256)
    except DataError as e:
        raise StageError(str(e)) from e
    extra = {"steps": 0, "result": args.output_dir,
             "groups": manifest.model_dump(mode="json").get("groups"), "truncated": manifest.truncated}
    recorder.write(args.output_dir, extra)
    return extra


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    """Run the stage named by the args file in ``argv``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return BAD_ARGS_EXIT
    try:
        args, sha = parse_args_file(argv[0])
    except StageError as e:
        _err(str(e))
        return e.exit_code
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stage = args.stage
    try:
        prepare_kernel_import(args.promise)  # before anything imports triton
    except StageError as e:
        _err(str(e))
        return e.exit_code
    if _is_main_process():
        print(f"ftplan_runtime: stage '{stage.id}' ({stage.kind}) -> {args.output_dir}", file=sys.stderr, flush=True)
        if stage.kind != "data":  # the data stage keeps its marker to skip up-to-date output
            clear_complete_marker(args.output_dir)
    try:
        run_stage(args, sha)
    except Requeue as e:
        _err(str(e))
        return REQUEUE_EXIT_CODE
    except StageError as e:
        _err(f"stage '{stage.id}': {e}")
        return e.exit_code
    if _is_main_process():
        write_complete_marker(args.output_dir, sha)
        print(f"ftplan_runtime: stage '{stage.id}' complete", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
