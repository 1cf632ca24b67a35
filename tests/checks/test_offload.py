"""``gradient_checkpointing: offload`` rules (FT338-FT340): the CPU, where it runs as ``true``; what it costs in host
memory and buys on the GPU; and a Slurm job whose declared memory the pinned checkpoints overrun."""

import pytest

from ftplan.checks import check_jobs, run_checks
from ftplan.diagnostics import Severity
from ftplan.estimate import estimate

SLURM = {"partition": "gpu", "cpu_partition": "cpu"}
OFFLOAD = {"gradient_checkpointing": "offload"}
CKPT_LAYER = 2048 * 4096 * 2
"""One Llama-3.1-8B layer's checkpoint at the base pipeline's 2048 tokens (bf16)."""


@pytest.fixture
def judge(tools):
    """Every diagnostic of the patched base pipeline, the rules that need the estimate included."""
    def run(**patch):
        ctx, diags = tools.resolve_ctx(tools.build(**patch))
        estimates, est_diags = estimate(ctx, suggest=False)
        return diags + run_checks(ctx) + est_diags + check_jobs(ctx, estimates)
    return run


def test_ft338_offload_on_the_cpu_runs_as_true(check, tools):
    pipeline = tools.build(hardware={"device": "cpu", "gpu": None}, sft=OFFLOAD)
    [d] = tools.codes(check(pipeline), "FT338")
    assert d.severity is Severity.WARNING and d.path == ("stages", 1, "gradient_checkpointing")
    assert "runs as `true`" in d.message and d.hint
    ctx, _ = tools.resolve_ctx(pipeline)
    assert ctx.stages[1].train.checkpointing == "on"
    assert not tools.codes(check(sft=OFFLOAD), "FT338")  # on GPUs it offloads
    ctx, _ = tools.resolve_ctx(tools.build(sft=OFFLOAD))
    assert ctx.stages[1].train.checkpointing == "offload" and ctx.stages[2].train.checkpointing == "on"


def peak(tools, **patch) -> str:
    """The sft stage's estimated peak per GPU, as the diagnostics print it."""
    from ftplan.units import gib_text

    ctx, _ = tools.resolve_ctx(tools.build(**patch))
    return gib_text(estimate(ctx, suggest=False)[0]["sft"].peak_bytes)


def test_ft340_says_what_offloading_costs_and_buys(judge, tools):
    [d] = tools.codes(judge(sft={**OFFLOAD, "micro_batch": 8}), "FT340")
    assert d.severity is Severity.INFO and d.path == ("stages", 1, "gradient_checkpointing")
    assert "4.0 GiB of pinned host memory per node" in d.message  # 32 layers × 8 × 2048 tokens × 2 B × 4096
    assert f"{peak(tools, sft={**OFFLOAD, 'micro_batch': 8})} peak per GPU" in d.message
    kept = peak(tools, sft={"micro_batch": 8})
    assert f"kept on the GPU instead, the stage's peak would be {kept} of 79.6 GiB (fits)" in d.message
    assert "also fits with `gradient_checkpointing: true`" in d.hint
    [d] = tools.codes(judge(hardware={"gpus_per_node": 2}, sft={**OFFLOAD, "micro_batch": 8}), "FT340")
    assert "8.0 GiB of pinned host memory per node (2 GPUs × 4.0 GiB)" in d.message
    [d] = tools.codes(judge(hardware={"gpu": "a100-sxm-40gb"}, sft={**OFFLOAD, "micro_batch": 28, "kernels": "ftplan"}),
                      "FT340")
    assert "(oom)" in d.message and d.hint is None  # offloading is what makes it fit
    assert not tools.codes(judge(sft={"micro_batch": 8}), "FT340")


def test_ft339_the_pinned_checkpoints_overrun_the_job_memory(judge, tools):
    diags = judge(hardware={"slurm": {**SLURM, "mem": "2G"}}, sft={**OFFLOAD, "micro_batch": 8})
    [d] = tools.codes(diags, "FT339")
    assert d.severity is Severity.ERROR and d.path == ("stages", 1, "gradient_checkpointing")
    assert ("stage 'sft' offloads its activation checkpoints to 4.0 GiB of pinned host memory per node, more than "
            "the 2.0 GiB its Slurm job asks for (`mem: 2G`)") in d.message
    assert d.related == ((("hardware", "slurm", "mem"), "`mem: 2G`"),)
    assert "raise `mem` in `hardware.slurm`" in d.hint
    assert f"`gradient_checkpointing: true` (peak {peak(tools, sft={'micro_batch': 8})} of 79.6 GiB" in d.hint
    # FT339 stands in for FT330 on that stage; the merge and GGUF stages still get theirs
    assert all("stage 'sft'" not in f.message for f in tools.codes(diags, "FT330"))
    assert len(tools.codes(diags, "FT330")) == 2
    own = judge(hardware={"slurm": SLURM}, sft={**OFFLOAD, "micro_batch": 8, "slurm": {"mem": "3G"}})
    [d] = tools.codes(own, "FT339")
    assert d.related[0][0] == ("stages", 1, "slurm", "mem") and "in the stage's `slurm` block" in d.hint
    assert not tools.codes(judge(hardware={"slurm": {**SLURM, "mem": "64G"}}, sft={**OFFLOAD, "micro_batch": 8}),
                           "FT339")
    assert not tools.codes(judge(hardware={"slurm": SLURM}, sft={**OFFLOAD, "micro_batch": 8}), "FT339")  # derived


def test_ft330_not_ft339_when_the_stage_is_over_without_its_checkpoints(judge, tools):
    """Parameters offloaded by ZeRO-3 already take the stage over `mem`: FT330 says so, FT339 stays out."""
    diags = judge(hardware={"gpus_per_node": 2, "slurm": {**SLURM, "mem": "8G"}},
                  sft={**OFFLOAD, "distributed": {"strategy": "zero3", "offload_params": True}})
    assert not tools.codes(diags, "FT339")
    assert any("stage 'sft' needs about" in d.message for d in tools.codes(diags, "FT330"))


def test_the_slurm_job_asks_for_the_pinned_checkpoints(tools):
    """The derived ``--mem`` covers the offloaded checkpoints of every process on the node."""
    from ftplan.jobs import memory_need, stage_resources

    def need(gc):
        ctx, _ = tools.resolve_ctx(tools.build(hardware={"gpus_per_node": 2, "slurm": SLURM},
                                               sft={"gradient_checkpointing": gc, "micro_batch": 8}))
        estimates, _ = estimate(ctx, suggest=False)
        return memory_need(ctx, 1, stage_resources(ctx, 1, estimates["sft"]))

    assert need("offload") - need(True) == 2 * 32 * 8 * CKPT_LAYER
