"""The README's first command, end to end: tiny model, compile, run.sh through all five stages, llama.cpp."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_every_stage_and_llama_cpp_completes_from_the_gguf(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    out = subprocess.run([sys.executable, "-m", "ftplan_runtime.demo", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    outputs = tmp_path / ".demo" / "outputs"
    for stage in ("data", "sft", "dpo", "merge", "gguf"):
        stamp = json.loads((outputs / stage / "_COMPLETE").read_text())  # the completion stamp, written last
        assert stamp["format"] == 1 and stamp["stage"] == stage and stamp["inputs"], stage
        assert (outputs / stage / "metrics.json").is_file(), stage
    assert sorted(p.name for p in (outputs / "gguf").glob("*.gguf")) == [
        "tiny-cpu-f16.gguf", "tiny-cpu-q4_k_m.gguf", "tiny-cpu-q8_0.gguf"]
    # the last thing the demo prints is llama.cpp's completion of the prompt, from the quantized GGUF
    assert "llama.cpp (tiny-cpu-q4_k_m.gguf) completes 'How do I reset my password?'" in out.stdout
    completion = out.stdout.split("completes 'How do I reset my password?':\n", 1)[1].splitlines()[0].strip()
    assert len(completion) > 2, completion
    # a second run finds every stage complete and skips it
    again = subprocess.run([sys.executable, "-m", "ftplan_runtime.demo", "--root", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is complete; skipping") == 5


def test_a_failing_step_ends_the_demo_in_one_line(tmp_path):
    """A step that fails (here: compile, with no examples/ in the project) stops the demo with one line naming the
    command and its exit code, not a Python traceback."""
    (tmp_path / ".demo" / "tiny-model").mkdir(parents=True)
    (tmp_path / ".demo" / "tiny-model" / "config.json").write_text("{}")
    out = subprocess.run([sys.executable, "-m", "ftplan_runtime.demo", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("demo: `") and "exited with code" in out.stderr
