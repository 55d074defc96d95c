"""Renderers of a stored run: each a small class with ``render(record) -> str`` that only reads.

    from devprof.report import HTMLRenderer, JSONRenderer, TerminalRenderer
    text = TerminalRenderer().render(store.load_run("latest"))
    HTMLRenderer().write(record, "reports/RUN.html")

``get_renderer(name)`` picks one by name (terminal, json, html).
"""

from __future__ import annotations

from typing import Any

from devprof.report.base import Analysis, Renderer, analyse
from devprof.report.html import HtmlRenderer, HTMLRenderer
from devprof.report.jsonout import JsonRenderer, JSONRenderer
from devprof.report.terminal import TerminalRenderer

RENDERERS: dict[str, type[Renderer]] = {"terminal": TerminalRenderer, "json": JSONRenderer, "html": HTMLRenderer}


def get_renderer(name: str, **options: Any) -> Renderer:
    from devprof.errors import UsageError

    try:
        cls = RENDERERS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown output format {name!r}; known: {', '.join(RENDERERS)}") from None
    return cls(**options)


__all__ = ["Analysis", "HTMLRenderer", "HtmlRenderer", "JSONRenderer", "JsonRenderer", "RENDERERS", "Renderer",
           "TerminalRenderer", "analyse", "get_renderer"]
