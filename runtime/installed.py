"""Whether this Python can run a plan's stages: the packages (and commands) each stage needs are installed.

``run.sh``, each Slurm job and ``submit.sh`` run ``python -m ftplan_runtime.installed ARGS...`` before any stage
starts, so a missing package is one line naming it and how to install it, not a traceback halfway through the
plan. What a stage needs follows from its args file (kind, adapter, distributed type, kernels, GGUF types):

* data: transformers, datasets;
* sft, dpo: torch, transformers, peft, trl, accelerate, datasets, and the ``accelerate`` command; bitsandbytes
  for QLoRA, deepspeed for ZeRO, triton for ``kernels: ftplan``;
* merge: torch, transformers, peft;
* gguf: torch, transformers, gguf; llama-cpp-python to quantize to k-quants or to verify the files.

Packages are looked up without importing them (fast). Exit codes: 0 everything is there, 1 something is
missing (one line on stderr), 2 an args file cannot be read. Light: imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass

from ftplan.schemas.runtime_args import RUNTIME_INSTALL, RuntimeArgs
from ftplan.schemas.stages import TRAIN_KINDS

from .stamps import StampError, read_args

INSTALL = RUNTIME_INSTALL
"""How to install the runtime and its packages."""

LLAMA_CPP_INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
    '-DGGML_BMI2=ON -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 '
    "pip install --no-cache-dir llama-cpp-python==0.3.36"
)
"""How to build llama-cpp-python with portable CPU flags (it is not part of the runtime extras; a native
``-march=native`` build can die with SIGILL on CPUs and sandboxes that advertise but forbid AMX)."""

USAGE = "usage: python -m ftplan_runtime.installed stages/<id>/args.json..."
DIRECT_GGUF_TYPES = ("f16", "bf16", "q8_0")
"""GGUF types written without llama.cpp (``gguf_stage.DIRECT_TYPES``)."""

_TRAINING = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")


@dataclass(frozen=True)
class Need:
    """One thing a stage needs."""

    name: str
    """Import name of a module, or the name of a command."""
    command: bool = False
    """A command on PATH rather than a module."""
    llama_cpp: bool = False
    """Installed separately (llama-cpp-python), not with the runtime's extras."""


def needs(args: RuntimeArgs) -> list[Need]:
    """What one stage needs, derived from its args."""
    stage, promise = args.stage, args.promise
    kind = stage.kind
    if kind == "data":
        return [Need("transformers"), Need("datasets")]
    if kind in TRAIN_KINDS:
        out = [Need(m) for m in _TRAINING] + [Need("accelerate", command=True)]
        adapter = getattr(stage, "adapter", None)
        cont = args.source.continue_adapter if args.source is not None else None
        if getattr(adapter, "type", None) == "qlora" or (adapter == "continue" and cont is not None
                                                         and cont.type == "qlora"):
            out.append(Need("bitsandbytes"))
        if promise.distributed_type == "DEEPSPEED":
            out.append(Need("deepspeed"))
        if promise.kernels == "ftplan":
            out.append(Need("triton"))
        return out
    if kind == "merge":
        return [Need("torch"), Need("transformers"), Need("peft")]
    if kind == "gguf":
        out = [Need("torch"), Need("transformers"), Need("gguf")]
        if stage.verify or any(q not in DIRECT_GGUF_TYPES for q in stage.quant):
            out.append(Need("llama_cpp", llama_cpp=True))
        return out
    return []  # pragma: no cover - the stage union is closed


def present(need: Need) -> bool:
    """Whether a module can be found (without importing it) or a command is on PATH."""
    if need.command:
        return shutil.which(need.name) is not None
    try:
        return importlib.util.find_spec(need.name) is not None
    except (ImportError, ValueError):
        return False


def missing(stages: list[RuntimeArgs]) -> dict[Need, list[str]]:
    """What is missing here, with the ids of the stages that need it (in first-need order)."""
    out: dict[Need, list[str]] = {}
    cache: dict[Need, bool] = {}
    for args in stages:
        for need in needs(args):
            if need not in cache:
                cache[need] = present(need)
            if not cache[need]:
                ids = out.setdefault(need, [])
                if args.stage.id not in ids:
                    ids.append(args.stage.id)
    return out


def message(gone: dict[Need, list[str]]) -> str:
    """The one line naming what is missing, for which stages, and how to install it."""
    def name(need: Need) -> str:
        return f"the `{need.name}` command" if need.command else need.name

    parts = [f"{name(n)} (stage{'s' if len(ids) > 1 else ''} {', '.join(ids)})" for n, ids in gone.items()]
    hints = []
    if any(not n.llama_cpp for n in gone):
        hints.append(INSTALL)
    if any(n.llama_cpp for n in gone):
        hints.append(f"for llama_cpp: {LLAMA_CPP_INSTALL} (or set `verify: false` and quantize only to "
                     f"{', '.join(DIRECT_GGUF_TYPES)})")
    return (f"this Python ({sys.executable}) cannot run the plan: missing {', '.join(parts)}; install with: "
            + "; ".join(hints))


def main(argv: list[str] | None = None) -> int:
    """Check the stages of the given args files; exit 0, 1 (missing, one line on stderr) or 2 (bad args)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        stages = [read_args(path)[0] for path in argv]
    except StampError as e:
        print(f"ftplan: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    gone = missing(stages)
    if gone:
        print(f"ftplan: {message(gone)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
