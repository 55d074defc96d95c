"""The package's shape (issue 12): no import cycle, no module over 600 lines.

The allow-lists are empty: a new cycle or a long module fails here. The core layers (session, the
commands, analysis) name no runtime and no device: they ask the registries.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECK_IMPORTS = REPO / "scripts" / "check-imports"

#: import cycles allowed (none: every branch of issue 12 has landed)
KNOWN_CYCLES: set[frozenset[str]] = set()

MAX_LINES = 600
#: modules allowed over MAX_LINES (none)
KNOWN_LONG: set[str] = set()


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


#: names of runtime folders and device backends, which only their own folders and the registries may use
MEMBER_NAMES = ("llamacpp", "executorch", "refruntime", "gguf", ".pte", "\"ios\"", "\"android\"", "iphone")


def test_the_core_names_no_runtime_and_no_device():
    """session.py, analysis/ and the command modules that run things ask registries, never a member by name
    (help texts and bench, which compares runtimes by design, aside)."""
    core = [REPO / "devprof" / "session.py", *sorted((REPO / "devprof" / "analysis").glob("*.py")),
            REPO / "devprof" / "cli" / "options.py", REPO / "devprof" / "cli" / "runs.py", REPO / "devprof" / "cli" / "analyse.py"]
    found = []
    for path in core:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0].lower()
            if code.strip().startswith(("help=", '"', "'")):
                continue
            found += [f"{path.relative_to(REPO)}:{n}: {name}" for name in MEMBER_NAMES if name in code]
    assert found == []
