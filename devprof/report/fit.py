"""Tables that fit the terminal: ids and names are never cut; less important columns go first.

rich shrinks a table that is too wide by wrapping, then by cutting every column with an ellipsis
(a run id ``20261…``, a model ``mob…``). ``fit_table`` builds the table, measures its narrowest
possible width, and drops the optional columns (highest ``drop`` first) until that fits; the
``keep`` columns are ``no_wrap`` with a ``min_width`` of their longest line, so they are shown whole.
A caption names what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Col:
    header: str
    justify: str = "left"
    keep: bool = False  # an id or a name: never wrapped, never cut
    drop: int = 0  # 0: always shown; otherwise dropped on narrow terminals, highest first


def _text_width(cell: Any) -> int:
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return max((len(line) for line in text.splitlines()), default=0)


def _build(cols: Sequence[Col], shown: list[int], rows: Sequence[Sequence[RenderableType]], table_kw: dict) -> Table:
    t = Table(**table_kw)
    for i in shown:
        c = cols[i]
        longest = max([_text_width(r[i]) for r in rows] + [len(c.header)]) if c.keep else None
        t.add_column(c.header, justify=c.justify, no_wrap=c.keep, min_width=longest)
    for r in rows:
        t.add_row(*(r[i] for i in shown))
    return t


def fit_table(console: Console, cols: Sequence[Col], rows: Sequence[Sequence[RenderableType]],
              width: int | None = None, **table_kw: Any) -> Table:
    """The table of ``rows`` with as many of ``cols`` as fit ``width`` (default: the console's).

    Column widths are set here, not left to rich: rich narrows the widest wrapping columns first,
    below their longest word if need be (a header ``GFLOP/to`` ``k``), where this gives every column at
    least its longest word and shares what is left in proportion to what each could still use.
    """
    width = width or console.width
    table_kw = {"box": box.SIMPLE_HEAD, "pad_edge": False, "show_edge": False, **table_kw}
    levels = sorted({c.drop for c in cols if c.drop}, reverse=True)
    dropped: set[int] = set()
    options = console.options.update_width(10_000)
    while True:
        shown = [i for i, c in enumerate(cols) if c.drop not in dropped]
        t = _build(cols, shown, rows, table_kw)
        ranges = [t._measure_column(console, options, col) for col in t.columns]  # padding included
        need = sum(r.minimum for r in ranges) + t._extra_width
        if need <= width or not levels:
            break
        dropped.add(levels.pop(0))
    room = width - t._extra_width
    if sum(r.maximum for r in ranges) > room:
        pads = [t._get_padding_width(i) for i in range(len(t.columns))]
        widths = [r.minimum for r in ranges]
        spare = max(0, room - sum(widths))
        want = [r.maximum - r.minimum for r in ranges]
        total = sum(want)
        for i, w in enumerate(want):
            if total:
                widths[i] += spare * w // total
        for col, w, pad in zip(t.columns, widths, pads):
            col.width = max(1, w - pad)
    if dropped:
        left_out = ", ".join(c.header for c in cols if c.drop in dropped)
        t.caption = f"not shown at {width} columns: {left_out} (a wider terminal or --json has them)"
        t.caption_justify = "left"
    return t


__all__ = ["Col", "fit_table"]
