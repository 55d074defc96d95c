"""Extract the CHAMP math problems and their solutions into ``workloads/text/champ_math.jsonl``.

The math text of devprof's ``real`` workloads is the CHAMP dataset (Mao, Kim and Zhou 2024,
"CHAMP: A Competition-level Dataset for Fine-Grained Analyses of LLMs' Mathematical Reasoning
Capabilities"), 270 competition-level problems written by people, each with a step-by-step
solution, MIT licence. It ships on PyPI as ``champ-dataset`` 1.0.0, but inside a 72 MB JSON
file that is mostly model outputs and takes ~0.8 s to parse, so devprof does not depend on the
package at run time: this script copies the problems and solutions (about 180 KB) into the
repository once, with the licence beside them (``text/LICENSE-CHAMP.txt``). Run it again only
to check or refresh that copy::

    pip download --no-deps -d /tmp/champ champ-dataset==1.0.0
    python workloads/extract_champ.py --wheel /tmp/champ/champ_dataset-1.0.0-py3-none-any.whl
    # or, with the package installed:  python workloads/extract_champ.py

Each output line is one JSON object: ``id``, ``category`` (the dataset's own: Combinatorics,
Inequality, Number-Theory, Polynomial, Sequence), ``problem``, ``solution`` (the steps joined
by spaces) and ``answer``. The order is the dataset's; the output is byte-for-byte
deterministic (``--check`` compares it with the committed file).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "text" / "champ_math.jsonl"
MEMBER = "champ_dataset/dataset_files/v0.json"


def _load(wheel: Path | None) -> dict:
    if wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            return json.loads(zf.read(MEMBER))
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or spec.origin is None:
        sys.exit("champ-dataset is not installed; pass --wheel PATH (see the module docstring)")
    return json.loads((Path(spec.origin).parent / "dataset_files" / "v0.json").read_text("utf-8"))


def extract(data: dict) -> str:
    lines = []
    for pid, p in data["problems"].items():
        steps = " ".join(s["_text"].strip() for s in p["solution"]["steps"])
        rec = {
            "id": pid,
            "category": p["category"],
            "problem": p["_text"].strip(),
            "solution": steps,
            "answer": p.get("_answer", "").strip(),
        }
        lines.append(json.dumps(rec, ensure_ascii=False, sort_keys=False))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="read champ-dataset from this wheel file")
    ap.add_argument("--check", action="store_true", help="compare with the committed file")
    args = ap.parse_args(argv)
    text = extract(_load(args.wheel))
    if args.check:
        same = OUT.exists() and OUT.read_text("utf-8") == text
        print("champ_math.jsonl is up to date" if same else "champ_math.jsonl differs")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, "utf-8")
    print(f"wrote {OUT} ({len(text.encode('utf-8'))} bytes, {text.count(chr(10))} problems)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
