"""Stage → TrainingArguments mapping: the learning-rate schedule the trainer really runs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402


def _lrs(tmp_path, monkeypatch, steps: int = 10, **stage) -> list[float]:
    """Learning rate at each of ``steps`` optimizer steps, from TrainingArguments built by config_kwargs."""
    from transformers import TrainingArguments, get_scheduler

    from ftplan_runtime.train_common import config_kwargs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")  # config_kwargs sets it; restored after the test
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": "base"}, "source": {"weights": "base", "tokenizer": "base"},
        "data_dir": "data", "output_dir": "out",
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"},
        "stage": {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1.0, "precision": "fp32",
                  "max_steps": steps, "report_to": [], "adapter": {"type": "lora"}, **stage}})
    targs = TrainingArguments(**config_kwargs(args, has_eval=False))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=targs.learning_rate)
    sched = get_scheduler(targs.lr_scheduler_type, opt, num_warmup_steps=targs.get_warmup_steps(steps),
                          num_training_steps=steps)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup", [{"warmup_steps": 4}, {"warmup_ratio": 0.4}])
def test_constant_schedule_keeps_its_warmup(tmp_path, monkeypatch, warmup):
    """transformers' "constant" schedule ignores warm-up; the stage asked for 4 warm-up steps, then constant."""
    lrs = _lrs(tmp_path, monkeypatch, lr_scheduler="constant", **warmup)
    assert lrs[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75]) and lrs[4:] == pytest.approx([1.0] * 6)


def test_constant_without_warmup_is_flat(tmp_path, monkeypatch):
    assert _lrs(tmp_path, monkeypatch, lr_scheduler="constant") == pytest.approx([1.0] * 10)


def test_cosine_warmup_ratio_is_a_fraction_of_the_steps(tmp_path, monkeypatch):
    lrs = _lrs(tmp_path, monkeypatch, lr_scheduler="cosine", warmup_ratio=0.2)
    assert lrs[:2] == pytest.approx([0.0, 0.5]) and lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.1
