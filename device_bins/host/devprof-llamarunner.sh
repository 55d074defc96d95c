#!/bin/sh
# Launcher of devprof's llama.cpp runner (llama-cpp-python; `pip install -e '.[llamacpp]'`) on
# this host: a llama-cli-like process whose llama_perf_context_print lines the llamacpp adapter
# parses. Prompts come as exact token ids (--prompt-ids); see devprof/llamarunner.py.
exec "${DEVPROF_PYTHON:-python3}" -m devprof.llamarunner "$@"
