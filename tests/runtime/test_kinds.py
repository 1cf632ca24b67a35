"""The CPT, ORPO, KTO and reward stages on the tiny model (CPU, fp32), from raw files through the real data stage:
each trains on a learnable toy task (its loss goes down), saves its result where the next stage (or the user) finds
it, and counts its tokens."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402

PROMISE = {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO", "precision": "fp32",
           "attention": "sdpa", "kernels": "none"}
WORDS = "one two three four five six seven eight nine ten".split()


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _documents(n: int, seed: int) -> list[dict]:
    """Counting documents ("one two three ... ten one two ..."): a pattern a tiny model learns in a few steps; some
    longer than the data stage's max_seq_len, so they are split into pieces."""
    rng = random.Random(seed)
    return [{"text": " ".join(WORDS[(start + k) % 10] for k in range(rng.choice([8, 20, 90])))}
            for start in (rng.randrange(10) for _ in range(n))]


def _arithmetic(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, right answer, wrong answer)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append((f"What is {a} + {b}?", f"The answer is {a + b}.", f"It is {a * b + 1}."))
    return out


def _data_args(root: Path, base: Path, name: str, datasets_: list[dict], **stage) -> RuntimeArgs:
    return RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": str(base)}, "output_dir": str(root / name), "promise": PROMISE,
        "stage": {"id": name, "kind": "data", "max_seq_len": 64, "datasets": datasets_, **stage}})


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base):
    """Raw text (packed) and preference pairs + KTO examples in LLaMA-Factory's shape, through the data stage."""
    from ftplan_runtime.data import run_data_stage

    root = tmp_path_factory.mktemp("kinds")
    docs = _jsonl(root / "raw" / "docs.jsonl", _documents(48, seed=0))
    pairs = _arithmetic(48, seed=1)
    prefs = _jsonl(root / "raw" / "prefs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs])
    kto = _jsonl(root / "raw" / "kto.jsonl", [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer}], "label": good}
        for p, c, r in pairs for answer, good in ((c, True), (r, False))])
    text = run_data_stage(_data_args(root, tiny_base, "text", [{"path": docs, "format": "text"}], packing=True), "s")
    run_data_stage(_data_args(root, tiny_base, "prefs", [{"path": prefs, "format": "preference"},
                                                          {"path": kto, "format": "kto"}]), "s")
    return {"root": root, "base": tiny_base, "text_manifest": text}


def _args(project, kind: str, out: str, data: str, source: dict | None = None, **stage) -> RuntimeArgs:
    base = str(project["base"])
    fields = {"id": kind, "kind": kind, "data": data, "learning_rate": 5e-3, "precision": "fp32", "max_steps": 12,
              "micro_batch": 4, "logging_steps": 1, "report_to": [], "gradient_checkpointing": False,
              "adapter": {"type": "lora", "r": 8, "alpha": 16}}
    fields.update(stage)
    return RuntimeArgs.model_validate({
        "pipeline": "t", "stage": fields, "model": {"base": base},
        "source": {"weights": base, "tokenizer": base, **(source or {})},
        "data_dir": str(project["root"] / data), "output_dir": str(project["root"] / out), "promise": PROMISE})


def _learned(metrics: dict) -> bool:
    return metrics["loss_mean_last10"] < metrics["loss_first"] and metrics["loss_last"] < metrics["loss_first"]


@pytest.mark.parametrize("kind", ["cpt", "orpo", "kto", "reward"])
def test_a_new_kind_launches_like_any_training_stage(project, kind):
    """The launch scripts' package check knows the new kinds (accelerate, the training stack, bitsandbytes for
    QLoRA), and the entry point runs them (no "cannot run" refusal)."""
    from ftplan_runtime.installed import needs

    args = _args(project, kind, "o", "prefs", adapter={"type": "qlora", "r": 4})
    names = {(n.name, n.command) for n in needs(args)}
    assert {("accelerate", True), ("trl", False), ("peft", False), ("bitsandbytes", False)} <= names


def test_the_data_stage_splits_long_documents_and_packs_them(project):
    report = project["text_manifest"].datasets[0]
    assert report.split > 0 and report.pieces > report.rows_out == 48 and project["text_manifest"].truncated == 0
    rows = datasets.load_from_disk(str(project["root"] / "text" / "sft" / "train"))
    assert rows.column_names == ["input_ids", "completion_mask", "seq_lengths"]


def test_cpt_full_fine_tune_learns_the_raw_text(project):
    from ftplan_runtime.cpt import run_cpt

    args = _args(project, "cpt", "out-cpt", "text", adapter={"type": "full"}, learning_rate=2e-3, micro_batch=2)
    metrics = run_cpt(args, "0" * 64)
    out = Path(args.output_dir)
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert _learned(metrics), metrics
    rows = datasets.load_from_disk(str(project["root"] / "text" / "sft" / "train"))
    assert metrics["tokens_trained"] > 0 and metrics["tokens_seen"] <= sum(len(r) for r in rows["input_ids"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "cpt" and saved["steps"] == 12


def test_orpo_learns_to_prefer_the_right_answer_without_a_reference(project):
    from ftplan_runtime.orpo import orpo_spec, run_orpo
    from ftplan_runtime.train_common import prepare_training

    args = _args(project, "orpo", "out-orpo", "prefs", beta=0.5)
    prep = prepare_training(args, "0" * 64, orpo_spec(args))
    trainer = prep.trainer
    assert getattr(trainer, "ref_model", None) is None and list(trainer.model.peft_config) == ["default"]
    row = trainer.train_dataset[0]
    n = len(row["prompt_input_ids"])
    assert row["chosen_labels"][:n] == [-100] * n and row["chosen_input_ids"][:n] == row["prompt_input_ids"]
    metrics = run_orpo(args, "0" * 64)
    assert _learned(metrics), metrics
    assert (Path(args.output_dir) / "adapter" / "adapter_model.safetensors").is_file()
    assert metrics["tokens_trained"] > 0


def test_kl_completions_pair_each_prompt_with_a_neighbour_answer():
    from ftplan_runtime.kto import add_kl_completions

    ds = datasets.Dataset.from_dict({"prompt_ids": [[1]] * 5, "completion_ids": [[10], [11], [12], [13], [14]],
                                     "label": [True] * 5})
    got = add_kl_completions(ds, micro_batch=2)["KL_completion_ids"]
    assert got == [[11], [10], [13], [12], [14]]  # per micro-batch of 2, shifted by one; the last row alone


def test_kto_learns_from_labelled_answers_against_the_base(project):
    from ftplan_runtime.kto import kto_spec, run_kto
    from ftplan_runtime.train_common import prepare_training

    args = _args(project, "kto", "out-kto", "prefs", beta=0.5, max_steps=16)
    prep = prepare_training(args, "0" * 64, kto_spec(args))
    trainer = prep.trainer
    assert "ref" not in trainer.model.peft_config  # a new adapter: the reference is the policy with it switched off
    labels = trainer.train_dataset["label"]
    assert labels[:8] != sorted(labels[:8]) or len(set(labels[:8])) == 2  # shuffled: both labels early on
    assert "KL_completion_ids" in trainer.train_dataset.column_names
    metrics = run_kto(args, "0" * 64)
    assert _learned(metrics), metrics
    assert (Path(args.output_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_kto_continues_an_adapter_against_its_frozen_copy(project, seeded_lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftplan_runtime.kto import kto_spec
    from ftplan_runtime.train_common import prepare_training

    sft = project["root"] / "sft-adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(project["base"]), dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    seeded_lora(model, 0, b_scale=0.3)
    model.save_pretrained(str(sft))
    args = _args(project, "kto", "out-kto-cont", "prefs", adapter="continue", input="sft", max_steps=2,
                 reference="precomputed",
                 source={"continue_adapter": {"stage": "sft", "path": str(sft), "type": "lora"}})
    prep = prepare_training(args, "0" * 64, kto_spec(args))
    assert "ref" in prep.trainer.model.peft_config
    assert "ref_logps" in prep.trainer.train_dataset.column_names  # computed once, before training


def test_reward_model_learns_to_score_the_right_answer_higher(project):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftplan_runtime.reward import run_reward

    args = _args(project, "reward", "out-rm", "prefs", learning_rate=1e-2, max_steps=16)
    metrics = run_reward(args, "0" * 64)
    assert _learned(metrics), metrics
    adapter = Path(args.output_dir) / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    tok = AutoTokenizer.from_pretrained(str(adapter))
    base = AutoModelForSequenceClassification.from_pretrained(str(project["base"]), num_labels=1,
                                                              dtype=torch.float32)
    base.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ds = datasets.load_from_disk(str(project["root"] / "prefs" / "preference" / "train"))
    wins = 0
    with torch.no_grad():
        for row in ds.select(range(16)):
            scores = [model(input_ids=torch.tensor([row["prompt_ids"] + row[k]])).logits[0, 0].item()
                      for k in ("chosen_ids", "rejected_ids")]
            wins += scores[0] > scores[1]
    assert wins >= 12, wins


def test_a_reward_model_loads_as_a_sequence_classifier_seeded(project):
    from ftplan_runtime.model_loading import load_for_training

    args = _args(project, "reward", "out-rm-load", "prefs", adapter={"type": "full"})
    one, two = load_for_training(args).model, load_for_training(args).model
    assert type(one).__name__ == "LlamaForSequenceClassification" and one.config.num_labels == 1
    assert one.config.pad_token_id is not None
    torch.testing.assert_close(one.score.weight, two.score.weight)  # the head's init follows the stage's seed


# ---------------------------------------------------------------------------------------------- resume


def _wait_for_checkpoint(ckpt_dir: Path, min_step: int, proc, timeout: float = 120) -> int:
    import time

    from ftplan_runtime.preemption import latest_checkpoint

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = latest_checkpoint(ckpt_dir)
        if latest is not None and int(latest.rsplit("-", 1)[1]) >= min_step:
            return int(latest.rsplit("-", 1)[1])
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before checkpoint {min_step}:\n"
                                 + proc.stderr.read()[-3000:])
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {min_step} within {timeout}s")


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    [path] = [p for p in folder.glob("*.safetensors")]
    return load_file(str(path))


RESUMED = {"orpo": ("prefs", {}), "kto": ("prefs", {}), "reward": ("prefs", {})}
"""The kinds whose resume goes through trainers and data of their own (CPT runs SFT's trainer, whose resume
test_resume.py holds)."""


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RESUMED))
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(project, kind, monkeypatch):
    """As for SFT (test_resume.py): killed after a checkpoint, the same command resumes from it and ends with the
    weights of an uninterrupted run. (The killed run is a process of its own; the clean run and the rerun go through
    the same entry point in this process, which saves importing the training stack twice more.)"""
    import os
    import signal
    import subprocess
    import sys

    from ftplan.schemas.runtime_args import COMPLETE_MARKER
    from ftplan_runtime.__main__ import main, run_stage

    data, extra = RESUMED[kind]
    fields = {"max_steps": 10, "save_steps": 2, "save_total_limit": 2, "seed": 7, "micro_batch": 2, **extra}
    clean = _args(project, kind, f"clean-{kind}", data, **fields)
    run_stage(clean, "0" * 64)
    killed = _args(project, kind, f"killed-{kind}", data, **fields)
    path = project["root"] / f"killed-{kind}.json"
    path.write_text(killed.model_dump_json(indent=2))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "ftplan_runtime", str(path)]
    proc = subprocess.Popen(command, cwd=project["root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    out = Path(killed.output_dir)
    step = _wait_for_checkpoint(out / "checkpoints", 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / COMPLETE_MARKER).exists()
    monkeypatch.chdir(project["root"])
    assert main([str(path)]) == 0
    assert (out / COMPLETE_MARKER).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= step and metrics["steps"] == 10
    want, got = _weights(Path(clean.output_dir) / "adapter"), _weights(out / "adapter")
    assert want.keys() == got.keys() and want
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4, msg=key)


# ---------------------------------------------------------------------------------------------- compiled


COMPILED = """\
name: kinds
model: {base: ./tiny, architecture: ftplan-tiny}
hardware: {device: cpu}
stages:
  - {id: text, kind: data, max_seq_len: 64, datasets: [{path: raw/docs.jsonl, format: text}]}
  - {id: cpt, kind: cpt, data: text, adapter: {type: lora, r: 8, alpha: 16}, %(train)s}
  - id: prefs
    kind: data
    max_seq_len: 64
    datasets: [{path: raw/prefs.jsonl, format: preference}, {path: raw/kto.jsonl, format: kto}]
  - {id: orpo, kind: orpo, input: cpt, data: prefs, adapter: continue, %(train)s}
  - {id: kto, kind: kto, input: orpo, data: prefs, adapter: continue, reference: precomputed, %(train)s}
  - {id: merged, kind: merge, input: kto, dtype: fp32}
  - {id: rm, kind: reward, input: merged, data: prefs, adapter: {type: full}, %(train)s}
""" % {"train": "precision: fp32, learning_rate: 5.0e-3, max_steps: 3, micro_batch: 2, logging_steps: 1, "
       "report_to: [], gradient_checkpointing: false"}


@pytest.mark.slow
def test_a_compiled_pipeline_of_the_new_kinds_runs_stage_by_stage(project, tiny_base, monkeypatch):
    """check and compile a CPU pipeline (raw text -> CPT LoRA -> ORPO and KTO continuing that adapter -> merge ->
    a full reward model on the merged weights), then run every compiled stage through the runtime's entry point, in
    order: each hand-off the graph allows is one the runtime takes."""
    import shutil

    from ftplan.api import check_file, plan_files
    from ftplan.schemas.runtime_args import COMPLETE_MARKER
    from ftplan_runtime.__main__ import main

    root = project["root"] / "compiled"
    shutil.copytree(project["root"] / "raw", root / "raw")
    (root / "tiny").symlink_to(tiny_base, target_is_directory=True)
    (root / "kinds.yaml").write_text(COMPILED)
    result = check_file(root / "kinds.yaml")
    assert result.ok, [str(d) for d in result.diagnostics if d.severity.name == "ERROR"]
    for rel, text in plan_files(result, "plan").items():
        (root / "plan" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "plan" / rel).write_text(text)
    monkeypatch.chdir(root)
    for sid in ("text", "cpt", "prefs", "orpo", "kto", "merged", "rm"):
        assert main([f"plan/stages/{sid}/args.json"]) == 0, sid
        assert (root / "outputs" / sid / COMPLETE_MARKER).is_file(), sid
    assert (root / "outputs" / "kto" / "adapter" / "adapter_model.safetensors").is_file()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(root / "outputs" / "rm" / "model"))
    assert config.architectures == ["LlamaForSequenceClassification"] and config.num_labels == 1
    assert json.loads((root / "outputs" / "rm" / "metrics.json").read_text())["steps"] == 3
