"""Workloads: the prompts devprof replays, built to an exact number of tokens.

Two kinds, because an MoE model's memory depends on what it reads (see DESIGN.md, "Memory that
depends on routing"):

- ``templated``: one fixed chat-style template (``workloads/templates.toml``) filled from a short
  list and repeated to length, the "dummy prompt" of most on-device benchmarks. It has a few
  dozen distinct tokens, so it routes to few experts and understates MoE memory.
- ``real``: real text written by people, in three categories: ``code`` (HumanEval problems with
  their canonical solutions), ``math`` (CHAMP competition problems with worked solutions, and
  mpmath's documentation of its functions: definitions, LaTeX formulas, worked examples) and
  ``prose`` (the Python language reference shipped in the standard library as
  ``pydoc_data.topics``). ``real:code``, ``real:math`` and ``real:prose`` draw on one category
  each; ``real`` interleaves whole segments of all three, always taking the next segment from
  the category that has the fewest tokens so far, so every prefix is balanced by tokens and the
  first three segments (a few hundred tokens) already span all three categories.

Every source, its licence and where its text comes from is in ``workloads/sources.toml``; no
text is fetched from a network. A prompt is exactly ``context`` token ids, ``<|bos|>`` first,
and depends only on (workload, context, seed) and the text on this machine: ``seed`` chooses
which segments a real prompt draws (a seeded permutation of each category's pool; the pool is
used up before any segment repeats). The templated prompt is the same for every seed, as a
dummy-prompt benchmark is.
"""

from __future__ import annotations

import ast
import bisect
import functools
import gzip
import hashlib
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import random
import re
import threading
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from devprof import REPO_ROOT
from devprof.errors import DevprofError, UsageError
from devprof.files import sha256_file

WORKLOADS: tuple[str, ...] = ("templated", "real", "real:code", "real:math", "real:prose")
CATEGORIES: tuple[str, ...] = ("code", "math", "prose")

#: Where the workload definitions, the committed tokenizer and the vendored text live.
WORKLOADS_DIR: Path = REPO_ROOT / "workloads"
TOKENIZER_PATH: Path = WORKLOADS_DIR / "tokenizer.json"

VOCAB_SIZE = 16384
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD)  # ids 0, 1, 2 in the committed tokenizer

MAX_CONTEXT = 32768
#: What follows every segment (real) or template unit (templated) inside a prompt.
SEGMENT_SEPARATOR = "\n\n"
#: Documentation pages (pydoc topics, mpmath docs) longer than this many characters are cut at
#: paragraph boundaries into segments of about this size.
PROSE_CHUNK_CHARS = 1200

_BOS_NAMES = (BOS, "<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>")


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class Prompt:
    """One prompt, exactly ``n_tokens`` ids long with the BOS id first.

    ``text`` is ``tokenizer.decode(token_ids)``: special tokens (the BOS) are left out of it, so a
    runtime that tokenizes text itself adds its own BOS. ``segments`` lists, for real prompts,
    the token ranges ``(start, end, category)`` (end exclusive; each segment's separator is
    inside its range; the last one may be cut short); it is empty for the templated prompt.
    """

    workload: str
    text: str
    token_ids: list[int]
    n_tokens: int
    sources: list[dict[str, str]]
    segments: list[tuple[int, int, str]] = field(default_factory=list)
    seed: int = 0

    @property
    def distinct_tokens(self) -> int:
        return len(set(self.token_ids))

    @property
    def digest(self) -> str:
        """sha256 of the token ids: equal digests mean the very same prompt was replayed."""
        h = hashlib.sha256()
        for t in self.token_ids:
            h.update(t.to_bytes(4, "little"))
        return h.hexdigest()

    def to_dict(self, *, with_text: bool = False) -> dict[str, Any]:
        """A JSON-ready summary for the store (ids and text only when asked)."""
        d = asdict(self)
        d["segments"] = [list(s) for s in self.segments]
        d["distinct_tokens"] = self.distinct_tokens
        d["digest"] = self.digest
        if not with_text:
            d.pop("text")
            d.pop("token_ids")
        return d


@dataclass(frozen=True)
class _Source:
    id: str
    category: str
    title: str
    kind: str  # package | stdlib | file
    format: str
    licence: str
    url: str
    path: str = ""  # file: relative to workloads/; package: relative to the module's folder
    package: str = ""  # distribution name (for its version)
    module: str = ""  # import name
    licence_file: str = ""
    copyright: str = ""
    derived_from: str = ""
    trained_sha256: str = ""  # of the file when tokenizer.json was trained (train_tokenizer.py)

    def resolve(self) -> Path | None:
        """The file the text is read from, or None when it is not on this machine."""
        if self.kind == "file":
            return WORKLOADS_DIR / self.path
        spec = importlib.util.find_spec(self.module.split(".")[0])
        if spec is None or not spec.submodule_search_locations:
            return None
        base = Path(next(iter(spec.submodule_search_locations)))
        if self.kind == "stdlib":
            rel = self.module.split(".")[1:]
            return base.joinpath(*rel[:-1], rel[-1] + ".py") if rel else base / "__init__.py"
        return base / self.path

    def origin(self) -> str:
        return _origin(self)

    def licence_path(self) -> Path | None:
        """The licence text on this machine: beside the vendored file, in the package's
        dist-info, or Python's own LICENSE.txt; None when none is found."""
        if self.licence_file:
            return WORKLOADS_DIR / self.licence_file
        if self.kind == "stdlib":
            p = Path(os.__file__).parent / "LICENSE.txt"
            return p if p.is_file() else None
        if self.kind == "package":
            try:
                files = importlib.metadata.distribution(self.package).files or []
            except importlib.metadata.PackageNotFoundError:
                return None
            for f in files:
                if f.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
                    return Path(str(f.locate()))
        return None

    def _origin(self) -> str:
        if self.kind == "file":
            extra = f" (from {self.derived_from})" if self.derived_from else ""
            return f"workloads/{self.path}{extra}"
        if self.kind == "stdlib":
            return f"Python {platform.python_version()} standard library: {self.module}"
        try:
            ver = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            ver = "(not installed)"
        return f"{self.package} {ver}: {self.module}/{self.path}"

    def short(self) -> dict[str, str]:
        return {
            "id": self.id,
            "category": self.category,
            "licence": self.licence,
            "origin": self.origin(),
        }


@functools.cache
def _origin(src: _Source) -> str:
    return src._origin()


@dataclass(frozen=True)
class _Segment:
    source: str
    key: str
    category: str
    text: str  # ends with SEGMENT_SEPARATOR


# ---------------------------------------------------------------------------------------------
# Loading (cached in-process)

_lock = threading.RLock()
_sources_cache: list[_Source] | None = None
_pool_cache: dict[str, list[_Segment]] | None = None
_template_cache: dict[str, Any] | None = None
_tokenizer_cache: dict[Path, Any] = {}
# id(tokenizer) -> (tokenizer, {segment text: ids}); the tokenizer is held so its id stays unique.
_encoded: dict[int, tuple[Any, dict[str, list[int]]]] = {}


def _read_toml(name: str) -> dict[str, Any]:
    path = WORKLOADS_DIR / name
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DevprofError(f"workload definitions not found: {path}") from None


def _sources() -> list[_Source]:
    global _sources_cache
    with _lock:
        if _sources_cache is None:
            _sources_cache = [_Source(**s) for s in _read_toml("sources.toml")["source"]]
        return _sources_cache


def _template() -> dict[str, Any]:
    global _template_cache
    with _lock:
        if _template_cache is None:
            data = _read_toml("templates.toml")
            by_id = {t["id"]: t for t in data["template"]}
            _template_cache = by_id[data["default"]]
        return _template_cache


def _read_humaneval(path: Path) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # A HumanEval prompt (signature + docstring) completed by its canonical solution.
    return [(r["task_id"], (r["prompt"] + r["canonical_solution"]).strip("\n")) for r in rows]


def _read_champ(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            out.append((r["id"], f"Problem: {r['problem']}\nSolution: {r['solution']}"))
    return out


def _chunk_paragraphs(text: str, limit: int) -> list[str]:
    paras = [p for p in re.split(r"\n[ \t]*\n", text.strip()) if p.strip()]
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for p in paras:
        if cur and size + len(p) > limit:
            chunks.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p) + 2
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def _read_pydoc_topics(path: Path) -> list[tuple[str, str]]:
    # The file _Source.resolve() found is this module's (checked before any reader runs).
    topics: dict[str, str] = importlib.import_module("pydoc_data.topics").topics
    out = []
    for name in sorted(topics):
        for i, chunk in enumerate(_chunk_paragraphs(topics[name], PROSE_CHUNK_CHARS)):
            out.append((f"{name}#{i}", chunk))
    return out


def _read_mpmath_docs(path: Path) -> list[tuple[str, str]]:
    # function_docs.py is a module of string assignments: read them with ast, never import it.
    out = []
    for node in ast.parse(path.read_text("utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            name = node.targets[0].id
            for i, chunk in enumerate(_chunk_paragraphs(node.value.value, PROSE_CHUNK_CHARS)):
                out.append((f"{name}#{i}", chunk))
    return out


_READERS = {
    "humaneval-jsonl-gz": _read_humaneval,
    "champ-jsonl": _read_champ,
    "mpmath-function-docs": _read_mpmath_docs,
    "pydoc-topics": _read_pydoc_topics,
}


def _pool() -> dict[str, list[_Segment]]:
    """Every real segment, per category, in a fixed order: sources.toml's, then each source's."""
    global _pool_cache
    with _lock:
        if _pool_cache is None:
            pool: dict[str, list[_Segment]] = {c: [] for c in CATEGORIES}
            for src in _sources():
                if src.category not in pool:
                    continue
                path = src.resolve()
                if path is None or not path.is_file():
                    hint = f" (pip install {src.package})" if src.kind == "package" else ""
                    raise DevprofError(
                        f"text of workload source {src.id!r} not found: {src.origin()}{hint}"
                    )
                for key, text in _READERS[src.format](path):
                    pool[src.category].append(
                        _Segment(src.id, key, src.category, text.rstrip() + SEGMENT_SEPARATOR)
                    )
            _pool_cache = pool
        return _pool_cache


def corpus_texts() -> list[str]:
    """All real text, one string per segment, in a fixed order: what the tokenizer learns from."""
    pool = _pool()
    return [seg.text for cat in CATEGORIES for seg in pool[cat]]


def load_tokenizer(path: Path | None = None):
    """The committed byte-level BPE tokenizer (16384 ids; <|bos|>=0, <|eos|>=1, <|pad|>=2)."""
    from tokenizers import Tokenizer

    p = Path(path) if path is not None else TOKENIZER_PATH
    with _lock:
        tok = _tokenizer_cache.get(p)
        if tok is None:
            try:
                tok = Tokenizer.from_file(str(p))
            except Exception as e:  # tokenizers raises a plain Exception on a bad/missing file
                raise DevprofError(f"cannot load tokenizer {p}: {e}") from None
            _tokenizer_cache[p] = tok
        return tok


# ---------------------------------------------------------------------------------------------
# Building prompts


def parse_workloads(spec: str) -> list[str]:
    """``"templated,real"`` -> ``["templated", "real"]`` (order kept, duplicates dropped)."""
    names: list[str] = []
    for part in (spec or "").split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in WORKLOADS:
            raise UsageError(f"unknown workload {part.strip()!r}; valid: {', '.join(WORKLOADS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise UsageError(f"no workload given; valid: {', '.join(WORKLOADS)}")
    return names


def _bos_id(tok) -> int:
    ids = tok.encode("", add_special_tokens=True).ids
    if ids:
        return ids[0]
    for name in _BOS_NAMES:
        tid = tok.token_to_id(name)
        if tid is not None:
            return tid
    raise DevprofError("the tokenizer has no beginning-of-sequence token")


def _encode_cache(tok) -> dict[str, list[int]]:
    with _lock:
        entry = _encoded.get(id(tok))
        if entry is None or entry[0] is not tok:
            if len(_encoded) >= 4:
                _encoded.pop(next(iter(_encoded)))
            entry = (tok, {})
            _encoded[id(tok)] = entry
        return entry[1]


def _encode(tok, text: str) -> list[int]:
    cache = _encode_cache(tok)
    ids = cache.get(text)
    if ids is None:
        ids = tok.encode(text, add_special_tokens=False).ids
        cache[text] = ids
    return ids


def _rng(*parts: object) -> random.Random:
    key = "\x1f".join(str(p) for p in ("devprof-workloads", *parts)).encode("utf-8")
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def _stream(category: str, seed: int):
    """Segments of one category in a seeded order; the whole pool is used before one repeats."""
    segs = _pool()[category]
    last = None
    epoch = 0
    while True:
        order = list(range(len(segs)))
        _rng(category, seed, epoch).shuffle(order)
        if last is not None and len(order) > 1 and order[0] == last:
            order.append(order.pop(0))  # no segment twice in a row across a pool boundary
        for i in order:
            yield segs[i]
        last = order[-1]
        epoch += 1


def _check_context(context: int) -> None:
    if isinstance(context, bool) or not isinstance(context, int):
        raise UsageError(f"context must be an integer number of tokens, not {context!r}")
    if not 1 <= context <= MAX_CONTEXT:
        raise UsageError(f"context must be between 1 and {MAX_CONTEXT} tokens, not {context}")


def build_prompt(workload: str, context: int, tokenizer=None, *, seed: int = 0) -> Prompt:
    """A prompt of exactly ``context`` token ids (BOS first) for one workload.

    Deterministic for (workload, context, seed, tokenizer). ``tokenizer`` defaults to
    :func:`load_tokenizer`; any ``tokenizers.Tokenizer`` works (its BOS is the first id its
    post-processor adds, or a token with a usual BOS name).
    """
    workload = str(workload).strip().lower()
    if workload not in WORKLOADS:
        raise UsageError(f"unknown workload {workload!r}; valid: {', '.join(WORKLOADS)}")
    _check_context(context)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an integer, not {seed!r}")
    tok = tokenizer if tokenizer is not None else load_tokenizer()
    bos = _bos_id(tok)
    budget = context - 1
    # Pieces of text in prompt order: (text, category or "", source id). They are joined and the
    # whole text is encoded at once, so the ids are exactly what a tokenizer makes of the text
    # (encoding pieces one by one would tokenize their seams differently).
    pieces: list[tuple[str, str, str]] = []
    more = _piece_feeder(workload, tok, seed, pieces)
    estimate = 0
    while estimate < budget:
        estimate = more(estimate)
    while True:
        enc = tok.encode("".join(p[0] for p in pieces), add_special_tokens=False)
        all_ids = enc.ids  # (likewise)
        if len(all_ids) >= budget:
            break
        for _ in range(2):  # pragma: no cover - seams only ever add tokens; be safe anyway
            estimate = more(estimate)

    body = all_ids[:budget]
    ids = [bos] + body
    segments, used = _attribute(body, enc, pieces)
    return Prompt(
        workload=workload,
        text=tok.decode(ids),
        token_ids=ids,
        n_tokens=len(ids),
        sources=[s.short() for s in used.values()],
        segments=segments,
        seed=seed,
    )


def _piece_feeder(workload: str, tok, seed: int, pieces: list[tuple[str, str, str]]) -> Callable[[int], int]:
    """``more(estimate)``: append the workload's next piece to ``pieces``; the estimate plus its tokens."""
    if workload == "templated":
        tpl = _template()
        units = [tpl["text"].format(**fill).rstrip() + SEGMENT_SEPARATOR for fill in tpl["fills"]]
        units_iter = (units[i % len(units)] for i in itertools.count())

        def more(estimate: int) -> int:
            text = next(units_iter)
            pieces.append((text, "", tpl["source"]))
            return estimate + len(_encode(tok, text))

        return more

    cats = list(CATEGORIES) if workload == "real" else [workload.split(":", 1)[1]]
    # Seed rotates which category opens the prompt; ties go to the earliest in that order.
    k = seed % len(cats)
    cats = cats[k:] + cats[:k]
    streams = {c: _stream(c, seed) for c in cats}
    count = {c: 0 for c in cats}

    def more_real(estimate: int) -> int:
        cat = min(cats, key=lambda c: count[c])
        seg = next(streams[cat])
        n = len(_encode(tok, seg.text))
        count[cat] += n
        pieces.append((seg.text, cat, seg.source))
        return estimate + n

    return more_real


def _attribute(body: list[int], enc, pieces: list[tuple[str, str, str]]
               ) -> tuple[list[tuple[int, int, str]], dict[str, _Source]]:
    """(category segments as [start, end) positions after BOS, the sources used) of the prompt's body."""
    segments: list[tuple[int, int, str]] = []
    used: dict[str, _Source] = {}
    by_id = {s.id: s for s in _sources()}
    if not body:
        return segments, used
    # Each token belongs to the piece its first character is in.
    starts = list(itertools.accumulate((len(p[0]) for p in pieces), initial=0))[:-1]
    offsets = enc.offsets  # one conversion: each attribute access copies the whole list
    owner = [bisect.bisect_right(starts, offsets[i][0]) - 1 for i in range(len(body))]
    for piece, group in itertools.groupby(range(len(body)), key=lambda i: owner[i]):
        idx = list(group)
        _, cat, source = pieces[piece]
        used.setdefault(source, by_id[source])
        if cat:
            segments.append((idx[0] + 1, idx[-1] + 2, cat))
    return segments, used


# ---------------------------------------------------------------------------------------------
# Reporting


def source_report() -> list[dict[str, Any]]:
    """Every source with its licence and where its text is on this machine (for the report).

    Never raises for a missing text: ``exists`` is then False.
    """
    out = []
    for src in _sources():
        path = src.resolve()
        exists = path is not None and path.is_file()
        lic = src.licence_path()
        digest = sha256_file(path) if exists else ""
        out.append(
            {
                "id": src.id,
                "category": src.category,
                "title": src.title,
                "licence": src.licence,
                "licence_file": str(lic) if lic else "",
                "copyright": src.copyright,
                "url": src.url,
                "origin": src.origin(),
                "path": str(path) if path else "",
                "exists": exists,
                "sha256": digest,
                # Whether this is the very text the committed tokenizer was trained on (the
                # stdlib's prose changes between Python versions); None for the template.
                "matches_tokenizer": (digest == src.trained_sha256) if src.trained_sha256 else None,
            }
        )
    return out
