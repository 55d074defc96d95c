"""--reps auto: the stopping rule on hand-made pairs, and runs through the CLI that end each way."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from devprof import adaptive as A
from devprof.cli import cli
from devprof.results import ProcessOutcome, Repetition, RunResult

MOE, DENSE = "mobilemoe-s-mini", "mobilellm-pro-mini"


def _rep(model, index, decode, prefill=100.0):
    return Repetition(model=model, workload="real", context=64, index=index, warmup=False,
                      result=RunResult(runtime="reference", decode_tok_s=decode, prefill_tok_s=prefill),
                      outcome=ProcessOutcome(exit_code=0, stdout="", stderr="", start_wall_ms=0, wall_ms=1))


def _pairs(ratios, drift=None):
    reps = []
    for i, r in enumerate(ratios):
        base = 20.0 * (drift[i] if drift else 1.0)
        reps += [_rep(MOE, i, base * r, 200.0 * r), _rep(DENSE, i, base, 200.0)]
    return reps


def test_rule_stops_when_precise_or_capped():
    rule = A.Rule(min_reps=5, target=0.05, max_reps=8, max_s=100)
    tight = _pairs([2.0, 2.02, 1.99, 2.01, 2.0], drift=[1, 0.5, 1.3, 0.7, 1.1])  # drift cancels in the pairs
    assert A.stop_reason(rule, 4, 1.0, tight[:8], [MOE, DENSE])[0] is None  # below the minimum
    why, w, what = A.stop_reason(rule, 5, 1.0, tight, [MOE, DENSE])
    assert why == "precise" and w < 0.05 and what in ("decode speedup", "prefill speedup")
    loose = _pairs([2.0, 2.6, 1.5, 2.3, 1.7])
    assert A.stop_reason(rule, 5, 1.0, loose, [MOE, DENSE])[0] is None
    assert A.stop_reason(rule, 5, 100.0, loose, [MOE, DENSE])[0] == "time cap"
    assert A.stop_reason(rule, 8, 1.0, loose + _pairs([2.1, 1.8, 2.4]), [MOE, DENSE])[0] == "count cap"
    # one model: its own speed's interval
    alone = [_rep(MOE, i, v, 200.0) for i, v in enumerate((20, 20.1, 19.9, 20.05, 20))]
    assert A.stop_reason(rule, 5, 1.0, alone, [MOE])[0] == "precise"
    assert "stopped: interval within ±5%" in A.describe_cell(
        {"workload": "real", "context": 64, "rounds": 5, "stopped": "precise", "widest_pct": 1.2,
         "what": "decode speedup", "target_pct": 5})


def _run(db, *args):
    res = CliRunner().invoke(cli, ["run", "--context", "64", "--new-tokens", "4", "--warmup", "0",
                                   "--workload", "real", *args, "--db", str(db)])
    assert res.exit_code == 0, res.output
    doc = json.loads(CliRunner().invoke(cli, ["show", "latest", "--json", "--db", str(db)]).output)
    shown = CliRunner().invoke(cli, ["show", "latest", "--db", str(db)], terminal_width=200).output
    return doc, shown


def test_auto_runs_end_by_precision_count_and_time(tmp_path):
    db = tmp_path / "s.db"
    doc, shown = _run(db, "--reps", "auto", "--reps-min", "3", "--reps-max", "6", "--reps-target", "5000")
    ad = doc["run"]["settings"]["adaptive"]
    assert doc["run"]["settings"]["reps"] == "auto" and ad["min_reps"] == 3
    assert [(c["rounds"], c["stopped"]) for c in ad["cells"]] == [(3, "precise")]
    assert all(r["n"] == 3 for r in doc["results"])
    assert "Repetitions: real 64: 3 rounds" in shown and "stopped: interval within ±5000%" in shown
    doc, shown = _run(db, "--baseline", "none", "--reps", "auto", "--reps-min", "2", "--reps-max", "3",
                      "--reps-target", "0.1")
    assert [(c["rounds"], c["stopped"]) for c in doc["run"]["settings"]["adaptive"]["cells"]] == [(3, "count cap")]
    assert doc["results"][0]["n"] == 3 and "count cap of 3 reached" in shown
    # the report counts what was measured against the planned minimum, and says the rule in words
    html = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", "latest", "--db", str(db), "--out", str(html)]).exit_code == 0
    page = html.read_text()
    assert "3 measured repetitions (2 planned at least)" in page and " of 2 measured" not in page
    row = page[page.index("<th>adaptive</th>"):][:400]
    assert "auto reps (2–3 a cell" in row and "count cap of 3 reached" in row and "{" not in row, row
    doc, _ = _run(db, "--baseline", "none", "--reps", "auto", "--reps-min", "2", "--reps-time", "0",
                  "--reps-target", "0.1")
    assert [(c["rounds"], c["stopped"]) for c in doc["run"]["settings"]["adaptive"]["cells"]] == [(2, "time cap")]


@pytest.mark.parametrize("args,message", [
    (["--reps", "many"], "--reps must be a whole number or auto"),
    (["--reps", "0"], "--reps must be between 1 and 1000"),
    (["--reps", "auto", "--reps-min", "6", "--reps-max", "5"], "--reps-max 5 is below --reps-min 6"),
])
def test_bad_reps_is_one_line(args, message, tmp_path):
    res = CliRunner().invoke(cli, ["run", *args, "--db", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
