"""Every renderer of devprof: each a small class with a ``name``, a file extension and ``render(x) -> str``
that only reads (a stored run, a comparison, a diff, a history).

    from devprof.report import get_renderer
    text = get_renderer("terminal").render(store.load_run("latest"))
    get_renderer("html").write(record, "reports/RUN.html")

``RENDERERS`` maps each name to where its class is; ``EXPORT_FORMATS`` maps `devprof export --format`
to a name. A new output format is a module ``report/<format>.py`` with a ``Renderer`` subclass (its
``name``, ``output_file_extension``, ``render``), added to ``RENDERERS`` here.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devprof.report.base import Renderer

#: name -> "module:Class" of devprof.report; only the renderer asked for is imported (plotly is slow to load)
RENDERERS: dict[str, str] = {
    "terminal": "terminal:TerminalRenderer", "json": "jsonout:JSONRenderer", "html": "html:HTMLRenderer",
    "csv": "csv:CSVRenderer", "export-json": "jsonexport:ExportJSONRenderer", "md": "markdown:MarkdownRenderer",
    "perfetto": "perfetto:PerfettoRenderer",
    "compare-terminal": "terminal_compare:CompareTerminalRenderer", "compare-html": "html:CompareHTMLRenderer",
    "diff-terminal": "terminal_compare:DiffTerminalRenderer", "history-html": "history_html:HistoryHTMLRenderer",
}
# names imported on first use, as the renderers are: importing devprof.report (for EXPORT_FORMATS) stays cheap
_LAZY = {"HtmlRenderer": "html:HTMLRenderer", "JsonRenderer": "jsonout:JSONRenderer", "Analysis": "base:Analysis",
         "Renderer": "base:Renderer", "analyse": "base:analyse"}

#: `devprof export --format` -> the name of its renderer
EXPORT_FORMATS: dict[str, str] = {"csv": "csv", "json": "export-json", "md": "md", "perfetto": "perfetto"}


def get_renderer(name: str, **options: Any) -> Renderer:
    from devprof.errors import UsageError

    try:
        where = RENDERERS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown output format {name!r}; known: {', '.join(RENDERERS)}") from None
    return _load(where)(**options)


def _load(where: str) -> Any:
    module, cls = where.split(":")
    return getattr(import_module(f"devprof.report.{module}"), cls)


def __getattr__(name: str) -> Any:
    """``from devprof.report import HTMLRenderer`` (any class of RENDERERS) imports its module then."""
    for where in RENDERERS.values():
        if where.endswith(f":{name}"):
            return _load(where)
    if name in _LAZY:
        return _load(_LAZY[name])
    raise AttributeError(f"module 'devprof.report' has no attribute {name!r}")


def export_renderer(fmt: str) -> Renderer:
    """The renderer of `devprof export --format FMT`."""
    from devprof.errors import UsageError

    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}")
    return get_renderer(EXPORT_FORMATS[fmt])


def export(record, fmt: str, out: Path) -> list[Path]:
    """`devprof export --format FMT --out OUT`: the file OUT, or for perfetto the files in the folder OUT."""
    from devprof.report.writer import write

    renderer = export_renderer(fmt)
    return write(renderer, record, out, "Perfetto traces" if renderer.writes_folder else f"{fmt} export")


__all__ = ["Analysis", "CSVRenderer", "CompareHTMLRenderer", "CompareTerminalRenderer", "DiffTerminalRenderer",
           "EXPORT_FORMATS", "ExportJSONRenderer", "HTMLRenderer", "HistoryHTMLRenderer", "HtmlRenderer",
           "JSONRenderer", "JsonRenderer", "MarkdownRenderer", "PerfettoRenderer", "RENDERERS", "Renderer",
           "TerminalRenderer", "analyse", "export", "export_renderer", "get_renderer"]
