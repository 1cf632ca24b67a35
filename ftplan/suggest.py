"""Did-you-mean suggestions for misspelt keys, enum values, stage ids and catalog names."""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Iterable

__all__ = ["close_matches", "did_you_mean", "fold"]

_CUTOFF = 0.6


def fold(word: str) -> str:
    """Case and separator folded form: ``Learning-Rate``, ``learning_rate`` and ``learningrate`` are equal."""
    return "".join(ch for ch in word.lower() if ch not in "-_ .")


def close_matches(word: str, choices: Iterable[str], n: int = 2) -> list[str]:
    """Up to ``n`` choices that look like ``word``, best first.

    A choice equal to ``word`` up to case and ``-``/``_``/space separators always wins; otherwise choices are
    ranked by ``difflib`` similarity of their lowercased forms (at least 0.6), ties kept in ``choices`` order.
    """
    options = list(dict.fromkeys(str(c) for c in choices))
    folded = fold(word)
    exact = [c for c in options if folded and fold(c) == folded and c != word]
    if exact:
        return exact[:n]
    low = word.lower()
    scored = []
    for index, choice in enumerate(options):
        if choice == word:
            continue
        m = SequenceMatcher(None, low, choice.lower())
        if m.real_quick_ratio() >= _CUTOFF and m.quick_ratio() >= _CUTOFF:
            ratio = max(m.ratio(), SequenceMatcher(None, folded, fold(choice)).ratio())
            if ratio >= _CUTOFF:
                scored.append((-ratio, index, choice))
    return [choice for _, _, choice in sorted(scored)[:n]]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``did you mean 'base'?`` (or ``'a' or 'b'``) for the closest choices to ``word``, or None."""
    close = close_matches(str(word), choices)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
