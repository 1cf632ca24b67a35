"""GGUF stage: one `<pipeline>-<quant>.gguf` per requested type, each verified against the HF model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftplan.schemas.runtime_args import RuntimeArgs

pytest.importorskip("gguf")


def _args(weights: str, out: Path, quant: list[str], verify: bool = True) -> RuntimeArgs:
    return RuntimeArgs.model_validate({
        "pipeline": "tiny", "stage": {"id": "gguf", "kind": "gguf", "input": "merge", "quant": quant,
                                      "verify": verify},
        "model": {"base": weights}, "source": {"weights": weights, "tokenizer": weights},
        "output_dir": str(out),
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "eager", "kernels": "none"}})


def test_exports_and_verifies_each_type(tmp_path_factory, tiny_base):
    """f16 and q8_0 written directly, q4_k_m quantized by llama.cpp from a temporary f16; all verified."""
    pytest.importorskip("llama_cpp")
    from ftplan_runtime.gguf_stage import run_gguf

    base = tiny_base
    out = tmp_path_factory.mktemp("gguf")
    metrics = run_gguf(_args(str(base), out, ["q8_0", "q4_k_m"]), "0" * 64)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "tiny-q4_k_m.gguf", "tiny-q8_0.gguf"]
    for quant in ("q8_0", "q4_k_m"):
        entry = metrics["files"][quant]
        assert entry["bytes"] == (out / f"tiny-{quant}.gguf").stat().st_size > 0
        assert entry["verify"]["passed"]
    assert metrics["files"]["q8_0"]["verify"]["rel_bound"] is not None
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "gguf" and saved["verified"] and set(saved["files"]) == {"q8_0", "q4_k_m"}


def test_f16_file_is_reused_for_k_quants(tmp_path_factory, tiny_base):
    """With f16 requested too, the k-quant is made from that file and no temporary is left behind."""
    pytest.importorskip("llama_cpp")
    from ftplan_runtime.gguf_stage import run_gguf

    base = tiny_base
    out = tmp_path_factory.mktemp("gguf-f16")
    run_gguf(_args(str(base), out, ["q4_k_m", "f16"], verify=False), "0" * 64)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "tiny-f16.gguf", "tiny-q4_k_m.gguf"]


def test_missing_merged_model_names_the_fix(tmp_path):
    from ftplan_runtime.gguf_stage import run_gguf
    from ftplan_runtime.preflight import StageError

    with pytest.raises(StageError, match="no merged model at .* run the stage that writes it first"):
        run_gguf(_args(str(tmp_path / "outputs" / "merge" / "model"), tmp_path / "out", ["f16"]), "0" * 64)
