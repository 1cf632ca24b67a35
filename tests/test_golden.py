"""Golden plans: every example compiles to exactly the committed files, byte for byte.

Regenerate after an intended change with ``python -m pytest tests/test_golden.py --update-golden`` and
review the diff like any other change.
"""

import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from ftplan.api import check_file, plan_files
from ftplan.console import print_check

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))


def _check_text(result) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=140, color_system=None, highlight=False, soft_wrap=True)
    print_check(result, console, console)
    return buf.getvalue()


def _compiled(example: str, tmp_path: Path) -> dict[str, str]:
    # compile a copy, so nothing local (a built demo model, outputs) can leak into the result
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns(".*"))
    result = check_file(tmp_path / "examples" / f"{example}.yaml")
    files = {"check.txt": _check_text(result).replace(str(tmp_path) + "/", "")}
    if result.ok:
        files.update({f"plan/{k}": v for k, v in plan_files(result, f"../plans/{example}").items()})
    return files


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_compiles_to_golden(example, tmp_path, request):
    files = _compiled(example, tmp_path)
    golden = GOLDEN / example
    if request.config.getoption("--update-golden"):
        shutil.rmtree(golden, ignore_errors=True)
        for rel, text in files.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_bytes(text.encode("utf-8"))
        return
    expected = {p.relative_to(golden).as_posix(): p.read_bytes().decode("utf-8")
                for p in sorted(golden.rglob("*")) if p.is_file()}
    assert sorted(files) == sorted(expected), "files added or removed; rerun with --update-golden and review"
    for rel in files:
        assert files[rel] == expected[rel], f"{example}/{rel} differs from the golden copy"


def test_every_example_but_the_oom_one_compiles(tmp_path):
    for example in EXAMPLES:
        files = _compiled(example, tmp_path / example)
        assert ("plan/plan.json" in files) == (example != "too-big"), example
