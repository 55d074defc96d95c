"""The `compare`, `diff` and `export` commands end to end on a store: output, files, exit codes, and one
line (never a traceback) for bad input."""

from __future__ import annotations

import csv
import io
import json

import click
import pytest
from click.testing import CliRunner

from tests.support import factories as F
from devprof import cli as cli_mod
from devprof.cli.analyse import compare, diff, export
from devprof.store import Store
from test_diff import rerun, slowed_record


@pytest.fixture(scope="module")
def app() -> click.Group:
    """devprof's group with the three commands, as devprof.cli registers them."""
    for cmd in (compare, diff, export):
        if cmd.name not in cli_mod.cli.commands:
            cli_mod.cli.add_command(cmd)
    return cli_mod.cli


def _store(db, *records):
    with Store(db) as s:
        for rec in records:
            rid = s.create_run(rec.meta)
            for r in rec.repetitions:
                s.add_repetition(rid, r)
            s.finish_run(rid, rec.meta.status if rec.meta.status != "running" else "complete")
    return db


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    base = F.make_record(contexts=(1024,), new_tokens=16, run_id="20260921-140507-aaaa")
    same = rerun(base)
    same.meta.run_id, same.meta.created = "20260921-150000-bbbb", "2026-09-21T15:00:00+00:00"
    mp = pytest.MonkeyPatch()
    try:
        slow = slowed_record(mp, factor=0.75, contexts=(1024,), new_tokens=16)
    finally:
        mp.undo()
    slow.meta.run_id, slow.meta.created = "20260921-160000-cccc", "2026-09-21T16:00:00+00:00"
    dense_meta, dense_reps = F.make_run(models=(F.DENSE,), reps=2, warmup=0, contexts=(512,), new_tokens=8,
                                        run_id="20260921-170000-dddd", created="2026-09-21T17:00:00+00:00",
                                        status="complete")
    from devprof.results import RunRecord

    dense = RunRecord(meta=dense_meta, repetitions=dense_reps)
    empty = F.make_record(limit=0, run_id="20260921-180000-eeee", created="2026-09-21T18:00:00+00:00",
                          status="interrupted")
    return _store(tmp_path_factory.mktemp("store") / "devprof.db", base, same, slow, dense, empty)


def run(app, *args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_compare_text_json_and_html(app, db, tmp_path):
    r = run(app, "compare", "20260921-140507", "--db", str(db))
    assert r.exit_code == 0, r.output
    assert "Templated prompts understate MobileMoE-S-mini's peak memory by" in r.output
    assert "page cache cold" in r.output and "Projection" in r.output
    r = run(app, "compare", "20260921-140507-aaaa", "--db", str(db), "--json")
    doc = json.loads(r.stdout)
    assert doc["format"] == "devprof.compare/1" and doc["headlines"][0].startswith("templated prompts understate")
    page = tmp_path / "reports" / "mem.html"
    r = run(app, "compare", "20260921-140507-aaaa", "--db", str(db), "--html", str(page))
    assert r.exit_code == 0 and page.is_file()
    text = page.read_text()
    assert text.count("<script type=\"text/javascript\">") == 1 and "Templated vs real prompts" in text


def test_diff_exit_codes(app, db):
    same = run(app, "diff", "20260921-140507-aaaa", "20260921-150000-bbbb", "--db", str(db))
    assert same.exit_code == 0, same.output
    assert "No regression beyond 5%" in same.output
    slow = run(app, "diff", "20260921-140507-aaaa", "20260921-160000-cccc", "--db", str(db))
    assert slow.exit_code == 1
    assert "regression(s) beyond 5%" in slow.output and "decode is slower" in slow.output
    loose = run(app, "diff", "20260921-140507-aaaa", "20260921-160000-cccc", "--db", str(db), "--threshold", "50")
    assert loose.exit_code == 0
    js = run(app, "diff", "20260921-140507-aaaa", "20260921-160000-cccc", "--db", str(db), "--json")
    assert js.exit_code == 1 and json.loads(js.stdout)["exit_code"] == 1


def test_diff_exit_status_through_main(app, db, capsys):
    """What the shell sees: devprof's main() runs click without standalone mode."""
    with pytest.raises(SystemExit) as e:
        cli_mod.main(["diff", "20260921-140507-aaaa", "20260921-160000-cccc", "--db", str(db)])
    assert e.value.code == 1
    assert "regression(s) beyond 5%" in capsys.readouterr().out
    assert cli_mod.main(["diff", "20260921-140507-aaaa", "20260921-150000-bbbb", "--db", str(db)]) is None  # 0


def test_diff_across_stores(app, db, tmp_path):
    phone = F.make_record(contexts=(1024,), new_tokens=16, device=F.make_device("ios"), run_id="20260921-190000-ffff")
    other = _store(tmp_path / "phone.db", phone)
    r = run(app, "diff", "20260921-140507-aaaa", "latest", "--db", str(db), "--db-b", str(other))
    assert "warning: different devices" in r.output and r.exit_code in (0, 1)


def test_export_formats(app, db, tmp_path):
    r = run(app, "export", "20260921-140507-aaaa", "--db", str(db), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 16 + 4
    out = tmp_path / "run.json"
    r = run(app, "export", "20260921-140507-aaaa", "--db", str(db), "--format", "json", "--out", str(out))
    assert r.exit_code == 0 and json.loads(out.read_text())["format"] == "devprof.export/1"
    r = run(app, "export", "20260921-140507-aaaa", "--db", str(db), "--format", "md")
    assert r.output.startswith("# devprof run 20260921-140507-aaaa")
    folder = tmp_path / "traces"
    r = run(app, "export", "20260921-140507-aaaa", "--db", str(db), "--format", "perfetto", "--out", str(folder))
    assert r.exit_code == 0
    files = sorted(folder.glob("*.json"))
    assert len(files) == 16 and sorted(r.stdout.split()) == [str(p) for p in files]  # one path a line


@pytest.mark.parametrize("argv, code, message", [
    (["compare", "nosuchrun"], 2, "no run 'nosuchrun'"),
    (["export", "20260921-180000-eeee", "--format", "csv"], 2, "has no repetitions"),
    (["compare", "20260921-180000-eeee"], 2, "has no measured repetitions"),
    (["diff", "20260921-140507-aaaa", "20260921-180000-eeee"], 2, "has no measured repetitions"),
    (["compare", "20260921-170000-dddd"], 1, "has no MoE model"),
    (["diff", "20260921-140507-aaaa", "20260921-170000-dddd"], 2, "measured nothing in common"),
])
def test_bad_input_is_one_line(app, db, capsys, argv, code, message):
    with pytest.raises(SystemExit) as e:
        cli_mod.main([*argv, "--db", str(db)])
    assert e.value.code == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unwritable_out_is_one_line(app, db, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (["export", "latest~1", "--format", "csv", "--out", str(blocker / "x.csv")],
                 ["export", "latest~1", "--format", "perfetto", "--out", str(blocker)],
                 ["compare", "20260921-140507-aaaa", "--html", str(blocker / "x.html")]):
        with pytest.raises(SystemExit) as e:
            cli_mod.main([*argv, "--db", str(db)])
        assert e.value.code == 2  # a path that cannot be written is bad input
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot write") and len(err.splitlines()) == 1, err


def test_missing_store_is_one_line(app, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_mod.main(["diff", "a", "b", "--db", str(tmp_path / "none.db")])
    assert e.value.code == 2 and "no results store" in capsys.readouterr().err
