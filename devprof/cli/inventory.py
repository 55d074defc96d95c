"""`devprof models`, `devprof devices`, `devprof bins`: what devprof can profile, on what, with what."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.text import Text

from devprof.cli.options import adb_server_option, devices_file_option, lab_option, out, report_down_endpoints
from devprof.errors import DevprofError
from devprof.runtimes import known_runtimes


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--context", default=8192, show_default=True, type=click.IntRange(1), help="Context for KV-cache and FLOP figures.")
def models(as_json, context) -> None:
    """The model catalog: shapes, parameters, weight memory, KV cache and FLOPs."""
    from devprof.catalog import MODELS

    if as_json:
        out.print_json(json.dumps([m.summary(context) for m in MODELS.values()]))
        return
    from devprof.report.terminal_tables import models_table

    out.print(models_table(out, MODELS.values(), context))


@click.command(name="devices")
@click.option("--json", "as_json", is_flag=True)
@adb_server_option
@lab_option
@devices_file_option
def devices_cmd(as_json, adb_server, lab_file, devices_file) -> None:
    """Devices devprof can profile now (this host is always there as `local`)."""
    from dataclasses import asdict

    from devprof import devices
    from devprof.devices import lab as lab_mod

    if lab_file:
        adb_server = lab_mod.endpoints(adb_server, lab_mod.load(lab_file))

    found = devices.discover(adb_server=adb_server, devices_file=devices_file)
    if adb_server:  # the local default server not running is no news: it is the no-phone case
        report_down_endpoints()
    if as_json:
        out.print_json(json.dumps([asdict(d) for d in found]))
        return
    from devprof.report.terminal_tables import devices_table

    out.print(devices_table(out, found))


@click.group()
def bins() -> None:
    """Prebuilt runtime binaries devprof pushes to devices (device_bins/manifest.toml)."""


@bins.command(name="add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--runtime", required=True, type=click.Choice(known_runtimes()))
@click.option("--platform", required=True, type=click.Choice(["android", "ios", "host"]))
@click.option("--abi", default="arm64-v8a", show_default=True, help="arm64-v8a, x86_64, ... or any.")
@click.option("--name", default=None, help="Name to refer to it by [default: derived].")
@click.option("--command", "command", default="", help="Command template, e.g. '{binary} --model_path {model} ...'.")
@click.option("--notes", default="")
def bins_add(path, runtime, platform, abi, name, command, notes) -> None:
    """Register a binary: record its path, runtime, platform/ABI and sha256."""
    from devprof import bins as b

    entry = b.add(path, runtime, platform, abi, name=name, command=command, notes=notes)
    out.print(Text.assemble("registered ", (entry.name, "bold"),
                            f" ({entry.runtime}, {entry.platform}/{entry.abi}, sha256 {entry.sha256[:12]}) "
                            f"in {b.manifest_path()}"))


@bins.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def bins_list(as_json) -> None:
    """List registered binaries and whether each still matches its hash."""
    from dataclasses import asdict

    from devprof import bins as b

    entries = b.load()
    if as_json:
        out.print_json(json.dumps([asdict(e) for e in entries]))
        return
    from devprof.report.terminal_tables import bins_table

    checks = []
    for e in entries:
        try:
            e.verify()
            checks.append(None)
        except DevprofError as err:
            checks.append(err.message)
    out.print(bins_table(out, entries, checks, b.manifest_path()))

