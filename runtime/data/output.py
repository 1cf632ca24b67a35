"""Writing one output group: deterministic train/validation split, dataset weights, packing, ``save_to_disk``,
statistics.

Layout under the stage's output folder: ``<group>/train`` and, when ``val_fraction > 0``, ``<group>/validation``,
each a ``datasets`` folder with the group's columns:

* ``sft``: ``input_ids``, ``completion_mask`` (1 = trained), plus ``seq_lengths`` when packed;
* ``preference``: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (TRL 1.16 DPO's tokenized columns);
* ``kto``: ``prompt_ids``, ``completion_ids``, ``label``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from .errors import DataError
from .manifest import GroupReport, PackingStats, SplitReport, TokenStats, token_stats
from .pack import pack_examples
from .tokenize import Example, KtoExample, PairExample, SftExample


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/validation membership: a seeded shuffle picks ``round(n * val_fraction)`` (at least
    one) validation rows; both lists keep the original order."""
    if val_fraction <= 0:
        return list(range(n)), []
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise DataError(f"only {n} example(s) left; too few to hold out val_fraction {val_fraction} for "
                        "validation (add data or set val_fraction: 0)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


def columns_of(group: str, packing: bool) -> list[str]:
    """Column names of a group's saved datasets."""
    if group == "sft":
        return ["input_ids", "completion_mask"] + (["seq_lengths"] if packing else [])
    if group == "preference":
        return ["prompt_ids", "chosen_ids", "rejected_ids"]
    return ["prompt_ids", "completion_ids", "label"]


def weighted(indices: list[int], origins: list[int], weights: list[float], seed: int) -> list[int]:
    """The training split mixed by dataset weights: each dataset's members taken ``int(weight)`` times, plus a seeded
    sample of the fraction of them that is left (at least one member when the weight is below 1), kept in order."""
    if all(w == 1.0 for w in weights):
        return indices
    rng = random.Random(seed)
    out: list[int] = []
    for position, weight in enumerate(weights):
        members = [i for i in indices if origins[i] == position]
        whole, part = int(weight), weight - int(weight)
        extra = round(part * len(members))
        if members and whole == 0:
            extra = max(1, extra)
        out += members * whole + sorted(rng.sample(members, min(extra, len(members))))
    return out


def write_group(group: str, examples: list[Example], stage: Any, folder: Path,
                origins: list[int] | None = None) -> GroupReport:
    """Split, weight the training split by its datasets' ``weight`` (``origins``: each example's dataset position),
    pack (supervised, when ``packing``) and save one group under ``folder/<group>/``."""
    packing = group == "sft" and stage.packing
    train, val = split_indices(len(examples), stage.val_fraction, stage.seed)
    if origins is not None:
        train = weighted(train, origins, [d.weight for d in stage.datasets], stage.seed)
    splits = {}
    for name, idx in (("train", train), ("validation", val)):
        if name == "validation" and stage.val_fraction <= 0:
            continue
        chosen = [examples[i] for i in idx]
        stats = _stats(chosen)
        packed_stats = None
        if packing:
            rows = pack_examples(chosen, stage.max_seq_len)  # type: ignore[arg-type]
            table = {"input_ids": [r.input_ids for r in rows], "completion_mask": [r.completion_mask for r in rows],
                     "seq_lengths": [r.seq_lengths for r in rows]}
            tokens = sum(len(r.input_ids) for r in rows)
            packed_stats = PackingStats(sequences=len(chosen), rows=len(rows), capacity=stage.max_seq_len,
                                        fill_ratio=round(tokens / (len(rows) * stage.max_seq_len), 4)
                                        if rows else 0.0)
        else:
            table = _table(group, chosen)
        _save(table, folder / group / name)
        splits[name] = SplitReport(rows=len(next(iter(table.values()))), tokens=stats, packing=packed_stats)
    return GroupReport(columns=columns_of(group, packing), splits=splits)


def _table(group: str, examples: list[Example]) -> dict[str, list[Any]]:
    return {c: [getattr(e, c) for e in examples] for c in columns_of(group, False)}


def _stats(examples: list[Example]) -> TokenStats:
    lengths, trained, total = [], 0, 0
    for e in examples:
        if isinstance(e, SftExample):
            lengths.append(len(e.input_ids))
            total += len(e.input_ids)
            trained += sum(e.completion_mask)
        elif isinstance(e, PairExample):
            answers = len(e.chosen_ids) + len(e.rejected_ids)
            lengths.append(len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)))
            total += len(e.prompt_ids) + answers
            trained += answers
        elif isinstance(e, KtoExample):
            lengths.append(len(e.prompt_ids) + len(e.completion_ids))
            total += lengths[-1]
            trained += len(e.completion_ids)
    return token_stats(lengths, trained, total)


def _save(table: dict[str, list[Any]], path: Path) -> None:
    from datasets import Dataset, Features, List, Value

    kinds = {"completion_mask": List(Value("int8")), "label": Value("bool")}
    features = Features({c: kinds.get(c, List(Value("int32"))) for c in table})
    Dataset.from_dict(table, features=features).save_to_disk(str(path))
