"""``plan.html``: the plan as one self-contained page — the stage graph, a stacked memory bar per stage (per GPU,
against the card), the batch arithmetic, the warnings with their codes, the launch commands and the input hashes.

It is rendered from the ``plan.json`` document alone (``render_plan_html(json.loads(plan_json_text))``), so the
page and ``plan.json`` cannot disagree and ``ftplan report`` can rebuild the page from a compiled plan folder.
Nothing here decides anything: every number is one of ``plan.json``'s, formatted. The numbers a tool may want to
read back are also in ``data-`` attributes as ``plan.json`` holds them (JSON numbers, ``null``): on each stage's
row of the table (``tr.stage-row``), its memory bar (``div.memory``), each bar segment (``div.seg``), its batch row
(``tr.batch-row``), each warning (``li.diagnostic``) and each input (``tr.input``).

Self-contained and byte-stable: no network, scripts, external assets, timestamps or absolute paths; a
Content-Security-Policy that allows only the inline style; every user string passed through ``html.escape``.
The stage graph is inline SVG; a bar segment's formula shows on hover (its ``title``) and in the table under it.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..units import format_duration, gib_amount, gib_text, params_text, size
from .commands import launch_command, run_commands
from .shell import comment

PlanDocument = dict[str, Any]
"""The ``plan.json`` document, as ``json.loads`` returns it."""

SEGMENT_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#bab0ac", "#86bcb6", "#d4a6c8")
"""Bar segment colours, by the term's position in the stage's estimate (repeating after twelve)."""

VERDICT_COLOURS = {"fits": "#2e7d32", "tight": "#b26a00", "oom": "#c62828", "n/a": "#616161"}
"""Outline colour of a stage's box in the graph, by its verdict."""

GRAPH_CHAR_WIDTH = 7.3
"""Width of one character of the graph's 12 px monospace text, in SVG units (DejaVu Sans Mono is 7.22)."""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""The page's Content-Security-Policy: nothing may load from anywhere; only the inline style applies."""

STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 24px 28px 48px; color: var(--ink); background: #fff;
  font: 14px/1.5 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; }
h1 { font-size: 24px; margin: 0 0 4px; } h3 { font-size: 15px; margin: 22px 0 6px; }
h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
code, pre, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto;
  white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0; }
.target { font-size: 15px; margin: 0 0 6px; } .muted { color: var(--muted); }
table { border-collapse: collapse; margin: 6px 0; } th, td { border: 1px solid var(--line); padding: 4px 8px;
  text-align: left; vertical-align: top; } th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600; color: #fff; }
.badge.fits { background: #2e7d32; } .badge.tight { background: #b26a00; } .badge.oom { background: #c62828; }
.badge.na { background: #757575; } .badge.error { background: #c62828; }
.badge.warning { background: #b26a00; } .badge.info { background: #0969da; }
figure.graph { margin: 8px 0; overflow-x: auto; } figure.graph svg { max-width: 100%; height: auto; }
.memory { margin: 10px 0 8px; max-width: 900px; } .memory-label { margin-bottom: 4px; }
.track { position: relative; display: flex; height: 30px; background: repeating-linear-gradient(135deg, #f3f4f6 0 6px,
  #e9ebee 6px 12px); border: 1px solid #8c959f; border-radius: 3px; }
.seg { flex: 0 0 auto; height: 100%; border-right: 1px solid rgba(255, 255, 255, .85); }
.seg:hover { outline: 2px solid var(--ink); outline-offset: -2px; }
.over { position: absolute; top: 0; bottom: 0; right: 0; background: repeating-linear-gradient(45deg,
  rgba(198, 40, 40, .45) 0 5px, rgba(198, 40, 40, .15) 5px 10px); pointer-events: none; }
.card { position: absolute; top: -6px; bottom: -6px; width: 3px; margin-left: -2px; background: #1f2328; }
.scale { position: relative; height: 18px; font-size: 12px; color: var(--muted); }
.scale span { position: absolute; top: 2px; white-space: nowrap; } .scale .end { transform: translateX(-100%); }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px;
  vertical-align: -1px; }
table.terms td:last-child { color: var(--muted); }
ul.details { margin: 4px 0; padding-left: 20px; } li.diagnostic { margin: 6px 0; }
"""


def e(value: object) -> str:
    """``value`` as HTML text or attribute content on one line: ``&``, ``<``, ``>`` and both quotes escaped,
    control characters (line breaks, carriage returns) shown escaped as in plan.md."""
    return html.escape(comment(value), quote=True)


def _attribute(text: str) -> str:
    """``text`` as an attribute value that reads back exactly: markup escaped, control characters as character
    references (so no raw carriage return lands in the file)."""
    return "".join(f"&#{ord(ch)};" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in html.escape(text, quote=True))


def _data(**values: object) -> str:
    """``data-`` attributes (``peak_gib`` → ``data-peak-gib``): strings as they are, anything else as JSON."""
    parts = []
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f'data-{key.replace("_", "-")}="{_attribute(text)}"')
    return " ".join(parts)


def _percent(part: float, whole: float) -> str:
    """``37.125%``: a share of ``whole`` for a CSS length (three decimals, so the bytes stay stable)."""
    return f"{100 * part / whole:.3f}%" if whole > 0 else "0%"


def _target_line(doc: PlanDocument) -> str:
    """``support-bot · meta-llama/Llama-3.1-8B-Instruct (8.03 B) · 1 × GeForce RTX 4090 24GB (24.0 GiB, sm89)``."""
    t = doc["target"]
    if t["device"] == "cpu":
        hardware = "CPU"
    else:
        count = f"{t['nodes']} nodes × {t['gpus_per_node']}" if t["nodes"] > 1 else f"{t['gpus_per_node']}"
        detail = ", ".join(x for x in (gib_amount(t["gpu_memory_gib"]) if t["gpu_memory_gib"] else None,
                                       t["gpu_arch"]) if x)
        hardware = f"{count} × {t['gpu_name'] or 'GPU'}" + (f" ({detail})" if detail else "")
    return f"{doc['pipeline']['name']} · {t['model']} ({params_text(t['params'])}) · {hardware}"


def _has_gpu_bar(stage: dict[str, Any]) -> bool:
    """True when the stage has a peak on a GPU of known memory (its bar is drawn against the card)."""
    est = stage["estimate"]
    return bool(est and stage["resources"]["device"] == "cuda" and est["capacity_bytes"] and est["peak_bytes"] > 0)


def _has_bar(stage: dict[str, Any]) -> bool:
    """True when the stage's estimate has terms to stack: on a GPU of known memory, or in host memory."""
    est = stage["estimate"]
    return bool(est and est["terms"] and (_has_gpu_bar(stage) or est["host_bytes"]))


def _memory_summary(stage: dict[str, Any]) -> str:
    """``8.9 / 24.0 GiB per GPU``, ``host RAM 15.9 GiB`` or ``—``: the memory column of the stage table."""
    est = stage["estimate"]
    if _has_gpu_bar(stage):
        return f"{gib_text(est['peak_bytes'], unit=False)} / {gib_text(est['capacity_bytes'])} per GPU"
    if est and est["host_bytes"]:
        return f"host RAM {size(est['host_bytes'])}"
    return "—"


# ---------------------------------------------------------------------------------------------------- the graph

def _graph(doc: PlanDocument) -> str:
    """The stage graph as inline SVG: one box per stage in run order, an arrow from the stage each one waits for."""
    pad, line_h, gap, margin = 12, 17, 44, 6
    boxes = []
    for s in doc["stages"]:
        est = s["estimate"]
        verdict = est["verdict"] if est else "n/a"
        memory = _memory_summary(s)
        if memory == "—":
            memory = "on the CPU" if s["resources"]["device"] == "cpu" else "no memory estimate"
        lines = [f"{s['index']:02d} {s['id']} · {s['kind']}", s["method"],
                 memory + (f" · {verdict}" if verdict != "n/a" else "")]
        width = max(130, round(max(len(x) for x in lines) * GRAPH_CHAR_WIDTH) + 2 * pad)
        boxes.append((s, verdict, lines, width))
    height = 2 * pad + line_h * 3 - 4
    xs, x = {}, margin
    for s, _, _, width in boxes:
        xs[s["id"]] = (x, width)
        x += width + gap
    total_w, total_h = x - gap + margin, height + 2 * margin + 26
    top = margin + 26  # room above the boxes for arrows that skip a stage
    out = [f'<svg viewBox="0 0 {total_w} {total_h}" width="{total_w}" '
           f'height="{total_h}" role="img" aria-labelledby="graph-title" font-family="DejaVu Sans Mono, monospace" '
           'font-size="12">',
           '<title id="graph-title">Stage graph: each stage starts when the one it points from has finished</title>',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#57606a"/></marker></defs>']
    order = [s["id"] for s in doc["stages"]]
    for s, _, _, _ in boxes:
        dep = s["depends_on"]
        if dep not in xs:
            continue
        (x0, w0), (x1, _) = xs[dep], xs[s["id"]]
        mid = top + height // 2
        if order.index(s["id"]) - order.index(dep) == 1:
            path = f"M{x0 + w0} {mid}L{x1 - 2} {mid}"
        else:
            path = f"M{x0 + w0 // 2} {top}C{x0 + w0 // 2} {margin} {x1 + 20} {margin} {x1 + 20} {top - 2}"
        out.append(f'<path class="edge" d="{path}" fill="none" stroke="#57606a" stroke-width="1.5" '
                   f'marker-end="url(#arrow)" {_data(source=dep, target=s["id"])}/>')
    for s, verdict, lines, width in boxes:
        x0, _ = xs[s["id"]]
        colour = VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["n/a"])
        out.append(f'<g class="node" {_data(stage=s["id"], verdict=verdict)}>'
                   f'<title>{e(" — ".join(lines))}</title>'
                   f'<rect x="{x0}" y="{top}" width="{width}" height="{height}" rx="6" fill="#fff" '
                   f'stroke="{colour}" stroke-width="2"/>')
        for i, text in enumerate(lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            fill = colour if i == 2 else "#1f2328"
            out.append(f'<text x="{x0 + pad}" y="{top + pad + 9 + i * line_h}" fill="{fill}"{weight}>{e(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ the tables

def _stage_table(doc: PlanDocument) -> list[str]:
    """One row per stage: kind, method, batch, tokens per step, memory, verdict, estimated run time."""
    out = ['<table class="stages">', "<thead><tr><th>#</th><th>stage</th><th>kind</th><th>method</th>"
           '<th class="num">effective batch</th><th class="num">tokens/step</th><th>peak memory</th><th>verdict</th>'
           '<th class="num">run time</th></tr></thead>', "<tbody>"]
    for s in doc["stages"]:
        est, b, r = s["estimate"], s["batch"], s["resources"]
        verdict = est["verdict"] if est else "n/a"
        attrs = _data(stage=s["id"], kind=s["kind"], verdict=verdict,
                      peak_bytes=est["peak_bytes"] if est else None, peak_gib=est["peak_gib"] if est else None,
                      capacity_bytes=est["capacity_bytes"] if est else None,
                      host_bytes=est["host_bytes"] if est else None,
                      effective_batch=b["effective_batch"] if b else None,
                      tokens_per_step=b["tokens_per_step"] if b else None)
        effective = f"{b['effective_batch']:,}" if b else "—"
        tokens = f"{b['tokens_per_step']:,}" if b and b["tokens_per_step"] else "—"
        run_time = format_duration(r["run_time_s"]) if r["run_time_s"] is not None else "—"
        out.append(f'<tr class="stage-row" {attrs}><td class="num">{s["index"]:02d}</td>'
                   f'<td><a href="#stage-{e(s["id"])}">{e(s["id"])}</a></td><td>{e(s["kind"])}</td>'
                   f'<td>{e(s["method"])}</td><td class="num" data-field="effective-batch">{effective}</td>'
                   f'<td class="num" data-field="tokens-per-step">{tokens}</td>'
                   f'<td data-field="memory">{e(_memory_summary(s))}</td>'
                   f'<td><span class="badge {e(verdict.replace("/", ""))}">{e(verdict)}</span></td>'
                   f'<td class="num">{e(run_time)}</td></tr>')
    out += ["</tbody>", "</table>"]
    return out


def _batch_table(doc: PlanDocument) -> list[str]:
    """The batch arithmetic of every training stage: micro batch × gradient accumulation × processes."""
    rows = [s for s in doc["stages"] if s["batch"]]
    if not rows:
        return ["<p>No training stages.</p>"]
    out = ['<table class="batch">', '<thead><tr><th>stage</th><th class="num">micro batch</th>'
           '<th class="num">grad accum</th><th class="num">processes</th><th class="num">effective batch</th>'
           '<th class="num">sequence length</th><th class="num">tokens/step</th></tr></thead>', "<tbody>"]
    for s in rows:
        b = s["batch"]
        attrs = _data(stage=s["id"], **b)  # every field of plan.json's batch, as it holds them
        seq = f"{b['seq_len']:,}" if b["seq_len"] else "—"
        tokens = f"{b['tokens_per_step']:,}" if b["tokens_per_step"] else "—"
        unit = " pairs" if b.get("pairs") else ""
        out.append(f'<tr class="batch-row" {attrs}><td>{e(s["id"])}</td><td class="num">{b["micro_batch"]:,}</td>'
                   f'<td class="num">× {b["grad_accum"]:,}</td><td class="num">× {b["world_size"]:,}</td>'
                   f'<td class="num">= {b["effective_batch"]:,}{unit}</td><td class="num">{seq}</td>'
                   f'<td class="num">{tokens}</td></tr>')
    out += ["</tbody>", "</table>"]
    if any(s["batch"].get("pairs") for s in rows):
        out.append('<p class="muted">A pair is two sequences, chosen and rejected: its tokens count twice.</p>')
    return out


# ---------------------------------------------------------------------------------------------- memory bars

def _bar(doc: PlanDocument, s: dict[str, Any]) -> list[str]:
    """The stacked bar of a stage's memory terms: against the card for a GPU stage (the card's memory marked,
    anything past it hatched red), against its own total for a stage that works in host memory. The terms' table,
    with the same colours, is in the stage's section (``_terms_table``)."""
    est = s["estimate"]
    terms = est["terms"]
    total = sum(t["bytes"] for t in terms)
    on_gpu = _has_gpu_bar(s)
    if on_gpu:
        capacity = est["capacity_bytes"]
        scale = max(capacity, total, est["peak_bytes"])
        gpus = s["resources"]["nodes"] * s["resources"]["gpus_per_node"]
        card = doc["target"]["gpu_name"] or "GPU"
        on = "on 1 GPU" if gpus == 1 else f"on each of {gpus} GPUs"
        label = (f"<strong>{e(gib_text(est['peak_bytes'], unit=False))} GiB</strong> of "
                 f"{e(gib_text(capacity))} per GPU ({e(card)}), {on}"
                 f' · <span class="badge {e(est["verdict"])}">{e(est["verdict"])}</span>')
        attrs = _data(stage=s["id"], memory="gpu", peak_bytes=est["peak_bytes"], peak_gib=est["peak_gib"],
                      capacity_bytes=capacity, capacity_gib=est["capacity_gib"], scale_bytes=scale, gpus=gpus)
    else:
        capacity, scale = None, max(total, est["host_bytes"] or 0)
        label = f"<strong>{e(size(est['host_bytes']))}</strong> of host memory (RAM), on the CPU"
        attrs = _data(stage=s["id"], memory="host", host_bytes=est["host_bytes"], scale_bytes=scale)
    link = f'<a href="#stage-{e(s["id"])}">{s["index"]:02d} {e(s["id"])}</a>'
    out = [f'<div class="memory" {attrs}>', f'<div class="memory-label">{link} · {label}</div>',
           '<div class="track">']
    for i, t in enumerate(terms):
        colour = SEGMENT_COLOURS[i % len(SEGMENT_COLOURS)]
        tip = e(f"{t['name']}: {size(t['bytes'])}") + (f"&#10;{e(t['detail'])}" if t["detail"] else "")
        out.append(f'<div class="seg" style="width:{_percent(t["bytes"], scale)};background:{colour}" '
                   f'title="{tip}" {_data(term=t["name"], bytes=t["bytes"], gib=t["gib"])}></div>')
    if capacity is not None:
        if scale > capacity:
            out.append(f'<div class="over" style="left:{_percent(capacity, scale)}" '
                       f'title="{e(f"over the card by {size(scale - capacity)}")}"></div>')
        out.append(f'<div class="card" style="left:{_percent(capacity, scale)}" '
                   f'title="{e(f"the card: {gib_text(capacity)}")}" {_data(capacity_bytes=capacity)}></div>')
    out.append("</div>")
    end = gib_text(capacity) + " card" if capacity is not None else size(scale)
    end_at = _percent(capacity, scale) if capacity is not None else "100.000%"
    out += [f'<div class="scale"><span style="left:0">0</span><span class="end" style="left:{end_at}">{e(end)}</span>'
            "</div>", "</div>"]
    return out


def _terms_table(s: dict[str, Any]) -> list[str]:
    """The terms of a stage's bar, largest first as the estimate lists them: colour, size, share and formula."""
    terms = s["estimate"]["terms"]
    total = sum(t["bytes"] for t in terms)
    out = ['<table class="terms"><thead><tr><th>term</th><th class="num">size</th><th class="num">share</th>'
           "<th>how it is computed</th></tr></thead><tbody>"]
    for i, t in enumerate(terms):
        colour = SEGMENT_COLOURS[i % len(SEGMENT_COLOURS)]
        out.append(f'<tr><td><span class="swatch" style="background:{colour}"></span>{e(t["name"])}</td>'
                   f'<td class="num">{e(size(t["bytes"]))}</td><td class="num">{100 * t["bytes"] / total:.1f} %</td>'
                   f"<td>{e(t['detail'])}</td></tr>")
    out.append("</tbody></table>")
    return out


# ----------------------------------------------------------------------------------------------- per stage

def _stage_section(doc: PlanDocument, s: dict[str, Any]) -> list[str]:
    """A stage's details: launch command, folders, run time, Slurm job, memory bar with its terms, notes."""
    hw = doc["pipeline"]["resolved"]["hardware"]
    est, r, job = s["estimate"], s["resources"], s["slurm"]
    command = launch_command(doc["plan_dir"], s["dir"], s["launcher"], r["nodes"], hw["main_process_port"],
                             hw.get("rendezvous_timeout_s"))
    where = f"{r['nodes']} node(s) × {r['gpus_per_node']} GPU" if r["device"] == "cuda" else "CPU only"
    out = [f'<section class="stage" id="stage-{e(s["id"])}" {_data(stage=s["id"])}>',
           f'<h3>{s["index"]:02d} {e(s["id"])} <span class="muted">({e(s["kind"])})</span></h3>',
           '<ul class="details">', f"<li>method: {e(s['method'])}</li>", f"<li>runs on: {e(where)}</li>",
           f"<li>output: <code>{e(s['output_dir'])}</code></li>"]
    if r["run_time_s"] is not None and est and est["step_time_s"]:
        bound = "at most " if r["steps_at_most"] else ""
        out.append(f"<li>estimated run time: {bound}{r['steps']:,} steps × {est['step_time_s']:.2f} s ≈ "
                   f"{e(format_duration(r['run_time_s']))}</li>")
    if job:
        out += [f"<li>Slurm job <code>{e(s['slurm_job'])}</code>: {e(job['exclusive_reason'])}</li>",
                f"<li>Slurm memory: {e(job['mem_reason'])}</li>",
                f"<li>Slurm time limit: {e(job['time'])} ({e(job['time_reason'])})</li>"]
    for note in est["notes"] if est else ():
        out.append(f"<li>note: {e(note)}</li>")
    out.append("</ul>")
    out += ["<p>launch, from the project folder:</p>", f'<pre class="launch"><code>{e(command)}</code></pre>']
    if job:
        out += ["<p>sbatch options:</p>", f'<pre class="sbatch"><code>{e(" ".join(job["sbatch"]))}</code></pre>']
    if _has_bar(s):
        out += [f'<p>memory terms (the <a href="#memory">bar</a>\'s segments):</p>', *_terms_table(s)]
    if est and est["suggestions"]:
        out += ["<p>would fit:</p>", '<ul class="details">']
        out += [f"<li><code>{e(x['change'])}</code> → {e(gib_text(x['peak_bytes']))} per GPU</li>"
                for x in est["suggestions"]]
        out.append("</ul>")
    out.append("</section>")
    return out


def _diagnostics(doc: PlanDocument) -> list[str]:
    """Warnings and notes, in file order, each with its code, key path, line and column, message and hint."""
    if not doc["diagnostics"]:
        return ["<p>No warnings.</p>"]
    out = ['<ul class="diagnostics">']
    for d in doc["diagnostics"]:
        where = f" (line {d['line']}:{d['col']})" if d["line"] is not None else ""
        hint = f" — {e(d['hint'])}" if d["hint"] else ""
        notes = "".join(f"<li>{e(n)}</li>" for n in d["notes"])
        out.append(f'<li class="diagnostic" {_data(code=d["code"], severity=d["severity"], path=d["path"])}>'
                   f'<span class="badge {e(d["severity"])}">{e(d["severity"])}</span> <strong>{e(d["code"])}</strong> '
                   f"<code>{e(d['path'])}</code>{e(where)}: {e(d['message'])}{hint}"
                   + (f"<ul>{notes}</ul>" if notes else "") + "</li>")
    out.append("</ul>")
    return out


def _inputs(doc: PlanDocument) -> list[str]:
    """The pipeline file's hash and every local input file with its sha256 and size."""
    p = doc["pipeline"]
    out = [f'<p>pipeline <code>{e(p["file"])}</code>, sha256 <code class="sha" {_data(sha256=p["sha256"])}>'
           f'{e(p["sha256"])}</code></p>']
    if not doc["inputs"]:
        return out + ["<p>No local input files (models and datasets come from the hub).</p>"]
    out += ['<table class="inputs"><thead><tr><th>file</th><th>sha256</th><th class="num">bytes</th></tr></thead>',
            "<tbody>"]
    for f in doc["inputs"]:
        out.append(f'<tr class="input" {_data(path=f["path"], sha256=f["sha256"], size=f["size"])}>'
                   f'<td><code>{e(f["path"])}</code></td><td><code>{e(f["sha256"])}</code></td>'
                   f'<td class="num">{f["size"]:,}</td></tr>')
    out += ["</tbody>", "</table>"]
    return out


def render_plan_html(doc: PlanDocument) -> str:
    """The text of ``plan.html``, from the ``plan.json`` document."""
    name = doc["pipeline"]["name"]
    slurm = any(s["slurm"] for s in doc["stages"])
    versions = " · ".join(f"{e(k)} {e(v)}" for k, v in sorted(doc["versions"].items()))
    nodes = max((s["resources"]["nodes"] for s in doc["stages"]), default=1)  # over one node: submit.sh only
    how = "\n".join(e(f"{command}    # {what}") for command, what in run_commands(doc["plan_dir"], slurm, nodes))
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">', f"<title>Plan: {e(name)}</title>", f"<style>{STYLE}</style>", "</head>",
        f'<body {_data(format_version=doc["format_version"], plan=name)}>',
        f"<h1>Plan: {e(name)}</h1>", f'<p class="target">{e(_target_line(doc))}</p>',
        f'<p class="muted">Compiled by ftplan {e(doc["ftplan_version"])} from <code>{e(doc["pipeline"]["file"])}'
        "</code>. Generated from plan.json: do not edit; <code>ftplan report</code> on the plan folder "
        "writes it again.</p>",
        "<h2>Stage graph</h2>", '<figure class="graph">', _graph(doc), "</figure>",
        "<h2>Stages</h2>", *_stage_table(doc),
        '<h2 id="memory">Peak memory</h2>',
        '<p class="muted">Each bar stacks the estimate\'s terms for one GPU, scaled to the card (the black line), or '
        "for the host memory of a stage that runs on the CPU; hover over a segment for its formula.</p>",
        *([line for s in doc["stages"] if _has_bar(s) for line in _bar(doc, s)]
          or ["<p>No stage has a memory estimate.</p>"]),
        "<h2>Batch arithmetic</h2>", *_batch_table(doc),
        "<h2>Stage details</h2>",
        *[line for s in doc["stages"] for line in _stage_section(doc, s)],
        "<h2>Warnings and notes</h2>", *_diagnostics(doc),
        "<h2>How to run</h2>", "<p>From the project folder:</p>", f'<pre class="run"><code>{how}</code></pre>',
        "<h2>Inputs</h2>", *_inputs(doc),
        "<h2>Runtime versions</h2>", f'<p class="versions">{versions}</p>',
        "</body>", "</html>", "",
    ]
    return "\n".join(out)
