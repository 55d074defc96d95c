"""Analyses of stored runs that go beyond one run's summary (pyinstrument's "processors"):

- :mod:`~devprof.analysis.compare`: templated vs real prompts for each MoE model -- memory with
  confidence intervals, coverage, expert load, the join of routing and memory, the projection to
  full-size models (``devprof compare``);
- :mod:`~devprof.analysis.diff`: two runs side by side, regressions flagged (``devprof diff``);
- :mod:`~devprof.analysis.artifacts`, :mod:`~devprof.analysis.coverage`, :mod:`~devprof.analysis.join`,
  :mod:`~devprof.analysis.projection`: the pieces.

Everything here only reads a :class:`~devprof.results.RunRecord` (and the run's artifact folder);
statistics come from :mod:`devprof.stats`.
"""

from __future__ import annotations

# No re-exports: ``devprof.analysis.compare`` and ``devprof.analysis.diff`` must stay the modules (their
# main functions are ``compare.compare`` and ``diff.diff_runs``).
