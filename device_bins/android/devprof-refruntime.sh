#!/bin/sh
# Launcher of devprof's reference runtime on a "phone" that has python3 and devprof installed:
# the test suite's adb device daemon (which executes on the host). Real phones have no python;
# register an ExecuTorch llama_main or a llama.cpp binary for them (README, "Android").
exec "${DEVPROF_PYTHON:-python3}" -m devprof.refruntime "$@"
