"""Did-you-mean suggestions for misspelt keys, enum values, stage ids and catalog names: every "did you mean"
ftplan prints is worded by ``suggestion`` from matches found here."""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Iterable, Mapping, Sequence

__all__ = ["close_keys", "close_matches", "did_you_mean", "fold", "suggestion"]

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


def close_keys(word: str, spellings: Mapping[str, Iterable[str]], n: int = 2) -> list[str]:
    """Up to ``n`` keys whose spellings (the key and its aliases, lowercase, ``-``-separated tokens) look like
    ``word``, best first: the catalog's GPU names.

    A key with a spelling whose first token equals the word's (``h100`` in ``h100-sxm-80gb``) ranks above the
    rest, so ``h100-80`` suggests the H100 variants rather than ``a100-sxm-80gb``; each further token of the word
    that starts a token of the key (``80`` of ``80gb``) adds a little."""
    norm = "-".join(word.strip().lower().replace("_", " ").split())
    head, *rest = norm.split("-")
    scored = []
    for key, names in spellings.items():
        forms = tuple(names)
        ratio = max(SequenceMatcher(None, norm, form).ratio() for form in forms)
        same_model = any(form.split("-")[0] == head for form in forms)
        tokens = {t for form in forms for t in form.split("-")}
        shared = sum(any(t.startswith(w) for t in tokens) for w in rest if w)
        if ratio >= _CUTOFF or same_model:
            scored.append((-(ratio + (0.5 if same_model else 0.0) + 0.1 * shared), key))
    return [key for _, key in sorted(scored)[:n]]


def suggestion(close: Sequence[str]) -> str | None:
    """``did you mean 'base'?`` (or ``'a' or 'b'``) naming ``close``, best first; None when it is empty."""
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``did you mean 'base'?`` (or ``'a' or 'b'``) for the closest choices to ``word``, or None."""
    return suggestion(close_matches(str(word), choices))
