""""Would fit" suggestions are plans: each printed change, written into the YAML file as the text says, gives a file
that ``ftplan check`` accepts (no error) and whose stage fits. When nothing passes, the diagnostic says so and names
the largest term.

The printed change is read here with a parser of this file's own (the grammar of ``ftplan/estimate/edits.py``:
``KEY OLD → NEW`` settings separated by ``, ``, values in YAML flow style) and applied to the YAML mapping, so the
test checks the text a user reads, not the edit object behind it.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from ftplan.api import check_file
from ftplan.console import print_check
from ftplan.diagnostics import Severity
from ftplan.schemas import DpoStage, HardwareSpec, SftStage

ROOT = Path(__file__).resolve().parent.parent
CHAT = ROOT / "examples" / "data" / "support-chat.jsonl"
PREFS = ROOT / "examples" / "data" / "support-prefs.jsonl"

MIXTRAL_8X22B = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 6144,
    "intermediate_size": 16384, "num_hidden_layers": 56, "num_attention_heads": 48, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 32768, "max_position_embeddings": 65536, "num_local_experts": 8,
    "num_experts_per_tok": 2, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
"""mistralai/Mixtral-8x22B-v0.1's config.json (the catalog has only the 8x7B)."""


def write_pipeline(tmp_path: Path, model: dict, hardware: dict, *train: dict, max_seq_len: int = 2048) -> Path:
    """A pipeline file with one data stage (the example chats and preference pairs) and the given stages."""
    (tmp_path / "data").mkdir(exist_ok=True)
    for src in (CHAT, PREFS):
        shutil.copy(src, tmp_path / "data" / src.name)
    datasets = [{"path": "data/support-chat.jsonl", "format": "sharegpt"}]
    if any(s["kind"] == "dpo" for s in train):
        datasets.append({"path": "data/support-prefs.jsonl", "format": "preference"})
    doc = {"name": "t", "model": model, "hardware": hardware,
           "stages": [{"id": "data", "kind": "data", "datasets": datasets, "max_seq_len": max_seq_len}, *train]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sft(adapter: dict, **kw) -> dict:
    return {"id": "sft", "kind": "sft", "data": "data", "adapter": adapter, "learning_rate": 1e-4, **kw}


def printed(result) -> str:
    """What ``ftplan check`` prints for a result."""
    buf = io.StringIO()
    console = Console(file=buf, width=400, color_system=None, highlight=False, soft_wrap=True)
    print_check(result, console, console)
    return buf.getvalue()


def printed_changes(text: str) -> list[str]:
    """The changes of every ``would fit (...): CHANGE`` line and of a ``hint: CHANGE (X of Y)`` that proposes one."""
    changes = re.findall(r"^\s+would fit \([^)]*\): (.+)$", text, re.M)
    for hint in re.findall(r"^\s+hint: (?:for headroom: |no single change fits; together: )?(.+) \([\d.]+ GiB of "
                           r"[\d.]+ GiB\)$", text, re.M):
        if hint not in changes:
            changes.append(hint)
    return changes


def settings(change: str) -> list[tuple[str, object, object]]:
    """``KEY OLD → NEW, ...`` as (key, old, new), values read as YAML."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(change):
        depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(ch, 0)
        if depth == 0 and change.startswith(", ", k):
            parts.append(change[start:k])
            start = k + 2
    parts.append(change[start:])
    out = []
    for part in parts:
        m = re.fullmatch(r"(\S+) (.+?) → (.+)", part)
        assert m, f"not KEY OLD → NEW: {part!r} (in {change!r})"
        out.append((m[1], yaml.safe_load(m[2]), yaml.safe_load(m[3])))
    return out


def _default(stage: dict, key: str):
    """The schema's default of a key the file does not write (a stage key, or ``hardware.NAME``)."""
    model = {"sft": SftStage, "dpo": DpoStage}[stage["kind"]]
    fields = HardwareSpec.model_fields if key.startswith("hardware.") else model.model_fields
    name = key.split(".", 1)[1] if key.startswith("hardware.") else key
    assert name in fields, f"the suggestion writes {key!r}, which is no key of a stage or of hardware"
    return fields[name].default


def apply_change(path: Path, stage_id: str, change: str, out: Path) -> Path:
    """Write ``change`` into the YAML file at ``path`` as its text says (checking each OLD value), to ``out``."""
    doc = yaml.safe_load(path.read_text())
    stage = next(s for s in doc["stages"] if s["id"] == stage_id)
    for key, old, new in settings(change):
        parts = key.split(".")
        node = doc if parts[0] == "hardware" else stage
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        current = node.get(parts[-1], _default(stage, key) if "." not in key or parts[0] == "hardware" else None)
        assert current == old, f"{key}: the file has {current!r}, the suggestion says {old!r}"
        node[parts[-1]] = new
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def assert_every_suggestion_is_a_plan(path: Path, stage_id: str) -> list[str]:
    """Check ``path``; write each printed change into a copy and check that: no error, and the stage fits."""
    result = check_file(path)
    changes = printed_changes(printed(result))
    for n, change in enumerate(changes):
        edited = check_file(apply_change(path, stage_id, change, path.with_name(f"edited-{n}.yaml")))
        errors = [f"{d.code} {d.message}" for d in edited.diagnostics if d.severity is Severity.ERROR]
        assert not errors, f"{change!r} applied: {errors}"
        assert edited.estimates[stage_id].verdict == "fits", (change, edited.estimates[stage_id].peak_bytes)
    return changes


def ft101(result):
    (d,) = [d for d in result.diagnostics if d.code == "FT101"]
    return d


# --- the reported cases ----------------------------------------------------------------------------------------------

def test_405b_qlora_on_one_h100_is_offered_eight_gpus_with_fsdp2(tmp_path):
    path = write_pipeline(tmp_path, {"base": "meta-llama/Llama-3.1-405B", "architecture": "llama-3.1-405b"},
                          {"gpu": "h100-sxm-80gb"}, sft({"type": "qlora", "r": 16, "alpha": 32}))
    # FSDP2 shards the 4-bit base over 8 GPUs; ZeRO-3 would first load all of it on each of them (the estimate's
    # model-load phase), which no H100 holds
    assert assert_every_suggestion_is_a_plan(path, "sft") == [
        "hardware.gpus_per_node 1 → 8, distributed auto → fsdp2"]
    result = check_file(path)
    assert result.estimates["sft"].terms[0].name == "base weights (NF4)"
    assert not any("zero3" in n for n in ft101(result).notes)


def test_70b_qlora_on_two_24gb_cards_is_offered_fsdp2(tmp_path):
    """Issue 8's case: a 70B QLoRA on two 24 GB cards. The FSDP-QLoRA recipe (FSDP2 with CPU offload) fits and
    passes every check; so do four cards without offload. ZeRO-3 shards the same base but loads all of it on each
    card first."""
    path = write_pipeline(tmp_path, {"base": "meta-llama/Llama-3.1-70B", "architecture": "llama-3.1-70b"},
                          {"gpu": "rtx-4090", "gpus_per_node": 2}, sft({"type": "qlora", "r": 16, "alpha": 32}))
    assert assert_every_suggestion_is_a_plan(path, "sft") == [
        "distributed auto → {strategy: fsdp2, offload_params: true}",
        "hardware.gpus_per_node 2 → 4, distributed auto → fsdp2"]
    zero3 = write_pipeline(tmp_path, {"base": "meta-llama/Llama-3.1-70B", "architecture": "llama-3.1-70b"},
                           {"gpu": "rtx-4090", "gpus_per_node": 2},
                           sft({"type": "qlora", "r": 16, "alpha": 32}, distributed="zero3"))
    result = check_file(zero3)
    est = result.estimates["sft"]
    assert est.verdict == "oom" and est.notes[0].startswith("peak during: model load")
    assert est.terms[0].name == "whole 4-bit model (loading, before ZeRO-3 partitions it)"
    assert [s.change for s in est.suggestions] == ["distributed zero3 → {strategy: fsdp2, offload_params: true}"]


def test_a_qlora_stage_moved_to_fsdp2_drops_what_fsdp2_refuses(tmp_path):
    """An 8-bit optimizer (FT315) and the fused kernels (FT309, FT320) go with the move to FSDP2, in the same
    suggestion, so it passes the checks as written."""
    path = write_pipeline(tmp_path, {"base": "meta-llama/Llama-3.1-70B", "architecture": "llama-3.1-70b"},
                          {"gpu": "rtx-4090", "gpus_per_node": 2},
                          sft({"type": "qlora", "r": 16, "alpha": 32}, optimizer="paged_adamw_8bit",
                              kernels="ftplan"))
    changes = assert_every_suggestion_is_a_plan(path, "sft")
    assert changes and all("distributed auto → " in c and "fsdp2" in c and "optimizer paged_adamw_8bit → adamw" in c
                           and "kernels ftplan → none" in c for c in changes), changes


def test_mixtral_8x22b_full_zero3_offload_params_keeps_offload_params(tmp_path):
    model_dir = tmp_path / "mixtral-8x22b"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(MIXTRAL_8X22B))
    path = write_pipeline(tmp_path, {"base": "./mixtral-8x22b"}, {"gpu": "h100-sxm-80gb", "gpus_per_node": 8},
                          sft({"type": "full"}, optimizer="adamw_8bit", learning_rate=1e-5,
                              distributed={"strategy": "zero3", "offload_params": True}))
    result = check_file(path)
    assert result.estimates["sft"].verdict == "oom"
    changes = assert_every_suggestion_is_a_plan(path, "sft")
    # the optimizer moves to the host with its gradients, steps there with torch AdamW (bitsandbytes cannot:
    # FT315), and offload_params stays as the file has it
    assert changes == ["distributed {strategy: zero3, offload_params: true} → {strategy: zero3, offload_optimizer: "
                       "true, offload_params: true}, optimizer adamw_8bit → adamw"]
    (s,) = result.estimates["sft"].suggestions
    assert s.host_bytes > 2000 << 30  # 18 B per parameter of 140.6B on the node's host memory
    assert "host memory 2357.5 GiB per node" in printed(result)


# --- the re-check ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["too-big", "70b-lora-1gpu", "70b-lora-8xa100", "full-zero2-2gpu",
                                  "dpo-live-reference", "tight"])
def test_every_printed_suggestion_passes_the_whole_checker(case, tmp_path):
    llama70 = {"base": "meta-llama/Llama-3.1-70B", "architecture": "llama-3.1-70b"}
    llama8 = {"base": "meta-llama/Llama-3.1-8B", "architecture": "llama-3.1-8b"}
    lora = {"type": "lora", "r": 16, "alpha": 32}
    if case == "too-big":
        shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns(".*"))
        path = tmp_path / "examples" / "too-big.yaml"
    elif case == "70b-lora-1gpu":
        path = write_pipeline(tmp_path, llama70, {"gpu": "h100-sxm-80gb"}, sft(lora, micro_batch=2))
    elif case == "70b-lora-8xa100":
        path = write_pipeline(tmp_path, llama70, {"gpu": "a100-sxm-40gb", "gpus_per_node": 8},
                              sft({"type": "lora", "r": 64, "alpha": 128}, distributed="ddp", micro_batch=4,
                                  grad_accum=2), max_seq_len=8192)
    elif case == "full-zero2-2gpu":
        path = write_pipeline(tmp_path, llama8, {"gpu": "h100-sxm-80gb", "gpus_per_node": 2},
                              sft({"type": "full"}, distributed="zero2", micro_batch=2))
    elif case == "dpo-live-reference":
        path = write_pipeline(tmp_path, llama8, {"gpu": "rtx-4090"}, sft(lora, micro_batch=2),
                              {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "adapter": "continue",
                               "learning_rate": 1e-6, "micro_batch": 8, "attention": "eager"}, max_seq_len=4096)
    else:
        path = write_pipeline(tmp_path, llama8, {"gpu": "h100-sxm-80gb"}, sft(lora, micro_batch=12),
                              max_seq_len=8192)
    stage_id = "dpo" if case == "dpo-live-reference" else "sft"
    result = check_file(path)
    assert result.estimates[stage_id].verdict == ("tight" if case == "tight" else "oom")
    changes = assert_every_suggestion_is_a_plan(path, stage_id)
    assert changes, printed(result)
    if case == "full-zero2-2gpu":  # an 8-bit optimizer under ZeRO passes, with the warning it adds
        assert "would fit (" in printed(result) and "; adds warning FT314): optimizer adamw → adamw_8bit" in \
            printed(result)


def test_a_change_that_breaks_another_stage_is_not_offered(tmp_path):
    """More GPUs would fit the 70B stage, but the other stage says ``distributed: none``, which FT310 refuses on more
    than one GPU: the suggestion is checked against the whole file."""
    llama70 = {"base": "meta-llama/Llama-3.1-70B", "architecture": "llama-3.1-70b"}
    path = write_pipeline(tmp_path, llama70, {"gpu": "h100-sxm-80gb"},
                          sft({"type": "lora", "r": 16, "alpha": 32}, micro_batch=2),
                          {**sft({"type": "qlora", "r": 8, "alpha": 8}, distributed="none"), "id": "small",
                           "input": None})
    result = check_file(path)
    changes = [s.change for s in result.estimates["sft"].suggestions]
    assert changes == ["adapter.type lora → qlora"]  # not "hardware.gpus_per_node 1 → 4, ...": FT310 on 'small'
    assert_every_suggestion_is_a_plan(path, "sft")


def test_gemma2_is_not_offered_sdpa(tmp_path):
    """transformers 5 has no sdpa for Gemma-2 (FT308): the re-check drops "attention eager → sdpa" there."""
    path = write_pipeline(tmp_path, {"base": "google/gemma-2-9b", "architecture": "gemma-2-9b"},
                          {"gpu": "h100-sxm-80gb"}, sft({"type": "lora", "r": 16, "alpha": 32}, attention="eager",
                                                       micro_batch=4), max_seq_len=8192)
    changes = assert_every_suggestion_is_a_plan(path, "sft")
    assert changes and not any("sdpa" in c for c in changes)


def test_a_rule_the_estimate_knows_nothing_about_refuses_a_suggestion(tmp_path, monkeypatch):
    """The re-check runs every rule module, so a new rule removes the suggestions it refuses without any change to
    the estimator (here a made-up rule refusing sdpa for Llama)."""
    import ftplan.checks as checks
    from ftplan.diagnostics import error

    path = write_pipeline(tmp_path, {"base": "meta-llama/Llama-3.1-8B", "architecture": "llama-3.1-8b"},
                          {"gpu": "h100-sxm-80gb"}, sft({"type": "lora", "r": 16, "alpha": 32}, attention="eager",
                                                       micro_batch=4), max_seq_len=8192)
    before = [s.change for s in check_file(path).estimates["sft"].suggestions]
    assert before[0] == "attention eager → sdpa"

    class NoSdpaForLlama:
        CODES = {"FT399": "sdpa with Llama"}

        @staticmethod
        def check(ctx):
            return [error("FT399", ("stages", i, "attention"), "no sdpa", hint="use eager")
                    for i, s in enumerate(ctx.pipeline.stages)
                    if getattr(s, "attention", None) == "sdpa" and ctx.shape.family == "llama"]

    monkeypatch.setattr(checks, "RULE_MODULES", (*checks.RULE_MODULES, NoSdpaForLlama))
    after = [s.change for s in check_file(path).estimates["sft"].suggestions]
    assert after == [c for c in before if "sdpa" not in c] and after
    assert_every_suggestion_is_a_plan(path, "sft")


# --- the text and the edit are one object ---------------------------------------------------------------------------

def test_edit_text_parses_back_to_the_settings_it_applies(tmp_path):
    """Every candidate's text, read back with ``edits.parse`` and written into the pipeline's data key by key, is the
    data the re-check validates (``Edit.apply``); its OLD values are the file's."""
    from ftplan.estimate import edits, fit
    from ftplan.estimate.pipeline import stage_setup

    path = write_pipeline(tmp_path, {"base": "meta-llama/Llama-3.1-8B", "architecture": "llama-3.1-8b"},
                          {"gpu": "rtx-4090", "gpus_per_node": 2},
                          sft({"type": "lora", "r": 16, "alpha": 32}, micro_batch=12, attention="eager",
                              gradient_checkpointing=False, distributed={"strategy": "zero3", "offload_params": True}))
    ctx = check_file(path).ctx
    candidates = fit.candidates(ctx.pipeline, 1, stage_setup(ctx, 1))
    assert [e.kind for e in candidates] == ["gc", "kernels", "attention", "offload", *["micro_batch"] * 5, "optimizer",
                                            "sharding", "qlora", "gpus", "gpus"]
    data = ctx.pipeline.model_dump(mode="json", exclude_unset=True)
    doc = yaml.safe_load(path.read_text())
    for edit in candidates:
        parsed = edits.parse(edit.text(ctx.pipeline))
        assert [(k, new) for k, _, new in parsed] == [(edits.display_key(p), v) for p, v in edit.final().items()]
        by_text = json.loads(json.dumps(data))
        for key, old, new in parsed:
            parts = key.split(".")
            node = by_text if parts[0] == "hardware" else by_text["stages"][1]
            for part in parts[:-1]:
                node = node[part]
            written = doc if parts[0] == "hardware" else doc["stages"][1]
            for part in parts[:-1]:
                written = written[part]
            assert written.get(parts[-1], old) == old
            node[parts[-1]] = new
        assert by_text == edit.apply(data)
    sharding = next(e for e in candidates if e.kind == "sharding")
    assert sharding.text(ctx.pipeline) == ("distributed {strategy: zero3, offload_params: true} → {strategy: zero3, "
                                           "offload_optimizer: true, offload_params: true}")


def test_flow_values_read_back_as_written():
    from ftplan.estimate.edits import flow, parse

    for value in (True, False, 4, 1.5, "zero3", "sdpa", "auto", "none",
                  {"strategy": "zero3", "offload_optimizer": True, "offload_params": True}):
        assert parse(f"k {flow(value)} → {flow(value)}") == [("k", value, value)]
    with pytest.raises(ValueError):
        flow("yes")  # would read back as a string in ftplan's loader but a boolean elsewhere: never written


def test_nothing_fits_without_a_refused_change_names_the_largest_term(tmp_path):
    path = write_pipeline(tmp_path, {"base": "meta-llama/Llama-3.1-405B", "architecture": "llama-3.1-405b"},
                          {"gpu": "rtx-4090"}, sft({"type": "full"}))
    d = ft101(check_file(path))
    assert d.hint.startswith("nothing ftplan tried fits and passes the checks; the largest term is ")
    assert d.hint.endswith(": it needs a card with more memory")
    assert not any(n.startswith(("would fit", "refused")) for n in d.notes)
