"""Slurm job rules (FT330-FT337): each stage's job, as ``jobs.slurm_job`` shapes it, against its estimate."""

import pytest

from ftplan.checks import check_jobs, run_checks
from ftplan.diagnostics import Severity
from ftplan.estimate import estimate

SLURM = {"partition": "gpu", "cpu_partition": "cpu"}


@pytest.fixture
def judge(tools):
    """``judge(**patch)``: every diagnostic of the patched base pipeline, the job rules included (they need the
    estimate, as in ``ftplan check``)."""
    def run(**patch):
        ctx, diags = tools.resolve_ctx(tools.build(**patch))
        estimates, est_diags = estimate(ctx, suggest=False)
        return diags + run_checks(ctx) + est_diags + check_jobs(ctx, estimates)
    return run


def test_ft330_declared_memory_below_the_host_estimate(judge, tools):
    # the 8B merge needs ~15.9 GiB of host memory, the GGUF export (with its fp32 verification model) ~44.9 GiB
    diags = tools.codes(judge(hardware={"slurm": {**SLURM, "mem": "12G"}}), "FT330")
    assert [(d.path, d.severity) for d in diags] == [(("hardware", "slurm", "mem"), Severity.ERROR)] * 2
    merge = diags[0]
    assert "stage 'merge' needs about 15.9 GiB" in merge.message and "12.0 GiB (`mem: 12G`)" in merge.message
    assert "`slurm: {mem: 23G}`" in merge.hint and "remove `mem`" in merge.hint
    [d] = tools.codes(judge(hardware={"slurm": SLURM}, merge={"slurm": {"mem": "8000"}}), "FT330")
    assert d.path == ("stages", 3, "slurm", "mem") and "set `mem: 23G`" in d.hint  # 8000 MB: below 15.9 GiB
    assert not tools.codes(judge(hardware={"slurm": SLURM}, merge={"slurm": {"mem": "16G"}}), "FT330")
    assert not tools.codes(judge(hardware={"slurm": SLURM}), "FT330")  # derived: always above


def test_ft330_counts_mem_per_gpu_over_the_gpus_and_never_judges_all_of_a_node(judge, tools):
    assert not tools.codes(judge(hardware={"slurm": {**SLURM, "mem": "0"}}), "FT330")
    [d] = tools.codes(judge(hardware={"slurm": SLURM}, merge={"slurm": {"mem": "1T"}},
                            gguf={"slurm": {"mem": "30G"}}), "FT330")
    assert d.path == ("stages", 4, "slurm", "mem")


def test_ft331_declared_memory_below_what_the_processes_need(judge, tools):
    # one QLoRA process loads the 16-bit 8B weights (15 GiB) through host memory before quantizing them
    [d] = tools.codes(judge(hardware={"slurm": SLURM}, sft={"slurm": {"mem": "10G"}}), "FT331")
    assert d.severity is Severity.WARNING and d.path == ("stages", 1, "slurm", "mem")
    assert "15.0 GiB weights" in d.message and "2.0 GiB runtime" in d.message and "set `mem: 22G`" in d.hint
    assert not tools.codes(judge(hardware={"slurm": SLURM}, sft={"slurm": {"mem": "20G"}}), "FT331")
    diags = tools.codes(judge(hardware={"gpus_per_node": 4, "slurm": {**SLURM, "mem_per_gpu": "4G"}}), "FT331")
    assert [d.path for d in diags] == [("hardware", "slurm", "mem_per_gpu")] * 2  # sft and dpo: 4 × 4G per node
    assert "stage 'sft' asks for 16.0 GiB per node" in diags[0].message and "4 × 15.0 GiB weights" in diags[0].message


def test_ft332_estimated_run_time_longer_than_the_limit(judge, tools):
    [d] = tools.codes(judge(hardware={"slurm": SLURM}, sft={"max_steps": 50_000, "slurm": {"time": "2:00:00"}}),
                      "FT332")
    assert d.severity is Severity.WARNING and d.path == ("stages", 1, "slurm", "time")
    assert "50,000 steps" in d.message and "requeued job" in d.message and "raise `time`" in d.hint
    [d] = tools.codes(judge(hardware={"slurm": {**SLURM, "time": "30", "requeue": False}},
                            sft={"max_steps": 50_000}), "FT332")
    assert d.path == ("hardware", "slurm", "time") and "cancelled" in d.message
    assert not tools.codes(judge(hardware={"slurm": SLURM}, sft={"max_steps": 50_000}), "FT332")  # derived limit
    assert not tools.codes(judge(hardware={"slurm": SLURM}, sft={"max_steps": 10, "slurm": {"time": "2:00:00"}}),
                           "FT332")


def test_ft333_a_stage_slurm_block_without_hardware_slurm(check, tools):
    [d] = tools.codes(check(sft={"slurm": {"time": "1:00:00"}}), "FT333")
    assert d.severity is Severity.WARNING and d.path == ("stages", 1, "slurm")
    assert not tools.codes(check(hardware={"slurm": SLURM}, sft={"slurm": {"time": "1:00:00"}}), "FT333")


def test_ft334_mem_and_mem_per_gpu(judge, check, tools):
    [d] = tools.codes(check(hardware={"slurm": {"mem": "64G", "mem_per_gpu": "8G"}}), "FT334")
    assert d.severity is Severity.ERROR and d.path == ("hardware", "slurm", "mem_per_gpu") and d.hint
    [d] = tools.codes(judge(hardware={"slurm": SLURM}, data={"slurm": {"mem_per_gpu": "8G"}}), "FT334")
    assert d.path == ("stages", 0, "slurm", "mem_per_gpu") and "`mem: 8G`" in d.hint
    # on the pipeline level it applies to the GPU stages only: the CPU stages keep their derived --mem
    assert not tools.codes(judge(hardware={"slurm": {**SLURM, "mem_per_gpu": "40G"}}), "FT334")


def test_ft335_all_of_a_node_s_memory_on_a_shared_node(judge, tools):
    [d] = tools.codes(judge(hardware={"slurm": {**SLURM, "mem": "0"}}), "FT335")  # one for every stage it hits
    assert d.path == ("hardware", "slurm", "mem") and d.severity is Severity.WARNING
    assert "stages data, sft, dpo, merge and gguf" in d.message and "whole nodes get all" in d.hint
    eight = {"gpus_per_node": 8, "slurm": SLURM}
    [d] = tools.codes(judge(hardware=eight, data={"slurm": {"mem": "0"}}, sft={"slurm": {"mem": "0"}}), "FT335")
    assert d.path == ("stages", 0, "slurm", "mem") and "stage 'data'" in d.message  # sft takes its whole node


def test_ft336_container_without_slurm(check, tools):
    container = {"runtime": "apptainer", "image": "ftplan.sif"}
    [d] = tools.codes(check(hardware={"container": container}), "FT336")
    assert d.path == ("hardware", "container") and "run.sh" in d.message
    assert not tools.codes(check(hardware={"container": container, "slurm": SLURM}), "FT336")


def test_ft337_time_limit_within_the_signal_lead(judge, tools):
    [d] = tools.codes(judge(hardware={"slurm": {**SLURM, "time": "5"}}), "FT337")  # 300 s: the default lead
    assert d.path == ("hardware", "slurm", "time") and "signal_lead_s" in d.hint
    assert d.message.startswith("stages data, sft, dpo, merge and gguf have a time limit of 5")
    [d] = tools.codes(judge(hardware={"slurm": SLURM}, sft={"slurm": {"time": "4"}}), "FT337")
    assert d.path == ("stages", 1, "slurm", "time") and d.message.startswith("stage 'sft' has a time limit of 4")
    assert not tools.codes(judge(hardware={"slurm": {**SLURM, "time": "5", "requeue": False}}), "FT337")
    assert not tools.codes(judge(hardware={"slurm": {**SLURM, "time": "6"}}), "FT337")


def test_ft316_checks_stage_time_limits_too(check, tools):
    [d] = tools.codes(check(hardware={"slurm": SLURM}, gguf={"slurm": {"time": "2h"}}), "FT316")
    assert d.path == ("stages", 4, "slurm", "time")
