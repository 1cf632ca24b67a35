"""``ftplan import axolotl`` on real Axolotl example configs (tests/data/axolotl, Apache-2.0, see its NOTICE.md):
every key of every config is carried over, listed as not carried over with a reason, or reported empty; each key
the importer claims to map lands where it says with the value Axolotl gives it; the written pipeline passes
``ftplan check`` except for the errors listed per config (models outside the catalog, QLoRA under FSDP2); the
preference configs need no SFT stage; and the command writes, checks and refuses as documented."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftplan.api import check_text
from ftplan.cli import main
from ftplan.diagnostics import Severity
from ftplan.importers import DEFAULT_GPU, ImportRefused, import_axolotl
from ftplan.importers.config_file import read_config
from ftplan.loader import load_yaml

DATA = Path(__file__).parent / "data" / "axolotl"
CONFIGS = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*.y*ml"))
REFUSED = {"qwen2/prm.yaml": r"per-step \(process\) reward model"}
UNCATALOGUED = {"deepseek-v2/fft-fsdp-16b.yaml", "deepseek-v2/qlora-fsdp-2_5.yaml",
                "deepseek-v4/v4-flash-nvfp4-lora.yaml", "falcon-e/falcon-e-3b-dpo.yaml",
                "gemma3/gemma-3-270m-qlora.yml", "llama-3/instruct-dpo-lora-8b.yml",
                "mistral/dpo/mistral-dpo-qlora.yml", "mistral/orpo/mistral-qlora-orpo.yml", "phi/phi-ft.yml",
                "phi/phi-qlora.yml", "phi/phi2-ft.yml", "phi/phi3-ft-fsdp.yml", "phi/phi3-ft.yml",
                "qwen2/qlora-fsdp.yaml", "qwen3/30b-a3b-nvfp4-lora.yaml", "qwen3/reward-model.yaml",
                "swanlab/dpo-swanlab-completions.yml", "swanlab/dpo-swanlab-full-featured.yml"}
"""Configs whose base model is not in ftplan's catalog: check says FT011 (set `model.architecture`)."""
EXPECTED_ERRORS = {name: {"FT011"} for name in UNCATALOGUED}
EXPECTED_ERRORS["deepseek-v4/v4-flash-nvfp4-lora.yaml"] = {"FT011", "FT307"}  # packing with eager attention
PREFERENCE = ["qwen2/dpo.yaml", "llama-3/instruct-dpo-lora-8b.yml", "llama-3/lora-1b-deduplicate-dpo.yml",
              "mistral/dpo/mistral-dpo-qlora.yml", "falcon-e/falcon-e-3b-dpo.yaml",
              "swanlab/dpo-swanlab-completions.yml", "swanlab/dpo-swanlab-full-featured.yml",
              "mistral/orpo/mistral-qlora-orpo.yml", "llama-3/qlora-1b-kto.yaml"]
"""Every DPO, ORPO and KTO config among them: each starts from the base model, as Axolotl trains it."""

DIRECT = {"base_model": "model.base", "sequence_len": "stages[data].max_seq_len",
          "sample_packing": "stages[data].packing", "val_set_size": "stages[data].val_fraction",
          "micro_batch_size": "micro_batch", "gradient_accumulation_steps": "grad_accum",
          "learning_rate": "learning_rate", "num_epochs": "epochs", "max_steps": "max_steps",
          "warmup_steps": "warmup_steps", "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay",
          "max_grad_norm": "max_grad_norm", "logging_steps": "logging_steps", "save_steps": "save_steps",
          "eval_steps": "eval_steps", "lora_r": "adapter.r", "lora_alpha": "adapter.alpha",
          "lora_dropout": "adapter.dropout", "rl_beta": "beta", "orpo_alpha": "beta",
          "kto_desirable_weight": "desirable_weight", "kto_undesirable_weight": "undesirable_weight",
          "simpo_gamma": "simpo_gamma", "center_rewards_coefficient": "center_rewards_coefficient",
          "gradient_checkpointing": "gradient_checkpointing", "seed": "seed"}
"""Axolotl keys whose value ftplan takes as it is (bare names are keys of the training stage)."""


def config(name: str) -> dict[str, Any]:
    return read_config(DATA / name)


def imported(name: str, **kw):
    return import_axolotl(config(name), source=name, schema="pipeline.schema.json", **kw)


def pipeline(result) -> dict[str, Any]:
    data, _ = load_yaml(result.text, "imported.yaml")
    return data


def at(doc: dict[str, Any], path: str) -> Any:
    """The value at ``stages[data].datasets[0].columns.prompt`` (stages by id), or KeyError."""
    node: Any = doc
    for part in re.findall(r"[^.\[\]]+|\[[^\]]+\]", path):
        if part.startswith("["):
            key = part[1:-1]
            node = node[int(key)] if key.isdigit() else next(s for s in node if s["id"] == key)
        else:
            node = node[part]
    return node


def train_stage(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["stages"][1]


def errors_of(result, tmp_path) -> set[str]:
    checked = check_text(result.text, "imported.yaml", tmp_path)
    return {d.code for d in checked.diagnostics if d.severity is Severity.ERROR}


def test_the_test_data_is_the_axolotl_examples_with_their_licence():
    assert len(CONFIGS) >= 10
    assert {c.split("/")[0] for c in CONFIGS} >= {"qwen2", "qwen3", "phi", "gemma2", "gemma3", "deepseek-v2"}
    notice = (DATA / "NOTICE.md").read_text()
    assert "axolotl-ai-cloud/axolotl" in notice and re.search(r"commit: [0-9a-f]{40}", notice)
    assert "Apache License" in (DATA / "LICENSE").read_text()


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in REFUSED])
def test_every_key_is_carried_over_or_explained(name):
    cfg = config(name)
    result = imported(name)
    footer = result.text.split("# Axolotl keys not carried over:", 1)[-1]
    for key, value in cfg.items():
        accounted = (key in result.mapped or key in result.unmapped or key in result.empty
                     or any(k.startswith(f"{key}[") for k in result.mapped))
        assert accounted, f"{name}: {key} is neither mapped, explained nor empty"
        if key in result.empty:
            assert value in (None, "", [], {})
    for key, why in result.unmapped.items():
        assert why and why != "ftplan has no setting for it" or key.startswith(("datasets[", "pretraining")), key
        assert f"#   {key}: {why}" in footer, key
    if result.empty:
        assert "given without a value (nothing to carry over): " + ", ".join(result.empty) in result.text


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in REFUSED])
def test_each_claimed_mapping_lands_where_it_says(name):
    cfg = config(name)
    result = imported(name)
    doc = pipeline(result)
    train = train_stage(doc)
    for key, target in result.mapped.items():
        if target in ("stages", "stages[data].datasets") or target.endswith(".kind"):
            continue
        path = target.split(", ")[0]
        at(doc, path)  # the key it names exists
    for key, where in DIRECT.items():
        if key not in result.mapped:
            continue
        value = at(doc, where) if where.startswith(("model.", "stages[")) else at(train, where)
        want = cfg[key]
        if isinstance(value, bool):
            assert value == (want is True or str(want).lower() in ("true", "auto", "offload")), (key, value, want)
        elif isinstance(value, str):
            assert value == want, (name, key, value, want)
        else:
            assert float(value) == pytest.approx(float(want)), (name, key, value, want)


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in REFUSED])
def test_the_written_pipeline_checks(name, tmp_path):
    """Schema, graph and rules: no error but the ones a config brings (an uncatalogued model, packing with eager
    attention); the QLoRA-under-FSDP configs check clean (sharded QLoRA)."""
    assert errors_of(imported(name), tmp_path) == EXPECTED_ERRORS.get(name, set())


def test_importing_is_deterministic():
    for name in ("qwen2/dpo.yaml", "qwen3/32b-qlora.yaml"):
        assert imported(name).text == imported(name).text


# ------------------------------------------------------------------------------------------ what each maps to


@pytest.mark.parametrize("name", PREFERENCE)
def test_preference_configs_start_from_the_base_model(name, tmp_path):
    """No throwaway SFT stage: the one training stage has no `input` and trains on the preference data."""
    doc = pipeline(imported(name))
    assert [s["kind"] for s in doc["stages"]] == ["data", {"kto": "kto", "orpo": "orpo"}.get(
        config(name)["rl"], "dpo")]
    assert "input" not in train_stage(doc)
    formats = {d["format"] for d in doc["stages"][0]["datasets"]}
    assert formats == ({"kto"} if config(name)["rl"] == "kto" else {"preference"})


def test_qwen2_dpo(tmp_path):
    result = imported("qwen2/dpo.yaml")
    doc = pipeline(result)
    assert doc["model"] == {"base": "Qwen/Qwen2.5-0.5B", "chat_template": "tokenizer"}
    assert doc["output_dir"] == "outputs/dpo-out"
    [entry] = doc["stages"][0]["datasets"]
    assert entry == {"path": "fozziethebeat/alpaca_messages_2k_dpo_test", "format": "preference",
                     "columns": {"prompt": "conversation", "chosen": "chosen", "rejected": "rejected",
                                 "role": "role", "content": "content"},
                     "roles": {"system": "system", "user": "user", "assistant": "assistant"}}
    assert result.mapped["datasets[0].field_messages"] == "stages[data].datasets[0].columns.prompt"
    assert result.mapped["datasets[0].roles"] == "stages[data].datasets[0].roles"
    train = train_stage(doc)
    assert (train["kind"], train["adapter"], train["optimizer"], train["precision"], train["attention"]) == (
        "dpo", {"type": "full"}, "adamw_8bit", "bf16", "flash_attention_2")
    assert "loss_type" not in train and "reference" not in train  # sigmoid, live: the defaults
    assert "qwen_25" in result.text and result.unmapped["evals_per_epoch"].startswith("ftplan counts in optimizer")
    assert check_text(result.text, "imported.yaml", tmp_path).ok


def test_llama3_instruct_dpo_lora():
    result = imported("llama-3/instruct-dpo-lora-8b.yml")
    train = train_stage(pipeline(result))
    assert train["adapter"] == {"type": "lora", "r": 32, "alpha": 16, "dropout": 0.05, "targets": "all-linear"}
    assert "8-bit" in result.unmapped["load_in_8bit"] and "special tokens" in result.unmapped["special_tokens"]
    assert pipeline(result)["model"]["chat_template"] == "llama3"


def test_orpo_and_kto(tmp_path):
    orpo = train_stage(pipeline(imported("mistral/orpo/mistral-qlora-orpo.yml")))
    assert (orpo["kind"], orpo["beta"], orpo["adapter"]["type"], orpo["adapter"]["targets"]) == (
        "orpo", 0.1, "qlora", "all-linear")
    result = imported("llama-3/qlora-1b-kto.yaml")
    doc = pipeline(result)
    kto = train_stage(doc)
    assert (kto["kind"], kto["beta"], kto["desirable_weight"], kto["micro_batch"]) == ("kto", 0.5, 0.2, 2)
    assert doc["stages"][0]["datasets"] == [{"path": "argilla/ultrafeedback-binarized-preferences-cleaned-kto",
                                             "split": "train", "format": "kto"}]
    assert doc["model"]["chat_template"] == "llama3"  # Axolotl's llama3.ultra formats with the Llama 3 template
    assert result.mapped["datasets[0].type"] == "stages[data].datasets[0].format"
    assert check_text(result.text, "imported.yaml", tmp_path).ok


@pytest.mark.parametrize("name,deepspeed,gpus", [("gemma2/reward-model.yaml", None, 1),
                                                 ("qwen2/reward-model.yaml", None, 1),
                                                 ("qwen3/reward-model.yaml", "zero1", 8)])
def test_reward_models(name, deepspeed, gpus):
    result = imported(name)
    doc = pipeline(result)
    train = train_stage(doc)
    assert train["kind"] == "reward" and train.get("distributed") == deepspeed
    assert doc["hardware"]["gpus_per_node"] == gpus
    assert doc["stages"][0]["datasets"][0]["columns"] == {"prompt": "input"}
    assert "num_labels" in result.mapped and "reward_model" in result.mapped
    if name.startswith("qwen3"):
        assert train["center_rewards_coefficient"] == 0.01


def test_pretraining_is_a_cpt_stage_under_fsdp2_with_wandb():
    result = imported("qwen2/adamw-pretrain-fsdp2.yaml")
    doc = pipeline(result)
    train = train_stage(doc)
    assert [s["kind"] for s in doc["stages"]] == ["data", "cpt"]
    assert doc["stages"][0]["datasets"] == [{"path": "allenai/c4", "split": "train", "format": "text"}]
    assert doc["stages"][0]["loss_on"] == "all"
    assert (train["distributed"], train["max_steps"], train["report_to"]) == ("fsdp2", 305, ["wandb"])
    assert "epochs" not in train and "max_steps" in result.unmapped["num_epochs"]
    assert doc["hardware"] == {"gpu": DEFAULT_GPU, "gpus_per_node": 8,
                               "env": {"WANDB_PROJECT": "dist_muon", "WANDB_NAME": "adamw"}}
    assert "default configuration" in result.unmapped["pretraining_dataset[0].name"]


def test_qwen3_qlora_kernels_targets_and_optimizer():
    result = imported("qwen3/32b-qlora.yaml")
    doc = pipeline(result)
    train = train_stage(doc)
    assert train["kernels"] == "ftplan"  # the Cut Cross-Entropy plugin, on a family ftplan fuses
    assert train["adapter"]["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "up_proj"]
    assert "adamw_torch_4bit" in result.unmapped["optimizer"] and "optimizer" not in train
    assert train["gradient_checkpointing"] == "offload"  # Axolotl's own word for it
    assert doc["stages"][0]["datasets"] == [{"path": "mlabonne/FineTome-100k", "split": "train[:20%]",
                                             "format": "sharegpt", "columns": {"messages": "conversations",
                                                                               "role": "from", "content": "value"}}]


def test_kernels_only_where_the_fused_lora_runs(tmp_path):
    """The fused LoRA kernels compute plain LoRA: with adapter dropout the Cut Cross-Entropy plugin is not carried
    over, and the pipeline still checks."""
    result = import_axolotl(edited("qwen3/32b-qlora.yaml", lora_dropout=0.05))
    assert "kernels" not in train_stage(pipeline(result)) and "dropout" in result.unmapped["plugins"]
    assert errors_of(result, tmp_path) == set()


def test_deepseek_fsdp_offload_and_unsupported_kernels():
    result = imported("deepseek-v2/qlora-fsdp-2_5.yaml")
    train = train_stage(pipeline(result))
    assert train["distributed"] == {"strategy": "fsdp2", "offload_params": True}
    assert "kernels" not in train and "families" in result.unmapped["liger_rms_norm"]
    assert "alpha / r" in result.unmapped["peft_use_rslora"]


def test_phi_full_fine_tune_on_alpaca():
    result = imported("phi/phi-ft.yml")
    doc = pipeline(result)
    assert train_stage(doc)["adapter"] == {"type": "full"}
    assert doc["stages"][0]["datasets"] == [{"path": "garage-bAInd/Open-Platypus", "format": "alpaca"}]
    assert "torch defaults" in result.unmapped["adam_beta2"]


def test_a_mirror_of_a_catalogued_model_gets_its_architecture(tmp_path):
    result = imported("llama-3/lora-1b.yml")
    doc = pipeline(result)
    assert doc["model"] == {"base": "NousResearch/Llama-3.2-1B", "architecture": "llama-3.2-1b"}
    assert "meta-llama/Llama-3.2-1B has the same repository name" in result.text
    assert errors_of(result, tmp_path) == set()


# ------------------------------------------------------------------------------------------- edited configs


def edited(name: str, **changes) -> dict[str, Any]:
    cfg = copy.deepcopy(config(name))
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def test_dpo_loss_family(tmp_path):
    base = "llama-3/lora-1b-deduplicate-dpo.yml"
    simpo = import_axolotl(edited(base, rl="simpo", rl_beta=2.0, simpo_gamma=1.0, cpo_alpha=0.5))
    train = train_stage(pipeline(simpo))
    assert (train["loss_type"], train["beta"], train["simpo_gamma"], train["sft_weight"]) == ("simpo", 2.0, 1.0, 0.5)
    assert simpo.mapped["cpo_alpha"] == "stages[dpo].sft_weight"
    assert errors_of(simpo, tmp_path) == set()
    default_alpha = train_stage(pipeline(import_axolotl(edited(base, rl="simpo", rl_beta=2.0))))
    assert default_alpha["sft_weight"] == 1.0  # Axolotl leaves TRL's CPO default
    ipo = train_stage(pipeline(import_axolotl(edited(base, rl="ipo"))))
    assert ipo["loss_type"] == "ipo"
    listed = import_axolotl(edited(base, dpo_loss_type=["hinge", "sft"], dpo_loss_weights=[1.0, 0.3]))
    assert (train_stage(pipeline(listed))["loss_type"], train_stage(pipeline(listed))["sft_weight"]) == ("hinge", 0.3)
    rpo = train_stage(pipeline(import_axolotl(edited(base, rpo_alpha=1.0, precompute_ref_log_probs=True))))
    assert (rpo.get("loss_type"), rpo["sft_weight"], rpo["reference"]) == (None, 1.0, "precomputed")
    robust = import_axolotl(edited(base, dpo_loss_type=["robust"], dpo_label_smoothing=0.1))
    assert train_stage(pipeline(robust))["label_smoothing"] == 0.1
    smoothed = import_axolotl(edited(base, dpo_label_smoothing=0.1))
    assert "label_smoothing" not in train_stage(pipeline(smoothed))
    assert "robust" in smoothed.unmapped["dpo_label_smoothing"]
    mixed = import_axolotl(edited(base, dpo_loss_type=["sigmoid", "bco_pair"]))
    assert "dpo_loss_type" in mixed.unmapped


def test_merge_lora_adds_a_merge_stage(tmp_path):
    result = import_axolotl(edited("llama-3/lora-1b.yml", merge_lora=True))
    doc = pipeline(result)
    assert doc["stages"][2] == {"id": "merge", "kind": "merge", "input": "sft", "dtype": "bf16"}
    assert result.mapped["merge_lora"] == "stages[merge]"
    assert errors_of(result, tmp_path) == set()
    full = import_axolotl(edited("phi/phi-ft.yml", merge_lora=True))
    assert len(pipeline(full)["stages"]) == 2 and "no adapter to merge" in full.unmapped["merge_lora"]


def test_unknown_dataset_types_are_guessed_and_said_so():
    cfg = edited("qwen3/8b-lora-fused-attn.yaml", datasets=[{"path": "x/y", "type": "input_output"}])
    result = import_axolotl(cfg)
    assert pipeline(result)["stages"][0]["datasets"] == [{"path": "x/y", "format": "messages"}]
    assert "no ftplan equivalent" in result.unmapped["datasets[0].type"]


@pytest.mark.parametrize("changes,match", [({"rl": "grpo"}, "online reinforcement learning"),
                                           ({"base_model": None}, "no `base_model`"),
                                           ({"datasets": None}, "no `datasets`"),
                                           ({"learning_rate": None}, "no `learning_rate`")])
def test_configs_that_cannot_be_imported(changes, match):
    with pytest.raises(ImportRefused, match=match):
        import_axolotl(edited("llama-3/lora-1b.yml", **changes))
    with pytest.raises(ImportRefused, match=REFUSED["qwen2/prm.yaml"]):
        imported("qwen2/prm.yaml")


# -------------------------------------------------------------------------------------------------- the CLI


def test_cli_writes_checks_and_never_replaces(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["import", "axolotl", str(DATA / "qwen2/dpo.yaml"), "-o", str(out), "--gpu", "a100-sxm-80gb"]) == 0
    said = capsys.readouterr()
    assert f"wrote {out}: a dpo pipeline" in said.out and "Qwen2.5-0.5B-dpo" in said.out  # check's headline
    text = out.read_text()
    assert "gpu: a100-sxm-80gb" in text and text.startswith("# yaml-language-server: $schema=")
    assert main(["import", "axolotl", str(DATA / "qwen2/dpo.yaml"), "-o", str(out)]) == 2
    assert "never replaces a file" in capsys.readouterr().err and out.read_text() == text


def test_cli_exit_codes(tmp_path, capsys):
    failing = tmp_path / "f.yaml"
    assert main(["import", "axolotl", str(DATA / "qwen3/qlora-fsdp.yaml"), "-o", str(tmp_path / "ok.yaml")]) == 0
    assert main(["import", "axolotl", str(DATA / "gemma3/gemma-3-270m-qlora.yml"), "-o", str(failing)]) == 1
    assert "FT011" in capsys.readouterr().err and failing.is_file()  # written, and check says what to fix
    refused = tmp_path / "r.yaml"
    assert main(["import", "axolotl", str(DATA / "qwen2/prm.yaml"), "-o", str(refused)]) == 1
    assert "(process) reward model" in capsys.readouterr().err and not refused.exists()
    assert main(["import", "axolotl", str(tmp_path / "nope.yml"), "-o", str(refused)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text("base_model: x\nbase_model: y\n")
    assert main(["import", "axolotl", str(bad), "-o", str(refused)]) == 2
    assert "bad.yml:2:1" in capsys.readouterr().err
    assert main(["import", "axolotl", str(DATA / "qwen2/dpo.yaml"), "-o", str(refused), "--gpu", "a100"]) == 2
    assert "did you mean" in capsys.readouterr().err and not refused.exists()


def test_cli_in_a_real_process_writes_next_to_the_current_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ftplan", "import", "axolotl", str(DATA / "llama-3/qlora-1b-kto.yaml")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    written = tmp_path / "qlora-1b-kto.ftplan.yaml"
    assert written.is_file() and "Traceback" not in r.stderr
    assert yaml.safe_load(written.read_text())["stages"][1]["kind"] == "kto"
