"""`devprof history`: change points (unit), and the command over a store of runs (end to end)."""

from __future__ import annotations

import copy
import json

from click.testing import CliRunner

from tests.support import factories as F
from tests.support.chromium import plot_divs, render_in_chromium
from devprof.analysis.history import Point, against_last, device_matches, mark_changes
from devprof.cli import cli
from devprof.store import Store


def _pts(medians, half=0.5):
    return [Point(run_id=f"r{i}", created=f"2026-01-{i + 1:02d}", workload="real", context=64, median=m,
                  ci_low=m - half, ci_high=m + half, n=5, sha256="-", version="0.1.0", runtime="reference")
            for i, m in enumerate(medians)]


def test_flat_noise_has_no_change_point():
    pts = mark_changes(_pts([60.0, 61.0, 59.5, 60.4, 60.9, 59.8, 60.2]))
    assert [p.change for p in pts] == [""] * 7


def test_a_step_down_is_marked_once():
    pts = mark_changes(_pts([60.0, 61.0, 59.5, 60.4, 48.0, 48.5, 47.9]))
    assert [p.change for p in pts] == ["", "", "", "", "down", "", ""]
    assert pts[4].band == (59.5, 61.0)  # the range of the 4 runs before it (n <= 5)


def test_a_step_up_and_too_few_runs():
    assert [p.change for p in mark_changes(_pts([60.0, 61.0, 70.0]))] == ["", "", "up"]
    assert [p.change for p in mark_changes(_pts([60.0, 90.0]))] == ["", ""]  # one earlier run: nothing is called


def test_overlapping_intervals_are_not_a_change():
    # 62.5 +- 2 overlaps the band [59.5, 61]: moved, but not beyond its noise
    assert mark_changes(_pts([60.0, 61.0, 59.5, 62.5], half=2.0))[-1].change == ""


def test_the_window_limits_the_band():
    pts = mark_changes(_pts([40.0, 60.0, 60.2, 59.9, 60.1, 35.0]), window=3)
    assert pts[-1].band == (59.9, 60.2) and pts[-1].change == "down"


def test_against_last():
    cmp = against_last(_pts([60.0, 61.0, 59.0, 48.0]), 3)
    assert cmp["baseline_median"] == 60.0 and cmp["baseline_runs"] == 3
    assert round(cmp["change_pct"], 1) == -20.0 and cmp["beyond_noise"]
    assert against_last(_pts([60.0]), 3) is None


def test_device_matches_serial_alias_model():
    dev = F.make_device()
    dev.extra["aliases"] = ["s25"]
    assert device_matches(dev, "S25") and device_matches(dev, "R5CY20ABCDE") and device_matches(dev, "sm-s931b")
    assert not device_matches(dev, "pixel9")


# ---- end to end over a store ------------------------------------------------------------------
def _store_with_history(path, factors):
    dev = F.make_device()
    dev.extra["aliases"] = ["s25"]
    ids = []
    with Store(path) as s:
        for k, f in enumerate(factors):
            meta = F.make_meta(models=(F.MOE,), workloads=("real",), contexts=(64,), reps=5, warmup=0,
                               created=f"2026-03-{k + 1:02d}T10:00:00+00:00", device=dev,
                               settings={"devprof_version": f"0.1.{k}", "binary_info": {"sha256": f"{k:02d}" * 32}})
            rid = s.create_run(meta)
            for i in range(5):
                rep = copy.deepcopy(F.make_rep(F.MOE, "real", 64, i, new_tokens=8, seed=k))
                rep.result.decode_tok_s *= f
                s.add_repetition(rid, rep)
            s.finish_run(rid, "complete")
            ids.append(rid)
    return ids


def test_history_command_json_table_and_html(tmp_path):
    db = tmp_path / "s.db"
    ids = _store_with_history(db, [1.0, 1.0, 1.0, 1.0, 0.8, 0.8])
    r = CliRunner().invoke(cli, ["history", "--device", "s25", "--model", F.MOE, "--metric", "decode_tok_s",
                                 "--workload", "real", "--json", "--db", str(db), "--against-last", "3"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    (series,) = doc["series"]
    pts = series["points"]
    assert [p["run_id"] for p in pts] == ids
    assert [p["change"] for p in pts] == [None, None, None, None, "down", None]
    assert pts[2]["sha256"] == "02" * 32 and pts[2]["devprof_version"] == "0.1.2"
    assert all(p["ci"][0] <= p["median"] <= p["ci"][1] and p["n"] == 5 for p in pts)
    assert series["against_last"]["run_id"] == ids[-1] and series["against_last"]["change_pct"] < -10

    html = tmp_path / "h.html"
    r = CliRunner(env={"COLUMNS": "260"}).invoke(
        cli, ["history", "--device", "s25", "--model", F.MOE, "--db", str(db), "--html", str(html)])
    assert r.exit_code == 0, r.output
    assert ids[4] in r.output and "down (band" in r.output and "0.1.5" in r.output
    # against the 5 before it, which hold the first slower run: a change, but within their noise
    assert f"latest {ids[-1]}" in r.output and "within their noise" in r.output
    page = html.read_text()
    assert "Plotly" in page and "error_y" in page and "change point" in page
    assert ("sha256 " + "04" * 8) in page and "devprof 0.1.4" in page and ids[0] in page
    dom, errors = render_in_chromium(html)  # the page draws, offline, without errors
    assert errors == []
    divs = plot_divs(dom)
    assert len(divs) == 1 and all(n > 0 for n in divs.values())


def test_history_bad_input(tmp_path):
    db = tmp_path / "s.db"
    _store_with_history(db, [1.0])
    r = CliRunner().invoke(cli, ["history", "--device", "s25", "--model", F.MOE, "--metric", "speed", "--db", str(db)])
    assert r.exit_code == 2 and "unknown metric 'speed'" in r.output
    r = CliRunner().invoke(cli, ["history", "--device", "pixel9", "--model", F.MOE, "--db", str(db)])
    assert r.exit_code == 2 and "no stored run of" in r.output


def test_diff_latest_against_the_median_of_the_last_n(tmp_path):
    db = tmp_path / "s.db"
    ids = _store_with_history(db, [1.0, 1.0, 1.0, 1.0, 0.8])
    r = CliRunner().invoke(cli, ["diff", "latest", "--against-last", "4", "--json", "--db", str(db)])
    assert r.exit_code == 1, r.output  # decode 20% slower, beyond the earlier runs' noise
    doc = json.loads(r.output)
    assert doc["run_id"] == ids[-1]
    rows = {(x["model"], x["metric"]): x for x in doc["rows"]}
    dec = rows[(F.MOE, "decode_tok_s")]
    assert dec["regression"] and -24 < dec["change_pct"] < -16 and dec["baseline_runs"] == ids[3::-1]
    assert not rows[(F.MOE, "peak_rss_mb")]["regression"]
    r = CliRunner().invoke(cli, ["diff", "latest~1", "--against-last", "3", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "within noise" in r.output and "regression" not in r.output
    r = CliRunner().invoke(cli, ["diff", ids[0], "--against-last", "3", "--db", str(db)])
    assert r.exit_code == 2 and "no earlier run" in r.output
    r = CliRunner().invoke(cli, ["diff", "latest", "latest~1", "--against-last", "3", "--db", str(db)])
    assert r.exit_code == 2 and "not both" in r.output
