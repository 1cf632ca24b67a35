"""The stage graph: what each stage consumes and what its result is, with the hand-off rules between them.

``trace(pipeline)`` walks the stages in order and returns, per stage, the ``Result`` a later stage would
consume (full weights, an adapter chain on some weights, a merged model, GGUF files, tokenized data), plus a
diagnostic for every broken reference or hand-off. Later steps (estimate, plan) use the results; nothing here
reads files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from .diagnostics import Diagnostic, error
from .schemas import DataStage, GgufStage, LoraAdapter, MergeStage, Pipeline
from .schemas.datasets import SFT_FORMATS, TEXT_FORMATS
from .schemas.stages import CAUSAL_LM_KINDS, TRAIN_KINDS, TRAIN_STAGE_TYPES, RewardStage, Stage, TrainStage
from .suggest import did_you_mean

CODES = {
    "FT201": "a stage id is used twice",
    "FT202": "a reference names no stage",
    "FT203": "a reference names a later stage (or itself)",
    "FT204": "a reference names a stage of the wrong kind",
    "FT205": "the data stage has no examples of the format this stage trains on",
    "FT206": "the hand-off from an adapter stage is not declared",
    "FT207": "a merge stage's input trained no adapter",
    "FT208": "a GGUF stage's input is not merged full-precision weights",
    "FT209": "a full fine-tune starts from an unmerged adapter",
    "FT210": "a reward model's result is used as a causal LM (started from, merged or exported)",
    "FT211": "a continued pre-training stage's data stage holds datasets that are not raw text",
    "FT212": "a reward model starts from an unmerged adapter",
}

ResultKind = Literal["data", "model", "reward", "gguf"]
"""What a stage leaves: tokenized data, a causal LM (weights and adapters), a reward model (a sequence
classifier, which nothing can start from), or GGUF files."""


@dataclass(frozen=True)
class AdapterLink:
    """One adapter in a chain: the stage that trained it last, its declared spec and the stage that declared it."""

    stage: str
    """The stage whose output holds the adapter (the last one that trained it)."""
    spec: LoraAdapter
    """The adapter as declared (type, rank, alpha, targets); a ``continue`` stage keeps training this spec."""
    origin: str
    """The stage that declared it (``stage`` itself unless later stages continued it)."""

    @property
    def type(self) -> Literal["lora", "qlora", "dora"]:
        """The adapter type."""
        return self.spec.type


@dataclass(frozen=True)
class Result:
    """What a stage leaves for later stages.

    For models: full weights (``weights`` = the stage that wrote them, None for ``model.base``) plus the
    adapters on top of them in chain order. A stage that starts from them with ``merge_input: true`` merges the
    chain into the weights before training (``StageLink.merges_input``); otherwise the adapters stay separate."""

    kind: ResultKind
    weights: str | None = None
    adapters: tuple[AdapterLink, ...] = ()
    formats: frozenset[str] = frozenset()

    @property
    def quantized_base(self) -> bool:
        """True when the last adapter was trained on a 4-bit (QLoRA) base."""
        return bool(self.adapters) and self.adapters[-1].type == "qlora"


@dataclass(frozen=True)
class StageLink:
    """How a stage is wired: its consumed results and its own result (None when the wiring is broken)."""

    input: Result | None
    data: Result | None
    result: Result | None
    continues_adapter: bool = False
    merges_input: bool = False


BASE = Result(kind="model")

_Ref = Callable[[int, str, str | None, tuple[str, ...]], Result | None]
"""Resolves ``stages[i].<field>: target`` to the result of an earlier stage of a wanted kind (reporting why not)."""


def duplicated_ids(pipeline: Pipeline) -> frozenset[str]:
    """Stage ids used by more than one stage."""
    ids = [s.id for s in pipeline.stages]
    return frozenset(i for i in ids if ids.count(i) > 1)


def trace(pipeline: Pipeline) -> tuple[dict[str, StageLink], list[Diagnostic]]:
    """Walk the stages in order; return each stage's wiring and the graph diagnostics (FT2xx).

    A duplicated id is one error (FT201, at the later stage, pointing at the first). Nothing is looked up by a
    duplicated id: neither stage gets a link, and a reference to it is left unresolved without a second
    error, so no later step reads one stage's wiring for the other."""
    links: dict[str, StageLink] = {}
    diags: list[Diagnostic] = []
    seen_index: dict[str, int] = {}
    all_ids: dict[str, int] = {}
    for i, s in enumerate(pipeline.stages):
        all_ids.setdefault(s.id, i)  # first use of each id, in file order
    twice = duplicated_ids(pipeline)

    def ref(i: int, field: str, target: str | None, want: tuple[str, ...]) -> Result | None:
        """Resolve a reference from stage ``i``; report FT202/FT203/FT204 and return None when broken."""
        if target is None:
            return BASE
        if target in twice:
            return None  # ambiguous: FT201 says so
        path = ("stages", i, field)
        if target not in all_ids:
            diags.append(error("FT202", path, f"no stage is named '{target}'",
                               hint=did_you_mean(target, list(all_ids)) or "stage ids: " + ", ".join(all_ids)))
            return None
        if target not in seen_index:
            diags.append(error("FT203", path, f"stage '{target}' does not run before this stage",
                               hint="stages run in file order: move it above, or point at an earlier stage"))
            return None
        kind = pipeline.stages[seen_index[target]].kind
        if kind == "reward" and kind not in want:
            diags.append(error("FT210", path, f"'{target}' trains a reward model, a sequence classifier that scores "
                               f"text; it is not a causal LM, so {field} cannot use it",
                               hint=_kind_hint(pipeline, i, field, kind, want)))
            return None
        if kind not in want:
            diags.append(error("FT204", path, f"'{target}' is a {kind} stage; {field} needs {_kinds_text(want)}",
                               hint=_kind_hint(pipeline, i, field, kind, want)))
            return None
        return links[target].result

    for i, stage in enumerate(pipeline.stages):
        if stage.id in twice:
            first = all_ids[stage.id]
            if first != i:
                diags.append(error("FT201", ("stages", i, "id"), f"stage id '{stage.id}' is already used by "
                                   f"stages[{first}]; outputs, references and checks need one stage per id",
                                   hint=f"rename one of them, e.g. `id: {_free_id(pipeline, stage.id)}`, and "
                                   "point each `input`/`data` at the stage it means",
                                   related=[(("stages", first, "id"), f"stage id '{stage.id}' first used here")]))
            seen_index.setdefault(stage.id, i)
            continue
        link = _link(i, stage, ref, diags, twice)
        links[stage.id] = link
        seen_index[stage.id] = i
    return links, diags


def _free_id(pipeline: Pipeline, base: str) -> str:
    """``base_2`` (or the next free number) for a renamed duplicate."""
    taken = {s.id for s in pipeline.stages}
    return next(f"{base[:29]}_{n}" for n in range(2, 10_000) if f"{base[:29]}_{n}" not in taken)


def _kinds_text(want: tuple[str, ...]) -> str:
    """``a data stage``, ``a sft or dpo stage``; a causal LM as ``a training stage (sft, cpt, dpo, orpo, kto) or a
    merge stage``."""
    if set(CAUSAL_LM_KINDS) <= set(want):
        trained = f"a training stage ({', '.join(CAUSAL_LM_KINDS)})"
        return trained + (" or a merge stage" if "merge" in want else "")
    return "a " + " or ".join(want) + " stage"


def _kind_hint(pipeline: Pipeline, i: int, field: str, kind: str, want: tuple[str, ...]) -> str:
    """How to fix a reference to a stage of the wrong kind: the earlier stages that would fit, and for a data
    stage named as ``input``, that data goes in ``data:``."""
    fits = [s.id for s in pipeline.stages[:i] if s.kind in want]
    pick = (f"point `{field}` at " + " or ".join(f"'{f}'" for f in fits[-2:]) if fits else
            f"add {_kinds_text(want)} before this one and point `{field}` at it")
    stage = pipeline.stages[i]
    base_ok = "input" in type(stage).model_fields and not type(stage).model_fields["input"].is_required()
    if field == "input" and kind == "reward" and base_ok:
        return f"{pick}, or omit `input` to start from the base model" if fits else \
            "omit `input` to start from the base model"
    if field == "input" and kind == "data":
        base = "omit `input` to start from the base model"
        starts = (f"{pick}, or {base}" if fits else base) if base_ok else pick
        return f"a data stage goes in `data:`; `input` names the model to start from: {starts}"
    return pick


def _link(i: int, stage: Stage, ref: _Ref, diags: list[Diagnostic], twice: frozenset[str]) -> StageLink:
    if isinstance(stage, DataStage):
        formats = frozenset(d.format for d in stage.datasets)
        return StageLink(None, None, Result(kind="data", formats=formats))
    if isinstance(stage, TRAIN_STAGE_TYPES):
        link = _train_link(i, stage, ref, diags)
        # reading an ambiguous data stage: nothing can be estimated or checked for this stage
        return StageLink(link.input, None, None) if stage.data in twice else link
    if isinstance(stage, MergeStage):
        src = ref(i, "input", stage.input, CAUSAL_LM_KINDS)
        if src is None:
            return StageLink(None, None, None)
        if not src.adapters:
            diags.append(error("FT207", ("stages", i, "input"), f"'{stage.input}' trained no adapter, so "
                               "there is nothing to merge", hint="point the gguf stage at the full fine-tune "
                               "directly and drop this merge stage"))
            return StageLink(src, None, None)
        return StageLink(src, None, Result(kind="model", weights=stage.id))
    if isinstance(stage, GgufStage):
        src = ref(i, "input", stage.input, ("merge", *CAUSAL_LM_KINDS))
        if src is None:
            return StageLink(None, None, None)
        if src.adapters:
            kinds = "a 4-bit (QLoRA) base with an adapter" if src.quantized_base else "an unmerged adapter"
            diags.append(error("FT208", ("stages", i, "input"), f"'{stage.input}' leaves {kinds}; GGUF "
                               "export needs merged full-precision weights",
                               hint=f"add a stage `{{id: merge, kind: merge, input: {stage.input}}}` and point "
                               "this stage at it"))
            return StageLink(src, None, None)
        return StageLink(src, None, Result(kind="gguf", weights=src.weights))
    raise TypeError(f"unhandled stage kind {stage.kind}")  # pragma: no cover - the union is closed


def _train_link(i: int, stage: TrainStage, ref: _Ref, diags: list[Diagnostic]) -> StageLink:
    src = ref(i, "input", stage.input, (*CAUSAL_LM_KINDS, "merge"))
    data = ref(i, "data", stage.data, ("data",))
    want = TRAIN_KINDS[stage.kind].formats
    if data is not None and not (data.formats & want):
        diags.append(error("FT205", ("stages", i, "data"),
                           f"data stage '{stage.data}' has no {' or '.join(sorted(want))} datasets for this "
                           f"{stage.kind} stage (it has: {', '.join(sorted(data.formats))})",
                           hint=f"add a dataset with one of the formats {', '.join(sorted(want))} to "
                           f"'{stage.data}'"))
    elif data is not None and stage.kind == "cpt" and data.formats & (SFT_FORMATS - TEXT_FORMATS):
        other = sorted(data.formats & (SFT_FORMATS - TEXT_FORMATS))
        diags.append(error("FT211", ("stages", i, "data"),
                           f"data stage '{stage.data}' also holds {', '.join(other)} datasets; a cpt stage trains "
                           "every supervised example of its data stage, so it would train those conversations too",
                           hint="give the raw text (`format: text`) a data stage of its own and point this stage at "
                           "it; keep the conversations for an sft stage"))
    if src is None:
        return StageLink(None, data, None)
    if isinstance(stage, RewardStage):
        return _reward_link(i, stage, src, data, diags)

    adapter = stage.adapter
    here = ("stages", i, "adapter")
    if adapter == "continue":
        if not src.adapters:
            what = (f"'{stage.input}' did not" if stage.input is not None else
                    "this stage has no `input`, so it starts from the base model, which has none")
            diags.append(error("FT206", here, f"`adapter: continue` needs an input stage that trained an "
                               f"adapter; {what}",
                               hint="declare a new adapter, e.g. `adapter: {type: lora, r: 16}`"
                               + ("" if stage.input is not None else ", or set `input` to the stage whose adapter "
                                  "to keep training")))
            return StageLink(src, data, None)
        last = src.adapters[-1]
        chain = src.adapters[:-1] + (AdapterLink(stage.id, last.spec, last.origin),)
        return StageLink(src, data, Result(kind="model", weights=src.weights, adapters=chain),
                         continues_adapter=True)

    hands_over = "merge_input" in type(stage).model_fields  # DPO, ORPO, KTO: continue or merge_input
    merge_input = bool(getattr(stage, "merge_input", False))
    if src.adapters and not merge_input:
        hint = ("set `adapter: continue` to keep training the input's adapter, or `merge_input: true` to merge "
                "it into the base and start a new adapter" if hands_over else
                "add a merge stage between them and start from it (`input: <merge stage>`)")
        code, msg = ("FT209", f"a full fine-tune cannot start from '{stage.input}', which leaves an unmerged "
                     "adapter") if adapter.type == "full" else (
            "FT206", f"'{stage.input}' trained an adapter; say how this stage takes it over")
        diags.append(error(code, here, msg, hint=hint))
        return StageLink(src, data, None)
    if merge_input and not src.adapters:
        diags.append(error("FT206", ("stages", i, "merge_input"), f"`merge_input: true` but '{stage.input}' "
                           "trained no adapter", hint="remove `merge_input`"))
        return StageLink(src, data, None)

    if isinstance(adapter, LoraAdapter):
        result = Result(kind="model", weights=src.weights,
                        adapters=src.adapters + (AdapterLink(stage.id, adapter, stage.id),))
    else:
        result = Result(kind="model", weights=stage.id)
    return StageLink(src, data, result, merges_input=merge_input)



def _reward_link(i: int, stage: RewardStage, src: Result, data: Result | None,
                 diags: list[Diagnostic]) -> StageLink:
    """A reward model loads its input as a sequence classifier: full weights only (an adapter trained on a causal
    LM is merged by a merge stage first). Its result is a reward model, which no later stage can consume."""
    if src.adapters:
        diags.append(error("FT212", ("stages", i, "input"), f"'{stage.input}' leaves an unmerged adapter; a reward "
                           "model loads full weights with a classification head",
                           hint=f"add a stage `{{id: merge, kind: merge, input: {stage.input}}}` and start this stage "
                           "from it (`input: merge`)"))
        return StageLink(src, data, None)
    if isinstance(stage.adapter, LoraAdapter):
        result = Result(kind="reward", weights=src.weights, adapters=(AdapterLink(stage.id, stage.adapter, stage.id),))
    else:
        result = Result(kind="reward", weights=stage.id)
    return StageLink(src, data, result)
