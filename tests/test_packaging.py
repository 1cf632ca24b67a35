"""Packaging: the compiler stays light, the wheel ships the templates, the JSON Schema and the py.typed marker, and
maps runtime/ to ftplan_runtime."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_ftplan_pulls_in_no_heavy_module():
    code = (
        "import sys, ftplan, ftplan.api, ftplan.cli, ftplan.console, ftplan.schemas, ftplan.catalog;"
        "import ftplan.estimate, ftplan.checks, ftplan.plan, ftplan.render, ftplan.write;"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'trl', 'accelerate', 'deepspeed', 'datasets',"
        " 'runtime', 'ftplan_runtime', 'numpy') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_full_check_imports_no_heavy_module():
    code = (
        "import sys; from ftplan.cli import main; from rich.console import Console; import io;"
        f"rc = main(['check', {str(ROOT / 'examples' / 'llama3-8b-qlora-24gb.yaml')!r}],"
        " out=Console(file=io.StringIO()), err=Console(file=io.StringIO()));"
        "bad = [m for m in ('torch', 'transformers', 'ftplan_runtime', 'numpy') if m in sys.modules];"
        "print(rc, ','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"], out.stdout  # the check passed and nothing heavy was imported


@pytest.mark.slow
def test_wheel_ships_templates_and_maps_the_runtime(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ftplan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ftplan/templates/run.sh.j2" in names
    assert "ftplan/py.typed" in names, "the PEP 561 marker: without it type checkers ignore ftplan's annotations"
    assert "ftplan/schemas/pipeline.schema.json" in names
    assert any(n.startswith("ftplan_runtime/kernels/") for n in names)
    assert "ftplan_runtime/__main__.py" in names
    assert not any(n.startswith("runtime/") for n in names), "a plain `runtime` package would shadow users' modules"
    assert not any(n.startswith(("tests/", "examples/", "bench/")) for n in names)
    # every source module is in the wheel (a subpackage missing from pyproject's list would be dropped)
    for folder, package in (("ftplan", "ftplan"), ("runtime", "ftplan_runtime")):
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{rel}" in names, f"{folder}/{rel} is not packaged"
