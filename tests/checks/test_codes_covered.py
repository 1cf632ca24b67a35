"""Every rule code has a test: each code in ``ftplan.checks.CODES`` and ``ftplan.resolve.CODES`` must appear in
some test file under tests/ (other than this one)."""

import re
from pathlib import Path

from ftplan import lineage, resolve
from ftplan.checks import CODES, RULE_MODULES

TESTS = Path(__file__).resolve().parents[1]


def _test_sources() -> str:
    here = Path(__file__).resolve()
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(TESTS.rglob("*.py")) if p.resolve() != here)


def test_every_code_appears_in_a_test():
    text = _test_sources()
    all_codes = {**CODES, **resolve.CODES}
    missing = [code for code in sorted(all_codes) if not re.search(rf"\b{code}\b", text)]
    assert not missing, f"rule codes without a test: {', '.join(missing)}"


def test_codes_are_unique_well_formed_and_titled():
    seen: dict[str, str] = {}
    owners = [("resolve", resolve.CODES), ("lineage", lineage.CODES)]
    owners += [(m.__name__, m.CODES) for m in RULE_MODULES]
    for owner, codes in owners:
        for code, title in codes.items():
            assert re.fullmatch(r"FT\d{3}", code), code
            assert title and "\n" not in title, code
            assert code not in seen, f"{code} defined by {seen.get(code)} and {owner}"
            seen[code] = owner
    assert all("FT010" <= c <= "FT019" for c in resolve.CODES)


def test_rule_modules_keep_their_ranges():
    ranges = {"hardware": "FT30", "topology": "FT31", "runtime_limits": "FT32", "slurm": "FT33", "offload": "FT3", "model": "FT4",
              "tokenizer": "FT4",
              "data": "FT5", "training": "FT6", "kinds": "FT61", "preference": "FT62"}
    for module in RULE_MODULES:
        prefix = ranges[module.__name__.rsplit(".", 1)[-1]]
        assert all(code.startswith(prefix) for code in module.CODES), module.__name__
