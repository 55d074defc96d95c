"""Train devprof's byte-level BPE tokenizer on the real workload text: ``workloads/tokenizer.json``.

The mini models of devprof's reference runtime have a 16384-token vocabulary; this is their
tokenizer. It is trained once, on every segment of every real source (code, math and prose, as
``devprof.workloads.corpus_texts()`` returns them, in that fixed order), and committed. Training
is deterministic: the same text gives the same file, byte for byte.

It also writes each source's ``trained_sha256`` in ``sources.toml``: the sha256 of the file it
was trained on, so that a report can say whether a machine's text is the same. Re-run it after
changing a source, then commit the new tokenizer.json and sources.toml::

    python workloads/train_tokenizer.py            # write workloads/tokenizer.json
    python workloads/train_tokenizer.py --check    # exit 1 if the committed file is stale

Layout: ``<|bos|>`` = 0, ``<|eos|>`` = 1, ``<|pad|>`` = 2, then the 256 byte symbols, then the
merges; GPT-2's byte-level pre-tokenizer (no prefix space) and decoder; a post-processor that
puts ``<|bos|>`` in front when ``encode(..., add_special_tokens=True)`` (the default) is used.
Note that the prose text is whatever ``pydoc_data.topics`` the running Python ships, so train
with the Python the project is pinned to (3.11); ``--check`` shows whether it matters.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread: no order effects in training

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from devprof.workloads import (  # noqa: E402
    BOS,
    SPECIAL_TOKENS,
    TOKENIZER_PATH,
    VOCAB_SIZE,
    WORKLOADS_DIR,
    corpus_texts,
    source_report,
)

SOURCES_TOML = WORKLOADS_DIR / "sources.toml"


def train() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]
    )
    return tok


def serialize(tok: Tokenizer) -> str:
    # Compact (no indentation), so the committed file stays small (~0.5 MB).
    data = json.loads(tok.to_str())
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


def stamp_sources(toml_text: str) -> str:
    """sources.toml with each real source's ``trained_sha256`` set to its file's sha256 now."""
    for src in source_report():
        if src["category"] == "templated":
            continue
        pattern = re.compile(
            r'(id = "' + re.escape(src["id"]) + r'"\ntrained_sha256 = )"[0-9a-f]*"'
        )
        value = '"' + src["sha256"] + '"'
        toml_text, n = pattern.subn(lambda m, v=value: m.group(1) + v, toml_text)
        if n != 1:
            raise SystemExit(f"sources.toml: no trained_sha256 line right after id = {src['id']!r}")
    return toml_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="train workloads/tokenizer.json")
    ap.add_argument("--check", action="store_true", help="compare with the committed file")
    ap.add_argument("--out", type=Path, default=TOKENIZER_PATH)
    args = ap.parse_args(argv)
    tok = train()
    text = serialize(tok)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if tok.get_vocab_size() != VOCAB_SIZE or ids != [0, 1, 2]:
        print(f"unexpected tokenizer: vocab {tok.get_vocab_size()}, special ids {ids}")
        return 1
    old_toml = SOURCES_TOML.read_text("utf-8")
    new_toml = stamp_sources(old_toml)
    if args.check:
        same = args.out.exists() and args.out.read_text("utf-8") == text and new_toml == old_toml
        print(f"{args.out.name} is {'up to date' if same else 'STALE: re-run without --check'}")
        return 0 if same else 1
    args.out.write_text(text, "utf-8")
    if args.out == TOKENIZER_PATH:
        SOURCES_TOML.write_text(new_toml, "utf-8")
    print(f"wrote {args.out} ({len(text.encode('utf-8'))} bytes, vocab {tok.get_vocab_size()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
