"""Activation checkpointing reaches TrainingArguments under either of transformers' names for it."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import TrainingArguments
from trl import DPOConfig, SFTConfig

from ftplan_runtime import train_common


@pytest.mark.parametrize("config", [SFTConfig, DPOConfig])
@pytest.mark.parametrize("enabled", [True, False])
def test_the_installed_configs_take_the_fields(tmp_path, config, enabled):
    fields = train_common.checkpointing_fields(enabled)
    cfg = config(output_dir=str(tmp_path), use_cpu=True, report_to="none", **fields)
    for name, value in fields.items():
        assert getattr(cfg, name) == value, name


def test_releases_before_the_rename_get_the_old_name(monkeypatch):
    """transformers 5.17 (what some GPU images ship) has only `gradient_checkpointing`; passing the new name
    there is a TypeError at the first stage of a run."""

    @dataclasses.dataclass
    class OldTrainingArguments:
        gradient_checkpointing: bool = False
        gradient_checkpointing_kwargs: dict | None = None

    monkeypatch.setattr("transformers.TrainingArguments", OldTrainingArguments)
    assert train_common.checkpointing_fields(True) == {
        "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    OldTrainingArguments(**train_common.checkpointing_fields(False))


def test_releases_after_the_rename_get_the_new_name():
    if "activation_checkpointing" not in TrainingArguments.__dataclass_fields__:
        pytest.skip("this transformers predates the rename")
    assert set(train_common.checkpointing_fields(True)) == {"activation_checkpointing",
                                                          "activation_checkpointing_kwargs"}
