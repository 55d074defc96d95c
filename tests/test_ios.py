"""The iOS backend against fakes at the pymobiledevice3 boundary (tests/support/fake_pmd3.py): no iPhone,
no pymobiledevice3 needed. When pymobiledevice3 IS importable, the fakes' signatures are compared
with the real ones."""

from __future__ import annotations

import inspect
import json
import signal
import time
import sys
import threading
from pathlib import Path

import pytest

from tests.support import fake_pmd3 as F
from devprof import devices
from devprof.devices import ios
from devprof.devices.base import RunRequest
from devprof.devices.ios import app as A
from devprof.devices.ios import pmd3
from devprof.errors import DeviceError, DeviceLost, UsageError
from devprof.runtimes.base import get_adapter

UDID_PRO = "00008140-001A2C3E0A88801C"
UDID_15 = "00008130-000C195A1E78001C"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("DEVPROF_DEVICES_FILE", str(tmp_path / "no-devices.toml"))
    monkeypatch.delenv("DEVPROF_IOS_APP", raising=False)
    monkeypatch.delenv("DEVPROF_IOS_TUNNEL", raising=False)
    monkeypatch.setattr(pmd3, "_ACTIVE", None)
    # a fake phone answers at once: shorter waits than a real one needs keep the suite fast
    monkeypatch.setattr(ios.IosDevice, "poll_s", 0.05)
    monkeypatch.setattr(ios.IosDevice, "exit_event_grace_s", 0.05)
    monkeypatch.setattr(ios.IosDevice, "drain_quiet_s", 0.04)
    yield


@pytest.fixture
def world(monkeypatch, tmp_path):
    w = F.FakeWorld(tmp_path / "phones")
    F.install_world(monkeypatch, w)
    return w


@pytest.fixture
def opened():
    """Close every IosDevice a test resolves (each owns a loop thread)."""
    devs = []
    yield devs
    for d in devs:
        d.close()


def _pro(world, app=None, **kw):
    phone = world.add_iphone(udid=UDID_PRO, product_type="iPhone17,1", **kw)
    phone.install(A.DEFAULT_BUNDLE_ID, app or F.scripted_app())
    return phone


def _resolve(spec, opened, **kw):
    found = ios.resolve(spec, **kw)
    opened.extend(found)
    return found


def _one_line(e: DeviceError) -> str:
    msg = e.message
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------
# discovery and resolution

def test_discover_lists_attached_iphones(world):
    _pro(world)
    world.add_iphone(udid=UDID_15, product_type="iPhone16,1", paired=False, product_version="17.5")
    found = {d.serial: d for d in ios.discover()}
    assert set(found) == {UDID_PRO, UDID_15}
    pro = found[UDID_PRO]
    assert (pro.kind, pro.name, pro.model, pro.memory_metric) == ("ios", "iPhone 16 Pro", "iPhone17,1", "physFootprint")
    assert pro.os_version == "iOS 18.2 (22C152)"
    assert "iphone16pro" in pro.extra["aliases"] and pro.extra["state"] == "ready"
    other = found[UDID_15]
    assert other.name == "iPhone 15 Pro" and "lockdown pair" in other.extra["state"]


def test_discover_without_usbmuxd_is_empty_with_a_reason(world):
    world.usbmuxd_running = False
    reasons = []
    assert ios.discover(reasons=reasons) == []
    assert "usbmuxd is not running" in reasons[0]


def test_resolve_alias_udid_and_all(world, opened):
    _pro(world)
    world.add_iphone(udid=UDID_15, product_type="iPhone16,1").install(A.DEFAULT_BUNDLE_ID, F.scripted_app())
    (dev,) = _resolve("iphone16pro", opened)
    assert dev.udid == UDID_PRO and dev.kind == "ios"
    (dev15,) = _resolve("iPhone15Pro", opened)
    assert dev15.udid == UDID_15
    assert [d.udid for d in _resolve(UDID_PRO.replace("-", "").lower(), opened)] == [UDID_PRO]
    assert {d.udid for d in _resolve("all", opened)} == {UDID_PRO, UDID_15}
    info = dev.info()
    assert (info.name, info.model, info.memory_metric) == ("iPhone 16 Pro", "iPhone17,1", "physFootprint")
    assert info.extra["device_name"] == "devprof test iPhone" and "iphone16pro" in info.extra["aliases"]


def test_resolve_user_alias_file(world, opened, tmp_path, monkeypatch):
    _pro(world)
    f = tmp_path / "devices.toml"
    f.write_text(f'[aliases]\ndesk-iphone = "{UDID_PRO}"\nmy-phone = {{ platform = "ios", model = "iPhone17,*" }}\n')
    monkeypatch.setenv("DEVPROF_DEVICES_FILE", str(f))
    assert [d.udid for d in _resolve("desk-iphone", opened)] == [UDID_PRO]
    assert [d.udid for d in _resolve("my-phone", opened)] == [UDID_PRO]
    assert "desk-iphone" in ios.discover()[0].extra["aliases"]


def test_unknown_spec_lists_what_is_attached(world, opened, monkeypatch):
    _pro(world)
    reasons = []
    assert ios.resolve("pixel12", reasons=reasons) == []
    assert "iPhone 16 Pro (iPhone17,1, 00008140-001A2C3E0A88801C)" in reasons[0]
    monkeypatch.setattr(devices, "BACKENDS", [ios])
    with pytest.raises(UsageError) as e:  # no device of that name: bad input (exit 2)
        devices.resolve("pixel12")
    assert "iPhone 16 Pro" in _one_line(e.value) and "devprof devices" in e.value.message and e.value.exit_code == 2
    with pytest.raises(DeviceError) as e:  # an iOS alias whose phone is not there
        ios.resolve("iphone15")
    assert "no attached iPhone is a iPhone 15" in _one_line(e.value) and "iPhone17,1" in e.value.message
    assert ios.resolve("s25") == []  # an Android alias is not ours


def test_without_pymobiledevice3_devprof_says_how_to_install(monkeypatch):
    monkeypatch.setattr(pmd3, "_ACTIVE", None)
    monkeypatch.setitem(sys.modules, "pymobiledevice3", None)  # import fails as if not installed
    with pytest.raises(DeviceError) as e:
        ios.resolve("iphone16pro")
    assert "pip install 'devprof[ios]'" in _one_line(e.value)
    assert ios.resolve("s25") == [] and ios.discover() == []
    monkeypatch.setattr(devices, "BACKENDS", [ios])
    with pytest.raises(DeviceError, match=r"devprof\[ios\]"):
        devices.resolve("iphone16pro")


# ------------------------------------------------------------------------------------------
# prerequisites: each a one-line DeviceError naming the command that fixes it

@pytest.mark.parametrize("setup,expect", [
    (dict(usbmuxd=False), "sudo systemctl start usbmuxd"),
    (dict(paired=False), "pymobiledevice3 lockdown pair"),
    (dict(locked=True), "is locked: unlock it"),
    (dict(developer_mode=False), "pymobiledevice3 amfi enable-developer-mode"),
    (dict(ddi_mounted=False), "pymobiledevice3 mounter auto-mount"),
    (dict(tunnel="none"), "sudo pymobiledevice3 remote tunneld"),
    (dict(ddi_mounted=False, product_version="16.7"), "pymobiledevice3 mounter auto-mount"),
])
def test_prerequisite_errors_are_one_line_with_the_fix(world, setup, expect):
    setup = dict(setup)
    if setup.pop("usbmuxd", True) is False:
        world.usbmuxd_running = False
    _pro(world, **setup)
    with pytest.raises(DeviceError) as e:
        ios.resolve("iphone16pro")
    assert expect in _one_line(e.value)


def test_ddi_unknown_falls_back_on_the_dvt_answer(world, monkeypatch):
    _pro(world, ddi_mounted=False, product_version="16.7")

    async def unknown(self, image_type):
        raise F.DvtException("mounter busy")

    monkeypatch.setattr(F.MobileImageMounterService, "is_image_mounted", unknown)
    with pytest.raises(DeviceError, match="mounter auto-mount"):
        ios.resolve("iphone16pro")


@pytest.mark.parametrize("tunnel,mode", [("tunneld", "auto"), ("userspace", "auto"), ("userspace", "userspace")])
def test_ios17_uses_a_tunnel(world, opened, tunnel, mode):
    _pro(world, tunnel=tunnel, product_version="18.2")
    (dev,) = _resolve("iphone16pro", opened, ios_tunnel=mode)
    assert isinstance(dev._dvt.lockdown, F.RemoteServiceDiscoveryService)


def test_ios16_needs_no_tunnel(world, opened):
    _pro(world, tunnel="none", product_version="16.7")
    (dev,) = _resolve("iphone16pro", opened)
    assert isinstance(dev._dvt.lockdown, F.LockdownClient)


def test_tunneld_only_mode_reports_why(world):
    _pro(world, tunnel="userspace")
    with pytest.raises(DeviceError) as e:
        ios.resolve("iphone16pro", ios_tunnel="tunneld")
    assert "remote tunneld" in _one_line(e.value) and "tunneld is not running" in e.value.message


# ------------------------------------------------------------------------------------------
# staging

def _bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    for name, size in [("config.json", 100), ("weights.bin", 300_000), ("layout.json", 50),
                       ("tokenizer.json", 2000), ("manifest.json", 80)]:
        (b / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return {p.name: p for p in sorted(b.iterdir())}


def test_stage_pushes_once_then_skips_by_hash(world, opened, tmp_path):
    phone = _pro(world)
    (dev,) = _resolve("iphone16pro", opened)
    files = _bundle(tmp_path)
    total = sum(p.stat().st_size for p in files.values())
    rep = dev.stage(files, "mobilemoe-s-mini-abc123")
    assert (rep.files_pushed, rep.bytes_pushed, rep.files_skipped) == (5, total, 0)
    assert rep.remote_dir == "devprof/mobilemoe-s-mini-abc123"
    assert rep.paths["weights.bin"] == "devprof/mobilemoe-s-mini-abc123/weights.bin"
    docs = phone.documents(A.DEFAULT_BUNDLE_ID)
    assert (docs / rep.paths["weights.bin"]).read_bytes() == files["weights.bin"].read_bytes()
    index = json.loads((docs / rep.remote_dir / A.INDEX_NAME).read_text())
    assert index["files"]["weights.bin"]["sha256"] == A.sha256_file(files["weights.bin"])
    again = dev.stage(files, "mobilemoe-s-mini-abc123")
    assert (again.bytes_pushed, again.files_pushed, again.files_skipped) == (0, 0, 5)
    assert again.paths == rep.paths
    files["layout.json"].write_text('{"changed": true}')
    third = dev.stage(files, "mobilemoe-s-mini-abc123")
    assert (third.files_pushed, third.files_skipped) == (1, 4)
    (docs / rep.paths["config.json"]).unlink()  # deleted on the phone: pushed again
    assert dev.stage(files, "mobilemoe-s-mini-abc123").files_pushed == 1


def _ipa(path: Path, bundle_id="org.devprof.bench", version="1.2", build="7") -> Path:
    return F.make_ipa(path, bundle_id=bundle_id, version=version, build=build)


def test_stage_installs_and_updates_the_app_from_an_ipa(world, opened, tmp_path):
    phone = world.add_iphone(udid=UDID_PRO)
    (dev,) = _resolve("iphone16pro", opened)
    ipa = _ipa(tmp_path / "bench.ipa", bundle_id="org.example.llmbench")
    files = {"prompt.txt": tmp_path / "p.txt", "__binary__": ipa}
    files["prompt.txt"].write_text("hello")
    rep = dev.stage(files, "prompt-1")
    assert rep.paths["__binary__"] == "org.example.llmbench" and rep.paths["prompt.txt"] == "devprof/prompt-1/prompt.txt"
    assert phone.installs == [("Install", str(ipa))]
    assert phone.apps["org.example.llmbench"].short_version == "1.2"
    dev.stage(files, "prompt-1")
    (dev2,) = _resolve("iphone16pro", opened)  # a new session: same version and sha -> no reinstall
    dev2.stage(files, "prompt-1")
    assert len(phone.installs) == 1
    _ipa(ipa, bundle_id="org.example.llmbench", version="1.3", build="8")
    (dev3,) = _resolve("iphone16pro", opened)
    dev3.stage(files, "prompt-1")
    assert phone.installs[-1][0] == "Upgrade" and phone.apps["org.example.llmbench"].short_version == "1.3"
    with pytest.raises(DeviceError, match="must be its .ipa"):
        dev.stage({"__binary__": tmp_path / "p.txt"}, "x")


def test_app_missing_is_a_clear_error(world, opened, tmp_path):
    world.add_iphone(udid=UDID_PRO)
    (dev,) = _resolve("iphone16pro", opened)
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DeviceError) as e:
        dev.stage({"prompt.txt": tmp_path / "p.txt"}, "g")
    assert "org.devprof.bench is not installed" in _one_line(e.value) and ".ipa" in e.value.message


def test_read_ipa_and_argv_conventions(tmp_path):
    info = A.read_ipa(_ipa(tmp_path / "a.ipa"))
    assert (info.bundle_id, info.short_version, info.build) == ("org.devprof.bench", "1.2", "7")
    with pytest.raises(UsageError):
        A.read_ipa(tmp_path / "missing.ipa")
    assert A.split_argv(["llama_main", "--model_path=devprof/g/m.pte"], "b.c.d") == \
        ("b.c.d", ["--model_path=devprof/g/m.pte"], "llama_main")
    assert A.split_argv([sys.executable, "-m", "devprof.refruntime", "--x", "1"], "b.c.d") == \
        ("b.c.d", ["--x", "1"], "devprof.refruntime")
    assert A.split_argv(["org.other.app", "--a"], "b.c.d") == ("org.other.app", ["--a"], "org.other.app")
    assert A.split_argv(["python3.11", "x.py"], "b.c.d")[0] == "b.c.d"
    assert A.documents_rel("/var/mobile/Containers/Data/Application/X/Documents/devprof/s/t.npz") == "devprof/s/t.npz"
    assert A.documents_rel("Documents/devprof/a") == "devprof/a" and A.afc_path("devprof/a") == "/Documents/devprof/a"
    with pytest.raises(DeviceError):
        A.documents_rel("../etc/passwd")


# ------------------------------------------------------------------------------------------
# running

def _argv(extra=()):
    return ["llama_main", "--model_path=devprof/g/model.pte", "--tokenizer_path=devprof/g/tokenizer.json",
            "--prompt_file=devprof/prompt-1/prompt.txt", "--max_new_tokens=16", *extra]


def test_run_samples_footprint_and_captures_the_stats_line(world, opened):
    phone = _pro(world, app=F.scripted_app(memory_mb=[40, 120, 260, 310, 290, 180], step_s=0.03,
                                           ledger_peak_mb=None))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=10))
    assert out.status == "ok" and out.exit_code == 0, out.note
    assert out.memory_metric == "physFootprint"
    assert len(out.samples) >= 3
    s = out.samples[-1]
    assert isinstance(s, ios.IosMemorySample) and s.footprint_kb is not None
    assert s.rss_kb == pytest.approx(s.footprint_kb * 1.5, rel=0.01) and s.anon_kb is not None
    assert out.peak_rss_kb == max(x.footprint_kb for x in out.samples) <= 310 * 1024
    assert out.peak_rss_kb >= 260 * 1024
    assert "PyTorchObserver" in out.stdout and out.stderr == ""
    result = get_adapter("executorch").parse(out.stdout, out.stderr)
    assert result.prompt_tokens == 64 and result.decode_tok_s == pytest.approx(50.0)
    launched = phone.launches[-1]
    assert launched.arguments == _argv()[1:]
    env = launched.environment
    assert env["DEVPROF_RUNTIME"] == "llama_main" and env["DEVPROF_RESULT_FILE"].startswith("devprof/results/")
    assert env["OS_ACTIVITY_DT_MODE"] == "YES" and env["DEVPROF_SAMPLE_MS"] == "10"
    assert world.taps[-1].interval_ms == 10
    assert not (phone.documents(A.DEFAULT_BUNDLE_ID) / env["DEVPROF_RESULT_FILE"]).exists()  # taken
    assert "sysmontap samples" in out.note


def test_run_ledger_peak_and_observer_from_the_result_file(world, opened):
    _pro(world, app=F.scripted_app(output=["no stats here\n"], memory_mb=[50, 60], ledger_peak_mb=900,
                                   observer_in_result=True))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=5, timeout_s=10))
    assert out.status == "ok" and out.peak_rss_kb == 900 * 1024
    assert "ledger" in out.note and "stats line taken from the result file" in out.note
    assert get_adapter("executorch").parse(out.stdout).generated_tokens == 15


def test_run_strips_a_host_interpreter_and_clamps_to_the_sysmontap_minimum(world, opened, monkeypatch):
    phone = _pro(world)
    monkeypatch.setattr(F.Sysmontap, "MINIMUM_INTERVAL_MS", 20)
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=[sys.executable, "-m", "devprof.refruntime", "--model_path", "devprof/g"],
                             sample_ms=5, timeout_s=10))
    assert out.status == "ok"
    assert phone.launches[-1].arguments == ["--model_path", "devprof/g"]
    assert phone.launches[-1].environment["DEVPROF_RUNTIME"] == "devprof.refruntime"
    assert world.taps[-1].interval_ms == 20 and "raised from 5 ms to its minimum 20 ms" in out.note


def test_run_without_sampling(world, opened):
    _pro(world)
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=0, timeout_s=10))
    assert out.status == "ok" and out.samples == [] and not world.taps


def test_cancel_kills_the_app(world, opened):
    cancel = threading.Event()
    phone = _pro(world, app=F.scripted_app(hang=True, on_start=lambda p: cancel.set()))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=30, cancel=cancel))
    assert out.status == "interrupted" and out.exit_code is None and out.note.startswith("stopped by the user")
    assert phone.launches[-1].killed and not phone.launches[-1].running


def test_ctrl_c_kills_the_app(world, opened):
    main = threading.main_thread().ident
    phone = _pro(world, app=F.scripted_app(hang=True, on_start=lambda p: signal.pthread_kill(main, signal.SIGINT)))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=30))
    assert out.status == "interrupted" and "Ctrl-C" in out.note
    assert phone.launches[-1].killed


def test_ctrl_c_while_the_run_is_being_scheduled_still_stops_the_app(world, opened, monkeypatch):
    """CI once saw the Ctrl-C land inside the hand-off to the event loop (the app already running):
    the run must still come back interrupted with the app killed, not raise into the caller."""
    from devprof.devices.ios import device as D
    real = D._Loop.start

    def start_then_ctrl_c(self, coro, fut):
        real(self, coro, fut)
        deadline = time.monotonic() + 10
        while not phone.launches and time.monotonic() < deadline:
            time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(D._Loop, "start", start_then_ctrl_c)
    phone = _pro(world, app=F.scripted_app(hang=True))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=30))
    assert out.status == "interrupted" and "Ctrl-C" in out.note
    assert phone.launches[-1].killed


def test_timeout_kills_the_app(world, opened):
    phone = _pro(world, app=F.scripted_app(hang=True))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=0.25))
    assert out.status == "timeout" and "0.25 s timeout" in out.note and out.exit_code is None
    assert phone.launches[-1].killed
    assert out.samples  # what was measured before the kill is kept


@pytest.mark.parametrize("kw,status,code,note", [
    (dict(crash_signal=signal.SIGSEGV), "failed", -11, "killed by SIGSEGV"),
    (dict(crash_signal=signal.SIGKILL), "oom", -9, "jetsam"),
    (dict(exit_code=3), "failed", 3, "exit code 3"),
])
def test_app_crash_or_failure(world, opened, kw, status, code, note):
    _pro(world, app=F.scripted_app(**kw))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=10))
    assert (out.status, out.exit_code) == (status, code) and note in out.note


def test_exit_without_termination_event_or_result_is_a_crash(world, opened):
    _pro(world, app=F.scripted_app(crash_signal=signal.SIGABRT), termination_events=False)
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=10))
    assert out.status == "failed" and out.exit_code is None and "crash ls" in out.note


def test_exit_code_from_the_result_file_when_no_termination_event(world, opened):
    _pro(world, app=F.scripted_app(exit_code=0), termination_events=False)
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=10))
    assert out.status == "ok" and out.exit_code == 0


def test_device_lost_mid_run(world, opened, tmp_path):
    _pro(world, app=F.scripted_app(vanish_after=3))
    (dev,) = _resolve("iphone16pro", opened)
    out = dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=10))
    assert out.status == "lost" and out.exit_code is None
    assert "disappeared from usbmux" in out.note
    assert "llama runner" in out.stdout  # output before the loss is kept
    (tmp_path / "p").write_text("x")
    with pytest.raises(DeviceLost) as e:  # later calls say the phone is gone, in one line
        dev.stage({"p": tmp_path / "p"}, "g")
    assert "no longer attached" in _one_line(e.value)


def test_launch_failure_is_a_device_error(world, opened, monkeypatch):
    _pro(world)
    (dev,) = _resolve("iphone16pro", opened)
    with pytest.raises(DeviceError) as e:
        dev.run(RunRequest(argv=["org.not.installed", "--x"], sample_ms=10, timeout_s=5))
    assert "org.not.installed is not installed" in _one_line(e.value)

    async def untrusted(self, bundle_id, arguments=None, kill_existing=True, start_suspended=False,
                        environment=None, extra_options=None):
        raise F.DvtException("Unable to launch org.devprof.bench because it has an invalid code signature\nmore")

    monkeypatch.setattr(F.ProcessControl, "launch", untrusted)
    with pytest.raises(DeviceError) as e:
        dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=5))
    assert "cannot launch org.devprof.bench" in _one_line(e.value) and "VPN & Device Management" in e.value.message


def test_pull_scratch_outputs_and_thermal(world, opened, tmp_path):
    phone = _pro(world, app=F.scripted_app(files={"devprof/scratch/trace.npz": b"NPZ!"}))
    (dev,) = _resolve("iphone16pro", opened)
    trace = dev.scratch_path("trace.npz")
    assert trace == "devprof/scratch/trace.npz"
    assert dev.run(RunRequest(argv=_argv([f"--routing_trace={trace}"]), sample_ms=10, timeout_s=10)).status == "ok"
    assert dev.pull(trace, tmp_path / "got" / "trace.npz") is True
    assert (tmp_path / "got" / "trace.npz").read_bytes() == b"NPZ!"
    assert not (phone.documents(A.DEFAULT_BUNDLE_ID) / trace).exists()  # moved, like on the host
    assert dev.pull("devprof/scratch/missing.npz", tmp_path / "m") is False
    assert dev.thermal() == {"battery": 31.5}
    assert dev.drop_page_cache("devprof/g/weights.bin")[0] == "unknown"


def test_two_runs_on_one_connection(world, opened):
    _pro(world)
    (dev,) = _resolve("iphone16pro", opened)
    for _ in range(2):
        assert dev.run(RunRequest(argv=_argv(), sample_ms=10, timeout_s=10)).status == "ok"


# ------------------------------------------------------------------------------------------
# the fake iPhone for CLI tests: a real host process behind the fake app

STUB = r'''
import argparse, json, sys, time
p = argparse.ArgumentParser()
p.add_argument("--model_path"); p.add_argument("--prompt_ids_file"); p.add_argument("--max_new_tokens", type=int)
p.add_argument("--routing_trace")
a = p.parse_args()
ids = open(a.prompt_ids_file).read().split()
blob = bytearray(64 << 20)
for i in range(0, len(blob), 4096): blob[i] = 1
time.sleep(0.3)
open(a.routing_trace, "wb").write(b"trace:" + open(a.model_path + "/weights.bin", "rb").read(4))
t = int(time.time() * 1000)
print("PyTorchObserver " + json.dumps({"prompt_tokens": len(ids), "generated_tokens": a.max_new_tokens - 1,
      "inference_start_ms": t - 300, "prompt_eval_end_ms": t - 200, "first_token_ms": t - 200,
      "inference_end_ms": t, "SCALING_FACTOR_UNITS_PER_SECOND": 1000}), flush=True)
print("RSS after finishing text generation: 70.5 MiB (0 if unsupported)", file=sys.stderr)
'''


def test_install_fake_iphone_runs_a_real_process(monkeypatch, tmp_path):
    stub = tmp_path / "stub_runtime.py"
    stub.write_text(STUB)
    phone = F.install_fake_iphone(monkeypatch, root=tmp_path, runtime_cmd=[sys.executable, str(stub)])
    assert ios in devices.BACKENDS
    assert [d.kind for d in devices.discover()] == ["local", "ios"]
    (dev,) = devices.resolve("iphone16pro")
    with dev:
        bundle = tmp_path / "b"
        bundle.mkdir()
        (bundle / "weights.bin").write_bytes(b"WGHT" * 1000)
        (tmp_path / "prompt.ids").write_text("1\n2\n3\n")
        model = dev.stage({"weights.bin": bundle / "weights.bin"}, "bundle-1")
        prompt = dev.stage({"prompt.ids": tmp_path / "prompt.ids"}, "prompt-1")
        trace = dev.scratch_path("t.npz")
        out = dev.run(RunRequest(argv=[sys.executable, "-m", "devprof.refruntime", "--model_path", model.remote_dir,
                                       "--prompt_ids_file", prompt.paths["prompt.ids"], "--max_new_tokens", "4",
                                       "--routing_trace", trace], sample_ms=10, timeout_s=30))
        assert out.status == "ok", out.note
        assert '"prompt_tokens": 3' in out.stdout and "RSS after finishing" in out.stdout
        assert out.peak_rss_kb and out.peak_rss_kb > 60 * 1024  # the 64 MiB it touched, really measured
        assert any(s.footprint_kb and s.footprint_kb > 60 * 1024 for s in out.samples)
        assert dev.pull(trace, tmp_path / "t.npz") and (tmp_path / "t.npz").read_bytes() == b"trace:WGHT"
        assert dev.info().name == "iPhone 16 Pro"
    assert phone.launches[-1].arguments[:2] == ["--model_path", "devprof/bundle-1"]


# ------------------------------------------------------------------------------------------
# the fakes keep the real signatures (only where pymobiledevice3 is installed)

def _params(fn):
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default if p.default is not inspect.Parameter.empty else "<required>")
            for p in sig.parameters.values()]


def test_fakes_match_real_pymobiledevice3_signatures(tmp_path):
    pytest.importorskip("pymobiledevice3")
    real = pmd3.load_real()
    w = F.FakeWorld(tmp_path)
    fake = w.adapter()
    pairs = [(real.list_devices, fake.list_devices), (real.create_using_usbmux, fake.create_using_usbmux),
             (real.get_tunneld_device_by_udid, fake.get_tunneld_device_by_udid),
             (real.image_type_for_device, fake.image_type_for_device)]
    methods = {
        "InstallationProxyService": ["__init__", "get_apps", "install_from_local", "upgrade"],
        "HouseArrestService": ["__init__", "create", "push", "pull", "stat", "makedirs", "get_file_contents",
                               "set_file_contents", "rm_single"],
        "DvtProvider": ["__init__"], "ProcessControl": ["__init__", "launch", "kill"],
        "DvtDeviceInfo": ["__init__", "is_running_pid", "sysmon_process_attributes", "sysmon_system_attributes"],
        "Sysmontap": ["__init__", "iter_processes"], "DiagnosticsService": ["__init__", "get_battery"],
        "MobileImageMounterService": ["__init__", "is_image_mounted"],
    }
    for cls, names in methods.items():
        for n in names:
            pairs.append((getattr(getattr(real, cls), n), getattr(getattr(fake, cls), n)))
    pairs.append((real.userspace_tunnel().__init__, fake.userspace_tunnel().__init__))
    for r, f in pairs:
        assert _params(f) == _params(r), f"{r.__qualname__}"
    assert fake.Sysmontap.MINIMUM_INTERVAL_MS == real.Sysmontap.MINIMUM_INTERVAL_MS
    assert fake.Sysmontap.DEFAULT_INTERVAL_MS == real.Sysmontap.DEFAULT_INTERVAL_MS
    for name in ("ConnectionFailedToUsbmuxdError", "NotPairedError", "PasswordRequiredError",
                 "DeveloperModeIsNotEnabledError", "InvalidServiceError", "TunneldConnectionError",
                 "AfcFileNotFoundError", "AppNotInstalledError", "ConnectionTerminatedError", "QueueShutDown"):
        assert hasattr(real.exc, name) and hasattr(fake.exc, name)
