"""Device aliases: short names (``s25``, ``iphone16pro``) for phones, built in or from a user file.

An alias matches a device by its model identifier: ``ro.product.model`` on Android (a glob, since
one phone ships as several regional models: the Galaxy S25 is SM-S931B, SM-S931U, ...) and the
ProductType on iOS (``iPhone17,1`` is the iPhone 16 Pro). A user alias may also name one serial
or UDID. The user file is TOML, in ``$DEVPROF_DEVICES_FILE``, ``--devices-file``, or
``~/.config/devprof/devices.toml``::

    [aliases]
    desk-s25 = "R5CX1234ABC"                          # a serial or UDID
    lab-pixel = { platform = "android", model = "Pixel 9*" }
    my-iphone = { platform = "ios", model = "iPhone17,1" }
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from devprof.errors import UsageError


@dataclass(frozen=True)
class Alias:
    name: str
    platform: str  # android | ios | any
    model: str | None = None  # glob on ro.product.model / ProductType
    serial: str | None = None
    display: str = ""

    def matches(self, platform: str, serial: str, model: str) -> bool:
        if self.platform not in ("any", platform):
            return False
        if self.serial is not None:
            return serial == self.serial
        return self.model is not None and fnmatch.fnmatchcase(model.upper(), self.model.upper())


def _a(name: str, platform: str, model: str, display: str) -> Alias:
    return Alias(name=name, platform=platform, model=model, display=display)


BUILTIN: dict[str, Alias] = {a.name: a for a in [
    _a("s25", "android", "SM-S931*", "Galaxy S25"),
    _a("s25plus", "android", "SM-S936*", "Galaxy S25+"),
    _a("s25ultra", "android", "SM-S938*", "Galaxy S25 Ultra"),
    _a("s24", "android", "SM-S921*", "Galaxy S24"),
    _a("s24plus", "android", "SM-S926*", "Galaxy S24+"),
    _a("s24ultra", "android", "SM-S928*", "Galaxy S24 Ultra"),
    _a("pixel9", "android", "Pixel 9", "Pixel 9"),
    _a("pixel9pro", "android", "Pixel 9 Pro", "Pixel 9 Pro"),
    _a("pixel9proxl", "android", "Pixel 9 Pro XL", "Pixel 9 Pro XL"),
    _a("pixel8", "android", "Pixel 8", "Pixel 8"),
    _a("pixel8pro", "android", "Pixel 8 Pro", "Pixel 8 Pro"),
    _a("iphone16pro", "ios", "iPhone17,1", "iPhone 16 Pro"),
    _a("iphone16promax", "ios", "iPhone17,2", "iPhone 16 Pro Max"),
    _a("iphone16", "ios", "iPhone17,3", "iPhone 16"),
    _a("iphone16plus", "ios", "iPhone17,4", "iPhone 16 Plus"),
    _a("iphone15pro", "ios", "iPhone16,1", "iPhone 15 Pro"),
    _a("iphone15promax", "ios", "iPhone16,2", "iPhone 15 Pro Max"),
    _a("iphone15", "ios", "iPhone15,4", "iPhone 15"),
]}
# A few spellings people type.
BUILTIN["s25+"] = BUILTIN["s25plus"]
BUILTIN["s25-ultra"] = BUILTIN["s25ultra"]
BUILTIN["iphone-16-pro"] = BUILTIN["iphone16pro"]


def default_file() -> Path:
    env = os.environ.get("DEVPROF_DEVICES_FILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "devprof" / "devices.toml"


def load(path: Path | None = None) -> dict[str, Alias]:
    """Built-in aliases overlaid with the user's file (when it exists)."""
    aliases = dict(BUILTIN)
    path = Path(path) if path else default_file()
    if not path.exists():
        if path != default_file():
            raise UsageError(f"devices file not found: {path}")
        return aliases
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read devices file {path}: {e}") from None
    for name, v in (data.get("aliases") or {}).items():
        key = name.lower()
        if isinstance(v, str):
            aliases[key] = Alias(name=key, platform="any", serial=v, display=name)
        elif isinstance(v, dict) and ("model" in v or "serial" in v):
            aliases[key] = Alias(name=key, platform=str(v.get("platform", "any")), model=v.get("model"),
                                 serial=v.get("serial"), display=str(v.get("display", name)))
        else:
            raise UsageError(f"devices file {path}: alias {name!r} needs a serial string or a table with model/serial")
    return aliases


def display_name(platform: str, model: str, aliases: dict[str, Alias] | None = None) -> str:
    """A human name for a model identifier ("Galaxy S25" for SM-S931B), or the identifier."""
    for a in (aliases or BUILTIN).values():
        if a.model and a.matches(platform, "", model):
            return a.display
    return model


def names_for(platform: str, serial: str, model: str, aliases: dict[str, Alias] | None = None) -> list[str]:
    """Every alias that matches this device (for `devprof devices`)."""
    seen = []
    for key, a in (aliases or BUILTIN).items():
        if a.matches(platform, serial, model) and a.name not in seen:
            seen.append(a.name)
    return seen
