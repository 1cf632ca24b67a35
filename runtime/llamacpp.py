"""Thin helpers over llama-cpp-python: quantize a GGUF, read its logits, run a greedy completion.

llama_cpp is imported lazily so the rest of the runtime works without it. Every helper opens
its own ``Llama`` object and closes it before returning.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from .installed import LLAMA_CPP_INSTALL as PORTABLE_INSTALL

QuantType = Literal["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m",
                    "q5_k_s", "q5_k_m", "q6_k", "f16", "bf16"]

_SEED = 1234


def _llama_cpp():
    """Import llama_cpp, or fail with instructions for a portable build."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError(
            "llama-cpp-python is not installed. Build it with portable CPU flags (a native "
            "-march=native build can die with SIGILL on CPUs/sandboxes that advertise but forbid AMX):\n  "
            + PORTABLE_INSTALL
        ) from e
    return llama_cpp


def quantize(in_gguf: str | Path, out_gguf: str | Path, qtype: QuantType = "q4_k_m", *, nthread: int = 0) -> Path:
    """Quantize `in_gguf` to `out_gguf` with llama.cpp (`llama_model_quantize`); return the path.

    `qtype` names a llama.cpp file type ("q4_k_m", "q8_0", ...). Tensors whose rows do not fit
    the k-quant block size (256) fall back to a legacy type, as llama.cpp decides. The output is
    written to a temporary file next to `out_gguf` and renamed into place on success.
    """
    llama_cpp = _llama_cpp()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None:
        raise ValueError(f"unknown llama.cpp quantization type {qtype!r}")
    src, out = Path(in_gguf), Path(out_gguf)
    if not src.is_file():
        raise FileNotFoundError(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise RuntimeError(f"llama_model_quantize({src} -> {qtype}) failed with code {rc}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


@contextmanager
def _open(gguf_path: str | Path, *, n_ctx: int, logits_all: bool = False, f32_kv: bool = False) -> Iterator:
    """A Llama object on `gguf_path` (CPU, fixed seed, quiet) that is closed on exit.

    `f32_kv` keeps the K/V cache in f32 instead of llama.cpp's default f16, so logits measure
    the converted weights rather than the cache rounding.
    """
    llama_cpp = _llama_cpp()
    path = Path(gguf_path)
    if not path.is_file():
        raise FileNotFoundError(path)
    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv else {}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=logits_all,
                          seed=_SEED, verbose=False, **kv)
    try:
        yield llm
    finally:
        llm.close()


def tokenize(gguf_path: str | Path, text: str, *, add_special: bool = True) -> list[int]:
    """Token ids llama.cpp gives `text` (special tokens parsed; BOS/EOS per the GGUF flags)."""
    with _open(gguf_path, n_ctx=64) as llm:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))


def load_logits(
    gguf_path: str | Path, text: str, *, add_special: bool = True, f32_kv: bool = True
) -> tuple[list[int], np.ndarray]:
    """Tokenize `text` with the GGUF's tokenizer and return (token ids, logits [n_tokens, n_vocab]).

    Special tokens written in the text (e.g. "<|im_start|>") are parsed as tokens, and BOS/EOS
    are added as the GGUF's add_bos/add_eos flags say when `add_special` is true, which mirrors
    a HF tokenizer called with its defaults. Row i holds the logits after token i. The K/V
    cache is f32 unless `f32_kv=False` (llama.cpp's f16 default adds ~1e-3 relative error).
    """
    # a token consumes at least one byte of text, plus BOS/EOS: this bounds the context needed
    n_ctx = max(64, len(text.encode("utf-8")) + 8)
    with _open(gguf_path, n_ctx=n_ctx, logits_all=True, f32_kv=f32_kv) as llm:
        ids = list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32, copy=True)
    return ids, logits


def complete(gguf_path: str | Path, prompt: str, max_tokens: int = 16, chat: bool = False, *, n_ctx: int = 512) -> str:
    """Greedy completion of `prompt` (fixed seed); with `chat=True` the prompt is one user turn
    formatted by the chat template stored in the GGUF. Returns the generated text only."""
    with _open(gguf_path, n_ctx=n_ctx) as llm:
        if chat:
            out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                             max_tokens=max_tokens, temperature=0.0, seed=_SEED)
            return out["choices"][0]["message"]["content"] or ""
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, seed=_SEED)
        return out["choices"][0]["text"]
