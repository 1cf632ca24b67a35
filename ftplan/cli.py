"""The ``ftplan`` command line: argv in, exit code out. All logic lives in ``ftplan.api``; this only parses
arguments and prints.

Exit codes: 0 ok, 1 invalid pipeline, 2 usage error, 3 ``compile --check`` found drift; ``diff`` exits 0 when
the two plans are equal, 1 when they differ and 2 when a side cannot be read or planned (like ``diff``).

With ``--json``, ``check`` and ``compile`` print one JSON report on stdout whatever happens: a missing or
unusable pipeline file is an FT000 diagnostic, a plan folder that cannot be written and a command line that
does not parse are an ``error`` object (``message``, ``hint``); the exit codes stay the same.

The CLI catches only the errors it owns: a command line argparse refuses, a pipeline argument that is not a file,
a plan folder or file that cannot be written (``WriteError``, ``PlanFolderError``, ``OSError`` while writing) and
each command's own refusals (``InitError``, ``ReportError``, ``SideError``). Any other exception is a bug in
ftplan and keeps its traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from . import __version__
from .units import gib_amount, gib_number, num, params_text

if TYPE_CHECKING:  # pragma: no cover
    from .review import ReviewDiff

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_DRIFT = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ftplan", description="Check and compile LLM fine-tuning pipelines against their target GPUs.")
    parser.add_argument("--version", action="version", version=f"ftplan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="type-check a pipeline, run the pre-launch rules, estimate VRAM")
    check.add_argument("pipeline", help="pipeline YAML file")
    check.add_argument("--json", action="store_true", help="print a JSON report on stdout (for CI)")
    check.add_argument("-v", "--verbose", action="store_true", help="also print informational notes")
    check.add_argument("--full-data", action="store_true", help="check every row of every local dataset file "
                       "(by default files over 16 MiB are checked on their first 1,000 rows)")

    comp = sub.add_parser("compile", help="write the reviewable launch plan of a pipeline")
    comp.add_argument("pipeline", help="pipeline YAML file")
    comp.add_argument("-o", "--out", required=True, help="plan folder to write (replaced atomically)")
    comp.add_argument("--check", action="store_true", help="write nothing; exit 3 if the folder would change")
    comp.add_argument("--json", action="store_true", help="print a JSON report on stdout (for CI)")
    comp.add_argument("-v", "--verbose", action="store_true", help="also print informational notes")
    comp.add_argument("--full-data", action="store_true", help="check every row of every local dataset file")

    diff = sub.add_parser("diff", help="what changes between two plans, stage by stage (exit 0 equal, 1 differ, "
                          "2 error)")
    for side in ("old", "new"):
        diff.add_argument(side, help="a pipeline file, a compiled plan folder, or REV:PATH, a git revision of "
                          "either (e.g. main:pipelines/x.yaml)")
    diff.add_argument("--json", action="store_true", help="print a JSON document on stdout (for bots)")

    sub.add_parser("schema", help="print the pipeline JSON Schema (for editor completion)")
    gpus = sub.add_parser("gpus", help="list the GPU catalog")
    gpus.add_argument("--json", action="store_true", help="print JSON")
    models = sub.add_parser("models", help="list the model-architecture catalog")
    models.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("codes", help="list every diagnostic code")

    init = sub.add_parser("init", help="write a commented starter pipeline (data -> SFT) that fits one GPU")
    init.add_argument("--model", required=True, metavar="KEY", help="catalog model key or hub id (`ftplan models`)")
    init.add_argument("--gpu", required=True, metavar="KEY", help="catalog GPU key (`ftplan gpus`)")
    init.add_argument("-o", "--out", default="pipeline.yaml", metavar="FILE",
                      help="pipeline file to create (default pipeline.yaml); an existing file is never replaced")
    init.add_argument("--name", metavar="NAME", help="pipeline name (default: MODEL-sft)")

    report = sub.add_parser("report", help="write a compiled plan's HTML page (plan.html) from its plan.json")
    report.add_argument("plan_dir", metavar="PLAN_DIR", help="plan folder written by `ftplan compile`")
    report.add_argument("-o", "--out", metavar="FILE", help="write the page to FILE instead of PLAN_DIR/plan.html")
    report.add_argument("--open", action="store_true", help="then open the page in a web browser")

    imp = sub.add_parser("import", help="write an ftplan pipeline equivalent to another tool's config, then check it")
    tools = imp.add_subparsers(dest="tool", required=True, metavar="TOOL")
    axolotl = tools.add_parser("axolotl", help="an Axolotl training config (YAML)")
    axolotl.add_argument("config", metavar="CONFIG", help="the Axolotl config file")
    axolotl.add_argument("-o", "--out", metavar="FILE", help="pipeline file to create (default CONFIG-NAME.ftplan.yaml "
                         "in the current folder); an existing file is never replaced")
    axolotl.add_argument("--gpu", metavar="KEY",
                         help="catalog GPU the pipeline is checked against (`ftplan gpus`; default h100-sxm-80gb)")
    axolotl.add_argument("--gpus", type=int, metavar="N", help="GPUs per node (default 1, or 8 for a config that "
                         "shards with DeepSpeed or FSDP)")
    axolotl.add_argument("--name", metavar="NAME", help="pipeline name (default: MODEL-KIND)")
    return parser


def main(argv: list[str] | None = None, *, out: Console | None = None, err: Console | None = None) -> int:
    """Run one ftplan command; returns the exit code (testable: no ``sys.exit`` here)."""
    out = out or _console(stderr=False)
    err = err or _console(stderr=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    said, complained = io.StringIO(), io.StringIO()
    try:  # argparse writes usage, help and --version to sys.stdout/stderr: send them to our consoles instead
        with redirect_stdout(said), redirect_stderr(complained):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code != 0 and _wants_json(argv):
            lines = complained.getvalue().strip().splitlines()
            reason = lines[-1].split(": error: ", 1)[-1] if lines else "invalid command line"
            _print_json(out, _failure_json(reason, f"see `ftplan {argv[0]} --help`"))
            return EXIT_USAGE
        out.out(said.getvalue(), end="", highlight=False)
        err.out(complained.getvalue(), end="", highlight=False)
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    handler = {"check": _check, "compile": _compile, "schema": _schema, "gpus": _gpus, "models": _models,
               "codes": _codes, "init": _init, "diff": _diff,
               "report": _report, "import": _import}[args.command]
    return handler(args, out, err)


def _console(*, stderr: bool) -> Console:
    """A console that wraps long diagnostics but never squeezes the stage table below 120 columns."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal or console.width < 120:
        console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=max(console.width, 120))
    return console


def _wants_json(argv: list[str]) -> bool:
    """True for a ``check``, ``compile`` or ``diff`` command line asking for ``--json`` (even one that does not
    parse)."""
    return bool(argv) and argv[0] in ("check", "compile", "diff") and "--json" in argv


def _print_json(out: Console, report: dict[str, Any]) -> None:
    """One JSON document on stdout."""
    out.print_json(json.dumps(report))


def _failure_json(message: str, hint: str) -> dict[str, Any]:
    """The JSON report of a command line that did not parse: nothing checked, one ``error``."""
    return {"ok": False, "file": None, "pipeline": None, "diagnostics": [], "stages": [],
            "error": {"message": message, "hint": hint}}


def _cannot_write(args: argparse.Namespace, report: dict[str, Any], reason: str, hint: str | None, out: Console,
                  err: Console) -> int:
    """Report a plan folder that cannot be written (a usage error): an ``error:`` line on stderr, or with
    ``--json`` the check report with ``ok: false`` and an ``error`` object."""
    message = f"cannot write the plan to {args.out}: {reason}"
    if args.json:
        report = {k: v for k, v in report.items() if k != "changes"}
        _print_json(out, {**report, "ok": False,
                          "error": {"message": message, "hint": hint or "choose another output folder with -o"}})
    else:
        err.print(Text(f"error: {message}" + (f"; {hint}" if hint else "")))
    return EXIT_USAGE


def _pipeline_usage_error(args: argparse.Namespace, out: Console, err: Console) -> bool:
    """Report a pipeline argument that is not an existing file (a usage error); True when it was one.

    Plain output is one ``error:`` line on stderr; ``--json`` prints a report whose FT000 diagnostic says the
    same."""
    pipeline = args.pipeline
    path = Path(pipeline)
    if path.is_file():
        return False
    what = ("is a folder, not a pipeline file" if path.is_dir() else "is not a regular file" if path.exists()
            else "does not exist")
    hint = "pass the pipeline's YAML file"
    if args.json:
        from .api import CheckResult
        from .console import check_json
        from .diagnostics import error

        problem = error("FT000", (), f"{pipeline} {what}", f"{hint} (the path is relative to the current folder)")
        _print_json(out, check_json(CheckResult(pipeline, diagnostics=(problem,))))
    else:
        err.print(Text(f"error: {pipeline} {what}; {hint}"))
    return True


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))


def _check(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .api import check_file
    from .console import check_json, print_check

    if _pipeline_usage_error(args, out, err):
        return EXIT_USAGE
    result = check_file(args.pipeline, full_data=args.full_data)
    if args.json:
        _print_json(out, check_json(result))
    else:
        print_check(result, out, err, verbose=args.verbose)
    return EXIT_OK if result.ok else EXIT_INVALID


def _compile(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .api import check_file, plan_dir_from_root, plan_files
    from .console import check_json, print_check, print_run
    from .plan import PlanFolderError
    from .write import WriteError, diff_plan, write_plan

    if _pipeline_usage_error(args, out, err):
        return EXIT_USAGE
    result = check_file(args.pipeline, full_data=args.full_data)
    report = check_json(result)
    if not result.ok:
        if args.json:
            _print_json(out, report)
        else:
            print_check(result, out, err, verbose=args.verbose)
        return EXIT_INVALID
    out_dir = Path(args.out)
    try:
        files = plan_files(result, plan_dir_from_root(args.pipeline, out_dir))
    except PlanFolderError as exc:  # the folder cannot be placed relative to the pipeline's; the message says why
        return _cannot_write(args, report, str(exc), None, out, err)
    try:  # only the plan folder's own problems are reported here: anything else is a bug and keeps its traceback
        diff = diff_plan(files, out_dir)
        if not args.check:
            write_plan(files, out_dir)
    except WriteError as exc:  # the message says what to do
        return _cannot_write(args, report, str(exc), None, out, err)
    except OSError as exc:  # e.g. a parent of the folder is a file, or no permission
        where = f" ({exc.filename})" if exc.filename else ""
        return _cannot_write(args, report, f"{exc.strerror or exc}{where}", "choose another output folder with -o",
                             out, err)
    report["changes"] = diff.as_json()
    if args.check:
        from .review_sources import stale_review

        review = None if diff.clean else stale_review(out_dir, files["plan.json"], args.pipeline)
        if review is not None:
            report["review"] = review.as_json()
        if args.json:
            _print_json(out, report)
        else:
            if review is not None and not review.equal:
                _print_review(review, out)
                out.print()
            out.print(Text(diff.summary(out_dir)))
        return EXIT_OK if diff.clean else EXIT_DRIFT
    if args.json:
        _print_json(out, report)
    else:
        print_check(result, out, err, verbose=args.verbose)
        out.print(Text(diff.summary(out_dir)))
        print_run(result, args.out, out)
    return EXIT_OK


def _diff(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .review_sources import SideError, diff_sources, side_error_json
    from .review_text import side_error_lines

    try:
        review = diff_sources(args.old, args.new)
    except SideError as exc:
        if args.json:
            out.print_json(json.dumps(side_error_json(exc), sort_keys=True))
        else:
            for line in side_error_lines(exc):
                err.print(Text(line, style="bold red" if line.startswith("error") else ""))
        return EXIT_USAGE
    if args.json:
        out.print_json(json.dumps(review.as_json(), sort_keys=True))
    else:
        _print_review(review, out)
    return EXIT_OK if review.equal else EXIT_INVALID


def _print_review(review: ReviewDiff, out: Console) -> None:
    """The semantic diff, each line coloured by its marker (``+`` green, ``~`` yellow, ``-`` red)."""
    from .review_text import diff_lines

    styles = {"+": "green", "~": "yellow", "-": "red"}
    for line in diff_lines(review):
        marker = line.lstrip()[:1]
        header = line.startswith(("--- ", "+++ "))
        out.print(Text(line, style="bold" if header else styles.get(marker, "")))


def _schema(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .json_schema import pipeline_schema_text

    out.out(pipeline_schema_text(), end="", highlight=False)
    return EXIT_OK


def _gpus(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.table import Table

    from .catalog import GPUS

    if args.json:
        out.print_json(json.dumps({k: {"name": g.name, "memory_mib": g.memory_mib, "compute_capability":
                                       g.compute_capability, "bf16": g.bf16, "fp8": g.fp8,
                                       "peak_bf16_tflops": g.peak_bf16_tflops, "aliases": list(g.aliases)}
                                   for k, g in GPUS.items()}))
        return EXIT_OK
    table = Table(box=None, header_style="bold")
    for col in ("key", "name", "memory", "sm", "bf16", "fp8", "bf16 TFLOP/s"):
        table.add_column(col)
    for key, g in GPUS.items():
        sm = f"{g.compute_capability[0]}.{g.compute_capability[1]}" if g.compute_capability else g.arch
        table.add_row(key, g.name, gib_amount(g.memory_gib), sm, "yes" if g.bf16 else "no",
                      "yes" if g.fp8 else "no", f"{g.peak_bf16_tflops:g}")
    out.print(table)
    return EXIT_OK


def _models(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.table import Table

    from .catalog import MODELS, param_counts

    if args.json:
        out.print_json(json.dumps({k: {"family": m.family, "hub_ids": list(m.hub_ids),
                                       "params": param_counts(m).total} for k, m in MODELS.items()}))
        return EXIT_OK
    table = Table(box=None, header_style="bold")
    for col in ("key", "family", "params", "layers", "hidden", "vocab", "context"):
        table.add_column(col)
    for key, m in MODELS.items():
        n = param_counts(m).total
        table.add_row(key, m.family, params_text(n), str(m.num_layers), str(m.hidden_size), num(m.vocab_size),
                      num(m.max_position_embeddings))
    out.print(table)
    return EXIT_OK


def _codes(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .codes import all_codes

    for code, title in all_codes().items():
        out.print(Text(f"{code}  {title}"))
    return EXIT_OK


def _report(args: argparse.Namespace, out: Console, err: Console) -> int:
    import webbrowser

    from .report import ReportError, write_report

    try:
        result = write_report(Path(args.plan_dir), Path(args.out) if args.out else None)
    except ReportError as exc:
        err.print(Text(f"error: {exc}"))
        return EXIT_USAGE if exc.usage else EXIT_INVALID
    out.print(Text(f"wrote {result.path}" if result.changed else f"{result.path}: up to date"))
    if args.open:
        uri = result.path.resolve().as_uri()
        if not webbrowser.open(uri):
            err.print(Text(f"error: no web browser could be started; open {uri} yourself"))
            return EXIT_USAGE
        out.print(Text(f"opened {uri}"))
    return EXIT_OK


def _init(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .init import InitError, starter_pipeline

    path = Path(args.out)
    if path.exists():
        err.print(Text(f"error: {path} already exists; ftplan init never replaces a file: choose another name "
                       "with -o, or remove it"))
        return EXIT_USAGE
    try:
        starter = starter_pipeline(args.model, args.gpu, path, name=args.name)
    except InitError as exc:
        err.print(Text(f"error: {exc.message}; {exc.hint}"))
        return EXIT_USAGE if exc.usage else EXIT_INVALID
    if not _write_new(path, starter.text, "init", err):
        return EXIT_USAGE
    method = {"lora": "LoRA", "qlora": "QLoRA"}[starter.recipe.adapter]
    out.print(Text(f"wrote {path}: {starter.model.key} {method} r16, micro_batch {starter.recipe.micro_batch} × "
                   f"grad_accum {starter.recipe.grad_accum} on 1 × {starter.gpu.name} (estimated peak "
                   f"{gib_number(starter.peak_bytes)} of {gib_amount(starter.gpu.memory_gib)})"))
    out.print(Text(f"next: ftplan check {path}"))
    return EXIT_OK


def _write_new(path: Path, text: str, command: str, err: Console) -> bool:
    """Write ``text`` to the new file ``path`` (never replacing one); on failure say why on ``err``, return False."""
    from .init import write_new_file

    try:
        write_new_file(path, text)
    except FileExistsError:
        err.print(Text(f"error: {path} already exists; ftplan {command} never replaces a file"))
        return False
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
        err.print(Text(f"error: cannot write {path}: {exc.strerror or exc}{where}; choose another file with -o"))
        return False
    return True


def _import(args: argparse.Namespace, out: Console, err: Console) -> int:
    from .api import check_file
    from .console import print_check
    from .importers import DEFAULT_GPU, ImportRefused, import_axolotl
    from .importers.config_file import read_config
    from .init import InitError, find_gpu, schema_reference

    config = Path(args.config)
    path = Path(args.out) if args.out else Path(f"{config.stem}.ftplan.yaml")
    if path.exists():
        err.print(Text(f"error: {path} already exists; ftplan import never replaces a file: choose another name "
                       "with -o, or remove it"))
        return EXIT_USAGE
    if args.gpus is not None and not 1 <= args.gpus <= 16:
        err.print(Text(f"error: --gpus {args.gpus}: a node has 1 to 16 GPUs"))
        return EXIT_USAGE
    try:
        gpu = find_gpu(args.gpu or DEFAULT_GPU)
        imported = import_axolotl(read_config(config), gpu=gpu.key, gpus_per_node=args.gpus, name=args.name,
                                  source=config.name, schema=schema_reference(path))
    except InitError as exc:
        err.print(Text(f"error: {exc.message}; {exc.hint}"))
        return EXIT_USAGE
    except ImportRefused as exc:
        err.print(Text(f"error: {exc.message}; {exc.hint}"))
        return EXIT_USAGE if exc.usage else EXIT_INVALID
    if not _write_new(path, imported.text, "import", err):
        return EXIT_USAGE
    out.print(Text(f"wrote {path}: a {imported.kind} pipeline from {config}; {len(imported.mapped)} Axolotl keys "
                   f"carried over, {len(imported.unmapped)} not (each listed at the end of the file with the reason)"))
    out.print(Text(f"ftplan check {path}:"))
    result = check_file(str(path))
    print_check(result, out, err, verbose=False)
    return EXIT_OK if result.ok else EXIT_INVALID
