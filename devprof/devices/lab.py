"""A lab file (``--lab FILE``): the adb endpoints of a lab's hosts and, optionally, their phones.

    [hosts.bench1]
    adb = "10.0.0.11:5037"
    phones = ["R5CY20ABCDE", "37281FDJH00"]   # optional: --device all takes only these here

    [hosts.farm]
    adb = "farm.example:15037"                 # no list: every phone it has

Its endpoints join those of ``--adb-server``. A listed phone that its host does not have is one
warning line (the run goes on with the others).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from devprof.errors import UsageError


@dataclass
class LabHost:
    name: str
    adb: str
    phones: list[str] = field(default_factory=list)


def load(path: Path) -> list[LabHost]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--lab {path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--lab {path}: {e}") from None
    hosts = data.get("hosts")
    if not isinstance(hosts, dict) or not hosts:
        raise UsageError(f"--lab {path}: needs [hosts.NAME] tables with adb = \"HOST:PORT\"")
    out = []
    for name, v in hosts.items():
        if not isinstance(v, dict) or not isinstance(v.get("adb"), str):
            raise UsageError(f"--lab {path}: host {name!r} needs adb = \"HOST:PORT\"")
        phones = v.get("phones", [])
        if not isinstance(phones, list) or not all(isinstance(p, str) for p in phones):
            raise UsageError(f"--lab {path}: host {name!r}: phones must be a list of serials")
        host, _, port = v["adb"].rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--lab {path}: host {name!r}: adb must be HOST:PORT, got {v['adb']!r}")
        out.append(LabHost(name=str(name), adb=v["adb"], phones=list(phones)))
    return out


def endpoints(adb_server: str | None, hosts: list[LabHost]) -> str | None:
    """``--adb-server``'s list joined with the lab's endpoints (a comma-separated string)."""
    eps = [e.strip() for e in (adb_server or "").split(",") if e.strip()] + [h.adb for h in hosts]
    return ",".join(dict.fromkeys(eps)) or None


def select(targets: list, hosts: list[LabHost]) -> tuple[list, list[str]]:
    """Keep the phones a host lists (all of a host that lists none); one warning per listed phone missing."""
    keep, warnings = [], []
    by_ep = {h.adb: h for h in hosts}
    seen: set[tuple[str, str]] = set()
    for t in targets:
        client = getattr(t, "client", None)
        ep = f"{client.host}:{client.port}" if client is not None else None
        h = by_ep.get(ep) if ep else None
        if h is None or not h.phones or t.serial in h.phones:
            keep.append(t)
            if ep:
                seen.add((ep, t.serial))
        else:
            t.close()
    for h in hosts:
        for p in h.phones:
            if (h.adb, p) not in seen:
                warnings.append(f"lab host {h.name} ({h.adb}): phone {p} not attached: skipped")
    return keep, warnings
