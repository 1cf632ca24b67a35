"""REVIEW: the facts a reviewer approves, read from ``plan.json``, and what changes between two plans.

``review_facts(plan)`` reads one ``plan.json`` document (a dict) into ``ReviewFacts``: per stage, in order, its
kind and method, strategy and launch topology (launcher, device, nodes, GPUs and processes per node), batch
arithmetic (micro batch, grad accum, world size, effective batch, sequence length, tokens per step), optimizer
steps and estimated run time, peak memory per GPU with the card and the verdict (host memory for CPU stages), a
data stage's datasets with their sha256 and size, every other resolved stage setting, the Slurm job's
``sbatch`` options and the warnings located in the stage; and for the whole pipeline the model (revision,
architecture, size), the target hardware, the pinned runtime versions, ftplan's version, the local inputs that
are not a data stage's datasets, the other settings and the warnings located outside any stage.

Nothing here computes a derived fact: every value is read from ``plan.json`` as ``ftplan compile`` wrote it
(``ftplan/render/plan_json.py``) and only put into words. ``diff_plans(old, new)`` compares two documents fact by
fact; stages are matched by id (a renamed stage is one removed and one added). Two plans are *equal* when every
review fact is equal: where the plan folder lives (``plan_dir``, the paths between stage folders) and the
pipeline file's own bytes (a comment) are not review facts.

``ReviewDiff.as_json()`` is the ``ftplan diff --json`` document (``REVIEW_FORMAT`` 1, keys sorted by the
serialiser)::

    {"format": 1, "ok": true, "equal": false,
     "old": {"source": "main:pipelines/x.yaml", "kind": "pipeline", "pipeline": "support-bot"},
     "new": {"source": "pipelines/x.yaml", "kind": "pipeline", "pipeline": "support-bot"},
     "summary": {"add": 0, "change": 1, "remove": 0, "pipeline_changed": false},
     "summary_line": "Stages: 0 to add, 1 to change, 0 to remove.",
     "pipeline": {"symbol": "=", "changes": []},
     "stages": [{"id": "sft", "kind": "sft", "symbol": "~",          # "+" added, "-" removed, "~" changed, "=" same
                 "method": {"old": "QLoRA r16 α32", "new": "QLoRA r16 α32"},
                 "changes": [{"key": "micro_batch", "label": "micro batch", "old": 2, "new": 4,
                              "old_text": "2", "new_text": "4"}, ...]}, ...]}

``old``/``new`` of a change are the JSON values (null where the fact is absent on that side); ``*_text`` are the
words the text view prints. An added or removed stage lists every fact it has. ``kind`` of a side is
``pipeline`` (a pipeline file, or a git revision of one, checked and planned in memory) or ``plan`` (a compiled
plan folder's ``plan.json``). A failed diff is ``{"format": 1, "ok": false, "equal": null, "error": {...}}``
(``ftplan.cli``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, TypeVar

from .units import format_duration, gib_amount, gib_number, num, params_text, size

REVIEW_FORMAT = 1
"""Version of the ``ftplan diff --json`` document; bumped on incompatible changes."""

Symbol = Literal["+", "~", "-", "="]
T = TypeVar("T")

_BATCH_FACTS = (("micro_batch", "micro batch"), ("grad_accum", "grad accum"), ("world_size", "world size"),
                ("effective_batch", "effective batch"), ("seq_len", "sequence length"),
                ("tokens_per_step", "tokens per step"))
_PLACEMENT_FACTS = (("launcher", "launcher"), ("device", "device"), ("nodes", "nodes"),
                    ("gpus_per_node", "GPUs per node"), ("processes_per_node", "processes per node"))
_STAGE_KEYS_SHOWN = {"id", "kind", "micro_batch", "grad_accum", "datasets"}
"""Resolved stage settings shown as named facts, not again among the settings."""
_PIPELINE_KEYS_SHOWN = {"stages", "name", "model.base", "model.revision", "model.architecture", "hardware.gpu",
                        "hardware.device", "hardware.nodes", "hardware.gpus_per_node"}
"""Resolved pipeline settings shown as named facts, not again among the settings."""


@dataclass(frozen=True)
class Fact:
    """One thing a reviewer reads: a stable key, a label, its value from plan.json and that value in words."""

    key: str
    """Stable identifier (``micro_batch``, ``dataset:data/chat.jsonl``, ``settings.learning_rate``)."""
    label: str
    """What the text view calls it."""
    value: Any
    """The JSON value read from plan.json."""
    text: str
    """The value in words (``32,768``, ``8.9 GiB of 24.0 (fits)``)."""
    headline: bool = False
    """Shown for a stage that is added or removed (the others only when they change)."""
    exact: str | None = None
    """The value in finer words, shown when two values differ but their ``text`` is the same (``810 s``)."""
    parent: str | None = None
    """The fact this one details (a dataset's format under the dataset): the text view leaves it out where the
    parent itself is added or removed."""


@dataclass(frozen=True)
class StageFacts:
    """The review facts of one stage."""

    id: str
    """Stage id."""
    kind: str
    """Stage kind."""
    method: str
    """One-line description, as plan.json has it (``QLoRA r16 α32``)."""
    facts: tuple[Fact, ...]
    """Everything else, in reading order."""


@dataclass(frozen=True)
class ReviewFacts:
    """The review facts of one plan."""

    name: str
    """Pipeline name."""
    pipeline: tuple[Fact, ...]
    """Facts of the whole pipeline: model, hardware, versions, inputs outside the datasets, settings, warnings."""
    stages: tuple[StageFacts, ...]
    """Per stage, in run order."""


@dataclass(frozen=True)
class Change:
    """One fact that differs (``old`` or ``new`` is None where the fact is absent on that side)."""

    key: str
    """The fact's key."""
    label: str
    """The fact's label."""
    old: Fact | None
    """Before."""
    new: Fact | None
    """After."""

    def as_json(self) -> dict[str, Any]:
        """The change as JSON data."""
        return {"key": self.key, "label": self.label,
                "old": self.old.value if self.old else None, "new": self.new.value if self.new else None,
                "old_text": self.old.text if self.old else None, "new_text": self.new.text if self.new else None}


@dataclass(frozen=True)
class StageDiff:
    """What happens to one stage: added, removed, changed or the same, with the facts that differ."""

    id: str
    """Stage id."""
    symbol: Symbol
    """``+`` added, ``-`` removed, ``~`` changed, ``=`` the same."""
    kind: str
    """Its kind (the new side's, or the old side's when removed)."""
    old_method: str | None
    """Method before (None when added)."""
    new_method: str | None
    """Method after (None when removed)."""
    changes: tuple[Change, ...]
    """Facts that differ; for an added or removed stage every fact it has."""

    def as_json(self) -> dict[str, Any]:
        """The stage's entry in the JSON document."""
        return {"id": self.id, "kind": self.kind, "symbol": self.symbol,
                "method": {"old": self.old_method, "new": self.new_method},
                "changes": [c.as_json() for c in self.changes]}


@dataclass(frozen=True)
class SideInfo:
    """What one side of a diff was read from."""

    source: str
    """The side as the user named it (a path, a plan folder or ``REV:PATH``)."""
    kind: Literal["pipeline", "plan"]
    """``pipeline``: checked and planned in memory; ``plan``: a compiled plan's ``plan.json``."""
    pipeline: str
    """The pipeline's name."""

    def as_json(self) -> dict[str, Any]:
        """The side as JSON data."""
        return {"source": self.source, "kind": self.kind, "pipeline": self.pipeline}


@dataclass(frozen=True)
class ReviewDiff:
    """The difference between two plans, in review facts."""

    old: SideInfo
    """The old side."""
    new: SideInfo
    """The new side."""
    pipeline: tuple[Change, ...]
    """Pipeline-wide facts that differ."""
    stages: tuple[StageDiff, ...]
    """Every stage of either side: the new side's order, a removed stage after the stage it followed."""

    @property
    def equal(self) -> bool:
        """True when no review fact differs."""
        return not self.pipeline and all(s.symbol == "=" for s in self.stages)

    def count(self, symbol: Symbol) -> int:
        """How many stages carry ``symbol``."""
        return sum(s.symbol == symbol for s in self.stages)

    def summary_line(self) -> str:
        """``Stages: 1 to add, 2 to change, 0 to remove.`` (and the pipeline-wide changes), or that the plans
        are equal."""
        if self.equal:
            return "No changes: the plans are equal."
        line = f"Stages: {self.count('+')} to add, {self.count('~')} to change, {self.count('-')} to remove"
        if self.pipeline:
            n = len(self.pipeline)
            line += f"; {n} pipeline-wide change{'' if n == 1 else 's'}"
        return line + "."

    def as_json(self) -> dict[str, Any]:
        """The ``ftplan diff --json`` document (schema in the module docstring)."""
        return {
            "format": REVIEW_FORMAT, "ok": True, "equal": self.equal,
            "old": self.old.as_json(), "new": self.new.as_json(),
            "summary": {"add": self.count("+"), "change": self.count("~"), "remove": self.count("-"),
                        "pipeline_changed": bool(self.pipeline)},
            "summary_line": self.summary_line(),
            "pipeline": {"symbol": "~" if self.pipeline else "=", "changes": [c.as_json() for c in self.pipeline]},
            "stages": [s.as_json() for s in self.stages],
        }


# --- reading the facts ---------------------------------------------------------------------------------------

def review_facts(plan: dict[str, Any]) -> ReviewFacts:
    """The review facts of one ``plan.json`` document, read, never recomputed."""
    datasets = {str(d.get("path")) for s in plan.get("stages", []) for d in _stage_spec(s).get("datasets") or []}
    inputs = {f["path"]: f for f in plan.get("inputs", [])}
    warnings = _warnings(plan)
    stages = tuple(_stage_facts(s, inputs, warnings.get(s.get("id"), [])) for s in plan.get("stages", []))
    return ReviewFacts(name=plan.get("pipeline", {}).get("name", ""),
                       pipeline=tuple(_pipeline_facts(plan, inputs, datasets, warnings.get(None, []))),
                       stages=stages)


def _stage_spec(stage: dict[str, Any]) -> dict[str, Any]:
    """The resolved stage as its ``args.json`` holds it."""
    return (stage.get("args") or {}).get("stage") or {}


def _stage_facts(stage: dict[str, Any], inputs: dict[str, dict[str, Any]], warnings: list[Fact]) -> StageFacts:
    facts: list[Fact] = [Fact("kind", "kind", stage.get("kind"), str(stage.get("kind")))]
    if stage.get("strategy") is not None:
        facts.append(Fact("strategy", "strategy", stage["strategy"], stage["strategy"], headline=True))
    resources = stage.get("resources") or {}
    launch = {"launcher": stage.get("launcher"), **resources}
    on_gpu = resources.get("device") == "cuda"
    for key, label in _PLACEMENT_FACTS:
        if launch.get(key) is not None:
            facts.append(Fact(key, label, launch[key], _words(launch[key]),
                              headline=key == "device" or (on_gpu and key != "launcher")))
    batch = stage.get("batch") or {}
    # plan.json says whether the batch counts preference pairs; one written before it said so had only DPO's
    unit = "pairs" if batch.get("pairs", stage.get("kind") == "dpo") else "sequences"
    for key, label in _BATCH_FACTS:
        if batch.get(key) is not None:
            text = num(batch[key])
            text += f" {unit}" if key == "effective_batch" else " tokens" if key == "seq_len" else ""
            facts.append(Fact(key, label, batch[key], text, headline=True))
    if resources.get("steps") is not None:
        at_most = bool(resources.get("steps_at_most"))
        facts.append(Fact("steps", "optimizer steps", {"steps": resources["steps"], "at_most": at_most},
                          ("at most " if at_most else "") + num(resources["steps"]), headline=True))
    if resources.get("run_time_s") is not None:
        seconds = round(resources["run_time_s"])
        facts.append(Fact("run_time_s", "estimated run time", seconds, format_duration(seconds), headline=True,
                          exact=f"{num(seconds)} s"))
    facts += _memory_facts(stage)
    for d in _stage_spec(stage).get("datasets") or []:
        facts += _dataset_facts(d, inputs)
    spec = _flatten({k: v for k, v in _stage_spec(stage).items() if k not in _STAGE_KEYS_SHOWN})
    spec.pop("distributed.strategy", None)  # the resolved strategy is the named fact above
    facts += [Fact(f"settings.{k}", k, v, _words(v)) for k, v in sorted(spec.items())]
    facts += _sbatch_facts(stage.get("slurm"))
    facts += warnings
    return StageFacts(id=str(stage.get("id")), kind=str(stage.get("kind")), method=str(stage.get("method", "")),
                      facts=tuple(facts))


def _memory_facts(stage: dict[str, Any]) -> list[Fact]:
    """Peak memory per GPU against the card, with the verdict; or the host memory of a stage on the CPU."""
    est = stage.get("estimate") or {}
    out = []
    if est.get("capacity_bytes") is not None and (stage.get("resources") or {}).get("device") == "cuda":
        value = {"peak_bytes": est.get("peak_bytes"), "capacity_bytes": est["capacity_bytes"],
                 "verdict": est.get("verdict")}
        out.append(Fact("peak", "peak memory per GPU", value, peak_text(value), headline=True))
    host = est.get("host_bytes")
    if host:
        out.append(Fact("host_memory", "host memory", host, size(host), headline=True))
    return out


def peak_text(value: dict[str, Any]) -> str:
    """``8.9 GiB of 24.0 (fits)``: a peak against the card and its verdict."""
    return f"{gib_number(value.get('peak_bytes'))} GiB of {gib_number(value.get('capacity_bytes'))} " \
           f"({value.get('verdict')})"


def _dataset_facts(dataset: dict[str, Any], inputs: dict[str, dict[str, Any]]) -> list[Fact]:
    """A dataset by its path: its content hash and size (a local file) and how it is read."""
    path = str(dataset.get("path"))
    local = inputs.get(path)
    if local is not None:
        value: Any = {"sha256": local.get("sha256"), "size": local.get("size")}
        text = f"sha256 {str(local.get('sha256'))[:12]}, {num(local.get('size') or 0)} bytes"
    else:
        value, text = None, "not a local file (read at run time)"
    key = f"dataset:{path}"
    out = [Fact(key, f"dataset {path}", value, f"{dataset.get('format')}, {text}", headline=True)]
    rest = _flatten({k: v for k, v in dataset.items() if k != "path"})
    out += [Fact(f"{key}.{k}", f"dataset {path} {k}", v, _words(v), parent=key) for k, v in sorted(rest.items())]
    return out


def _sbatch_facts(job: dict[str, Any] | None) -> list[Fact]:
    """The Slurm job's ``sbatch`` options, one fact per option (``--mem=22G`` is ``sbatch --mem``: ``22G``)."""
    if not job:
        return []
    out = []
    for directive in job.get("sbatch") or []:
        name, sep, value = str(directive).partition("=")
        out.append(Fact(f"sbatch:{name}", f"sbatch {name}", value if sep else True, value if sep else "set"))
    return out


def _warnings(plan: dict[str, Any]) -> dict[str | None, list[Fact]]:
    """Warnings by the stage they are located in (None: the pipeline), as facts keyed by code and key path."""
    out: dict[str | None, list[Fact]] = {}
    for d in plan.get("diagnostics", []):
        if d.get("severity") != "warning":
            continue
        path = str(d.get("path") or "")
        stage = path[len("stages["):].split("]", 1)[0] if path.startswith("stages[") else None
        code = d.get("code")
        out.setdefault(stage, []).append(
            Fact(f"warning:{code}:{path}", f"warning[{code}] {path}", d.get("message"), str(d.get("message"))))
    return out


def _pipeline_facts(plan: dict[str, Any], inputs: dict[str, dict[str, Any]], datasets: set[str], warnings: list[Fact]) -> list[Fact]:
    target = plan.get("target") or {}
    resolved = (plan.get("pipeline") or {}).get("resolved") or {}
    model = resolved.get("model") or {}
    facts = [Fact("name", "name", (plan.get("pipeline") or {}).get("name"), str((plan.get("pipeline") or {}).get("name"))),
             Fact("model", "model", target.get("model"), str(target.get("model"))),
             Fact("model_revision", "model revision", model.get("revision"), _words(model.get("revision"))),
             Fact("architecture", "architecture", target.get("architecture"), _words(target.get("architecture"))),
             Fact("params", "parameters", target.get("params"), params_text(target.get("params"))),
             Fact("device", "device", target.get("device"), str(target.get("device")))]
    if target.get("gpu_name") is not None:
        gpu = {k: target.get(k) for k in ("gpu_name", "gpu_memory_gib", "gpu_arch")}
        memory = None if gpu["gpu_memory_gib"] is None else gib_amount(gpu["gpu_memory_gib"])
        detail = ", ".join(x for x in (memory, gpu["gpu_arch"]) if x)
        facts.append(Fact("gpu", "GPU", gpu, f"{gpu['gpu_name']} ({detail})"))
    facts += [Fact("nodes", "nodes", target.get("nodes"), _words(target.get("nodes"))),
              Fact("gpus_per_node", "GPUs per node", target.get("gpus_per_node"), _words(target.get("gpus_per_node")))]
    facts += [Fact(f"version:{name}", f"version {name}", v, str(v))
              for name, v in sorted((plan.get("versions") or {}).items())]
    facts.append(Fact("ftplan_version", "compiled by ftplan", plan.get("ftplan_version"), str(plan.get("ftplan_version"))))
    for path in sorted(set(inputs) - datasets):
        f = inputs[path]
        facts.append(Fact(f"input:{path}", f"input {path}", {"sha256": f.get("sha256"), "size": f.get("size")},
                          f"sha256 {str(f.get('sha256'))[:12]}, {num(f.get('size') or 0)} bytes"))
    settings = {k: v for k, v in _flatten(resolved).items()
                if k not in _PIPELINE_KEYS_SHOWN and not k.startswith("stages")}
    facts += [Fact(f"settings.{k}", k, v, _words(v)) for k, v in sorted(settings.items())]
    return facts + warnings


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"adapter.r": 16, "report_to": ["tensorboard"]}``: dicts are walked, lists of
    scalars kept whole, lists holding dicts indexed (``extra[0].x``)."""
    if isinstance(data, dict):
        if not data and prefix:
            return {prefix: {}}
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list) and any(isinstance(x, (dict, list)) for x in data):
        out = {}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: data}


def _words(value: Any) -> str:
    """A settings value as the text view writes it: ``unset``, ``true``, ``0.0002``, ``a, b``, ``none``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return num(value) if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_words(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False) if value else "none"
    return str(value)


# --- comparing two plans -----------------------------------------------------------------------------------

def diff_plans(old: dict[str, Any], new: dict[str, Any], old_side: SideInfo | None = None,
               new_side: SideInfo | None = None) -> ReviewDiff:
    """What changes from the plan ``old`` to the plan ``new`` (two plan.json documents), in review facts."""
    a, b = review_facts(old), review_facts(new)
    old_side = old_side or SideInfo("old", "plan", a.name)
    new_side = new_side or SideInfo("new", "plan", b.name)
    return ReviewDiff(old_side, new_side, tuple(_changes(a.pipeline, b.pipeline)), tuple(_stage_diffs(a, b)))


def _changes(old: Iterable[Fact], new: Iterable[Fact]) -> list[Change]:
    """Facts that differ, in the new side's order, facts only the old side has after the fact they followed."""
    before = {f.key: f for f in old}
    after = {f.key: f for f in new}
    out = [Change(k, f.label, before.get(k), f) for k, f in after.items()
           if k not in before or before[k].value != f.value]
    gone = [Change(k, f.label, f, None) for k, f in before.items() if k not in after]
    return _interleave(out, gone, [f.key for f in old], lambda c: c.key)


def _stage_diffs(a: ReviewFacts, b: ReviewFacts) -> list[StageDiff]:
    old = {s.id: s for s in a.stages}
    new = {s.id: s for s in b.stages}
    out = []
    for s in b.stages:
        if s.id not in old:
            out.append(StageDiff(s.id, "+", s.kind, None, s.method,
                                 tuple(Change(f.key, f.label, None, f) for f in s.facts)))
            continue
        o = old[s.id]
        changes = tuple(_changes(o.facts, s.facts))
        same = not changes and o.method == s.method
        out.append(StageDiff(s.id, "=" if same else "~", s.kind, o.method, s.method, changes))
    gone = [StageDiff(s.id, "-", s.kind, s.method, None, tuple(Change(f.key, f.label, f, None) for f in s.facts))
            for s in a.stages if s.id not in new]
    return _interleave(out, gone, [s.id for s in a.stages], lambda d: d.id)


def _interleave(kept: list[T], gone: list[T], old_order: list[str], key: Callable[[T], str]) -> list[T]:
    """``kept`` in order, each item of ``gone`` placed after the item it followed on the old side."""
    result = list(kept)
    for item in gone:
        at = 0
        for k in reversed(old_order[: old_order.index(key(item))]):
            where = next((i for i, x in enumerate(result) if key(x) == k), None)
            if where is not None:
                at = where + 1
                break
        result.insert(at, item)
    return result
