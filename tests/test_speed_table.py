"""bench/speed_table.py: the README's speed table comes from committed results, and the README holds the table those
results give (so a number in it can never be typed by hand or go stale); bench/step_shapes.py and
bench/max_context.py, the helpers of the same benchmark, on synthetic lines."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"ftplan_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


speed_table = _load("speed_table")
step_shapes = _load("step_shapes")
max_context = _load("max_context")


def _arm(arm, seq, batch, tok, gib, **extra):
    return {"arm": arm, "seq": seq, "batch": batch, "tok_per_s": tok, "device_used_gib": gib, "peak_alloc_gib": gib - 1,
            "gpu": "NVIDIA H200", "torch": "2.11.0", **extra}


def _write(folder: Path, name: str, lines: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_the_table_compares_each_ftplan_arm_with_unsloth(tmp_path):
    _write(tmp_path, "steps.jsonl", [
        _arm("qlora-ftplan", 2048, 2, 9000.0, 8.0), _arm("qlora-ftplan-offload", 2048, 2, 12000.0, 7.0),
        _arm("qlora-unsloth", 2048, 2, 10000.0, 7.5), _arm("qlora-hf-peft", 2048, 2, 3000.0, 20.0),
        _arm("qlora-unsloth", 32768, 1, 5000.0, 30.0), {"arm": "qlora-ftplan", "seq": 32768, "batch": 1, "oom": True}])
    text = speed_table.table(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| QLoRA 2048 × 2"))
    assert "12,000 tok/s · 7.0 GiB" in row and "3,000 tok/s · 20.0 GiB" in row
    assert "| 0.90× · +0.50 / +0.50 GiB | 1.20× · -0.50 / -0.50 GiB |" in row  # 9,000 and 12,000 over 10,000
    assert "38.7% / 32.2% |" in row  # MFU of the faster ftplan arm and of Unsloth
    long = next(line for line in text.splitlines() if line.startswith("| QLoRA 32768 × 1"))
    assert "out of memory" in long and long.count("—") >= 2
    assert "| LoRA 2048" not in text  # a shape nobody measured has no row
    assert "NVIDIA H200 (torch 2.11.0)" in text


def test_mfu_uses_the_anchor_convention():
    assert speed_table.flops_per_token(**speed_table.LLAMA_8B, seq=2048) / 1e9 == pytest.approx(31.88, abs=0.01)
    # kernel-anchors.md §3: 31.88 GF at s2048; a live reference forward adds 2·N_mm + 2·L·s·d = 15.54 GF
    assert step_shapes.flops_per_token(**speed_table.LLAMA_8B, seq=2048, reference_forward=True) / 1e9 == \
        pytest.approx(47.42, abs=0.01)
    assert speed_table.mfu(_arm("x", 2048, 2, 10_000.0, 1.0)) == "32.2%"


def test_dpo_rows_give_speed_and_peak_ratios(tmp_path):
    _write(tmp_path, "steps.jsonl", [])
    _write(tmp_path, "dpo-speed.jsonl", [
        {**_arm("trl", 1024, 0, 2000.0, 30.0, pairs=2, precompute=False), "peak_alloc_gib": 28.0},
        {**_arm("ftplan", 1024, 0, 4000.0, 12.0, pairs=2, precompute=False), "peak_alloc_gib": 10.5},
        {"summary": "ratios to the trl arm"}])
    row = next(line for line in speed_table.table(tmp_path).splitlines() if line.startswith("| 1024 × 2"))
    assert "live reference" in row and "2.00× · 0.38× peak allocated" in row


def test_the_profile_table_gives_each_group_its_share_of_the_busy_time(tmp_path):
    _write(tmp_path, "steps.jsonl", [])
    profile = {"seq": 2048, "batch": 2, "gpu_busy_ms": 200.0, "step_wall_ms": 260.0,
               "groups_ms": {"GEMM": 150.0, "attention": 30.0, "other": 20.0}}
    _write(tmp_path, "profiles.jsonl", [{"mode": "qlora", "gpu": "NVIDIA H200", "torch": "2.11.0",
                                         "step_s_median": 0.25, "profile": profile}])
    lines = speed_table.table(tmp_path).splitlines()
    assert "| kernel group | QLoRA 2048 × 2 |" in lines
    assert "| GEMM | 150.0 ms (75 %) |" in lines and "| attention | 30.0 ms (15 %) |" in lines
    assert not any(line.startswith("| NF4 dequantisation") for line in lines)  # a group the step never ran
    assert "| GPU busy / timed step (median) | 200 / 250 ms |" in lines
    other = tmp_path / "other"
    _write(other, "steps.jsonl", [])
    assert "in a session of its own" in speed_table.table(other, profiles=tmp_path)
    assert "in a session of its own" not in "\n".join(lines)


def test_check_fails_on_a_stale_readme_and_write_fixes_it(tmp_path, capsys):
    folder = tmp_path / "r"
    _write(folder, "steps.jsonl", [_arm("lora-ftplan", 2048, 2, 9000.0, 18.0), _arm("lora-unsloth", 2048, 2, 10000.0, 17.0)])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{speed_table.BEGIN}\nold numbers\n{speed_table.END}\nafter\n")
    assert speed_table.main([str(folder), "--readme", str(readme), "--check"]) == 1
    assert "not the one" in capsys.readouterr().err
    assert speed_table.main([str(folder), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and "0.90× · +1.00 / +1.00 GiB" in text
    assert "HF+PEFT" not in text and "expandable" not in text  # arms nobody measured get no column and text.endswith(f"{speed_table.END}\nafter\n")
    assert speed_table.main([str(folder), "--readme", str(readme), "--check"]) == 0


def test_shapes_parse_sort_and_refuse_nonsense():
    shapes = step_shapes.parse_shapes(["8192x1", "2048x2", "32768x1:1"], warmup=3, steps=5)
    assert [(s.seq, s.batch, s.warmup, s.steps) for s in shapes] == [(2048, 2, 3, 5), (8192, 1, 3, 5), (32768, 1, 1, 1)]
    for bad in ("2048", "2048x0", "x2", "2048x2:0"):
        with pytest.raises(Exception, match="shape"):
            step_shapes.parse_shapes([bad], warmup=1, steps=1)


def test_max_context_fits_a_line_and_an_oom_caps_it():
    lines = [{"arm": "unsloth", "seq": s, "batch": 1, "device_used_gib": 6.0 + s / 8192, "free_before_gib": 79.0,
              "tok_per_s": 1.0} for s in (8192, 16384, 32768)]
    got = max_context.longest(lines)
    assert got["predicted"] == (73 * 8192) // 1024 * 1024 and got["max_residual_gib"] == 0.0
    capped = max_context.longest(lines + [{"arm": "unsloth", "seq": 65536, "batch": 1, "oom": True}])
    assert capped["predicted"] == 65536 - 1024 and capped["oom_at"] == 65536
    assert max_context.longest(lines[:1])["predicted"] is None  # one length gives no line


def test_the_readme_holds_the_table_of_the_committed_results(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert speed_table.main(["bench/results/2026-12-07-h100", "--profiles", "bench/results/2026-12-07-h100-b",
                             "--readme", "README.md", "--check"]) == 0


def test_the_table_states_the_longest_context_fit(tmp_path):
    lines = [{**_arm("qlora-unsloth", s, 1, 1000.0, 6.0 + s / 8192), "free_before_gib": 79.0} for s in (8192, 16384)]
    _write(tmp_path, "steps.jsonl", lines + [_arm("qlora-ftplan", 8192, 1, 1000.0, 7.0)])  # one length: no fit
    text = speed_table.table(tmp_path)
    assert "Unsloth 598,016 tokens (residual ≤ 0.000 GiB)" in text and "ftplan " not in text.split("Longest")[1]


def test_a_table_from_two_runs_says_which_run_measured_each_row_and_never_mixes_them(tmp_path):
    """``speed.sh qlora`` and ``speed.sh lora-dpo`` run apart: the table names each run's rows, and a row whose arms
    come from different runs is refused (its ratios would compare numbers measured apart)."""
    q, lo = "qlora 2026-12-08T10:00Z", "lora-dpo 2026-12-08T10:12Z"
    steps = [_arm("qlora-ftplan", 2048, 2, 9000.0, 8.0, call=q), _arm("qlora-unsloth", 2048, 2, 10000.0, 7.5, call=q),
             _arm("lora-ftplan", 2048, 2, 11000.0, 18.0, call=lo), _arm("lora-unsloth", 2048, 2, 10000.0, 18.5, call=lo)]
    dpo = [{"arm": arm, "seq": 1024, "pairs": 2, "tok_per_s": tok, "device_used_gib": 30.0, "peak_alloc_gib": gib,
            "gpu": "NVIDIA H200", "call": lo} for arm, tok, gib in (("trl", 1000.0, 40.0), ("ftplan", 1600.0, 38.0))]
    _write(tmp_path, "steps.jsonl", steps)
    _write(tmp_path, "dpo-speed.jsonl", dpo)
    text = speed_table.table(tmp_path)
    assert (f"Measured in 2 runs, each row's arms in one: QLoRA rows in run `{q}` on one NVIDIA H200; LoRA and DPO "
            f"rows in run `{lo}` on one NVIDIA H200.") in text
    assert "in one session" not in text and "| 1.10× ·" in text and "1.60× ·" in text
    _write(tmp_path, "steps.jsonl", [*steps, _arm("qlora-hf-peft", 2048, 2, 3000.0, 20.0, call=lo)])
    with pytest.raises(ValueError, match="qlora 2048 × 2: its arms come from different runs"):
        speed_table.table(tmp_path)
