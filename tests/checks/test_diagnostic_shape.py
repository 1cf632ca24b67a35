"""Every rule diagnostic says what, where and how to fix; the rules import no heavy stack."""

import subprocess
import sys

import pytest

from ftplan.diagnostics import Severity

BAD = [
    dict(hardware={"gpu": "t4"}, sft={"attention": "flash_attention_3", "kernels": "ftplan"}),
    dict(hardware={"gpus_per_node": 8}, sft={"distributed": "none", "optimizer": "adamw_8bit"},
         dpo={"distributed": "zero2", "optimizer": "paged_adamw_8bit"}),
    dict(hardware={"gpus_per_node": 16, "nodes": 2}, sft={"adapter": {"type": "qlora"}, "distributed": "zero3"}),
    dict(hardware={"device": "cpu", "gpu": None}, data={"packing": True},
         sft={"distributed": {"strategy": "zero2", "offload_params": True}, "kernels": "ftplan"}),
    dict(model={"add_special_tokens": ["<x>"], "chat_template": "chatm"}, data={"max_seq_len": 300000},
         sft={"adapter": {"type": "lora", "targets": ["qproj"], "modules_to_save": ["lm_hed"]},
              "warmup_ratio": 0.1, "warmup_steps": 5, "epochs": 1, "max_steps": 10, "eval_steps": 20,
              "save_steps": 30, "load_best_model_at_end": True}),
]


@pytest.mark.parametrize("patch", BAD)
def test_errors_and_warnings_carry_a_hint_and_a_path(check, patch):
    diags = check(**patch)
    flagged = [d for d in diags if d.severity is not Severity.INFO]
    assert flagged
    for d in diags:
        assert d.path and d.message, d
        if d.severity is not Severity.INFO:
            assert d.hint, d


def test_rules_do_not_import_torch():
    code = ("import sys, ftplan.resolve, ftplan.checks; "
            "bad = [m for m in ('torch', 'transformers', 'ftplan_runtime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
