"""The README's first command (``make demo``): the whole pipeline on a tiny built-in example, on the CPU.

1. builds a tiny random-init Llama and a SentencePiece tokenizer trained locally (no hub access);
2. compiles ``examples/tiny-cpu.yaml`` into ``.demo/plan`` with ``ftplan compile``;
3. runs the plan's ``run.sh``: data -> SFT -> DPO -> merge -> GGUF;
4. prints the GGUF files and llama.cpp's completion of a prompt from the quantized model.

    python -m ftplan_runtime.demo [--fresh]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "How do I reset my password?"


def _banner(text: str) -> None:
    print(f"\n# ---- {text} " + "-" * max(0, 70 - len(text)), flush=True)


class StepFailed(Exception):
    """A demo step's command failed; it has printed why."""


def _run(cmd: list[str], env: dict[str, str], root: Path) -> None:
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=root, env=env).returncode
    if rc != 0:
        raise StepFailed(f"`{' '.join(cmd)}` exited with code {rc} (its output above says why)")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (that of the failing step's command, in one line, when one fails)."""
    try:
        return _demo(argv)
    except StepFailed as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        return 1


def _demo(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="delete .demo first and redo every stage")
    parser.add_argument("--root", type=Path, default=REPO,
                        help="project folder holding examples/ (default: this repository); the demo writes .demo/ there")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    demo = root / ".demo"
    if args.fresh and demo.exists():
        shutil.rmtree(demo)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()

    _banner("1/4 tiny model + locally trained tokenizer")
    model_dir = demo / "tiny-model"
    if (model_dir / "config.json").is_file():
        print(f"{model_dir.relative_to(root)} exists; reusing it")
    else:
        _run([sys.executable, "-m", "ftplan_runtime.tiny", str(model_dir.relative_to(root))], env, root)

    _banner("2/4 ftplan compile")
    _run([sys.executable, "-m", "ftplan", "compile", "examples/tiny-cpu.yaml", "-o", ".demo/plan"], env, root)

    _banner("3/4 run.sh: data -> sft -> dpo -> merge -> gguf")
    _run(["bash", ".demo/plan/run.sh"], env, root)

    _banner("4/4 llama.cpp")
    from .llamacpp import complete

    ggufs = sorted((demo / "outputs" / "gguf").glob("*.gguf"))
    for path in ggufs:
        print(f"GGUF: {path.relative_to(root)} ({path.stat().st_size / 2**20:.2f} MiB)")
    quantized = next((p for p in ggufs if "q4_k_m" in p.name), ggufs[-1])
    text = complete(str(quantized), PROMPT, max_tokens=64, chat=True)
    print(f"\nllama.cpp ({quantized.name}) completes {PROMPT!r}:\n  {text!r}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
