"""Measure peak GPU memory of compiled plans against ``ftplan check``'s estimate, on one H100 or H200.

For every point of a shard (``points.py``) this writes the point's pipeline, takes the estimate exactly as
``ftplan check --json`` reports it, compiles the plan with ``ftplan compile`` and runs its ``run.sh`` (the real data
stage, the real runtime, a few optimizer steps), then appends one JSON line to ``OUT/vram-<shard>.jsonl``: the
settings, the card, the package versions, the estimate (peak and terms) and the measured peaks (device used,
torch reserved and allocated) from the stage's ``metrics.json``. Boundary probes find the largest micro-batch
``check`` says fits, run it, then run the next one up (``check`` refuses to compile it, so its args file is the
fitting plan's with the micro-batch raised) and record whether it ran out of memory.

    python bench/vram/calibrate.py --shard small --out $OUT [--budget-s 540]
    python bench/vram/calibrate.py --shard small --out /tmp/r --rehearse   # the same flow, toy shapes, CPU
    ... --skip-measured bench/results/vram --probes-first --only a,b,c      # what is left, probes first, in order
    ... --memory-history a                                                  # also: what point a holds at its peak

Lines are written as each point finishes, so a run stopped at its time limit keeps what it measured. Points left
for lack of time are listed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import points as P  # noqa: E402
from results import TIME_LIMIT, current, probed  # noqa: E402

from ftplan.api import check_file  # noqa: E402
from ftplan.console import check_json  # noqa: E402

WORK = Path(os.environ.get("CALIB_WORK", "/tmp/calib"))
POINT_SECONDS = 45
"""Time a point is given at least; a point is not started when less than this is left of the budget."""


def card() -> tuple[str | None, str]:
    """(catalog key, name) of this machine's GPU; (None, "cpu") without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None, "cpu"
    return ("h200-sxm-141gb" if "H200" in out else "h100-sxm-80gb"), out


def rehearsal(p: P.Point) -> P.Point:
    """The same point at toy size on the CPU (no 4-bit, no 8-bit optimizers, no Triton kernels)."""
    return dataclasses.replace(p, adapter="lora" if p.adapter == "qlora" else p.adapter, seq=min(p.seq, 128),
                               optimizer="adamw", kernels="none", packing=False, attention="eager")


def pipeline_text(p: P.Point, gpu: str | None) -> str:
    text = P.pipeline_yaml(p, gpu or "h100-sxm-80gb")
    if gpu is None:  # rehearsal: the CPU
        doc = json.loads(text)
        doc["hardware"] = {"device": "cpu"}
        for s in doc["stages"]:
            if s["kind"] in ("sft", "dpo"):
                s["precision"] = "fp32"
        text = json.dumps(doc, indent=1) + "\n"
    return text


def estimate(path: Path, stage_id: str) -> tuple[dict, dict]:
    """(the stage's entry of ``check --json``, the whole report)."""
    report = check_json(check_file(path))
    stage = next((s for s in report["stages"] if s["id"] == stage_id), {})
    return stage, report


def sh(cmd: list[str], log: Path, timeout: float, extra_env: dict | None = None) -> tuple[int, str]:
    """Run a command from the work folder with this Python first on PATH (the plans' scripts call ``python``);
    (exit code, last lines of its output), the output kept in ``log``."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **(extra_env or {})}
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=WORK, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                env=env).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    text = log.read_text(errors="replace")
    return rc, "\n".join(text.splitlines()[-15:])


def measured(stage_id: str) -> dict | None:
    path = WORK / "out" / stage_id / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    keep = ("device_used_peak_gib", "torch_peak_reserved_gib", "torch_peak_allocated_gib", "gpu_name",
            "gpu_total_gib", "versions", "steps", "tokens_per_s", "train_time_s", "wall_time_s", "peak_rss_gib")
    return {k: m.get(k) for k in keep}


def memory_history_env(name: str, logs: Path) -> dict:
    """The environment that makes every process of a run that uses the GPU record the allocator's history
    (``memhist/sitecustomize.py``) into ``logs/memhist/<name>.<pid>.pickle``."""
    (logs / "memhist").mkdir(parents=True, exist_ok=True)
    return {"FTPLAN_MEMORY_HISTORY": str(logs / "memhist" / name),
            "PYTHONPATH": f"{HERE / 'memhist'}:{os.environ.get('PYTHONPATH', '')}"}


def report_memory_history(name: str, logs: Path, card_name: str) -> None:
    """Write what was live at each recorded process's peak to ``logs/<name>.memhist.txt`` (headed by the card) and
    compress the traces (``memory_history.py`` reads them again, with other groupings, where they are copied to)."""
    import gzip

    with open(logs / f"{name}.memhist.txt", "w") as f:
        f.write(f"card: {card_name}\n")
        f.flush()
        for trace in sorted((logs / "memhist").glob(f"{name}.*.pickle")):
            subprocess.run([sys.executable, str(HERE / "memory_history.py"), str(trace)], stdout=f,
                           stderr=subprocess.STDOUT)
            with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            trace.unlink()


WEIGHT_DIGESTS: dict[str, dict] = {}
"""Digests of the models' files recorded by the stamps of earlier points (path as the stamp keys it -> digest)."""


def keep_weight_digests(out: Path) -> None:
    """Remember the digests the stage's stamp recorded for files of the random-init models."""
    try:
        inputs = json.loads((out / "_COMPLETE").read_text())["inputs"]
    except (OSError, ValueError, KeyError):
        return
    WEIGHT_DIGESTS.update({k: d for k, d in inputs.items() if "models/" in k})


def seed_weight_digests(out: Path) -> None:
    """Hand the runtime the weights' digests an earlier point took, as a rerun of the stage would find them in its
    digest cache (``ftplan_runtime.stamps.DIGEST_CACHE``): a file of the same size and mtime is not hashed again,
    so each point does not spend seconds hashing the same 16 GB before it trains."""
    if WEIGHT_DIGESTS:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".ftplan-inputs.json").write_text(json.dumps({"inputs": WEIGHT_DIGESTS}))


def run_point(p: P.Point, gpu: str | None, logs: Path, timeout: float, *, micro_batch_to: int | None = None,
              memory_history: str | None = None) -> dict:
    """Estimate, compile and run one point; its results row. ``micro_batch_to``: run with this micro-batch
    instead (a boundary probe's step past what ``check`` accepts). ``memory_history``: the card's name, to record the
    allocator's history and report what was live at the peak (``memory_history.py``)."""
    pipe = WORK / "pipelines" / f"{p.name}.yaml"
    pipe.parent.mkdir(parents=True, exist_ok=True)
    pipe.write_text(pipeline_text(p, gpu))
    est, report = estimate(pipe, p.stage_id)
    row = {"point": P.describe(p), "estimate": est,
           "errors": [d["message"] for d in report["diagnostics"] if d["severity"] == "error"]}
    if not report["ok"]:
        row["outcome"] = "refused by check"
        return row
    plan = WORK / "plans" / p.name
    rc, tail = sh([sys.executable, "-m", "ftplan", "compile", str(pipe), "-o", str(plan)], logs / f"{p.name}.compile.log",
                  120)
    if rc:
        row.update(outcome="compile failed", log=tail)
        return row
    if micro_batch_to is not None:
        stage_dir = next(plan.glob(f"stages/{p.stage_id}"))
        args = json.loads((stage_dir / "args.json").read_text())
        args["stage"]["micro_batch"] = micro_batch_to
        (stage_dir / "args.json").write_text(json.dumps(args, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(WORK / "out" / p.stage_id, ignore_errors=True)
    seed_weight_digests(WORK / "out" / p.stage_id)
    start = time.monotonic()
    rc, tail = sh(["bash", "-c", "PS4='+ [$EPOCHREALTIME] '; set -x; . \"$0\"", str(plan / "run.sh")],
                  logs / f"{p.name}.run.log", timeout,  # xtrace: when each command of run.sh started
                  memory_history_env(p.name, logs) if memory_history else None)
    row["run_s"] = round(time.monotonic() - start, 1)
    if memory_history:
        report_memory_history(p.name, logs, memory_history)
        row["memory_history"] = True
    m = measured(p.stage_id)
    oom = "out of memory" in (logs / f"{p.name}.run.log").read_text(errors="replace").lower()
    row.update(outcome="ok" if rc == 0 and m else "oom" if oom else TIME_LIMIT if rc == 124 else f"failed (exit {rc})",
               measured=m)
    if rc and not oom and rc != 124:
        row["log"] = tail
    if m and est.get("peak_gib"):
        row["error_pct"] = round(100 * (est["peak_gib"] - m["device_used_peak_gib"]) / m["device_used_peak_gib"], 2)
    keep_weight_digests(WORK / "out" / p.stage_id)
    shutil.rmtree(WORK / "out" / p.stage_id, ignore_errors=True)  # adapters and checkpoints: disk is small
    return row


def prepare(points: list[P.Point], gpu: str | None, logs: Path, workers: int = 8) -> None:
    """Compile every point's plan and run the distinct data stages they read, in parallel (CPU work): the
    points' own ``run.sh`` then finds them complete and goes straight to training."""
    from concurrent.futures import ThreadPoolExecutor

    def compile_one(p: P.Point) -> Path:
        pipe = WORK / "pipelines" / f"{p.name}.yaml"
        pipe.parent.mkdir(parents=True, exist_ok=True)
        pipe.write_text(pipeline_text(p, gpu))
        plan = WORK / "plans" / p.name
        sh([sys.executable, "-m", "ftplan", "compile", str(pipe), "-o", str(plan)], logs / f"{p.name}.compile.log", 120)
        return plan

    with ThreadPoolExecutor(workers) as pool:
        plans = list(pool.map(compile_one, points))
    data = {}
    for plan in plans:
        for args in sorted(plan.glob("stages/d_*/args.json")):
            data.setdefault(args.parent.name, args)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}

    def run_data(item: tuple[str, Path]) -> None:
        name, args = item
        with open(logs / f"{name}.data.log", "w") as f:
            subprocess.run([sys.executable, "-m", "ftplan_runtime", str(args)], cwd=WORK / "pipelines", stdout=f,
                           stderr=subprocess.STDOUT, env=env, timeout=600)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run_data, sorted(data.items())))


def build_model_process(model: str, tiny: bool, on_gpu: bool = False) -> subprocess.Popen | None:
    """Start writing the random-init model of ``model``: on the GPU when nothing else runs (``on_gpu``), else on
    the CPU, so that a point training on the GPU meanwhile is measured alone; None when it is already there."""
    folder = WORK / "models" / model
    if folder.is_dir():
        return None
    cmd = [sys.executable, str(HERE / "models.py"), "model", model, str(folder)] + (["--tiny"] if tiny else [])
    env = {**os.environ} if on_gpu else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def boundary(b: P.Boundary, gpu: str | None) -> tuple[P.Point, int] | None:
    """The point at the largest micro-batch ``check`` says fits (``fits`` or ``tight``) whose next is ``oom``."""
    pipe = WORK / "pipelines" / "probe.yaml"
    pipe.parent.mkdir(parents=True, exist_ok=True)
    best = None
    for mb in range(1, 129):
        p = dataclasses.replace(b.point, micro_batch=mb)
        pipe.write_text(pipeline_text(p, gpu))
        verdict = estimate(pipe, p.stage_id)[0].get("verdict")
        if verdict in ("fits", "tight"):
            best = p
        elif verdict == "oom":
            return (best, mb) if best is not None else None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", required=True, choices=sorted(P.SHARDS))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--budget-s", type=float, default=540)
    parser.add_argument("--rehearse", action="store_true", help="toy shapes on the CPU (checks the flow only)")
    parser.add_argument("--only", help="comma-separated point names, run in this order (grouped by model)")
    parser.add_argument("--memory-history", default="", metavar="NAMES",
                        help="comma-separated points whose run records the allocator's history (what was live at "
                             "the peak goes to logs/<point>.memhist.txt)")
    parser.add_argument("--probes-first", action="store_true",
                        help="run each model's boundary probes before its points (default: after)")
    parser.add_argument("--skip-measured", type=Path, metavar="DIR",
                        help="leave out points with an ok row in DIR/*.jsonl and boundary probes with both sides "
                             "there (measured by an earlier run; rows superseded by a runtime change do not count)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    gpu, name = (None, "cpu") if args.rehearse else card()
    args.out.mkdir(parents=True, exist_ok=True)
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"vram-{args.shard}.jsonl"
    points, bounds = P.shard_points(args.shard)
    if args.only:
        keep = set(args.only.split(","))
        points, bounds = [p for p in points if p.name in keep], [b for b in bounds if b.point.name in keep]
    history = set(filter(None, args.memory_history.split(",")))
    if args.skip_measured:
        earlier = current(args.skip_measured)
        done = {r["point"]["name"] for r in earlier if r.get("outcome") == "ok"}
        points = [p for p in points if p.name not in done or p.name in history]  # measured again: what they hold
        bounds = [b for b in bounds if b.point.name not in probed(earlier)]
    if args.rehearse:
        points = [rehearsal(p) for p in points]
        bounds = [P.Boundary(rehearsal(b.point)) for b in bounds]
    seqs = sorted({p.seq for p in points} | {b.point.seq for b in bounds})
    subprocess.run([sys.executable, str(HERE / "models.py"), "data", str(WORK / "data"), *map(str, seqs)], check=True)
    print(f"card: {name}; {len(points)} points, {len(bounds)} boundary probes", flush=True)
    left: list[str] = []
    by_model: dict[str, list] = {}
    items = bounds + points if args.probes_first else points + bounds
    if args.only:  # in the order given (each model's items still run together: its weights are deleted after them)
        order = args.only.split(",")
        items.sort(key=lambda i: order.index(i.name if isinstance(i, P.Point) else i.point.name))
    for item in items:
        by_model.setdefault(item.model if isinstance(item, P.Point) else item.point.model, []).append(item)
    models = list(by_model)
    # Every model of the run is written first, all at once on the GPU (a random-init 8B shape takes seconds there
    # and minutes on the CPU; written one after another, four models of the small shard took 110 s with their data
    # on an H100; the parallel writes are not timed on a GPU yet), and every point's data stage is prepared; then
    # the points train back to back.
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(HERE / "models.py"), "tokenizer", str(WORK / "models" / ".tok")], check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    builds = {model: build_model_process(model, args.rehearse, on_gpu=True) for model in models}
    failed = {model for model, proc in builds.items() if proc is not None and proc.wait() != 0}
    for model in failed:
        print(f"{model}: building the model failed", flush=True)
    prepare([i for m in models if m not in failed for i in by_model[m] if isinstance(i, P.Point)], gpu, logs)
    print(f"{len(models)} models built and data prepared in {time.monotonic() - t0:.0f} s", flush=True)
    for model in models:
        items = by_model[model]
        if model in failed:
            left += [getattr(i, "name", None) or i.point.name for i in items]
            continue
        for item in items:
            remaining = deadline - time.monotonic()
            label = item.name if isinstance(item, P.Point) else item.point.name
            if remaining < POINT_SECONDS * (1 if isinstance(item, P.Point) else 3):  # a probe: two runs and a search
                left.append(label)
                continue
            rows = []
            if isinstance(item, P.Point):
                rows.append(run_point(item, gpu, logs, remaining - 5,
                                      memory_history=name if item.name in history else None))
            else:
                found = boundary(item, gpu)
                if found is None:
                    rows.append({"point": P.describe(item.point), "outcome": "no boundary below 128"})
                else:
                    fits, over = found
                    ok = run_point(fits, gpu, logs, remaining - POINT_SECONDS - 5)  # the step past it fails fast
                    ok["probe"] = "fits"
                    rows.append(ok)
                    if deadline - time.monotonic() > POINT_SECONDS:
                        over_point = dataclasses.replace(fits, micro_batch=over)
                        pipe = WORK / "pipelines" / "probe.yaml"
                        pipe.write_text(pipeline_text(over_point, gpu))
                        est = estimate(pipe, fits.stage_id)[0]
                        row = run_point(fits, gpu, logs, deadline - time.monotonic() - 5, micro_batch_to=over)
                        row.update(point=P.describe(over_point), estimate=est, probe="oom")
                        rows.append(row)
            with open(out_file, "a") as f:
                for row in rows:
                    row.update(card=name, shard=args.shard)
                    f.write(json.dumps(row, sort_keys=True) + "\n")
                    m = row.get("measured") or {}
                    print(f"{row['point']['name']:32s} mb {row['point']['micro_batch']:>3}  {row['outcome']:16s} "
                          f"est {row.get('estimate', {}).get('peak_gib', '-'):>7}  used "
                          f"{m.get('device_used_peak_gib', '-')!s:>9}  err {row.get('error_pct', '-')!s:>7} %  "
                          f"{row.get('run_s', '-')} s", flush=True)
            shutil.copytree(logs, args.out / "logs", dirs_exist_ok=True)  # kept if the run is cut off
        shutil.rmtree(WORK / "models" / model, ignore_errors=True)
    if left:
        print("left for lack of time: " + ", ".join(left))
    shutil.copytree(logs, args.out / "logs", dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
