"""RESOLVE ONCE: every fact derived from a stage, the hardware and the stage graph, computed in this module.

``resolve_stages(pipeline, links, inputs)`` turns each stage into a frozen ``ResolvedStage``. A ``Context`` makes
them when it is made (``Context.stages``, one per position in the file), before the checks and the estimate, and
the checks, the estimator, the planner and every view read them instead of working anything out again. Where each
derived fact is computed, in one sentence each:

* **strategy**: ``strategy_of`` turns ``distributed: auto`` into ``none`` on one process and ``ddp`` on more and
  keeps every other strategy as written (``TrainingFacts.strategy``).
* **ZeRO stage and distributed type**: ``ZERO_STAGES`` maps the resolved strategy to DeepSpeed's ZeRO stage (None
  without DeepSpeed) and ``DISTRIBUTED_TYPES`` to accelerate's ``distributed_type`` (``TrainingFacts.zero_stage``,
  ``TrainingFacts.distributed_type``).
* **where a stage runs, and its world size**: ``placement`` puts a training stage on every GPU of every node (one
  process per GPU) or, with ``device: cpu``, on ``cpu_processes`` CPU processes of every node, and every data,
  merge and GGUF stage on one CPU process — a merge included, because its estimate is a host-memory figure
  (``ResolvedStage.device``, ``nodes``, ``gpus_per_node``, ``processes_per_node``, ``world_size``).
* **checkpointing**: ``checkpoint_mode`` (the args contract, which the runtime reads too) turns
  ``gradient_checkpointing`` into ``off``, ``on`` or ``offload``; ``offload`` runs as ``on`` on a CPU device
  (``TrainingFacts.checkpointing``).
* **effective batch**: ``effective_batch`` multiplies micro_batch × grad_accum × world size (``Batch``).
* **tokens per step**: ``tokens_per_step`` multiplies the effective batch by the data stage's ``max_seq_len``,
  twice for the pair kinds' chosen and rejected answers (DPO, ORPO, reward; ``Batch.tokens_per_step``).
* **adapter spec**: ``lineage.trace`` carries each adapter's declared spec along the chain (``AdapterLink.spec``),
  ``adapter_of`` picks the one this stage trains (a continued adapter's spec for ``adapter: continue``) and
  ``method_of`` names the method (``TrainingFacts.adapter``, ``.method``, ``.quantized_base``).
* **reference policy**: ``reference_of`` says what a DPO or KTO stage's reference is — the policy with the new
  adapter switched off, a frozen copy of the continued adapter, or a frozen copy of the full model (the base model
  for a stage without ``input``); none for SimPO (``uses_reference``) (``TrainingFacts.reference``, live or
  precomputed).
* **training rows and optimizer steps**: ``known_rows`` counts the training rows when every dataset file was read
  whole, and ``optimizer_steps`` turns them (or ``max_steps``) into steps (``TrainingFacts.rows``, ``.steps``).
* **folders**: ``stage_output_dir`` is ``<output_dir>/<id>`` (``ResolvedStage.output_dir``, ``.data_dir``).

Nothing here reads files or knows the GPU or the model shape: these facts hold for any card.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

from .schemas import DataStage, DpoStage, FullFinetune, KtoStage, LoraAdapter, Pipeline
from .schemas.datasets import TEXT_FORMATS
from .schemas.runtime_args import CheckpointMode, checkpoint_mode
from .schemas.stages import TRAIN_KINDS, TRAIN_STAGE_TYPES, Stage, TrainStage
from .schemas.training import DistributedStrategy

if TYPE_CHECKING:  # pragma: no cover
    from .context import Inputs
    from .lineage import StageLink

Strategy = Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp2"]
"""A distributed strategy with ``auto`` resolved."""
Method = Literal["full", "lora", "qlora", "dora"]
"""What a training stage trains: every weight, or a LoRA-family adapter (a continued adapter on a 4-bit base is
QLoRA)."""
ReferenceModel = Literal["adapter", "adapter_copy", "model_copy"]
"""A DPO stage's reference policy: the policy with the new adapter switched off, a frozen copy of the continued
adapter, or a frozen copy of the full model."""
DistributedType = Literal["NO", "MULTI_GPU", "DEEPSPEED", "FSDP"]
"""accelerate's ``distributed_type``."""
Device = Literal["cuda", "cpu"]
StageKind = Literal["data", "sft", "cpt", "dpo", "orpo", "kto", "reward", "merge", "gguf"]

ZERO_STAGES: dict[str, int] = {"zero1": 1, "zero2": 2, "zero3": 3}
"""Strategy -> DeepSpeed ZeRO stage."""

DISTRIBUTED_TYPES: dict[Strategy, DistributedType] = {
    "none": "NO", "ddp": "MULTI_GPU", "zero1": "DEEPSPEED", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED",
    "fsdp2": "FSDP",
}
"""Resolved strategy -> accelerate's ``distributed_type``."""


@dataclass(frozen=True)
class Batch:
    """The batch arithmetic of a training stage."""

    micro_batch: int
    """Sequences per GPU per forward pass (a DPO, ORPO or reward pair counts as one)."""
    grad_accum: int
    """Micro-batches per optimizer step."""
    world_size: int
    """Data-parallel processes."""
    effective_batch: int
    """Sequences (pairs for the pair kinds) per optimizer step: micro_batch × grad_accum × world_size."""
    seq_len: int | None
    """The data stage's ``max_seq_len`` (None when the data stage cannot be found)."""
    tokens_per_step: int | None
    """Tokens per optimizer step over all processes: effective batch × seq_len (× 2 for DPO pairs)."""
    pairs: bool = False
    """A batch of a pair kind (DPO, ORPO, reward): ``micro_batch`` and ``effective_batch`` count preference pairs,
    each two sequences (chosen and rejected)."""

    @property
    def unit(self) -> Literal["pairs", "sequences"]:
        """What ``micro_batch`` and ``effective_batch`` count: ``pairs`` (the pair kinds) or ``sequences``."""
        return "pairs" if self.pairs else "sequences"


@dataclass(frozen=True)
class TrainingFacts:
    """What a training stage (SFT, CPT, DPO, ORPO, KTO, reward) resolves to."""

    strategy: Strategy
    """The distributed strategy, ``auto`` resolved."""
    zero_stage: int | None
    """DeepSpeed ZeRO stage (None without DeepSpeed)."""
    distributed_type: DistributedType
    """accelerate's distributed type."""
    offload_optimizer: bool
    """Optimizer states kept in CPU memory."""
    offload_params: bool
    """Parameters kept in CPU memory between uses."""
    batch: Batch
    """Batch arithmetic."""
    checkpointing: CheckpointMode
    """``off``, ``on`` (each decoder layer's input kept on the GPU for its recompute) or ``offload`` (kept in pinned
    host memory; on a CUDA device only)."""
    adapter: LoraAdapter | FullFinetune | None
    """What the stage trains: its own spec, or for ``adapter: continue`` the continued adapter's (None when the
    stage graph is broken and the continued adapter is unknown)."""
    method: Method | None
    """``full``, ``lora``, ``qlora`` or ``dora`` (None when ``adapter`` is unknown)."""
    quantized_base: bool
    """The base weights are 4-bit NF4 (QLoRA, or continuing a QLoRA adapter)."""
    continues_adapter: bool
    """``adapter: continue``: the stage keeps training its input's last adapter."""
    merges_input: bool
    """A ``merge_input`` (DPO, ORPO, KTO): the input's adapters are merged into the base before a new adapter starts."""
    reference: ReferenceModel | None
    """A DPO or KTO stage's reference policy (None for the kinds and losses without one: SFT, CPT, ORPO, reward,
    SimPO)."""
    reference_live: bool
    """The reference's log-probs are computed at every step (``reference: live``), not once before training."""
    rows: int | None
    """Training rows when every dataset file was read whole (``known_rows``), else None."""
    steps: int | None
    """Optimizer steps: ``max_steps``, or the epochs over ``rows`` (None when neither is known)."""
    steps_at_most: bool
    """``steps`` counts examples before packing, so it is an upper bound."""

    @property
    def reference_in_step(self) -> Literal["none", "adapter", "adapter_copy", "model_copy"]:
        """The reference the training step runs (``none`` for SFT and a precomputed reference)."""
        return self.reference if self.reference is not None and self.reference_live else "none"


@dataclass(frozen=True)
class ResolvedStage:
    """One stage's derived facts."""

    index: int
    """0-based position in ``pipeline.stages``."""
    id: str
    """Stage id."""
    kind: StageKind
    """Stage kind."""
    device: Device
    """Where the stage computes."""
    nodes: int
    """Nodes (one launcher each)."""
    gpus_per_node: int
    """GPUs per node; 0 for a stage on the CPU."""
    processes_per_node: int
    """Runtime processes on each node: one per GPU for a training stage on GPUs, ``cpu_processes`` for one on the
    CPU, otherwise 1."""
    output_dir: str
    """Where the stage writes, relative to the project root: ``<output_dir>/<id>``."""
    data_dir: str | None
    """The output folder of the data stage a training stage reads."""
    train: TrainingFacts | None
    """The facts of a training stage (None for data, merge and GGUF stages)."""

    @property
    def world_size(self) -> int:
        """Runtime processes in total."""
        return self.nodes * self.processes_per_node


def strategy_of(written: DistributedStrategy, world_size: int) -> Strategy:
    """The strategy a stage runs with: ``auto`` is ``none`` on one process and ``ddp`` on more."""
    if written == "auto":
        return "none" if world_size == 1 else "ddp"
    return written


def effective_batch(micro_batch: int, grad_accum: int, world_size: int) -> int:
    """Sequences (DPO: pairs) per optimizer step over all processes."""
    return micro_batch * grad_accum * world_size


def tokens_per_step(effective: int, seq_len: int | None, *, pairs: bool) -> int | None:
    """Tokens per optimizer step: the effective batch at full length (a pair is two sequences)."""
    return None if seq_len is None else effective * seq_len * (2 if pairs else 1)


def method_of(adapter: LoraAdapter | FullFinetune | None, quantized_base: bool) -> Method:
    """The training method: full, lora, qlora or dora (an adapter on a 4-bit base is qlora; an unknown adapter is
    lora or, on a 4-bit base, qlora)."""
    if isinstance(adapter, FullFinetune):
        return "full"
    if adapter is None:
        return "qlora" if quantized_base else "lora"
    if adapter.type == "qlora" or quantized_base:
        return "qlora"
    return adapter.type


def uses_reference(stage: TrainStage) -> bool:
    """The stage trains against a reference policy: DPO and KTO, except a DPO stage with the reference-free SimPO
    loss (``loss_type: simpo``), which compares the policy's own log-probabilities."""
    return TRAIN_KINDS[stage.kind].reference and getattr(stage, "loss_type", None) != "simpo"


def reference_of(stage: TrainStage, method: Method | None) -> ReferenceModel | None:
    """A DPO or KTO stage's reference policy (None for the kinds and losses without one, ``uses_reference``): a
    frozen copy of the continued adapter (TRL's ``ref`` adapter), a frozen copy of the full weights for a full
    fine-tune, or the policy with its new adapter off. A stage without ``input`` starts from the base model, which
    is then its reference (the base with the new adapter off, or a frozen copy of it)."""
    if not uses_reference(stage):
        return None
    if stage.adapter == "continue":
        return "adapter_copy"
    return "model_copy" if method == "full" else "adapter"


def adapter_of(stage: TrainStage, link: "StageLink | None") -> tuple[LoraAdapter | FullFinetune | None, bool]:
    """(the spec this stage trains, whether its base is 4-bit): its own adapter, or for ``adapter: continue`` the
    continued adapter's spec from the stage graph (None when the graph is broken there)."""
    if stage.adapter == "continue":
        result = link.result if link is not None else None
        if result is None or not result.adapters:
            return None, bool(link is not None and link.input is not None and link.input.quantized_base)
        last = result.adapters[-1]
        return last.spec, last.type == "qlora"
    return stage.adapter, isinstance(stage.adapter, LoraAdapter) and stage.adapter.type == "qlora"


def stage_output_dir(pipeline: Pipeline, stage_id: str) -> str:
    """``<output_dir>/<stage id>``, normalised, as written in scripts and ``args.json``."""
    return posixpath.normpath(posixpath.join(pipeline.output_dir, stage_id))


def data_stage_of(pipeline: Pipeline, stage: TrainStage) -> tuple[int, DataStage] | None:
    """(index, stage) of the data stage a training stage reads, or None when the reference is broken or ambiguous
    (two stages share the id: FT201 reports it, and nothing guesses which one is meant)."""
    found = [(i, other) for i, other in enumerate(pipeline.stages) if other.id == stage.data]
    if len(found) != 1:
        return None
    i, other = found[0]
    return (i, other) if isinstance(other, DataStage) else None


def known_rows(pipeline: Pipeline, inputs: "Inputs", stage: TrainStage) -> int | None:
    """Training rows this stage reads when every one of its dataset files was read whole, else None (also when
    bad rows stop the data stage first: ``on_bad_row: error``, reported by the FT50x rules). Examples before
    packing, each dataset's taken ``weight`` times; pair kinds count pairs. None as well for raw text (``format: text``): a document longer than
    ``max_seq_len`` becomes several pieces, which only the data stage's tokenizer can count."""
    found = data_stage_of(pipeline, stage)
    if found is None:
        return None
    i, data = found
    want = TRAIN_KINDS[stage.kind].formats
    if not any(d.format in want for d in data.datasets):
        return None  # no data of this stage's kind at all: FT205
    if any(d.format in want and d.format in TEXT_FORMATS for d in data.datasets):
        return None
    total: float = 0
    for j, d in enumerate(data.datasets):
        if d.format not in want:
            continue
        scan = inputs.datasets.get((i, j))
        if scan is None or not scan.checked or scan.file_problem is not None or not scan.complete:
            return None
        if scan.bad_rows and data.on_bad_row == "error":
            return None
        total += (scan.rows_read - scan.bad_rows) * d.weight  # a dataset's weight repeats its examples
    return int(total * (1.0 - data.val_fraction))


def optimizer_steps(stage: TrainStage, rows: int | None, effective: int, *, packing: bool) -> tuple[int | None, bool]:
    """(optimizer steps, whether that is an upper bound): ``max_steps``, or the epochs over the training rows
    (examples before packing: an upper bound when the data stage packs)."""
    if stage.max_steps is not None:
        return stage.max_steps, False
    if rows is None:
        return None, False
    epochs = stage.epochs if stage.epochs is not None else 1.0
    return max(1, math.ceil(epochs * math.ceil(rows / effective))), packing


def training_facts(stage: TrainStage, *, world_size: int, seq_len: int | None,
                   adapter: LoraAdapter | FullFinetune | None, quantized_base: bool, merges_input: bool = False,
                   rows: int | None = None, packing: bool = False, device: Device = "cuda") -> TrainingFacts:
    """The facts of a training stage run by ``world_size`` processes on ``device`` on rows of ``seq_len`` tokens,
    training ``adapter`` (None: a continued adapter that is unknown)."""
    spec = stage.distributed_spec()
    strategy = strategy_of(spec.strategy, world_size)
    effective = effective_batch(stage.micro_batch, stage.grad_accum, world_size)
    method = method_of(adapter, quantized_base) if adapter is not None else None
    steps, at_most = optimizer_steps(stage, rows, effective, packing=packing)
    return TrainingFacts(
        strategy=strategy, zero_stage=ZERO_STAGES.get(strategy), distributed_type=DISTRIBUTED_TYPES[strategy],
        offload_optimizer=spec.offload_optimizer, offload_params=spec.offload_params,
        batch=Batch(stage.micro_batch, stage.grad_accum, world_size, effective, seq_len,
                    tokens_per_step(effective, seq_len, pairs=TRAIN_KINDS[stage.kind].pairs),
                    pairs=TRAIN_KINDS[stage.kind].pairs),
        checkpointing=checkpoint_mode(stage.gradient_checkpointing, device),
        adapter=adapter, method=method, quantized_base=quantized_base,
        continues_adapter=stage.adapter == "continue", merges_input=merges_input,
        reference=reference_of(stage, method),
        reference_live=(uses_reference(stage) and isinstance(stage, (DpoStage, KtoStage))
                        and stage.reference == "live"),
        rows=rows, steps=steps, steps_at_most=at_most)


def placement(stage: Stage, pipeline: Pipeline) -> tuple[Device, int, int, int]:
    """(device, nodes, GPUs per node, processes per node): a training stage takes every GPU of every node (one
    process each), or with ``device: cpu`` ``cpu_processes`` processes on every node; data, merge and GGUF stages
    run one process on the CPU (tokenizing, merging and exporting are host work; a merge's estimate is a
    host-memory figure)."""
    hw = pipeline.hardware
    if isinstance(stage, TRAIN_STAGE_TYPES):
        if hw.device == "cuda":
            return "cuda", hw.nodes, hw.gpus_per_node, hw.gpus_per_node
        return "cpu", hw.nodes, 0, hw.cpu_processes
    return "cpu", 1, 0, 1


def resolve_stage(pipeline: Pipeline, index: int, link: "StageLink | None", inputs: "Inputs") -> ResolvedStage:
    """The facts of the stage at ``index``; ``link`` is its place in the stage graph (None when its id is
    duplicated)."""
    stage = pipeline.stages[index]
    device, nodes, gpus, processes = placement(stage, pipeline)
    train = None
    data_dir = None
    if isinstance(stage, TRAIN_STAGE_TYPES):
        found = data_stage_of(pipeline, stage)
        adapter, quantized = adapter_of(stage, link)
        train = training_facts(
            stage, world_size=nodes * processes, seq_len=found[1].max_seq_len if found else None, adapter=adapter,
            quantized_base=quantized, merges_input=bool(link is not None and link.merges_input),
            rows=known_rows(pipeline, inputs, stage), packing=bool(found and found[1].packing), device=device)
        data_dir = stage_output_dir(pipeline, stage.data)
    return ResolvedStage(index=index, id=stage.id, kind=stage.kind, device=device, nodes=nodes, gpus_per_node=gpus,
                         processes_per_node=processes, output_dir=stage_output_dir(pipeline, stage.id),
                         data_dir=data_dir, train=train)


def most_nodes(stages: "Iterable[ResolvedStage]") -> int:
    """The most nodes any of ``stages`` spans (``run.sh`` runs a plan on one machine only; more need Slurm)."""
    return max((s.nodes for s in stages), default=1)


def resolve_stages(pipeline: Pipeline, links: "dict[str, StageLink]", inputs: "Inputs") -> tuple[ResolvedStage, ...]:
    """Every stage's facts, in file order."""
    return tuple(resolve_stage(pipeline, i, links.get(s.id), inputs) for i, s in enumerate(pipeline.stages))
