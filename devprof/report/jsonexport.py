"""`devprof export --format json`: every repetition and every summary row of a run, with the ratios
(format ``devprof.export/1``; `devprof show --json` is ``report/jsonout.py``)."""

from __future__ import annotations

import json

from devprof.report.base import Renderer, analyse
from devprof.report.jsonout import finite_json, ratio_dict, result_dicts, run_dict
from devprof.report.rows import check_exportable, repetition_rows
from devprof.results import RunRecord

FORMAT = "devprof.export/1"


def to_json(record: RunRecord) -> str:
    check_exportable(record)
    a = analyse(record)
    reps = []
    for rep, row in zip(record.repetitions, repetition_rows(record)):
        d = {k: v for k, v in row.items() if not k.endswith(("_ci_low", "_ci_high", "_cv")) and k not in ("n", "n_failed")}
        d.update(cache_note=rep.cache_note, thermal_before=rep.thermal_before, thermal_after=rep.thermal_after,
                 artifacts=rep.artifacts, conditions=rep.conditions, energy=rep.energy,
                 routing=None if rep.routing is None else {"n_tokens": rep.routing.n_tokens,
                                                           "distinct_pairs": rep.routing.distinct_pairs,
                                                           "distinct_per_layer": rep.routing.distinct_per_layer})
        reps.append(d)
    from devprof.report.soak_figures import json_sections

    doc = {"format": FORMAT, "run": run_dict(a), "repetitions": reps, "summary": result_dicts(a),
           "ratios": [ratio_dict(r) for r in a.ratios], **json_sections(record)}
    return json.dumps(finite_json(doc), indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"


class ExportJSONRenderer(Renderer):
    name = "export-json"
    output_file_extension = "json"

    def render(self, record: RunRecord) -> str:
        return to_json(record)
