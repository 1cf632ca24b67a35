"""render(): byte-stable, sorted, LF-terminated files; the layout; plan.md's table and bars; shell quoting."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ftplan.catalog import get_gpu, get_model
from ftplan.context import Context, Inputs, LocalFile
from ftplan.diagnostics import Span, info, warning
from ftplan.estimate.types import StageEstimate, Term
from ftplan.lineage import trace
from ftplan.plan import build_plan
from ftplan.render import render
from ftplan.describe import bar
from ftplan.units import size as size_text
from ftplan.units import params_text, sci
from ftplan.render.serialize import sha256_text
from ftplan.render.shell import comment, shq
from ftplan.schemas import Pipeline

GIB = 2**30
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

PIPELINE = {
    "name": "support-bot",
    "model": {"base": "meta-llama/Llama-3.1-8B-Instruct", "chat_template": "llama3"},
    "hardware": {"gpu": "rtx4090", "env": {"NCCL_DEBUG": "WARN"}, "venv": ".venv",
                 "slurm": {"partition": "gpu", "time": "12:00:00"}},
    "stages": [
        {"id": "data", "kind": "data", "max_seq_len": 4096, "packing": True,
         "datasets": [{"path": "data/tickets.jsonl", "format": "sharegpt"},
                      {"path": "data/prefs.jsonl", "format": "preference"}]},
        {"id": "sft", "kind": "sft", "data": "data", "adapter": {"type": "qlora", "r": 16, "alpha": 32},
         "micro_batch": 2, "grad_accum": 8, "learning_rate": 2e-4, "epochs": 2, "kernels": "ftplan"},
        {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "adapter": "continue", "learning_rate": 5e-6},
        {"id": "merge", "kind": "merge", "input": "dpo"},
        {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["q8_0", "q4_k_m"]},
    ],
}

ESTIMATES = {
    "sft": StageEstimate("sft", int(14.2 * GIB), 24564 * 2**20, "fits",
                         terms=(Term("weights", int(5.3 * GIB), "8.03 B × 4.5 bits"),
                                Term("activations", int(6.1 * GIB), "checkpointed"),
                                Term("logits", int(1.1 * GIB), "fused CE")),
                         tokens_per_step=65_536, step_time_s=3.5),
    "dpo": StageEstimate("dpo", int(23.5 * GIB), 24564 * 2**20, "tight", tokens_per_step=8_192),
    "merge": StageEstimate("merge", 0, 24564 * 2**20, "n/a", host_bytes=int(16.1 * GIB)),
}


def compile_files(tmp_path, data=PIPELINE, estimates=ESTIMATES, diagnostics=(), plan_dir="plans/support-bot"):
    p = Pipeline.model_validate(data)
    links, diags = trace(p)
    assert not diags
    ctx = Context(p, str(tmp_path / "support-bot.yaml"), "f" * 64,
                  Inputs(files=(LocalFile("data/tickets.jsonl", "1" * 64, 2048),)),
                  get_gpu(p.hardware.gpu), get_model(p.model.base), "catalog:llama-3.1-8b", links)
    plan = build_plan(ctx, estimates, diagnostics, plan_dir_from_root=plan_dir, ftplan_version="0.1.0")
    return plan, render(plan)


@pytest.fixture
def files(tmp_path):
    return compile_files(tmp_path)[1]


def test_layout(tmp_path, files):
    assert sorted(files) == [
        "plan.html", "plan.json", "plan.md", "run.sh",
        "slurm/data.sbatch", "slurm/dpo.sbatch", "slurm/gguf.sbatch", "slurm/merge.sbatch",
        "slurm/sft.sbatch", "slurm/submit.sh",
        "stages/data/args.json", "stages/dpo/accelerate.yaml", "stages/dpo/args.json",
        "stages/gguf/args.json", "stages/merge/args.json", "stages/sft/accelerate.yaml",
        "stages/sft/args.json",
    ]
    no_slurm = {**PIPELINE, "hardware": {"gpu": "rtx4090"}}
    assert not any(k.startswith("slurm/") for k in compile_files(tmp_path, data=no_slurm)[1])


def test_render_is_deterministic(tmp_path):
    a = compile_files(tmp_path / "one")[1]
    b = compile_files(tmp_path / "two")[1]
    assert a == b


def test_no_absolute_paths_home_or_timestamps(tmp_path, files):
    home = os.path.expanduser("~")
    stamp = re.compile(r"\d{4}-\d{2}-\d{2}|T\d{2}:\d{2}|\b" + str(datetime.date.today().year) + r"\b")
    for path, text in files.items():
        assert str(tmp_path) not in text, path
        assert home not in text, path
        assert not stamp.search(text), (path, stamp.search(text))


def test_every_file_ends_with_one_newline_and_lf_only(files):
    for path, text in files.items():
        assert text.endswith("\n") and not text.endswith("\n\n"), path
        assert "\r" not in text, path


def test_json_and_yaml_keys_are_sorted(files):
    def sorted_everywhere(node):
        if isinstance(node, dict):
            assert list(node) == sorted(node)
            for v in node.values():
                sorted_everywhere(v)
        elif isinstance(node, list):
            for v in node:
                sorted_everywhere(v)

    for path, text in files.items():
        if path.endswith(".json"):
            data = json.loads(text)
            assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", path
            sorted_everywhere(data)
        elif path.endswith(".yaml"):
            top = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
            assert top == sorted(top), path
            sorted_everywhere(yaml.safe_load(text))


def test_args_json_is_the_runtime_contract(files):
    args = json.loads(files["stages/dpo/args.json"])
    assert args["format"] == 1 and args["pipeline"] == "support-bot" and args["output_dir"] == "outputs/dpo"
    assert args["source"]["continue_adapter"]["path"] == "outputs/sft/adapter"
    assert args["promise"]["gpu_name"] == "rtx-4090" and args["estimate_peak_gib"] == 23.5
    assert args["stage"]["distributed"]["strategy"] == "none"


def test_args_json_lists_the_stages_each_stage_reads(files):
    ups = {s: [(u["stage"], u["args"]) for u in json.loads(files[f"stages/{s}/args.json"])["upstream"]]
           for s in ("data", "sft", "dpo", "merge", "gguf")}
    stage = "plans/support-bot/stages"
    assert ups == {"data": [], "sft": [("data", f"{stage}/data/args.json")],
                   "dpo": [("data", f"{stage}/data/args.json"), ("sft", f"{stage}/sft/args.json")],
                   "merge": [("dpo", f"{stage}/dpo/args.json")], "gguf": [("merge", f"{stage}/merge/args.json")]}


def test_scripts_skip_stages_by_their_completion_stamp(files):
    """Every script asks the runtime's one stamp check, per stage, by its args file; no digest is compiled in."""
    for s in ("data", "sft", "dpo", "merge", "gguf"):
        sha = sha256_text(files[f"stages/{s}/args.json"])
        check = f"if stage_complete plans/support-bot/stages/{s}/args.json; then\n"
        assert check in files["run.sh"] and check in files["slurm/submit.sh"] and check in files[f"slurm/{s}.sbatch"]
        assert sha not in files["run.sh"] + files["slurm/submit.sh"] + files[f"slurm/{s}.sbatch"]
    for name in ("run.sh", "slurm/submit.sh", "slurm/sft.sbatch"):
        text = files[name]
        assert 'why=$(python -m ftplan_runtime.stamps check "$1") || rc=$?' in text
        assert "if ! python -c 'import ftplan_runtime' >/dev/null 2>&1; then" in text
        assert "pip install 'ftplan[runtime,gpu]'" in text
        # the runtime check comes before any stage, after the environment that provides the Python
        assert text.index("source .venv") < text.index("python -m ftplan_runtime.installed") < text.index(
            "if stage_complete")
    assert "python -m ftplan_runtime.installed \\\n  plans/support-bot/stages/sft/args.json\n" in files[
        "slurm/sft.sbatch"]
    assert "python -m ftplan_runtime.installed" + "".join(
        f" \\\n  plans/support-bot/stages/{s}/args.json" for s in ("data", "sft", "dpo", "merge",
                                                                    "gguf")) + "\n" in files["run.sh"]
    run = files["run.sh"]
    assert run.startswith("#!/usr/bin/env bash\n# generated by ftplan 0.1.0 from support-bot.yaml; do not edit.\n"
                          "# regenerate with: ftplan compile support-bot.yaml -o plans/support-bot\n")
    assert "set -euo pipefail\n" in run and 'cd "$(dirname "$0")"/../..\n' in run
    assert "# ---- stage 02: sft (sft) ----\n" in run
    assert ("accelerate launch --config_file plans/support-bot/stages/sft/accelerate.yaml -m ftplan_runtime "
            "plans/support-bot/stages/sft/args.json") in run
    assert "python -m ftplan_runtime plans/support-bot/stages/merge/args.json" in run
    assert ("# effective batch 2 micro × 8 accum × 1 process = 16 sequences × 4,096 tokens = 65,536 tokens/step\n"
            in run)
    # a DPO batch counts pairs of two sequences, in the scripts as in plan.md
    assert ("# effective batch 1 micro × 1 accum × 1 process = 1 pair × 2 sequences × 4,096 tokens = 8,192 "
            "tokens/step\n") in run
    assert "export NCCL_DEBUG=WARN\n" in run and "source .venv/bin/activate\n" in run
    assert run.index("export NCCL") < run.index("source .venv") < run.index("# ---- stage 01")


@pytest.mark.parametrize("name", ["run.sh", "slurm/submit.sh", "slurm/sft.sbatch", "slurm/data.sbatch"])
def test_scripts_parse(files, name):
    r = subprocess.run(["bash", "-n"], input=files[name], text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_plan_md_has_header_table_bars_terms_and_how_to_run(tmp_path):
    diags = [warning("FT301", ("stages", 2, "learning_rate"), "learning rate is | low", hint="raise it").located(
        Span(str(tmp_path / "support-bot.yaml"), 20, 5)), info("FT900", ("hardware",), "note")]
    md = compile_files(tmp_path, diagnostics=diags)[1]["plan.md"]
    assert "support-bot · meta-llama/Llama-3.1-8B-Instruct (8.03 B) · 1 × GeForce RTX 4090 24GB (24.0 GiB, sm89)" in md
    assert "| # | stage | kind | method | batch | tokens/step | peak memory | verdict |" in md
    assert ("| 02 | sft | sft | QLoRA r16 α32 · kernels | 16 | 65,536 | "
            "`█████████░░░░░░░ 14.2 / 24.0 GiB` | fits |") in md
    assert "| 03 | dpo | dpo | DPO β0.1 sigmoid, continues sft | 1 pair | 8,192 |" in md and "| tight |" in md
    assert "| 01 | data | data | sharegpt + preference, packed, ≤4096 tokens | — | — | — | ok |" in md
    assert "| 04 | merge | merge | merge dpo → bf16 | — | — | host RAM 16.1 GiB | ok |" in md
    assert "| 05 | gguf | gguf | GGUF q8_0, q4_k_m | — | — | — | unknown |" in md  # no estimate given here
    assert "Verdicts: ok: nothing to fit on a GPU" in md and "; tight: the estimated peak per GPU is 90 % " in md
    assert "| activations | 6.1 GiB | checkpointed |" in md
    assert md.index("| activations |") < md.index("| weights |") < md.index("| logits |")
    assert "warning FT301 `stages[dpo].learning_rate` (line 20:5): learning rate is \\| low — raise it" in md
    assert "info FT900 `hardware`" in md
    assert "| `data/tickets.jsonl` | `" + "1" * 64 + "` | 2,048 |" in md
    assert "bash plans/support-bot/run.sh" in md and "bash plans/support-bot/slurm/submit.sh" in md
    assert "torch 2.13.0" in md and "ftplan 0.1.0" in md


def test_plan_md_states_what_a_reviewer_approves(tmp_path):
    """Per training stage: schedule, optimizer, length and optimizer steps, batch arithmetic (pairs for DPO), what
    it trains, DPO's objective and reference, precision, checkpoints, the run time against the Slurm limit; and the
    model's revision."""
    data = copy.deepcopy(PIPELINE)
    data["model"]["revision"] = "main"
    data["stages"][1].update(warmup_ratio=0.05, optimizer="paged_adamw_8bit", save_steps=50, eval_steps=25)
    data["stages"][0]["val_fraction"] = 0.1
    data["stages"][2].update(max_steps=2000, beta=0.2, loss_type="ipo")
    estimates = {**ESTIMATES, "dpo": dataclasses.replace(ESTIMATES["dpo"], step_time_s=2.0)}
    md = compile_files(tmp_path, data=data, estimates=estimates)[1]["plan.md"]
    sft = md.split("### 02 sft (sft)")[1].split("###")[0]
    dpo = md.split("### 03 dpo (dpo)")[1].split("###")[0]
    assert ("Model: `meta-llama/Llama-3.1-8B-Instruct`, at revision main, a branch or tag that can move (warning "
            "FT416).") in md
    assert "- learning rate: 2e-4 peak, cosine schedule, warm-up over 5 % of the steps\n" in sft
    assert "- optimizer: paged_adamw_8bit, weight decay 0, gradient clipping at norm 1\n" in sft
    assert "- length: 2 epochs\n" in sft  # the dataset files were not read: rows unknown
    assert "- optimizer steps: not known before the data stage runs" in sft
    assert "- batch: 2 micro × 8 accum × 1 process = 16 sequences × 4,096 tokens = 65,536 tokens/step\n" in sft
    assert "- trains: a new adapter: QLoRA r16 α32, dropout 0, targets all-linear (every decoder projection)\n" in sft
    assert "- precision: bf16, attention sdpa, gradient checkpointing, kernels ftplan\n" in sft
    assert "- checkpoints: every 50 steps, the last 2 kept; evaluation every 25 steps; seed 42\n" in sft
    assert ("- estimated run time: not estimated: the number of optimizer steps is not known; Slurm time limit "
            "12:00:00\n") in sft
    assert "objective" not in sft
    assert "- learning rate: 5e-6 peak, cosine schedule, no warm-up\n" in dpo
    assert "- length: max_steps 2,000\n- optimizer steps: 2,000\n" in dpo
    assert ("- batch: 1 micro × 1 accum × 1 process = 1 pair × 2 sequences × 4,096 tokens = 8,192 tokens/step\n"
            in dpo)
    assert "- trains: the adapter of sft, continued: QLoRA r16 α32, dropout 0, targets all-linear" in dpo
    assert ("- objective: DPO β 0.2, ipo loss; reference: a frozen copy of the continued adapter, computed at "
            "every step\n") in dpo
    assert ("- estimated run time: ≈ 67 min (2,000 steps × 2.00 s, a planning figure); Slurm time limit 12:00:00 (9 % "
            "of it)\n") in dpo
    assert "- peak VRAM: 23.5 / 24.0 GiB per GPU (tight); about 2.00 s per step\n" in dpo


@pytest.mark.parametrize("example, stage, objective", [
    ("kto-llama3-8b-feedback", "kto", "KTO β 0.1, kto loss, desirable × 1, undesirable × 2; reference: a frozen copy "
     "of the continued adapter, computed at every step"),
    ("orpo-qwen2.5-7b-24gb", "orpo", "ORPO β 0.1 (the odds-ratio term beside the supervised loss); no reference "
     "model"),
    ("reward-llama3-8b-4xh100", "rm", "the chosen answer scored above the rejected one, rewards centred with "
     "coefficient 0.01")])
def test_plan_md_names_the_objective_of_each_preference_kind(example, stage, objective):
    from ftplan.api import check_file, plan_files

    result = check_file(EXAMPLES / f"{example}.yaml")
    md = plan_files(result, f"../plans/{example}")["plan.md"]
    section = md.split(f" {stage} (")[1].split("\n### ")[0]
    assert f"\n- objective: {objective}\n" in section


def test_plan_md_launches_a_multi_node_plan_with_its_slurm_chain(tmp_path):
    """run.sh refuses a plan over several nodes (exit 1), so plan.md names only submit.sh, and says why."""
    data = copy.deepcopy(PIPELINE)
    data["hardware"].update(gpu="h100", gpus_per_node=8, nodes=2)
    files = compile_files(tmp_path, data=data)[1]
    how = files["plan.md"].split("## How to run")[1]
    assert "bash plans/support-bot/slurm/submit.sh    # the Slurm job chain (afterok)" in how
    assert "run.sh    #" not in how
    assert "run.sh refuses this plan (it exits 1): a stage spans 2 nodes, which only the Slurm jobs start." in how
    assert "slurm/submit.sh" in files["run.sh"] and "\nexit 1\n" in files["run.sh"]
    # plan.html, rendered from plan.json alone, names the same command
    assert "run.sh    # every stage" not in files["plan.html"]
    assert "bash plans/support-bot/slurm/submit.sh    # the Slurm job chain (afterok)" in files["plan.html"]
    one_node = compile_files(tmp_path, data=PIPELINE)[1]["plan.md"].split("## How to run")[1]
    assert one_node.index("run.sh    # every stage") < one_node.index("submit.sh    # the Slurm job chain")
    assert "refuses" not in one_node


def test_plan_json_contents(files):
    plan = json.loads(files["plan.json"])
    assert plan["format_version"] == 1 and plan["ftplan_version"] == "0.1.0"
    assert plan["pipeline"]["file"] == "support-bot.yaml" and plan["pipeline"]["sha256"] == "f" * 64
    assert plan["pipeline"]["resolved"]["stages"][1]["micro_batch"] == 2
    assert plan["inputs"] == [{"path": "data/tickets.jsonl", "sha256": "1" * 64, "size": 2048}]
    assert plan["versions"]["deepspeed"] == "0.19.8"
    sft = plan["stages"][1]
    assert sft["id"] == "sft" and sft["batch"]["effective_batch"] == 16 and sft["batch"]["tokens_per_step"] == 65_536
    assert sft["estimate"]["verdict"] == "fits" and sft["estimate"]["terms"][0]["name"] == "weights"
    assert sft["args_sha256"] == sha256_text(files["stages/sft/args.json"])
    assert sft["accelerate"]["distributed_type"] == "NO" and sft["slurm_job"] == "slurm/sft.sbatch"


def test_size_text():
    assert [size_text(n) for n in (int(16.1 * GIB), 12 * 2**20 + 2**19, 4096, 12)] == \
        ["16.1 GiB", "12.5 MiB", "4.0 KiB", "12 B"]


def test_params_text():
    assert [params_text(n) for n in (8_030_261_248, 136_768_000, 139_584, 512, None)] == \
        ["8.03 B", "136.8 M", "139.6 K", "512 params", "size unknown"]


def test_sci():
    assert [sci(x) for x in (2e-4, 5e-6, 1.5e-5, 0.005, 1e-3)] == ["2e-4", "5e-6", "1.5e-5", "5e-3", "1e-3"]


def test_bar():
    assert bar(int(14.2 * GIB), 24 * GIB) == "█████████░░░░░░░ 14.2 / 24.0 GiB"
    assert bar(30 * GIB, 24 * GIB) == "████████████████ 30.0 / 24.0 GiB"
    assert bar(1, 24 * GIB).startswith("█░")


@pytest.mark.parametrize("value", ["plain", "it's", 'a "b"', "$(touch x)", "`x`", "a;b", "back\\slash",
                                   "new\nline", "cr\rlf", "tab\tx", "\x01ctl", "", "ünï", "-rf", "*"])
def test_shq_round_trips_through_bash(value):
    quoted = shq(value)
    assert "\n" not in quoted and "\r" not in quoted
    out = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True).stdout
    assert out == value.encode()


def test_comment_cannot_break_out_of_a_comment_line():
    assert comment("a\nrm -rf /\r") == "a\\nrm -rf /\\r"
