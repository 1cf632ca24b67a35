"""The logits / loss spike, for the three ways the loss can be computed.

N = tokens per micro-step, V = vocabulary, h = hidden size, e_l = dtype of the logits.

- ``hf``: ``lm_head`` writes the full (N × V) logits, ``ForCausalLMLoss`` upcasts them (``.float()``), the
  cross-entropy saves its fp32 log-softmax, and backward writes an fp32 gradient and the softmax-backward output:
  backward peak = 3 × N.V.4 (+ N.V.e_l while the caller holds the output). Measured (probe + baselines.md): 14 N.V
  bytes with bf16 logits held, 16 N.V with fp32 logits (QLoRA without autocast), to within 0.1 GiB.
- ``trl_chunked``: TRL's fused LM head (SFT and DPO trainers, TRL >= 1.16) projects (4096 × 32768) tiles and
  folds them into per-token statistics; it saves the (compacted) hidden states and, in backward, allocates an fp32
  gradient of them (and of the head when it trains). Derived from ``trl/kernels/chunked_logprob.py``.
- ``fused`` (``kernels: ftplan``): chunks of C = min(N, max(N.h // V, 256 MiB / (V.elt))) rows; the hidden-state
  gradient is written during the forward. Measured at kernel level: 0.31 GiB above the inputs at N=8192 with a
  frozen Llama-3 head, 1.3 GiB with a trainable one (``runtime/kernels/cross_entropy.py``).
- ``fused_logprobs`` (``kernels: ftplan`` on DPO and KTO): the per-token log-probs of the policy and of its
  reference through the fused linear log-prob op (``runtime/kernels/logprobs.py``), in chunks of the same C rows
  (each chunk's hidden rows gathered into a C × h buffer). With a frozen head the hidden-state gradient is written
  during the forward and kept until the backward (alive through the reference forward); with a trainable head the
  forward keeps the hidden states instead and the backward recomputes each chunk, writing the hidden-state and
  lm_head gradients there. Per-token outputs: the log-prob and, for the policy, entropy, mean logit and top-1
  (4 × 4 B). The op scores only labelled rows (the answers); the estimate counts every token, an upper bound.
- ``orpo``: TRL's ``ORPOTrainer`` (1.16) takes the full logits of chosen and rejected from one forward; beside the
  ``hf`` terms (logits, fp32 upcast, fp32 log-softmax of every token for the answers' mean log-probs) its
  supervised loss runs a second cross-entropy over the chosen half: one more fp32 log-softmax of N/2 × V, saved for
  backward, and its gradient in backward (2 × N/2 × V × 4 B).
- ``score``: a reward model's head is a (h × 1) linear: no vocabulary logits. The forward keeps the final norm's
  input; backward writes the hidden-state gradient (N × h in the stream dtype); the scores themselves are N × 4 B.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import FUSED_CE_MIN_CHUNK_BYTES, TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK
from ..units import dtype_name, num
from .resolved import Resolved
from .types import Term


@dataclass(frozen=True)
class Loss:
    """The loss path's memory at its forward and backward peaks, and its largest single block."""

    forward: tuple[Term, ...]
    backward: tuple[Term, ...]
    held: Term | None
    """What stays alive after the loss while backward runs through the layers (output logits the caller keeps)."""
    largest_block: int
    """The biggest single tensor of the path (drives allocator fragmentation)."""
    saved: tuple[Term, ...] = ()
    """What the loss keeps for its own backward once the forward is done (alive during a DPO reference pass)."""
    reference: tuple[Term, ...] = ()
    """Transient of a no-grad reference forward through the same head (DPO)."""


def lm_head_trains(r: Resolved) -> bool:
    """The output projection gets a gradient (full fine-tune, or ``lm_head`` in ``modules_to_save``)."""
    if r.full:
        return True
    return bool(r.lora and any(m.split(".")[-1] == "lm_head" for m in r.lora.modules_to_save))


def compute(r: Resolved) -> Loss:
    """Memory of computing the loss for one micro-step."""
    return {"hf": _hf, "trl_chunked": _trl, "fused": _fused, "fused_logprobs": _fused_logprobs, "orpo": _orpo,
            "score": _score}[r.loss_path](r)


def _final_norm(r: Resolved, n: int) -> Term:
    h, e = r.shape.hidden_size, r.stream_bytes
    per = e * h if r.kernels == "ftplan" else (4 + e) * h
    return Term("final norm", n * per, f"{num(n)} tokens × {per // h} B × {num(h)}")


def _hf(r: Resolved) -> Loss:
    s = r.shape
    n, v, el = r.tokens, s.vocab_size, r.logits_bytes
    nv = n * v
    what = f"{num(n)} tokens × {num(v)}"
    held = (Term("output logits held", nv * el, f"{what} × {el} B ({dtype_name(el, r.half)})")
            if r.loop.holds_outputs else None)
    extra = []
    if r.loop.autocast and r.lm_head_bytes == 4:
        extra.append(Term("lm_head cast weight (autocast)", v * s.hidden_size * 2,
                          f"{num(v)} × {num(s.hidden_size)} × 2 B, saved for backward"))
    logits = Term("logits + loss", nv * el + (nv * 4 if el != 4 else 0) + nv * 4,
                  f"{what}: {dtype_name(el, r.half)} logits" + (" + fp32 upcast" if el != 4 else "")
                  + " + fp32 log-softmax")
    old = [Term("previous step's output logits", nv * el, f"{what} × {el} B")] if r.loop.holds_outputs else []
    forward = tuple(old + [logits, _final_norm(r, n)] + extra)
    back = Term("logits + loss", 3 * nv * 4, f"{what} × 4 B × 3 (fp32 log-softmax, its gradient, the logits gradient)")
    backward = tuple(([held] if held else []) + [back, _final_norm(r, n)] + extra)
    ref = (Term("reference logits", nv * el + nv * 4,
                f"{what}: {dtype_name(el, r.half)} logits + fp32 log-softmax (no grad)"),)
    saved = tuple(([held] if held else []) + [Term("saved log-softmax", nv * 4, f"{what} × 4 B")] + extra)
    return Loss(forward, backward, held, nv * 4, saved, ref)


def _trl(r: Resolved) -> Loss:
    s = r.shape
    n, v, h = r.tokens, s.vocab_size, s.hidden_size
    ec = 2 if r.loop.autocast else r.stream_bytes
    rows, cols = min(n, TRL_TOKEN_CHUNK), min(v, TRL_VOCAB_CHUNK)
    tile = Term("loss tile", rows * cols * ec, f"{num(rows)} × {num(cols)} logits tile × {ec} B (TRL fused LM head)")
    hidden = Term("loss hidden states", n * h * r.stream_bytes, f"{num(n)} × {num(h)} × {r.stream_bytes} B (saved)")
    stats = Term("loss statistics", n * 4 * 8, f"{num(n)} tokens × 8 fp32")
    wcast = ([Term("lm_head chunk cast", cols * h * ec, f"{num(cols)} × {num(h)} × {ec} B")]
             if r.lm_head_bytes != ec else [])
    forward = (tile, hidden, stats, _final_norm(r, n), *wcast)
    grads = [Term("hidden-state gradient (fp32)", n * h * 4, f"{num(n)} × {num(h)} × 4 B")]
    if lm_head_trains(r):
        grads.append(Term("lm_head gradient (fp32)", v * h * 4, f"{num(v)} × {num(h)} × 4 B"))
    backward = (tile, hidden, stats, _final_norm(r, n), *wcast, *grads)
    ref = (tile, stats, *wcast)
    return Loss(forward, backward, None, max(tile.bytes, n * h * 4), (hidden, stats), ref)


def _chunk_rows(r: Resolved) -> tuple[int, int]:
    """Token rows per chunk of the fused head ops and their logits' element size: min(N, max(N·H // V, 256 MiB /
    (V · elt))), a multiple of 64 from 64 rows on (``runtime/kernels/cross_entropy.py``, which the log-prob op
    reuses)."""
    n, v, h = r.tokens, r.shape.vocab_size, r.shape.hidden_size
    elt = 2 if r.loop.autocast else r.lm_head_bytes
    rows = min(n, max(n * h // v, FUSED_CE_MIN_CHUNK_BYTES // (v * elt)))
    return (rows - rows % 64 if rows >= 64 else rows), elt


def _fused(r: Resolved) -> Loss:
    s = r.shape
    n, v, h = r.tokens, s.vocab_size, s.hidden_size
    rows, elt = _chunk_rows(r)
    chunk = Term("loss chunk", rows * v * elt, f"{num(rows)} × {num(v)} logits chunk × {elt} B (fused linear CE)")
    dh = Term("hidden-state gradient", n * h * r.stream_bytes, f"{num(n)} × {num(h)} × {r.stream_bytes} B")
    losses = Term("per-token losses", n * 4, f"{num(n)} × 4 B")
    extra = []
    if r.lm_head_bytes != elt:
        extra.append(Term("lm_head cast weight", v * h * elt, f"{num(v)} × {num(h)} × {elt} B"))
    if lm_head_trains(r):
        extra.append(Term("lm_head gradient", v * h * elt, f"{num(v)} × {num(h)} × {elt} B"))
    terms = (chunk, dh, losses, _final_norm(r, n), *extra)
    ref = (chunk, losses)
    saved = (dh, losses, *[t for t in extra if "gradient" in t.name])
    return Loss(terms, terms, None, max(chunk.bytes, n * h * r.stream_bytes), saved, ref)


def _fused_logprobs(r: Resolved) -> Loss:
    """The fused linear log-prob op (see the module docstring)."""
    s = r.shape
    n, v, h = r.tokens, s.vocab_size, s.hidden_size
    rows, elt = _chunk_rows(r)
    chunk = Term("log-prob chunk", rows * v * elt + rows * h * elt,
                 f"{num(rows)} × {num(v)} logits chunk + {num(rows)} × {num(h)} gathered rows, × {elt} B "
                 "(fused linear log-probs)")
    per_token = Term("per-token log-probs", n * 16, f"{num(n)} × 4 fp32 (log-prob, entropy, mean logit, top-1)")
    hidden = Term("hidden states (saved)" if lm_head_trains(r) else "hidden-state gradient (prepared)",
                  n * h * r.stream_bytes, f"{num(n)} × {num(h)} × {r.stream_bytes} B")
    cast = ([Term("lm_head cast weight", v * h * elt, f"{num(v)} × {num(h)} × {elt} B")]
            if r.lm_head_bytes != elt else [])
    if lm_head_trains(r):
        grads = (Term("hidden-state gradient", n * h * r.stream_bytes, f"{num(n)} × {num(h)} × {r.stream_bytes} B"),
                 Term("lm_head gradient", v * h * r.lm_head_bytes, f"{num(v)} × {num(h)} × {r.lm_head_bytes} B"))
        forward = (chunk, per_token, _final_norm(r, n), *cast)
        backward = (chunk, hidden, *grads, _final_norm(r, n), *cast)
    else:
        forward = (chunk, hidden, per_token, _final_norm(r, n), *cast)
        backward = (hidden, per_token, _final_norm(r, n))  # the prepared gradient is scaled in place
    reference = (chunk, Term("reference log-probs", n * 4, f"{num(n)} × 4 B"), *cast)
    return Loss(forward, backward, None, max(chunk.bytes, n * h * r.stream_bytes), (hidden, per_token), reference)


def _orpo(r: Resolved) -> Loss:
    """``hf`` plus ORPO's cross-entropy over the chosen half (see the module docstring)."""
    base = _hf(r)
    nv_half = (r.tokens // 2) * r.shape.vocab_size
    what = f"{num(r.tokens // 2)} chosen tokens × {num(r.shape.vocab_size)}"
    nll = Term("chosen NLL log-softmax (fp32)", nv_half * 4, f"{what} × 4 B")
    nll_grad = Term("chosen NLL gradient (fp32)", 2 * nv_half * 4, f"{what} × 4 B × 2 (log-softmax and its gradient)")
    return Loss(base.forward + (nll,), base.backward + (nll_grad,), base.held, base.largest_block,
                base.saved + (nll,), ())


def _score(r: Resolved) -> Loss:
    """A reward model's one-value head (see the module docstring)."""
    n, h = r.tokens, r.shape.hidden_size
    scores = Term("reward scores", n * 4, f"{num(n)} tokens × 1 × 4 B")
    grad = Term("hidden-state gradient", n * h * r.stream_bytes, f"{num(n)} × {num(h)} × {r.stream_bytes} B")
    forward = (_final_norm(r, n), scores)
    return Loss(forward, forward + (grad,), None, n * h * r.stream_bytes, (scores,), ())
