"""Moved to :mod:`devprof.runtimes.llamacpp.gguf_export`; this name stays importable."""

import sys

from devprof.runtimes.llamacpp import gguf_export as _moved

sys.modules[__name__] = _moved
