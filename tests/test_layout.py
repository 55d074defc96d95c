"""The package's shape (issue 12): no import cycle, no module over 600 lines.

Each allow-list names what other branches of issue 12 still have to fix; the lead removes an entry
as the branch that fixes it lands. Nothing new may join them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECK_IMPORTS = REPO / "scripts" / "check-imports"

#: import cycles that other branches remove (layout-cli: cli <-> cli_analysis; layout-runtimes: the
#: devices package <-> its backends)
KNOWN_CYCLES = {
    frozenset({"devprof.cli", "devprof.cli_analysis"}),
    frozenset({"devprof.devices", "devprof.devices.android", "devprof.devices.ios", "devprof.devices.ios.device"}),
}

MAX_LINES = 600
#: modules over MAX_LINES that other branches split (layout-cli: cli.py, report/html.py; layout-runtimes:
#: the device backends, the llama.cpp adapter and export, the reference engine)
KNOWN_LONG = {
    "devprof/cli.py",
    "devprof/report/html.py",
    "devprof/devices/android.py",
    "devprof/devices/ios/device.py",
    "devprof/runtimes/llamacpp/__init__.py",
    "devprof/runtimes/llamacpp/gguf_export.py",
    "devprof/refruntime/engine.py",
}


def _cycles(root: Path) -> tuple[int, list[frozenset[str]]]:
    p = subprocess.run([sys.executable, str(CHECK_IMPORTS), "--root", str(root)], capture_output=True, text=True,
                       timeout=120)
    lines = p.stdout.splitlines()
    assert lines and lines[-1].endswith("cycle(s)"), p.stdout + p.stderr
    return p.returncode, [frozenset(line.split()) for line in lines[:-1]]


def test_no_import_cycle_beyond_the_known_ones():
    _, found = _cycles(REPO)
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert new == [], f"import cycles (scripts/check-imports): {new}"


def test_records_store_stats_files_errors_are_in_no_cycle():
    _, found = _cycles(REPO)
    core = {"devprof.results", "devprof.store", "devprof.store_schema", "devprof.store_pg", "devprof.store_rows",
            "devprof.stats", "devprof.intervals", "devprof.files", "devprof.errors", "devprof.routing"}
    assert [sorted(c & core) for c in found if c & core] == []


def test_check_imports_finds_a_cycle_and_says_so(tmp_path):
    pkg = tmp_path / "devprof"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from devprof import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from devprof.sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def f():\n    from .. import a\n")
    (pkg / "d.py").write_text("import devprof.a\n")
    code, found = _cycles(tmp_path)
    assert code == 1 and found == [frozenset({"devprof.a", "devprof.b", "devprof.sub.c"})]
    (pkg / "sub" / "c.py").write_text("")
    assert _cycles(tmp_path) == (0, [])


def test_no_module_over_600_lines_beyond_the_known_ones():
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / "devprof").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert {k: n for k, n in long.items() if k not in KNOWN_LONG} == {}
