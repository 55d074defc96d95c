"""Renderers: the HTML report runs in headless Chromium without errors and needs no network;
everything from runs and devices is escaped; the JSON keys are stable; the terminal view reads."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from html.parser import HTMLParser

import pytest
from plotly.offline import get_plotlyjs

from tests.support import factories as F
from tests.support.chromium import plot_divs, render_in_chromium
from devprof import stats
from devprof.report import HTMLRenderer, JSONRenderer, TerminalRenderer, get_renderer
from devprof.report.html import downsample, phase_spans, phase_spans_from_durations
from devprof.results import RunRecord
from devprof.store import Store

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> RunRecord:
    """The factories' run, written to a store and read back (the path `devprof report` takes)."""
    db = tmp_path_factory.mktemp("store") / "devprof.db"
    with Store(db) as s:
        meta, reps = F.make_run()
        run_id = s.create_run(meta)
        for r in reps:
            s.add_repetition(run_id, r)
        s.finish_run(run_id, "complete")
        return s.load_run(run_id)


@pytest.fixture(scope="module")
def report(record, tmp_path_factory):
    """(html text, path) of the report."""
    path = HTMLRenderer().write(record, tmp_path_factory.mktemp("report") / f"{record.meta.run_id}.html")
    return path.read_text(encoding="utf-8"), path


@pytest.fixture(scope="module")
def rendered(report):
    """The report after headless Chromium ran it: (dom, script errors). One launch per module."""
    return render_in_chromium(report[1])


class _Elements(HTMLParser):
    """Every start tag with its attributes (script bodies are data, not tags)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _elements(text: str) -> list[tuple[str, dict]]:
    p = _Elements()
    p.feed(text)
    p.close()
    return p.tags


def _external_refs(text: str) -> list[str]:
    out = []
    for tag, attrs in _elements(text):
        for key in ("src", "href", "data", "poster", "action"):
            v = (attrs.get(key) or "").strip().lower()
            if v.startswith(("http:", "https:", "//", "ftp:")):
                out.append(f"<{tag} {key}={v}>")
        if tag == "link":
            out.append(f"<link {attrs}>")
    return out


# ---- HTML in Chromium ---------------------------------------------------------------------------
def test_report_runs_without_script_errors(rendered):
    dom, errors = rendered
    assert errors == []


def test_every_figure_rendered(report, rendered):
    html, _ = report
    dom, _ = rendered
    n = int(re.search(r'<meta name="devprof-figures" content="(\d+)">', html).group(1))
    # speed + peak memory per context, a timeline per (model, workload, context), coverage per context,
    # templated vs real (coverage, expert load, the join) per MoE model and context, the per-repetition view
    assert n == 1 + 1 + 4 + 1 + 3 + 1
    divs = plot_divs(dom)
    assert len(divs) == n == html.count('class="plotly-graph-div"')
    assert all(k >= 1 for k in divs.values()), divs  # plotly drew its <svg class="main-svg"> into each


def test_summary_and_ratio_tables_present(rendered):
    dom, _ = rendered
    table = re.search(r'<table class="summary" id="summary-table">(.*?)</table>', dom, re.S).group(1)
    assert table.count("<tr") == 1 + 4  # header + (2 models x 2 workloads x 1 context)
    for text in ("MobileMoE-S-mini", "MobileLLM-Pro-mini", "templated", "real", "prefill tok/s", "peak VmHWM MiB"):
        assert text in table
    assert 'id="ratio-table"' in dom and "prefill speedup" in dom
    assert "prefills" in dom and "faster than MobileLLM-Pro-mini" in dom  # a verdict in words


def test_no_external_resources(report, rendered):
    html, _ = report
    dom, _ = rendered
    assert _external_refs(html) == []
    assert _external_refs(dom) == []  # nor did plotly add any (no logo link, no CDN, no MathJax)
    assert "cdn.plot.ly" not in re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)


def test_plotly_embedded_exactly_once(report):
    html, _ = report
    js = get_plotlyjs()
    assert html.count(js[:500]) == 1
    assert html.count(js[-500:]) == 1
    scripts = [a for tag, a in _elements(html) if tag == "script"]
    assert all("src" not in a for a in scripts)
    assert len(html) < len(js) + 2_000_000  # timelines are downsampled; the data stays small


def test_report_sections_and_content(report, record):
    html, _ = report
    for sid in ("summary", "setup", "speed", "memory", "compare", "routing", "thermal", "repetitions", "sources"):
        assert f'<section id="{sid}">' in html
    assert record.meta.run_id in html and "2026-09-21 14:05 UTC" in html
    assert "Galaxy S25 (SM-S931B)" in html and "VmHWM: the kernel" in html
    assert "43.2 M" in html  # MobileMoE-S-mini total parameters from the catalog
    assert "Cache: cold" in html and "cold = evicted" in html
    assert "cpu-big °C before → after" in html
    assert "CC BY-SA 4.0" in html and "https://en.wikipedia.org/wiki/Algebra" in html  # as text, not a link
    assert "Shaded: load, prefill, decode" in html
    assert "real ÷ templated prompts: peak memory" in html
    assert "class=\"banner" not in html  # complete run: no warning banner
    data = json.loads(re.search(r'<script type="application/json" id="devprof-data">(.*?)</script>', html, re.S).group(1))
    assert data["run"]["run_id"] == record.meta.run_id and len(data["results"]) == 4


def test_everything_from_runs_and_devices_is_escaped():
    meta, reps = F.make_run(reps=2, warmup=0)
    evil_model = F.MOE + EVIL
    meta.models = [evil_model, F.DENSE]
    meta.workloads = ["templated", "real" + EVIL]
    meta.note = "note " + EVIL
    meta.status = "failed"
    meta.device = replace(meta.device, name="phone " + EVIL, extra={"abi": EVIL})
    meta.settings["prompt_sources"][0]["title"] = EVIL
    for r in reps:
        if r.model == F.MOE:
            r.model = evil_model
        if r.workload == "real":
            r.workload = "real" + EVIL
        r.cache_note = EVIL
        r.outcome.note = EVIL
    reps[0].outcome.status = "failed"
    rec = RunRecord(meta=meta, repetitions=reps)

    html = HTMLRenderer().render(rec)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    n = int(re.search(r'<meta name="devprof-figures" content="(\d+)">', html).group(1))
    scripts = [a for tag, a in _elements(html) if tag == "script"]
    assert len(scripts) == 1 + n + 1  # plotly.js, one per figure, the JSON data: nothing injected

    text = TerminalRenderer(width=200).render(rec)
    assert EVIL in text  # shown literally, not taken as rich markup
    out = json.loads(JSONRenderer().render(rec))
    assert out["run"]["note"] == "note " + EVIL


# ---- run states ---------------------------------------------------------------------------------
def test_interrupted_run_says_how_many_reps_are_missing():
    rec = F.make_record(limit=9, status="interrupted")  # templated done, real stopped after one warm-up
    html = HTMLRenderer().render(rec)
    header = html.split("</header>")[0]
    assert 'class="banner warn"' in header
    assert "Run interrupted: 6 of 12 planned measured repetitions missing." in header
    assert ">interrupted</span>" in header
    text = TerminalRenderer(width=160).render(rec)
    assert "interrupted" in text and "6 of 12 planned measured repetitions missing" in text
    data = json.loads(JSONRenderer().render(rec))
    assert (data["run"]["status"], data["run"]["missing_reps"], data["run"]["measured_reps"]) == ("interrupted", 6, 6)
    real = [r for r in data["results"] if r["workload"] == "real"]
    assert [r["n"] for r in real] == [0, 0] and real[0]["prefill_tok_s"] is None


def test_failed_repetition_is_counted_and_shown():
    rec = F.make_record(fail={(F.MOE, "real", 1)}, status="failed")
    html = HTMLRenderer().render(rec)
    assert 'class="banner bad"' in html
    assert "Run failed: 1 of 12 planned measured repetitions missing (1 failed)." in html
    assert '<tr class="bad">' in html and "Segmentation fault" not in html.split("</header>")[0]
    row = next(r for r in stats.summarize(rec) if (r.model, r.workload) == (F.MOE, "real"))
    assert (row.n, row.n_failed) == (2, 1)


def test_empty_run_renders():
    rec = F.make_record(limit=0, status="interrupted")
    html = HTMLRenderer().render(rec)
    assert '<meta name="devprof-figures" content="0">' in html
    assert "No repetitions were recorded" in html
    assert "12 of 12 planned measured repetitions missing" in html
    assert "Run " in TerminalRenderer().render(rec)
    assert json.loads(JSONRenderer().render(rec))["ratios"] == []


def test_ios_device_names_its_memory_metric():
    meta, reps = F.make_run(reps=2, warmup=0, workloads=("real",), device=F.make_device("ios"))
    for r in reps:  # physFootprint has no file/anon split
        r.outcome.samples = [replace(s, anon_kb=None, file_kb=None, hwm_kb=None) for s in r.outcome.samples]
    html = HTMLRenderer().render(RunRecord(meta=meta, repetitions=reps))
    assert "peak physFootprint MiB" in html and "physFootprint: the memory iOS charges" in html
    assert "reported peak (physFootprint)" in html
    assert '"name":"RssFile"' not in html


# ---- JSON ---------------------------------------------------------------------------------------
def test_json_keys_are_stable(record):
    data = json.loads(JSONRenderer().render(record))
    assert list(data) == ["format", "run", "results", "ratios", "verdict", "noise", "energy", "soak"]
    assert data["format"] == "devprof.show/1"
    assert data["energy"] == {"state": "off", "why": "", "source": None, "battery": None, "update_ms": None,
                              "refused_reps": 0, "rows": []} and data["soak"] is None  # a run without them
    run = data["run"]
    for key in ("run_id", "created", "status", "device", "runtime", "models", "baseline", "workloads", "contexts",
                "reps", "warmup", "settings", "planned_reps", "measured_reps", "failed_reps", "missing_reps"):
        assert key in run
    assert (run["planned_reps"], run["measured_reps"], run["missing_reps"]) == (12, 12, 0)

    metric_keys = []
    for m in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "peak_rss_file_mb", "peak_rss_anon_mb",
              "distinct_experts"):
        metric_keys += [m, f"{m}_ci", f"{m}_cv", f"{m}_min", f"{m}_max"]
    memory_keys = []
    for m in ("peak_swap_mb", "peak_pss_mb", "major_faults", "minor_faults"):
        memory_keys += [m, f"{m}_ci", f"{m}_cv", f"{m}_min", f"{m}_max"]
    memory_keys += ["peak_vmhwm_mb", "peak_rss_swap_mb", "peak_won", "mem_total_mb", "swap_total_mb",
                    "mem_available_before_mb", "mem_available_at_peak_mb", "swap_free_at_peak_mb", "headroom_mb",
                    "peak_share"]
    expected = ["model", "display", "kind", "workload", "context", "n", "n_failed", "cache_states",
                "memory_metric", *metric_keys, "inter_token_ms", *memory_keys]
    assert len(data["results"]) == 4
    for r in data["results"]:
        assert list(r) == expected
        assert r["n"] == 3 and r["cache_states"] == ["cold"]
        lo, hi = r["prefill_tok_s_ci"]
        assert lo <= r["prefill_tok_s"] <= hi
        assert r["prefill_tok_s_min"] <= lo and hi <= r["prefill_tok_s_max"]
        assert round(r["prefill_tok_s"], 2) == r["prefill_tok_s"]
        assert 0 <= r["decode_tok_s_cv"] < 0.2
        assert all(r[k] is None for k in memory_keys)  # a run from before swap, PSS and faults were sampled
    dense = [r for r in data["results"] if r["kind"] == "dense"]
    assert all(r["distinct_experts"] is None and r["distinct_experts_ci"] is None for r in dense)
    moe_real = next(r for r in data["results"] if (r["kind"], r["workload"]) == ("moe", "real"))
    assert moe_real["distinct_experts"] == 360.0

    assert len(data["ratios"]) == 2 * 6
    for r in data["ratios"]:
        assert list(r) == ["subject", "baseline", "workload", "context", "metric", "label", "ratio", "ci",
                           "n_subject", "n_baseline", "verdict", "ci_method", "n_pairs", "clear", "finding"]
    pre = next(r for r in data["ratios"] if (r["metric"], r["workload"]) == ("prefill_tok_s", "real"))
    assert pre["label"] == "speedup" and 1.8 < pre["ratio"] < 2.5 and pre["verdict"]
    assert pre["ci_method"] == "paired t on log ratios" and pre["n_pairs"] == 3 and pre["clear"]
    assert json.loads(JSONRenderer().render(record)) == data  # deterministic


# ---- terminal -----------------------------------------------------------------------------------
def test_terminal_summary(record):
    text = TerminalRenderer(width=160, report_path="reports/x.html").render(record)
    assert f"Run {record.meta.run_id} · complete" in text
    assert "Device: Galaxy S25 (SM-S931B) · android 15" in text and "peak memory = VmHWM" in text
    for col in ("prefill tok/s", "decode tok/s", "TTFT ms", "peak VmHWM MiB", "file MiB", "anon MiB",
                "distinct experts"):
        assert col in text
    assert "page cache: cold" in text
    assert "MobileMoE-S-mini ÷ MobileLLM-Pro-mini" in text and "prefill speedup" in text
    assert "• MobileMoE-S-mini prefills" in text
    assert "Report: reports/x.html" in text
    assert "±" in text


def test_terminal_fits_a_narrow_terminal(record):
    text = TerminalRenderer(width=80).render(record)
    assert "Speed: median" in text and "Memory: median" in text  # split in two tables
    assert "…" not in text  # nothing cut off
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "MobileLLM-Pro-mini" in text and "910.6" in text


def test_get_renderer():
    assert isinstance(get_renderer("html"), HTMLRenderer)
    assert isinstance(get_renderer("JSON", indent=None), JSONRenderer)
    with pytest.raises(Exception, match="unknown output format"):
        get_renderer("pdf")


# ---- helpers ------------------------------------------------------------------------------------
def test_downsample_keeps_peaks():
    xs = list(range(10_000))
    ys = [float(i % 100) for i in xs]
    ys[7_777] = 1_000.0
    dx, dy = downsample(xs, ys, 2000)
    assert len(dx) <= 2000 and dx == sorted(dx)
    assert 1_000.0 in dy and 0.0 in dy
    assert downsample([1, 2, 3], [1.0, None, 3.0], 2000) == ([1, 3], [1.0, 3.0])


def test_phase_spans_from_runtime_timestamps():
    rep = F.make_rep(F.MOE, "real", 2048, 0)
    spans = {name: (a, b) for name, a, b in phase_spans(rep)}
    assert spans["load"][0] == pytest.approx(0.015)
    assert spans["prefill"][0] == pytest.approx(F.LOAD_MS / 1000)
    assert spans["prefill"][1] == pytest.approx((F.LOAD_MS + rep.result.prefill_ms) / 1000)
    assert spans["decode"][1] == pytest.approx((F.LOAD_MS + rep.result.prefill_ms + rep.result.decode_ms) / 1000)
    skewed = replace(rep, result=replace(rep.result, inference_start_ms=rep.result.inference_start_ms + 60_000,
                                         prompt_eval_end_ms=rep.result.prompt_eval_end_ms + 60_000))
    assert [n for n, _, _ in phase_spans(skewed)] == []  # a clock a minute off: no shading at all
    approx = {name: (a, b) for name, a, b in phase_spans_from_durations(rep)}
    assert approx["prefill"] == pytest.approx((rep.result.load_ms / 1000,
                                               (rep.result.load_ms + rep.result.prefill_ms) / 1000))
    rep.result = None
    assert phase_spans(rep) == [] and phase_spans_from_durations(rep) == []


# ---- templated vs real, context sweep, per repetition ------------------------------------------
def test_compare_section_in_the_report(report):
    html, _ = report
    section = html.split('<section id="compare">')[1].split("</section>")[0]
    assert "Templated prompts understate MobileMoE-S-mini&#x27;s peak memory by" in section
    assert "95% CI" in section and "cache cold" in section
    for text in ("Coverage: MobileMoE-S-mini at 2048 tokens", "Expert load: MobileMoE-S-mini",
                 "Routing joined with memory", 'id="projection-mobilemoe-s-mini-2048"', "MobileMoE-L"):
        assert text in section, text
    assert '<section id="sweep">' not in html  # one context: no sweep


def test_per_repetition_view(report):
    html, _ = report
    section = html.split('<section id="repetitions">')[1].split("</section>")[0]
    assert "Every measured repetition, in the order it ran" in section
    assert section.index("plotly-graph-div") < section.index('id="repetitions-table"')


def test_context_sweep_runs_in_chromium(tmp_path):
    rec = F.make_record(contexts=(512, 1024, 2048), reps=2, warmup=0, new_tokens=16)
    path = HTMLRenderer().write(rec, tmp_path / "sweep.html")
    html = path.read_text(encoding="utf-8")
    section = html.split('<section id="sweep">')[1].split("</section>")[0]
    assert "Context sweep: decode speed, TTFT and peak memory vs context" in section
    assert "Contexts: 512, 1024, 2048." in section
    fig = json.loads(re.search(r'Plotly\.newPlot\(\s*"fig-\d+",\s*(\[.*?\]),\s*\{', section, re.S).group(1))
    decode = [tr for tr in fig if tr.get("xaxis") == "x"]
    assert len(decode) == 4 and all(tr["x"] == [512, 1024, 2048] for tr in decode)  # 2 models x 2 workloads
    assert len([tr for tr in fig if tr.get("xaxis") == "x3"]) == 4  # peak memory vs context
    dom, errors = render_in_chromium(path)
    assert errors == []
    assert all(n >= 1 for n in plot_divs(dom).values())
