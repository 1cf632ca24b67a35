"""Launch topology and sharding rules (FT310-FT319; FT318 is gone: QLoRA shards under ZeRO-3)."""

import re

import pytest

from ftplan.checks.topology import valid_slurm_time
from ftplan.codes import all_codes
from ftplan.diagnostics import Severity

EIGHT = {"gpus_per_node": 8}


def test_ft310_none_with_several_gpus(check, tools):
    [d] = tools.codes(check(hardware=EIGHT, sft={"distributed": "none"}), "FT310")
    assert d.severity is Severity.ERROR and "only 1 of 8 GPUs" in d.message
    assert not tools.codes(check(hardware=EIGHT), "FT310")  # auto -> ddp


def test_ft311_sharding_on_one_gpu_warns_unless_offloading(check, tools):
    [d] = tools.codes(check(sft={"distributed": "zero3"}), "FT311")
    assert d.severity is Severity.WARNING and d.path == ("stages", 1, "distributed")
    assert not tools.codes(check(sft={"distributed": {"strategy": "zero3", "offload_params": True}}), "FT311")
    assert not tools.codes(check(hardware=EIGHT, sft={"distributed": "zero3"}), "FT311")


def test_ft312_multi_node_needs_slurm(check, tools):
    [d] = tools.codes(check(hardware={"nodes": 2, "gpus_per_node": 8}), "FT312")
    assert d.path == ("hardware", "nodes") and "slurm" in d.hint
    assert not tools.codes(check(hardware={"nodes": 2, "gpus_per_node": 8, "slurm": {"partition": "gpu"}}),
                           "FT312")


def test_ft313_offload_needs_a_sharding_strategy(check, tools):
    [d] = tools.codes(check(hardware=EIGHT, sft={"distributed": {"strategy": "zero2", "offload_params": True}}),
                      "FT313")
    assert d.path == ("stages", 1, "distributed", "offload_params") and "zero3" in d.message
    [d] = tools.codes(check(hardware=EIGHT, sft={"distributed": {"strategy": "ddp", "offload_optimizer": True}}),
                      "FT313")
    assert d.path == ("stages", 1, "distributed", "offload_optimizer")
    assert not tools.codes(check(hardware=EIGHT, sft={"distributed": {"strategy": "zero2",
                                                                         "offload_optimizer": True}}), "FT313")


def test_ft314_eight_bit_optimizer_under_zero_warns(check, tools):
    [d] = tools.codes(check(hardware=EIGHT, sft={"distributed": "zero2", "optimizer": "adamw_8bit"}), "FT314")
    assert d.severity is Severity.WARNING and d.path == ("stages", 1, "optimizer")
    assert not tools.codes(check(hardware=EIGHT, sft={"optimizer": "adamw_8bit"}), "FT314")  # ddp is fine


def test_ft315_eight_bit_optimizer_with_offload_or_fsdp2(check, tools):
    spec = {"strategy": "zero2", "offload_optimizer": True}
    [d] = tools.codes(check(hardware=EIGHT, sft={"distributed": spec, "optimizer": "paged_adamw_8bit"}), "FT315")
    assert d.severity is Severity.ERROR and "offload" in d.message
    [d] = tools.codes(check(hardware=EIGHT, sft={"distributed": "fsdp2", "optimizer": "adamw_8bit"}), "FT315")
    assert "FSDP2" in d.message
    assert not tools.codes(check(hardware=EIGHT, sft={"distributed": spec}), "FT315")


@pytest.mark.parametrize("value", ["30", "30:00", "24:00:00", "2-0", "1-12:30", "1-12:30:15", "0"])
def test_slurm_time_formats_accepted(value):
    assert valid_slurm_time(value)


@pytest.mark.parametrize("value", ["1-24", "12:60", "1d", "1:2:3:4", "1-12:60", ""])
def test_slurm_time_formats_rejected(value):
    assert not valid_slurm_time(value)


def test_ft316_invalid_slurm_time(check, tools):
    [d] = tools.codes(check(hardware={"slurm": {"time": "2d"}}), "FT316")
    assert d.path == ("hardware", "slurm", "time") and "D-HH:MM:SS" in d.hint
    assert not tools.codes(check(hardware={"slurm": {"time": "2-00:00:00"}}), "FT316")


def slurm_seconds(value: str) -> int:
    """Seconds of an sbatch ``HH:MM:SS`` or ``D-HH:MM:SS`` limit (the two forms the FT316 hint shows)."""
    days, _, clock = value.rpartition("-")
    h, m, sec = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + sec


def test_ft316_hint_examples_mean_what_they_say(check, tools):
    [d] = tools.codes(check(hardware={"slurm": {"time": "12h"}}), "FT316")
    examples = dict((m[1], m[0]) for m in re.findall(r'`time: "([^"]+)"` for (\d+ hours|one day)', d.hint))
    assert examples == {"12 hours": "12:00:00", "one day": "1-00:00:00"}
    for value in examples.values():
        assert valid_slurm_time(value)
    assert slurm_seconds(examples["12 hours"]) == 12 * 3600 and slurm_seconds(examples["one day"]) == 24 * 3600


def test_ft317_more_than_eight_gpus_per_node(check, tools):
    [d] = tools.codes(check(hardware={"gpus_per_node": 16}), "FT317")
    assert d.severity is Severity.WARNING
    assert not tools.codes(check(hardware=EIGHT), "FT317")


def test_sharded_qlora_is_accepted_under_zero3_for_every_kind(check, tools):
    """ZeRO-3 partitions a 4-bit base stored in the compute dtype (the runtime's ``quant_storage``), a continued
    QLoRA adapter's included; what it costs at load is the estimator's (its model-load phase)."""
    for patch in ({"sft": {"adapter": {"type": "qlora"}, "distributed": "zero3"}},
                  {"sft": {"adapter": {"type": "qlora"}}, "dpo": {"distributed": "zero3"}},
                  {"dpo": {"adapter": {"type": "qlora"}, "merge_input": True, "distributed": "zero3"}}):
        diags = check(hardware=EIGHT, **patch)
        assert not [d for d in diags if d.severity is Severity.ERROR and d.path[:2] in (("stages", 1), ("stages", 2))
                    and d.path[-1:] == ("distributed",)], patch
    assert "FT318" not in all_codes()  # the refusal is gone


def test_sharded_qlora_is_accepted_under_fsdp2_for_sft_cpt_and_reward(check, tools):
    assert not tools.codes(check(hardware=EIGHT, sft={"adapter": {"type": "qlora"}, "distributed": "fsdp2"}), "FT319")
    stages = [{"id": "data", "kind": "data", "max_seq_len": 2048,
               "datasets": [{"path": "data/pairs.jsonl", "format": "preference"},
                            {"path": "data/docs.jsonl", "format": "text"}]},
              {"id": "cpt", "kind": "cpt", "data": "data", "learning_rate": 1e-4,
               "adapter": {"type": "qlora"}, "distributed": "fsdp2"},
              {"id": "reward", "kind": "reward", "data": "data", "learning_rate": 1e-5,
               "adapter": {"type": "qlora"}, "distributed": "fsdp2"}]
    assert not tools.codes(check(hardware=EIGHT, stages=stages), "FT319")


def test_ft319_qlora_fsdp2_refused_in_preference_stages(check, tools):
    diags = check(hardware=EIGHT, sft={"adapter": {"type": "qlora"}, "distributed": "fsdp2"},
                  dpo={"distributed": "fsdp2"})
    (d,) = tools.codes(diags, "FT319")
    assert d.path == ("stages", 2, "distributed") and "DPO stage" in d.message and "zero3" in d.hint
    kto = [{"id": "data", "kind": "data", "max_seq_len": 2048,
            "datasets": [{"path": "data/kto.jsonl", "format": "kto"}]},
           {"id": "kto", "kind": "kto", "data": "data", "learning_rate": 5e-6, "adapter": {"type": "qlora"},
            "distributed": "fsdp2"}]
    assert [d.path for d in tools.codes(check(hardware=EIGHT, stages=kto), "FT319")] == [("stages", 1, "distributed")]
    # a DPO stage on the same 4-bit base under ZeRO-3 is accepted
    assert not tools.codes(check(hardware=EIGHT, sft={"adapter": {"type": "qlora"}, "distributed": "fsdp2"},
                                 dpo={"distributed": "zero3"}), "FT319")
    # a LoRA adapter on a 16-bit base shards fine
    assert not tools.codes(check(hardware=EIGHT, sft={"adapter": {"type": "lora"}, "distributed": "fsdp2"}), "FT319")
