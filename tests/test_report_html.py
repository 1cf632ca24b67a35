"""plan.html: rendered from plan.json alone, self-contained (no network, scripts or external assets), every number
in its data- attributes equal to plan.json's, every user string escaped; the bar drawn against the card."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ftplan.render.plan_html import CSP, render_plan_html

GOLDEN = Path(__file__).resolve().parent / "golden"
PLANS = sorted(p.parent.name for p in GOLDEN.glob("*/plan"))
HOSTILE = "</title><script>alert(1)</script><img src=x onerror=alert(2)> & \"q\" 'sq'\r\nnext line"


def golden_doc(example: str) -> dict:
    return json.loads((GOLDEN / example / "plan" / "plan.json").read_text(encoding="utf-8"))


class Page(HTMLParser):
    """Every element as (tag, attributes), and the page's text, as a browser's parser reads them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def having(self, tag: str, cls: str) -> list[dict[str, str | None]]:
        """The attributes of every ``tag`` element of class ``cls``."""
        return [a for t, a in self.elements if t == tag and cls in (a.get("class") or "").split()]


def number(attrs: dict, name: str):
    return json.loads(attrs[f"data-{name}"])


def test_every_golden_plan_has_its_page():
    assert PLANS and all((GOLDEN / p / "plan" / "plan.html").is_file() for p in PLANS)


@pytest.mark.parametrize("example", PLANS)
def test_page_is_plan_json_rendered(example):
    # the committed page is the committed plan.json rendered: ftplan report rebuilds it byte for byte
    page = (GOLDEN / example / "plan" / "plan.html").read_text(encoding="utf-8")
    assert render_plan_html(golden_doc(example)) == page


@pytest.mark.parametrize("example", PLANS)
def test_page_is_self_contained(example):
    text = render_plan_html(golden_doc(example))
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP.replace(chr(39), "&#x27;")}">' in text
    assert "default-src 'none'" in CSP
    assert not re.search(r"<script|<iframe|<object|<embed|<img|\bsrc=|@import|https?:|//[a-z]", text, re.I)
    assert set(re.findall(r"url\(([^)]*)\)", text)) == {"#arrow"}  # the SVG arrow head, inside the page
    assert [a["href"] for t, a in Page(text).elements if t == "link"] == ["data:,"]  # no favicon request
    assert "\r" not in text and text.endswith("</html>\n")


@pytest.mark.parametrize("example", PLANS)
def test_numbers_in_the_page_are_plan_json_numbers(example):
    doc = golden_doc(example)
    page = Page(render_plan_html(doc))
    rows = {a["data-stage"]: a for a in page.having("tr", "stage-row")}
    assert list(rows) == [s["id"] for s in doc["stages"]]
    for s in doc["stages"]:
        row, est, b = rows[s["id"]], s["estimate"], s["batch"]
        assert number(row, "peak-gib") == est["peak_gib"] and number(row, "peak-bytes") == est["peak_bytes"]
        assert number(row, "capacity-bytes") == est["capacity_bytes"]
        assert number(row, "host-bytes") == est["host_bytes"] and row["data-verdict"] == est["verdict"]
        assert number(row, "effective-batch") == (b["effective_batch"] if b else None)
        assert number(row, "tokens-per-step") == (b["tokens_per_step"] if b else None)
    batch = {a["data-stage"]: a for a in page.having("tr", "batch-row")}
    assert list(batch) == [s["id"] for s in doc["stages"] if s["batch"]]
    for s in doc["stages"]:
        if s["batch"]:
            for key, value in s["batch"].items():
                assert number(batch[s["id"]], key.replace("_", "-")) == value, (s["id"], key)
    assert [a["data-code"] for a in page.having("li", "diagnostic")] == [d["code"] for d in doc["diagnostics"]]
    assert [(a["data-path"], a["data-sha256"], number(a, "size")) for a in page.having("tr", "input")] == [
        (f["path"], f["sha256"], f["size"]) for f in doc["inputs"]]


@pytest.mark.parametrize("example", PLANS)
def test_bars_stack_every_term_of_the_estimate(example):
    doc = golden_doc(example)
    page = Page(render_plan_html(doc))
    bars = {a["data-stage"]: a for a in page.having("div", "memory")}
    segments = [a for t, a in page.elements if t == "div" and a.get("class") == "seg"]
    expected = [s for s in doc["stages"] if s["estimate"] and s["estimate"]["terms"]
                and (s["resources"]["device"] == "cuda" or s["estimate"]["host_bytes"])]
    assert list(bars) == [s["id"] for s in expected]
    assert [(a["data-term"], number(a, "bytes")) for a in segments] == [
        (t["name"], t["bytes"]) for s in expected for t in s["estimate"]["terms"]]
    for s in expected:
        est, bar = s["estimate"], bars[s["id"]]
        if bar["data-memory"] == "gpu":
            assert number(bar, "peak-bytes") == est["peak_bytes"]
            assert number(bar, "capacity-bytes") == est["capacity_bytes"]
            assert number(bar, "gpus") == s["resources"]["nodes"] * s["resources"]["gpus_per_node"]
        else:
            assert number(bar, "host-bytes") == est["host_bytes"]
    # hover: each segment's title names the term and gives its formula
    titles = [a["title"] for a in segments]
    details = [t for s in expected for t in s["estimate"]["terms"]]
    assert all(t["name"] in title and t["detail"] in title for t, title in zip(details, titles, strict=True))


def test_a_stage_over_the_card_is_hatched_past_the_card_line():
    doc = golden_doc("llama3-8b-qlora-24gb")
    est = doc["stages"][1]["estimate"]
    est["terms"][0]["bytes"] += 2 * est["capacity_bytes"]  # now 2 × the card over
    est["peak_bytes"] = sum(t["bytes"] for t in est["terms"])
    est["verdict"] = "oom"
    text = render_plan_html(doc)
    bar = text.split('data-stage="sft" data-memory="gpu"')[1].split('<div class="scale">')[0]
    card = float(re.search(r'class="card" style="left:([\d.]+)%"', bar).group(1))
    over = float(re.search(r'class="over" style="left:([\d.]+)%"', bar).group(1))
    assert card == over == pytest.approx(100 * est["capacity_bytes"] / est["peak_bytes"], abs=1e-3)
    widths = [float(w) for w in re.findall(r'class="seg" style="width:([\d.]+)%', bar)]
    assert sum(widths) == pytest.approx(100, abs=0.01)
    assert 'class="over"' not in text.split('data-stage="dpo" data-memory="gpu"')[1].split('<div class="scale">')[0]


def test_user_strings_are_escaped_and_read_back_exactly():
    doc = copy.deepcopy(golden_doc("llama3-8b-qlora-24gb"))
    doc["pipeline"]["name"] = HOSTILE
    doc["target"]["model"] = HOSTILE
    doc["inputs"][0]["path"] = HOSTILE
    doc["diagnostics"][0]["message"] = HOSTILE
    doc["stages"][1]["method"] = HOSTILE
    doc["stages"][1]["estimate"]["terms"][0]["detail"] = HOSTILE
    text = render_plan_html(doc)
    assert "<script" not in text and "<img" not in text and "\r" not in text
    page = Page(text)
    assert [t for t, _ in page.elements].count("script") == 0
    shown = HOSTILE.replace("\r", "\\r").replace("\n", "\\n")  # text on one line, control characters visible
    assert sum(shown in chunk for chunk in page.text) >= 5
    inputs = page.having("tr", "input")
    assert inputs[0]["data-path"] == HOSTILE  # a data- attribute holds the value itself
    segment = next(a for t, a in page.elements if t == "div" and a.get("class") == "seg")
    assert segment["title"].endswith("\n" + shown)


def test_page_depends_only_on_plan_json():
    doc = golden_doc("tiny-cpu")
    assert render_plan_html(doc) == render_plan_html(json.loads(json.dumps(doc)))
    changed = copy.deepcopy(doc)
    changed["stages"][1]["batch"]["tokens_per_step"] = 123_456_789
    assert "123,456,789" in render_plan_html(changed) and "123,456,789" not in render_plan_html(doc)
