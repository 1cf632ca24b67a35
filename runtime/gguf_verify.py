"""Check a GGUF against the HF checkpoint it came from, with llama.cpp doing the GGUF side.

For every prompt: llama.cpp's token ids must equal the HF tokenizer's, and llama.cpp's logits
are compared with the HF model's fp32 logits on those tokens.

Error measure, per prompt: ``rel = max|llama - hf| / max|hf|``, both maxima over every
position and vocabulary entry of the sequence. Bounds (the worst prompt counts):

=========  ============  =============================================================
outtype    rel bound     argmax
=========  ============  =============================================================
f32        1e-4          reported
f16        1e-3          reported
bf16       2e-2          reported (8-bit mantissa: about 8x f16's rounding)
q8_0       5e-2          must agree at every position, except near-ties (below)
others     reported      reported (e.g. q4_k_m: agreement fraction only)
=========  ============  =============================================================

A *near-tie* is a position where llama.cpp picks token b instead of HF's a and HF's own
margin ``hf[a] - hf[b]`` is at most twice that position's max |llama - hf|: the two logits
are closer than the measured noise, so either order is consistent with the numbers. On a
random-init model such ties are common; a real layout bug moves rel by orders of magnitude.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

REL_BOUNDS: dict[str, float] = {"f32": 1e-4, "f16": 1e-3, "bf16": 2e-2, "q8_0": 5e-2}

STAGE_BOUNDS: dict[str, float] = {"f32": 1e-3, "f16": 5e-3, "bf16": 3e-2, "q8_0": 5e-2}
"""Bounds the pipeline's GGUF stage uses on trained models. Training grows weights, and the f16 rounding
noise grows with them (a tiny model after 300 SFT steps measured 1.4e-3 at f16); these bounds still sit well
below what a layout bug gives (a missing q/k permutation measured 2.9e-2 to 5e-2 at f32)."""
ARGMAX_CHECKED: frozenset[str] = frozenset({"q8_0"})

DEFAULT_PROMPTS: tuple[str, ...] = (
    "What is 3 + 3? The answer is 6.",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Unseen words: Zürich café 😀, two  spaces\n\nand numbers 12345.",
)


class GgufVerificationError(AssertionError):
    """A GGUF disagrees with its HF checkpoint beyond the bounds; `.report` has the numbers."""

    def __init__(self, message: str, report: "VerifyReport"):
        super().__init__(message)
        self.report = report


@dataclass
class PromptResult:
    """Numbers for one prompt (logit fields are NaN when the tokens differ)."""

    prompt: str
    n_tokens: int
    tokens_equal: bool
    max_abs_err: float
    max_rel_err: float
    argmax_agreement: float
    argmax_unexplained: int  # argmax differences that are not near-ties
    llama_tokens: list[int] = field(default_factory=list)
    hf_tokens: list[int] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_gguf`: per-prompt results, worst-case numbers and failures."""

    gguf_path: str
    outtype: str
    rel_bound: float | None
    results: list[PromptResult]
    max_abs_err: float
    max_rel_err: float
    argmax_agreement: float
    argmax_unexplained: int
    failures: list[str]

    @property
    def passed(self) -> bool:
        """True when every bound held."""
        return not self.failures

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable) for logs and plan reports."""
        return asdict(self) | {"passed": self.passed}


def compare_logits(llama: np.ndarray, hf: np.ndarray) -> tuple[float, float, float, int]:
    """Compare logits [T, V]: return (max abs err, max rel err, argmax agreement, unexplained flips)."""
    diff = np.abs(llama.astype(np.float64) - hf.astype(np.float64))
    max_abs = float(diff.max())
    rel = max_abs / max(float(np.abs(hf).max()), 1e-30)
    a, b = hf.argmax(-1), llama.argmax(-1)
    agree = a == b
    rows = np.arange(hf.shape[0])
    margin = hf[rows, a] - hf[rows, b]  # HF's preference for its token over llama.cpp's pick
    tie = margin <= 2.0 * diff.max(-1)
    return max_abs, rel, float(agree.mean()), int((~agree & ~tie).sum())


def verify_gguf(
    gguf_path: str | Path,
    hf_model_dir: str | Path,
    prompts: Sequence[str] | None = None,
    outtype: str = "f16",
    *,
    raise_on_failure: bool = True,
    bounds: dict[str, float] | None = None,
) -> VerifyReport:
    """Compare `gguf_path` (run by llama.cpp) with the HF model in `hf_model_dir` on `prompts`.

    `outtype` is the GGUF's weight type ("f32", "f16", "bf16", "q8_0", or a llama.cpp
    quantization such as "q4_k_m") and selects the bounds in the module docstring. Token ids
    must match for every outtype. `bounds` replaces `REL_BOUNDS` (e.g. `STAGE_BOUNDS`). Returns a
    :class:`VerifyReport`; when a bound fails and `raise_on_failure` is true, raises
    :class:`GgufVerificationError` carrying the report.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplan_runtime import llamacpp

    prompts = list(prompts or DEFAULT_PROMPTS)
    tok = AutoTokenizer.from_pretrained(str(hf_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_model_dir), dtype=torch.float32).eval()
    bound = (REL_BOUNDS if bounds is None else bounds).get(outtype)
    results: list[PromptResult] = []
    failures: list[str] = []
    all_agree: list[float] = []
    for prompt in prompts:
        hf_ids = list(tok(prompt)["input_ids"])
        ids, logits = llamacpp.load_logits(gguf_path, prompt)
        if ids != hf_ids:
            failures.append(f"tokens differ for {prompt!r}: llama.cpp {ids} vs HF {hf_ids}")
            nan = float("nan")
            results.append(PromptResult(prompt, len(hf_ids), False, nan, nan, nan, 0, ids, hf_ids))
            continue
        with torch.no_grad():
            ref = model(torch.tensor([hf_ids])).logits[0].float().numpy()
        if ref.shape != logits.shape:
            raise ValueError(f"logit shapes differ: llama.cpp {logits.shape} vs HF {ref.shape}")
        max_abs, rel, agree, unexplained = compare_logits(logits, ref)
        all_agree.extend([agree] * len(ids))
        results.append(PromptResult(prompt, len(ids), True, max_abs, rel, agree, unexplained, ids, hf_ids))
        if bound is not None and not rel <= bound:
            failures.append(f"{outtype}: max relative logit error {rel:.3e} > {bound:.0e} for {prompt!r}")
        if outtype in ARGMAX_CHECKED and unexplained:
            failures.append(f"{outtype}: argmax differs at {unexplained} position(s) that are not near-ties for {prompt!r}")

    valid = [r for r in results if r.tokens_equal]
    report = VerifyReport(
        gguf_path=str(gguf_path),
        outtype=outtype,
        rel_bound=bound,
        results=results,
        max_abs_err=max((r.max_abs_err for r in valid), default=float("nan")),
        max_rel_err=max((r.max_rel_err for r in valid), default=float("nan")),
        argmax_agreement=float(np.mean(all_agree)) if all_agree else float("nan"),
        argmax_unexplained=sum(r.argmax_unexplained for r in valid),
        failures=failures,
    )
    if failures and raise_on_failure:
        raise GgufVerificationError(
            f"GGUF verification failed for {gguf_path} ({outtype}): " + "; ".join(failures)
            + f" [max rel {report.max_rel_err:.3e}, argmax agreement {report.argmax_agreement:.3f}]",
            report,
        )
    return report
