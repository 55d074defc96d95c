"""``python -m devprof.refruntime``: the reference runtime's process entry (the launchers, the iOS app's
runtime name and the tests use this module path); the runtime lives in :mod:`devprof.runtimes.reference`."""
