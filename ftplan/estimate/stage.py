"""One training stage's peak memory per GPU: fixed terms + states + the largest phase + fragmentation.

Phases (what is alive on top of the states):

- loss forward / loss backward: the activation checkpoints (or every layer's activations) and the loss path at its
  forward and backward peaks; accumulated gradients when ``grad_accum`` > 1;
- backward through the top layer (every checkpoint alive, few gradients yet) and through the bottom layer (every
  gradient, one checkpoint): one recomputed layer (its activations, the gradients in flight, attention score
  blocks) and the outputs the caller still holds;
- DPO / KTO reference forward: the policy's saved activations and loss state plus a no-grad forward through the
  reference;
- KTO KL forward: before the policy's forward, a no-grad forward of the policy over the micro-batch's mismatched
  prompt/answer pairs (nothing saved yet: one layer's working set and the loss head's);
- optimizer step: every gradient.

The kinds differ in what one micro-step holds (``Resolved``): a pair kind (DPO, ORPO, reward) runs chosen and
rejected as 2 × ``micro_batch`` sequences; ORPO computes full logits and a second log-softmax over the chosen half
(``logits._orpo``), and so does SimPO with a supervised term (its full logits alone without one, and no reference);
a reward model has no vocabulary head at all (``logits._score``, ``states``); KTO adds the KL
forward and, with a live reference, reference forwards over the batch and the KL batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..catalog.gpus import GpuSpec
from ..catalog.models import ModelShape
from ..schemas import TRAIN_KINDS, FullFinetune, LoraAdapter, TrainStage
from . import activations, fixed, host, logits, states, throughput
from .constants import MIB, OOM_FRACTION, TIGHT_FRACTION
from ..units import gib_text, num
from ..resolved_stage import Device, TrainingFacts, method_of, training_facts
from .resolved import Loop, Resolved, runtime_loop
from .types import StageEstimate, Term, Verdict


@dataclass(frozen=True)
class Phase:
    """A moment of the step and the transient terms alive then."""

    name: str
    terms: tuple[Term, ...]

    @property
    def bytes(self) -> int:
        """Sum of the phase's terms."""
        return sum(t.bytes for t in self.terms)


def resolve(shape: ModelShape, stage: TrainStage, *, seq_len: int, world_size: int = 1, nodes: int = 1,
            quantized_base: bool = False, adapter: LoraAdapter | FullFinetune | None = None,
            loop: Loop | None = None, packed: bool = False, nvls: bool = False, device: Device = "cuda") -> Resolved:
    """Reduce a stage outside a pipeline to the quantities memory depends on: its ``TrainingFacts`` for
    ``world_size`` processes on ``device`` at ``seq_len`` tokens (``adapter`` overrides the stage's own: the spec of
    a continued adapter), then ``setup``."""
    spec = adapter if adapter is not None else (None if stage.adapter == "continue" else stage.adapter)
    facts = training_facts(stage, world_size=world_size, seq_len=seq_len, adapter=spec,
                           quantized_base=quantized_base, device=device)
    return setup(shape, stage, facts, nodes=nodes, loop=loop, packed=packed, nvls=nvls)


def setup(shape: ModelShape, stage: TrainStage, facts: TrainingFacts, *, nodes: int,
          loop: Loop | None = None, packed: bool = False, nvls: bool = False) -> Resolved:
    """The quantities memory depends on (see ``resolved.py``), read from the stage's resolved ``facts``; a
    continued adapter of unknown shape counts with LoRA's defaults."""
    pairs = TRAIN_KINDS[stage.kind].pairs
    seq = facts.batch.seq_len
    tokens = facts.batch.tokens_per_step
    if seq is None or tokens is None:
        raise AssertionError(f"stage '{stage.id}' has no sequence length to estimate")
    method = facts.method or method_of(None, facts.quantized_base)
    spec = facts.adapter
    lora = spec if isinstance(spec, LoraAdapter) else (LoraAdapter(type=method) if method != "full" else None)
    return Resolved(
        shape=shape, method=method, lora=lora, precision=stage.precision,
        loop=loop if loop is not None else runtime_loop(stage, packed=packed),
        seq=seq, micro_batch=facts.batch.micro_batch, grad_accum=facts.batch.grad_accum,
        sequences=facts.batch.micro_batch * (2 if pairs else 1), tokens_per_step=tokens,
        gc=facts.checkpointing != "off", offload_checkpoints=facts.checkpointing == "offload",
        attention=stage.attention, kernels=stage.kernels, optimizer=stage.optimizer,
        strategy=facts.strategy, offload_optimizer=facts.offload_optimizer, offload_params=facts.offload_params,
        world=facts.batch.world_size, nodes=nodes, kind=stage.kind, reference=facts.reference_in_step, nvls=nvls,
        continues=facts.continues_adapter, kl_estimate=getattr(stage, "loss_type", "kto") == "kto",
        simpo=getattr(stage, "loss_type", None) == "simpo", chosen_nll=getattr(stage, "sft_weight", 0) > 0)


def estimate_training(shape: ModelShape, gpu: GpuSpec | None, stage: TrainStage, *, seq_len: int,
                      world_size: int = 1, nodes: int = 1, quantized_base: bool = False, device: Device = "cuda",
                      adapter: LoraAdapter | FullFinetune | None = None, loop: Loop | None = None,
                      packed: bool = False, nvls: bool = False) -> StageEstimate:
    """Peak memory per GPU (or host memory on ``device: cpu``), tokens per step and a rough step time.

    ``adapter`` overrides the stage's own (the spec of a continued adapter); ``loop`` the way the step is driven
    (default: the runtime's TRL trainer; ``BASELINE_LOOP`` for the plain loop of baselines.md); ``packed``: the data
    stage packs examples (padding-free batches); ``nvls``: NCCL allocates NVLink SHARP buffers."""
    r = resolve(shape, stage, seq_len=seq_len, world_size=world_size, nodes=nodes, quantized_base=quantized_base,
                adapter=adapter, loop=loop, packed=packed, nvls=nvls, device=device)
    return estimate_resolved(r, gpu, device=device, stage_id=stage.id)


def estimate_resolved(r: Resolved, gpu: GpuSpec | None, *, device: str = "cuda", stage_id: str = "") -> StageEstimate:
    """The estimate of an already resolved setup (used to re-estimate suggested changes)."""
    st = states.compute(r)
    acts = activations.compute(r)
    loss = logits.compute(r)
    phases = _phases(r, st, acts, loss, cpu=device == "cpu")
    peak_phase = max(phases, key=lambda p: p.bytes)
    tokens = r.tokens_per_step
    cpu = device == "cpu"
    base: list[Term] = [] if cpu else [fixed.context(gpu), fixed.libraries(gpu), *fixed.nccl(r.world, gpu, r.nvls)]
    body = list(st.terms) + list(peak_phase.terms)
    if not cpu:
        if r.loss_path in ("hf", "orpo"):
            pattern, largest = ("hf_held" if r.loop.holds_outputs else "hf"), loss.largest_block
        else:
            pattern = "chunked_fp32" if r.stream_bytes == 4 else "chunked"
            largest = max(loss.largest_block, r.tokens * r.shape.intermediate_size * r.linear_out_bytes)
        body.append(fixed.fragmentation(largest, pattern))
        if r.gc and r.offload_checkpoints:
            body.append(fixed.offload_cache(r.tokens * acts.ckpt_tok))
    terms = _merge(base + body)
    total = sum(t.bytes for t in terms)
    per_node = max(1, r.world // max(1, r.nodes))
    peak_name, load_notes = _model_load(r, gpu, cpu, total, per_node)
    if peak_name is not None:
        terms = _merge([fixed.context(gpu), *fixed.nccl(r.world, gpu, r.nvls), *states.model_load(r)])
        total = sum(t.bytes for t in terms)
    notes = [f"peak during: {peak_name or peak_phase.name}", f"modelled step: {r.loop.name}", *load_notes]
    if st.host:
        notes.append(f"offloaded to CPU memory: {gib_text(st.host)} per GPU, {gib_text(st.host * per_node)} per node")
    pinned = host.offloaded_checkpoints(r, acts)
    loading = 0 if cpu else states.host_load(r)
    host_per_gpu = st.host + (pinned.bytes if pinned is not None else 0) + loading
    if pinned is not None:
        notes.append(f"activation checkpoints offloaded to pinned host memory: {gib_text(pinned.bytes)} per GPU "
                     f"({pinned.detail}), {gib_text(pinned.bytes * per_node)} per node")
    processes = f"{per_node} processes × " if per_node > 1 else ""
    host_terms = _merge([Term("offloaded model states", st.host * per_node, f"{processes}{gib_text(st.host)}"),
                         *([replace(pinned, bytes=pinned.bytes * per_node, detail=processes + pinned.detail)]
                           if pinned is not None else []),
                         Term("4-bit base quantized at load", loading * per_node,
                              f"{processes}{gib_text(loading)}, held until FSDP2 has sharded it")])
    if r.kernels == "ftplan":
        notes.append("kernels: ftplan terms are calibrated on H200 steps of Llama-3.1-8B LoRA and QLoRA (s2048, "
                     "s8192); other shapes are derived from the kernels")
    if r.optimizer == "paged_adamw_8bit":
        notes.append("paged optimizer states can be evicted to CPU under pressure (same bytes when resident)")
    if cpu:
        return StageEstimate(stage_id, 0, None, "n/a", terms, tokens_per_step=tokens, step_time_s=None,
                             host_bytes=total + st.host, notes=tuple(notes))
    capacity = gpu.memory_mib * MIB if gpu is not None else None
    return StageEstimate(stage_id, total, capacity, verdict(total, capacity), terms, tokens_per_step=tokens,
                         step_time_s=throughput.step_time(r, gpu, st.trainable),
                         host_bytes=(host_per_gpu * per_node) or None, host_terms=host_terms, notes=tuple(notes))


def _model_load(r: Resolved, gpu: GpuSpec | None, cpu: bool, step_peak: int,
                per_node: int) -> tuple[str | None, list[str]]:
    """(the peak's name when loading the model takes more of a GPU than the training step, notes on the load): a
    QLoRA base under ZeRO-3 is whole on every GPU until DeepSpeed partitions it (``states.model_load``); under FSDP2
    it is quantized in each process's host memory instead (``states.host_load``)."""
    notes = []
    host_bytes = 0 if cpu else states.host_load(r)
    if host_bytes:
        notes.append(f"loading: every process quantizes the whole base in host memory before FSDP2 moves it onto the "
                     f"GPU layer by layer: {gib_text(host_bytes)} per process, {gib_text(host_bytes * per_node)} per "
                     "node, counted in the host memory")
    load = states.model_load(r)
    if cpu or not load:
        return None, notes
    at_load = sum(t.bytes for t in [fixed.context(gpu), *fixed.nccl(r.world, gpu, r.nvls), *load])
    what = "every GPU holds the whole 4-bit model until ZeRO-3 partitions it"
    if at_load > step_peak:
        return f"model load ({what})", notes
    return None, [*notes, f"model load: {gib_text(at_load)} per GPU ({what}), below the training step's peak"]


def verdict_thresholds(capacity: int) -> tuple[int, int]:
    """The smallest peaks (bytes) that are ``tight`` and ``oom`` on a card of ``capacity`` bytes
    (``TIGHT_FRACTION`` and ``OOM_FRACTION`` of it, rounded up)."""
    return math.ceil(capacity * TIGHT_FRACTION), math.ceil(capacity * OOM_FRACTION)


def verdict(peak: int, capacity: int | None) -> Verdict:
    """``fits`` below ``TIGHT_FRACTION`` of the card, ``tight`` from there to ``OOM_FRACTION`` (the whole card), ``oom``
    at or above it; ``n/a`` without a known card (see ``constants.py`` for why these fractions)."""
    if capacity is None:
        return "n/a"
    tight_from, oom_from = verdict_thresholds(capacity)
    if peak >= oom_from:
        return "oom"
    return "tight" if peak >= tight_from else "fits"


def _step_transient(r: Resolved, st: states.States, cpu: bool) -> list[Term]:
    """Temporaries of the optimizer step. The runtime's CUDA AdamW is fused and bitsandbytes' 8-bit step runs
    blockwise, neither allocates per-parameter temporaries; on the CPU the runtime uses foreach AdamW, whose
    ``sqrt(v)`` is a full copy of the second moment."""
    if not cpu or r.optimizer != "adamw" or r.strategy != "none":
        return []
    tb = r.param_bytes if r.full else r.adapter_bytes
    return [Term("optimizer step temporaries", st.trainable * tb, "foreach AdamW: sqrt(v), one state-sized copy")]


def layer_terms(r: Resolved, acts: activations.LayerActivations) -> list[Term]:
    """What the backward holds for the one layer it is in, beyond the other layers' checkpoints (or activations):
    with checkpointing the recomputed layer (its saved tensors and the larger of its forward's and backward's working
    sets), without it the backward's working set on top of that layer's saved tensors; the attention half and its
    score blocks apart when they are the larger; and a per-call weight copy (NF4 dequantisation, DoRA's weight norm)."""
    n = r.tokens
    if r.gc:
        layer_a = (acts.layer_tok() + acts.mlp_working_tok()) * n + acts.scores_saved + acts.adapter_casts
        layer_b = (acts.attn_tok + acts.inflight_attn_tok) * n + acts.scores_peak + acts.adapter_casts
        layer_what = "recomputed layer"
    else:
        layer_a = acts.mlp_working_tok() * n
        layer_b = acts.inflight_attn_tok * n + acts.scores_peak - acts.scores_saved
        layer_what = "layer backward"
    if layer_b > layer_a and acts.scores_peak:
        scores = acts.scores_peak if r.gc else acts.scores_peak - acts.scores_saved
        layer = [Term(f"{layer_what} (attention half)", layer_b - scores,
                      f"{num(n)} tokens × {acts.attn_tok + acts.inflight_attn_tok:,} B"),
                 Term("attention scores", scores, acts.scores_detail)]
    else:
        held_too = "the forward's working set" if acts.forward_is_wider() else "gradients in flight"
        layer = [Term(layer_what, max(layer_a, layer_b), f"{num(n)} tokens × {acts.layer_tok():,} B saved + {held_too}")]
    if acts.weight_transient:
        what = "dequantized weight (NF4 → 16-bit)" if r.quantized else "DoRA weight-norm transient"
        layer.append(Term(what, acts.weight_transient, "largest linear, transient per call"))
    return layer


def _phases(r: Resolved, st: states.States, acts: activations.LayerActivations, loss: logits.Loss,
            cpu: bool = False) -> list[Phase]:
    shape, n = r.shape, r.tokens
    layers = shape.num_layers
    if r.gc:
        where = activations.checkpoints(r)
        each = f"{num(n)} tokens × {acts.ckpt_tok // shape.hidden_size} B × {num(shape.hidden_size)}"
        if r.offload_checkpoints:
            name = "activation checkpoints on the GPU (offloaded)"
            held_all = Term(name, where.forward * acts.ckpt_tok * n,
                            f"{where.forward} layer × {each}: the top layer's input on its way to host memory")
            held_top = Term(name, where.top * acts.ckpt_tok * n,
                            f"{where.top} layers × {each}: the layer recomputed and the input fetched ahead; all "
                            f"{where.host} in host memory")
        else:
            held_all = held_top = Term("activation checkpoints", layers * acts.ckpt_tok * n,
                                       f"{layers} layers × {each}")
        held_one = replace(held_all, bytes=where.bottom * acts.ckpt_tok * n, detail="the bottom layer's input")
    else:
        per_layer = (acts.layer_tok() + acts.input_tok) * n + acts.scores_saved + acts.adapter_casts
        held_all = Term("activations (no checkpointing)", layers * per_layer,
                        f"{layers} layers × {gib_text(per_layer)}")
        held_one = held_top = held_all
    common = [Term("attention mask", acts.mask, f"{r.sequences} × {num(r.seq)}^2")] if acts.mask else []
    accum = [st.grads] if (r.grad_accum > 1 and st.grads.bytes) else []
    held = [loss.held] if loss.held else []

    layer = layer_terms(r, acts)

    grads_early = (replace(st.grads, bytes=st.grads_early, detail="lm_head / final norm gradients")
                   if st.grads_early else None)
    phases = [
        Phase("loss forward", tuple([held_all, *common, *accum, *loss.forward])),
        Phase("loss backward", tuple([held_all, *common, *accum, *loss.backward])),
        Phase("backward through the top layer",
              tuple([held_top, *common, *held, *(accum or ([grads_early] if grads_early else [])), *layer])),
        Phase("backward through the bottom layer", tuple([held_one, *common, *held, st.grads, *layer])),
        Phase("optimizer step", tuple([*held, st.grads, *_step_transient(r, st, cpu)])),
    ]
    nograd_layer = (acts.inflight_mlp_tok + acts.inflight_attn_tok) * n + acts.scores_peak * 3 // 4
    if r.reference != "none":
        ref_layer = Term("reference forward layer", nograd_layer, "no-grad working set of one layer")
        phases.append(Phase(f"{r.kind.upper()} reference forward",
                            tuple([held_all, *common, *accum, *loss.saved, ref_layer, *loss.reference])))
    if r.kl_batch:
        kl_layer = Term("KL forward layer", nograd_layer, "no-grad working set of one layer over the KL batch")
        phases.append(Phase("KTO KL forward", tuple([*common, *accum, kl_layer, *loss.reference])))
    return [Phase(p.name, tuple(t for t in p.terms if t.bytes)) for p in phases]


def _merge(terms: list[Term]) -> tuple[Term, ...]:
    """Drop empty terms and order by size, largest first (names stay unique: equal names are summed)."""
    merged: dict[str, Term] = {}
    for t in terms:
        if t.bytes <= 0:
            continue
        if t.name in merged:
            old = merged[t.name]
            merged[t.name] = Term(t.name, old.bytes + t.bytes, old.detail)
        else:
            merged[t.name] = t
    return tuple(sorted(merged.values(), key=lambda t: (-t.bytes, t.name)))
