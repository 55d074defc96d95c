"""devprof: profile on-device LLM runtimes (sparse MoE vs dense) on phones and on this host."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root (devprof is installed editable from a clone; data folders live beside it).
REPO_ROOT = Path(__file__).resolve().parent.parent
