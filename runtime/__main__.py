"""Entry point of a compiled stage: ``python -m ftplan_runtime stages/<id>/args.json``.

Training stages run under ``accelerate launch --config_file stages/<id>/accelerate.yaml -m ftplan_runtime ...``;
data, merge and gguf stages under plain ``python -m``. The current directory is the project root (every path
in the args file is relative to it).

Completion (``stamps``): a stage that is complete (its stamp matches its args file and every input file, and the
stages it consumes are complete) says so and exits 0 without doing anything; every process of a multi-process
stage reaches the same answer. A stage whose upstream stage is not complete refuses to run (exit 1): it would be
built from outdated outputs. Otherwise the main process takes the digests of the inputs, removes the stamp (so
neither this stage nor anything built on it counts as complete until this run succeeds), removes the leftovers
of an interrupted run and, for training stages, the checkpoints trained from other inputs; the stamp is written
last, after the outputs and ``metrics.json``.

Exit codes: 0 done or already complete; 1 the stage failed or an upstream stage must run first (one-line
reason); 2 unreadable or invalid args file (this stage's or an upstream stage's); 3 preflight: the machine is not
the one the plan promised; 75 (``REQUEUE_EXIT_CODE``) a signal stopped training at a checkpoint: run the same
command again to resume.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ftplan.schemas.runtime_args import REQUEUE_EXIT_CODE, RuntimeArgs
from ftplan.schemas.stages import TRAIN_KINDS

from . import stamps
from .metrics import StageRecorder
from .preflight import Requeue, StageError, check_launch, prepare_kernel_import

USAGE = "usage: python -m ftplan_runtime stages/<id>/args.json"
BAD_ARGS_EXIT = 2


def _err(message: str) -> None:
    print(f"ftplan_runtime: error: {message}", file=sys.stderr, flush=True)


def parse_args_file(path: str | Path) -> tuple[RuntimeArgs, str]:
    """Read and validate an args file; returns (args, sha256 of its bytes). Raises ``StageError`` (exit 2)."""
    try:
        return stamps.read_args(path)
    except stamps.StampError as e:
        raise _BadArgs(str(e)) from None


class _BadArgs(StageError):
    exit_code = BAD_ARGS_EXIT


def run_stage(args: RuntimeArgs, sha256: str) -> dict[str, Any] | None:
    """Dispatch on ``stage.kind`` and run the stage (no stamp handling)."""
    kind = args.stage.kind
    if kind == "data":
        return _run_data(args, sha256)
    if kind == "sft":
        from .sft import run_sft

        return run_sft(args, sha256)
    if kind == "dpo":
        from .dpo import run_dpo

        return run_dpo(args, sha256)
    if kind == "cpt":
        from .cpt import run_cpt

        return run_cpt(args, sha256)
    if kind == "orpo":
        from .orpo import run_orpo

        return run_orpo(args, sha256)
    if kind == "kto":
        from .kto import run_kto

        return run_kto(args, sha256)
    if kind == "reward":
        from .reward import run_reward

        return run_reward(args, sha256)
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
    """Run the stage named by the args file in ``argv`` unless it is complete; returns the exit code."""
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
    main_process = _is_main_process()
    checker = stamps.Checker()
    try:
        verdict = checker.verdict(args, sha)
    except stamps.StampError as e:
        _err(str(e))
        return e.exit_code
    if verdict.complete:
        if main_process:
            print(f"ftplan_runtime: stage '{stage.id}' is complete; nothing to do", file=sys.stderr, flush=True)
        return 0
    if verdict.upstream is not None:
        _err(f"stage '{stage.id}': {verdict.reason}; run the stages in order (run.sh, slurm/submit.sh)")
        return 1
    try:
        check_launch(args.promise)  # a mismatched multi-process launch fails here, before anything loads
        prepare_kernel_import(args.promise)  # before anything imports triton
    except StageError as e:
        _err(str(e))
        return e.exit_code
    build = None
    if main_process:
        print(f"ftplan_runtime: stage '{stage.id}' ({stage.kind}) -> {args.output_dir}: {verdict.reason}",
              file=sys.stderr, flush=True)
        try:
            build = _begin(args, sha, checker)
        except StageError as e:
            _err(f"stage '{stage.id}': {e}")
            return e.exit_code
    try:
        run_stage(args, sha)
    except Requeue as e:
        _err(str(e))
        return REQUEUE_EXIT_CODE
    except StageError as e:
        _err(f"stage '{stage.id}': {e}")
        return e.exit_code
    if build is not None:
        try:
            stamps.finish(build)
        except OSError as e:
            _err(f"stage '{stage.id}': its outputs are written but the completion stamp is not: cannot write "
                 f"{stamps.show(str(e.filename or stamps.stamp_path(args.output_dir)))}: {e.strerror or e}")
            return 1
        print(f"ftplan_runtime: stage '{stage.id}' complete", file=sys.stderr, flush=True)
    return 0


def _begin(args: RuntimeArgs, sha: str, checker: stamps.Checker) -> stamps.Build:
    """Main process, before the stage reads or writes: input digests, stamp and leftovers removed, checkpoints
    of other inputs retired."""
    try:
        build = stamps.begin(args, sha, checker.hashed)
    except stamps.InputError as e:
        raise StageError(str(e)) from None
    except stamps.StampError as e:
        raise _BadArgs(str(e)) from None
    except OSError as e:  # the output folder: no permission, a read-only or full file system
        where = f"{stamps.show(str(e.filename))}: " if e.filename else ""
        raise StageError(f"cannot prepare the output folder {stamps.show(args.output_dir)} ({where}"
                         f"{e.strerror or e}); check that it is a writable folder") from None
    if build.removed:
        _log(f"removed what an interrupted run left: {', '.join(stamps.show(p) for p in build.removed)}")
    if args.stage.kind in TRAIN_KINDS:
        from .preemption import retire_stale_checkpoints
        from .train_common import CHECKPOINTS_DIR

        retired = retire_stale_checkpoints(Path(args.output_dir) / CHECKPOINTS_DIR,
                                           stamps.inputs_sha256(build.inputs))
        if retired:
            _log(f"stage '{args.stage.id}': its checkpoints ({', '.join(retired)}) were trained from other inputs; "
                 "training starts over")
    return build


def _log(message: str) -> None:
    print(f"ftplan_runtime: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
