"""`devprof export --format csv`: one table with a ``kind`` column (``repetition`` | ``summary``); the
columns are ``devprof.report.rows.columns()``."""

from __future__ import annotations

import csv
import io

from devprof.report.base import Renderer
from devprof.report.rows import check_exportable, columns, repetition_rows, summary_rows
from devprof.results import RunRecord


def to_csv(record: RunRecord) -> str:
    check_exportable(record)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(), lineterminator="\n")
    w.writeheader()
    for row in repetition_rows(record) + summary_rows(record):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


class CSVRenderer(Renderer):
    name = "csv"
    output_file_extension = "csv"

    def render(self, record: RunRecord) -> str:
        return to_csv(record)
