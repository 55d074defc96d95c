"""`devprof run --device iphone16pro` end to end against fakes at the pymobiledevice3 boundary.

The fake iPhone's benchmark app really runs devprof's reference runtime on this host, and its
fake sysmontap reports that process's real memory as physFootprint.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from devprof.cli import cli
from tests.support.fake_pmd3 import install_fake_iphone


def test_run_iphone16pro_end_to_end_labels_physfootprint(monkeypatch, tmp_path):
    install_fake_iphone(monkeypatch, "iPhone17,1", root=tmp_path, register_runtime="reference")
    db = tmp_path / "s.db"
    runner = CliRunner()
    res = runner.invoke(cli, ["devices", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    phones = [d for d in json.loads(res.output) if d["kind"] == "ios"]
    assert phones and phones[0]["model"] == "iPhone17,1"

    res = runner.invoke(cli, ["run", "--device", "iphone16pro", "--context", "128", "--new-tokens", "4",
                              "--reps", "2", "--warmup", "0", "--workload", "templated", "--baseline", "none",
                              "--db", str(db)],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    shown = json.loads(runner.invoke(cli, ["show", "latest", "--json", "--db", str(db)]).output)
    assert shown["run"]["device"]["memory_metric"] == "physFootprint"
    assert all(r["n"] == 2 and r["peak_rss_mb"] > 10 for r in shown["results"])
    from devprof.store import Store

    reps = Store(db).load_run("latest").measured()
    assert reps and all(any(s.footprint_kb for s in r.outcome.samples) for r in reps)  # per-sample physFootprint kept
    html = Path(runner.invoke(cli, ["report", "latest", "--db", str(db)]).output.strip()).read_text()
    assert "physFootprint" in html and "iPhone" in html


def test_iphone_without_developer_mode_is_one_line(monkeypatch, tmp_path):
    install_fake_iphone(monkeypatch, "iPhone17,1", root=tmp_path, register_runtime="reference",
                        developer_mode=False)
    res = CliRunner().invoke(cli, ["run", "--device", "iphone16pro", "--context", "128", "--db",
                                   str(tmp_path / "s.db")])
    assert res.exit_code == 1
    assert "Developer Mode" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
