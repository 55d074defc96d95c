"""`devprof models`, `devprof devices`, `devprof bins`: what devprof can profile, on what, with what."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.text import Text

from devprof.cli.options import adb_server_option, devices_file_option, lab_option, out, report_down_endpoints
from devprof.errors import DevprofError


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--context", default=8192, show_default=True, type=click.IntRange(1), help="Context for KV-cache and FLOP figures.")
def models(as_json, context) -> None:
    """The model catalog: shapes, parameters, weight memory, KV cache and FLOPs."""
    from devprof.catalog import MODELS

    if as_json:
        out.print_json(json.dumps([m.summary(context) for m in MODELS.values()]))
        return
    from devprof.report.fit import Col, fit_table

    # model names are never cut; narrow terminals lose fp32 GiB, hidden, prefill, layers, decode, in that order
    cols = [Col("model", keep=True), Col("kind"), Col("layers", "right", drop=3), Col("hidden", "right", drop=5),
            Col("experts"), Col("total", "right"), Col("active", "right"), Col("INT4 GiB", "right"),
            Col("fp32 GiB", "right", drop=6), Col("KV fp16 MiB", "right"), Col("decode GFLOP/tok", "right", drop=2),
            Col("prefill TFLOP", "right", drop=4)]
    rows = []
    for m in MODELS.values():
        exp = f"{m.n_experts}x{m.expert_ffn} top-{m.top_k}" + (f" +{m.n_shared}x{m.shared_ffn}" if m.n_shared else "") if m.is_moe else f"ffn {m.ffn}"
        mark = lambda f: " (3rd)" if f in m.third_party else ""  # noqa: E731
        rows.append([m.name, m.kind, f"{m.n_layers}{mark('n_layers')}", str(m.hidden), exp,
                  f"{m.total_params / 1e9:.3f}B{mark('total_params')}", f"{m.active_params / 1e6:.0f}M{mark('active_params')}",
                  f"{m.weight_bytes('int4') / 2**30:.3f}", f"{m.weight_bytes('fp32') / 2**30:.2f}",
                  f"{m.kv_cache_bytes(min(context, m.max_context), 2) / 2**20:.1f}",
                  f"{m.decode_flops_per_token(min(context, m.max_context)) / 1e9:.2f}",
                  f"{m.prefill_flops(min(context, m.max_context)) / 1e12:.2f}"])
    out.print(fit_table(out, cols, [[Text(c) for c in r] for r in rows],
                        title=f"models (KV cache and FLOPs at {context} tokens; (3rd) = third-party figure)"))


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
    from devprof.report.fit import Col, fit_table

    cols = [Col("serial", keep=True), Col("alias"), Col("name"), Col("OS", drop=1), Col("ABI", drop=2),
            Col("RAM", "right", drop=3), Col("state"), Col("adb server", drop=4)]
    rows = []
    for d in found:
        ram = d.extra.get("mem_total_mb")
        alias = "local" if d.kind == "local" else ", ".join(d.extra.get("aliases") or [])
        name = d.name if d.kind == "android" else f"{d.name} ({d.model})" if d.model else d.name
        rows.append([Text(d.serial), Text(alias), Text(name or ""), Text(d.os_version or ""),
                     Text(str(d.extra.get("abi") or d.extra.get("machine", ""))),
                     Text(f"{ram / 1024:.1f} GiB" if ram else ""), Text(str(d.extra.get("state", "ready"))),
                     Text(str(d.extra.get("adb_server", "")))])
    out.print(fit_table(out, cols, rows, title="devices"))



@click.group()
def bins() -> None:
    """Prebuilt runtime binaries devprof pushes to devices (device_bins/manifest.toml)."""


@bins.command(name="add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--runtime", required=True, type=click.Choice(["reference", "executorch", "llamacpp"]))
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
    from devprof.report.fit import Col, fit_table

    cols = [Col("name", keep=True), Col("runtime"), Col("platform", drop=2), Col("abi", drop=3), Col("cpu features", drop=4), Col("path"),
            Col("sha256", drop=1), Col("ok")]
    rows = []
    for e in entries:
        try:
            e.verify()
            ok = Text("yes", style="green")
        except DevprofError as err:
            ok = Text(err.message, style="red")
        rows.append([Text(e.name), Text(e.runtime), Text(e.platform), Text(e.abi), Text(e.cpu_features or "any"), Text(str(e.path)),
                     Text(e.sha256[:12]), ok])
    out.print(fit_table(out, cols, rows, title=escape(str(b.manifest_path()))))

