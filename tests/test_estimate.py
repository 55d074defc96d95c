"""`devprof run`'s estimate: catalog arithmetic, the store's history, and where the CLI prints it."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support import factories as F
from devprof.catalog import get_model
from devprof.cli import cli
from devprof.estimate import ANNOUNCE_ABOVE_S, PER_REP_OVERHEAD_S, catalog_seconds, duration, estimate
from devprof.session import Plan
from devprof.store import Store

SMALL = ["--context", "128", "--new-tokens", "4", "--warmup", "0", "--reps", "1"]


def _plan(**kw) -> Plan:
    base = dict(models=[get_model(F.MOE), get_model(F.DENSE)], workloads=["templated", "real"], contexts=[8192])
    return Plan(**{**base, **kw})


def test_duration_words():
    assert [duration(s) for s in (0.2, 40, 60, 95, 600, 3600, 3900)] == \
        ["1 s", "40 s", "1 min", "1.6 min", "10 min", "1 h", "1 h 5 min"]


def test_catalog_arithmetic_grows_with_the_work():
    moe, dense = get_model(F.MOE), get_model(F.DENSE)
    assert catalog_seconds(moe, 8192, 128, "reference", "fp32") > catalog_seconds(moe, 1024, 128, "reference", "fp32")
    assert catalog_seconds(moe, 1024, 512, "reference", "fp32") > catalog_seconds(moe, 1024, 16, "reference", "fp32")
    # the dense baseline computes more per token than the sparse subject of the same family
    assert catalog_seconds(dense, 8192, 128, "reference", "fp32") > catalog_seconds(moe, 8192, 128, "reference", "fp32")


def test_the_default_plan_is_announced_and_a_tiny_one_is_not():
    long = estimate(_plan())  # the default run: 2 models x 2 workloads x 8192 tokens x (1 + 3)
    assert long.runs == 16 and long.seconds > ANNOUNCE_ABOVE_S
    assert "catalog arithmetic" in long.words() and long.words().startswith("about ")
    tiny = estimate(_plan(contexts=[128], new_tokens=4, reps=1, warmup=0))
    assert tiny.runs == 4 and tiny.seconds < ANNOUNCE_ABOVE_S
    # twice the repetitions, twice the time
    assert estimate(_plan(reps=7)).seconds == pytest.approx(2 * long.seconds)


def test_history_of_the_same_cells_is_preferred_and_rescaled(tmp_path):
    with Store(tmp_path / "s.db") as s:
        meta, reps = F.make_run(reps=3, warmup=1, contexts=(2048,), new_tokens=64)  # a Galaxy S25
        run_id = s.create_run(meta)
        for r in reps:
            s.add_repetition(run_id, r)
        s.finish_run(run_id, "complete")
        plan = _plan(contexts=[2048], new_tokens=64, reps=3, warmup=1)
        est = estimate(plan, s, device_serial="R5CY20ABCDE", device_kind="android")
        assert {c.source for c in est.cells} == {"history"}
        assert "from 16 similar earlier repetitions" in est.words()  # 8 per model (warm-ups included)
        for model in (F.MOE, F.DENSE):
            walls = [r.outcome.wall_ms / 1000 for r in reps if r.model == model]
            cell = next(c for c in est.cells if c.model == model)
            # the same context and new tokens: the measured wall time, plus the per-repetition overhead
            assert cell.seconds_per_run == pytest.approx(statistics.median(walls) + PER_REP_OVERHEAD_S["android"])
        longer = estimate(_plan(contexts=[4096], new_tokens=64, reps=3, warmup=1), s, "R5CY20ABCDE", "android")
        assert longer.cells[0].source == "history" and longer.seconds > est.seconds
        # another device, runtime or weight format has no history: catalog arithmetic
        assert {c.source for c in estimate(plan, s, "local", "local").cells} == {"catalog"}
        assert {c.source for c in estimate(_plan(contexts=[2048], runtime="llamacpp", weights="q4_0"), s,
                                           "R5CY20ABCDE", "android").cells} == {"catalog"}


def _crash_binary(tmp_path: Path, monkeypatch) -> None:
    script = tmp_path / "crash.sh"
    script.write_text("#!/bin/sh\necho 'segfault in expert 7' >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setenv("DEVPROF_BINS_MANIFEST", str(tmp_path / "manifest.toml"))
    res = CliRunner().invoke(cli, ["bins", "add", str(script), "--runtime", "reference", "--platform", "host",
                                   "--abi", "any", "--name", "crash"])
    assert res.exit_code == 0, res.output


def test_run_prints_the_estimate_before_a_long_plan_starts(tmp_path, monkeypatch):
    _crash_binary(tmp_path, monkeypatch)
    res = CliRunner().invoke(cli, ["run", "--reps", "20", "--binary", "crash", "--db", str(tmp_path / "s.db")])
    assert res.exit_code == 1 and "runtime exited with code 3" in res.output
    assert "estimate: about " in res.output and "for 84 runtime runs" in res.output
    assert res.output.index("estimate:") < res.output.index("runtime exited")
    res = CliRunner().invoke(cli, ["run", *SMALL, "--binary", "crash", "--db", str(tmp_path / "s.db")])
    assert res.exit_code == 1 and "estimate" not in res.output  # a plan under a minute runs without one


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    db = tmp_path / "s.db"
    res = CliRunner().invoke(cli, ["run", "--dry-run", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert ("2 model(s) x 2 workload(s) x 1 context(s) x (1 warm-up + 5-12 reps, --reps auto) = at least 24 runtime "
            "runs") in res.output
    assert "estimate: about " in res.output and "catalog arithmetic" in res.output
    assert not db.exists()
    res = CliRunner().invoke(cli, ["run", "--dry-run", *SMALL, "--db", str(db)])
    assert res.exit_code == 0 and "= 4 runtime runs" in res.output and "estimate: about" in res.output
    res = CliRunner().invoke(cli, ["run", "--dry-run", "--context", "99999", "--db", str(db)])
    assert res.exit_code == 2  # a dry run checks the plan like a real one
