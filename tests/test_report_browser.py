"""plan.html in a real headless browser (Chromium, driven by Playwright): every example's compiled page loads from
a file:// URL with no console message, no page error and no request but the page itself; the numbers the page
shows and carries equal plan.json's; each bar segment is drawn as wide as its share of the card, the card's line
where the card ends. A full-page screenshot of each is kept in test-artifacts/ (git-ignored).

Chromium comes from the system (Debian's ``chromium`` package; ``.ci/run`` installs it), or ``FTPLAN_CHROMIUM``
names the binary: Playwright's own browser download is not used. Without a Chromium binary the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from ftplan.api import check_file, plan_dir_from_root, plan_files
from ftplan.write import write_plan

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml") if p.stem != "too-big")  # too-big: no plan
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_binary() -> str | None:
    """``FTPLAN_CHROMIUM``, else the first Chromium on PATH."""
    named = os.environ.get("FTPLAN_CHROMIUM")
    if named:
        return named
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary on PATH (install Debian's: apt-get install chromium; or set FTPLAN_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every example compiled to a plan folder, as ``ftplan compile`` writes it."""
    work = tmp_path_factory.mktemp("report")
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns(".*"))
    plans = {}
    for example in EXAMPLES:
        pipeline = work / "examples" / f"{example}.yaml"
        result = check_file(pipeline)
        assert result.ok, example
        out = work / "plans" / example
        write_plan(plan_files(result, plan_dir_from_root(pipeline, out)), out)
        plans[example] = out
    return plans


def load(browser, page_file: Path):
    """The page opened in a fresh tab, with what it said (console, page errors) and asked for (requests)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    said, asked = [], []
    page.on("console", lambda m: said.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda exc: said.append(f"page error: {exc}"))
    page.on("request", lambda r: asked.append(r.url))
    page.goto(page_file.as_uri(), wait_until="load")
    return page, said, asked


def dataset(page, selector: str) -> list[dict[str, str]]:
    """The ``data-`` attributes of every element matching ``selector``, in page order."""
    return page.eval_on_selector_all(selector, "els => els.map(el => Object.assign({}, el.dataset))")


@pytest.mark.parametrize("example", EXAMPLES)
def test_page_renders_and_shows_plan_json_numbers(browser, compiled, example):
    folder = compiled[example]
    doc = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    page, said, asked = load(browser, folder / "plan.html")
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report-{example}.png"), full_page=True)
        assert said == []
        assert asked == [(folder / "plan.html").as_uri()]
        assert page.title() == f"Plan: {doc['pipeline']['name']}"

        stages = doc["stages"]
        rows = dataset(page, "tr.stage-row")
        assert [r["stage"] for r in rows] == [s["id"] for s in stages]
        for row, s in zip(rows, stages):
            est, b = s["estimate"], s["batch"]
            assert json.loads(row["peakGib"]) == est["peak_gib"]
            assert json.loads(row["peakBytes"]) == est["peak_bytes"]
            assert json.loads(row["capacityBytes"]) == est["capacity_bytes"]
            assert json.loads(row["hostBytes"]) == est["host_bytes"]
            assert row["verdict"] == est["verdict"]
            assert json.loads(row["effectiveBatch"]) == (b["effective_batch"] if b else None)
            assert json.loads(row["tokensPerStep"]) == (b["tokens_per_step"] if b else None)
            shown = page.inner_text(f'tr.stage-row[data-stage="{s["id"]}"] [data-field="tokens-per-step"]')
            assert shown == (f"{b['tokens_per_step']:,}" if b and b["tokens_per_step"] else "—")
            shown = page.inner_text(f'tr.stage-row[data-stage="{s["id"]}"] [data-field="effective-batch"]')
            assert shown == (f"{b['effective_batch']:,}" if b else "—")

        batch_rows = dataset(page, "tr.batch-row")
        training = [s for s in stages if s["batch"]]
        assert [r["stage"] for r in batch_rows] == [s["id"] for s in training]
        for row, s in zip(batch_rows, training):
            for key, value in s["batch"].items():
                name = "".join(w if i == 0 else w.title() for i, w in enumerate(key.split("_")))
                assert json.loads(row[name]) == value, (s["id"], key)

        assert [d["code"] for d in dataset(page, "li.diagnostic")] == [d["code"] for d in doc["diagnostics"]]
        assert [(r["path"], r["sha256"], json.loads(r["size"])) for r in dataset(page, "tr.input")] == [
            (f["path"], f["sha256"], f["size"]) for f in doc["inputs"]]
        assert page.locator("svg g.node").count() == len(stages)
        assert page.locator("svg path.edge").count() == sum(1 for s in stages if s["depends_on"])
        launch = page.locator("pre.launch").all_inner_texts()
        assert len(launch) == len(stages) and all("ftplan_runtime" in text for text in launch)
    finally:
        page.close()


@pytest.mark.parametrize("example", EXAMPLES)
def test_bars_are_drawn_to_scale(browser, compiled, example):
    folder = compiled[example]
    doc = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    page, said, _ = load(browser, folder / "plan.html")
    try:
        bars = page.locator("div.memory")
        drawn = {bars.nth(i).get_attribute("data-stage"): bars.nth(i) for i in range(bars.count())}
        assert drawn, "no memory bar on the page"
        for s in doc["stages"]:
            if s["id"] not in drawn:
                continue
            est, bar = s["estimate"], drawn[s["id"]]
            track = bar.locator(".track").bounding_box()
            inner = track["width"] - 2  # the track's 1 px border on either side
            scale = json.loads(bar.get_attribute("data-scale-bytes"))
            segments = bar.locator(".seg")
            assert segments.count() == len(est["terms"])
            total = 0.0
            for i, term in enumerate(est["terms"]):
                box = segments.nth(i).bounding_box()
                assert json.loads(segments.nth(i).get_attribute("data-bytes")) == term["bytes"]
                assert box["width"] == pytest.approx(inner * term["bytes"] / scale, abs=1.0), term["name"]
                total += box["width"]
            if bar.get_attribute("data-memory") == "gpu":
                assert total == pytest.approx(inner * est["peak_bytes"] / scale, abs=1.5)
                card = bar.locator(".card").bounding_box()
                card_x = card["x"] + card["width"] / 2 - track["x"] - 1
                assert card_x == pytest.approx(inner * est["capacity_bytes"] / scale, abs=1.5)
                segments.nth(0).hover()  # the formula is the segment's title
                assert est["terms"][0]["detail"] in segments.nth(0).get_attribute("title")
        assert said == []
    finally:
        page.close()
