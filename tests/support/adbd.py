#!/usr/bin/env python3
"""A fake Android device daemon (adbd) that the real adb server can ``adb connect`` to.

It speaks the adb transport protocol over TCP, so the real adb client/server (and adbutils,
which talks to the server) drive it exactly like a phone on Wi-Fi debugging:

    python tests/support/adbd.py --port 0 --sandbox /tmp/phone --props props.json [--unauthorized] [--sysfs]
                         [--features shell_v2,...]   (--features without shell_v2: a phone with the legacy shell only)
    adb connect 127.0.0.1:PORT

Standard library only. On start it prints one line ``READY <port>`` to stdout (``--port 0``
picks a free port) and logs to stderr.

What the "phone" is
-------------------
Shell commands run on this host with ``/bin/sh -c`` (cwd = the sandbox, in a new process group),
so the host's real tools serve as the device's toybox and ``/proc`` is the host's real ``/proc``.
Device paths are rewritten to folders under the sandbox, both in shell command strings and in
sync (push/pull/stat/ls) paths::

    /data/local/tmp        -> SANDBOX/data/local/tmp
    /sdcard                -> SANDBOX/sdcard   (also /storage/emulated/0, /storage/self/primary)
    with --sysfs:
    /sys/class/thermal     -> SANDBOX/sys/class/thermal
    /sys/devices/system/cpu-> SANDBOX/sys/devices/system/cpu

With --sysfs the sandbox is also the phone's sysroot: ``getprop debug.devprof.sysroot`` names it
(devprof reads /sys under that prefix, and shell-built paths need no rewriting), and
``SANDBOX/sys/class/power_supply`` holds a fake battery whose current follows what runs
(tests/support/fake_battery.py: a known true energy per token).

An aarch64 ELF file in the sandbox named in a command string runs under ``qemu-aarch64-static``
(Debian's qemu-user-static; the daemon puts it in front, no binfmt_misc needed): see
``PathMap.wrap_arm64``.

In command strings a prefix is rewritten only where it starts a path (not preceded by a letter,
digit, ``_``, ``.``, ``-`` or ``/``) and ends at a component boundary. Paths built at run time by
the shell (``$D/tmp``) are not rewritten, and output is not rewritten back.

``logcat -d [-b BUFFER] [-s TAG...]`` (also in ``SANDBOX/.adbd/bin``) prints
``SANDBOX/.adbd/logcat-BUFFER.txt``: tests append the low-memory killer's lines there.

``getprop`` (first on PATH, ``SANDBOX/.adbd/bin``) prints ``SANDBOX/.adbd/props.txt`` (rendered
from the props at start; edit it to change a property): all ``[key]: [value]`` lines with no
argument, the value (or the given default, else an empty line) with one.

Protocol notes (AOSP packages/modules/adb: protocol.txt, SYNC.TXT, shell_protocol.h)
--------------------------------------------------------------------------------------
* 24-byte little-endian header: command, arg0, arg1, data_length, data_check (byte sum; not
  checked and sent as 0 from version 0x01000001 on), magic = command ^ 0xffffffff.
* One WRTE in flight per stream until the peer's OKAY; we OKAY host WRTEs once the service has
  consumed the data (back-pressure).
* Shell protocol v2 packets: id (u8) + length (u32 LE) + data; ids stdin=0 stdout=1 stderr=2
  exit=3 close-stdin=4 window-size=5. Exit code = status, or 0x80|signal when killed.
* When the host closes a shell stream the process group gets SIGHUP (as adbd does for the
  shell protocol), then SIGKILL after 0.5 s. Raw streams (``shell:``, ``exec:``) first see EOF on
  stdin and get 0.5 s to end by themselves (so ``adb exec-in`` can finish writing).
"""

from __future__ import annotations

import argparse
import collections
import errno as errno_mod
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453

A_VERSION = 0x01000001
A_VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 256 * 1024

ADB_AUTH_TOKEN = 1
ADB_AUTH_SIGNATURE = 2
ADB_AUTH_RSAPUBLICKEY = 3

CMD_NAMES = {
    A_SYNC: "SYNC", A_CNXN: "CNXN", A_AUTH: "AUTH", A_OPEN: "OPEN",
    A_OKAY: "OKAY", A_CLSE: "CLSE", A_WRTE: "WRTE", A_STLS: "STLS",
}

# Shell protocol (v2) packet ids.
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINSIZE = range(6)

SYNC_DATA_MAX = 64 * 1024
HEADER = struct.Struct("<6I")

# What this daemon implements. adb 29.0.6 knows shell_v2, stat_v2, ls_v2, fixed_push_mkdir,
# fixed_push_symlink_timestamp, apex, abb, abb_exec, cmd, remount_shell; sendrecv_v2* came later
# (adb 31). We advertise only what works here: no abb/abb_exec/cmd (there is no package manager;
# advertising them would route `adb install` to services we lack) and no compression.
FEATURES = [
    "shell_v2",
    "stat_v2",
    "ls_v2",
    "fixed_push_mkdir",
    "fixed_push_symlink_timestamp",
    "sendrecv_v2",
]

DEFAULT_PROPS = {
    "ro.product.model": "SM-S931B",
    "ro.product.manufacturer": "samsung",
    "ro.product.brand": "samsung",
    "ro.product.name": "pa1qxxx",
    "ro.product.device": "pa1q",
    "ro.build.version.release": "15",
    "ro.build.version.sdk": "35",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a",
    "ro.serialno": "R3CY20FAKE0",
    "ro.soc.model": "SM8750",
    "ro.soc.manufacturer": "QTI",
    "ro.hardware": "qcom",
    "ro.build.type": "user",
    "ro.debuggable": "0",
    "ro.devprof.mem_total_kb": "11458472",
}

# (type, milli-degrees C) of the fake thermal zones.
THERMAL_ZONES = [("cpu-0-0", 41200), ("battery", 33000), ("skin", 36000)]
# SM8750: 6 performance cores at 3.53 GHz, 2 prime cores at 4.32 GHz (kHz).
CPU_FREQS_KHZ = [3532800] * 6 + [4320000] * 2

SHELL_KILL_GRACE_S = 0.5  # SIGHUP -> SIGKILL
SHELL_EOF_GRACE_S = 0.5  # raw streams: stdin EOF -> SIGHUP

log_lock = threading.Lock()
VERBOSE = False


def log(msg: str) -> None:
    with log_lock:
        sys.stderr.write(f"adbd[{os.getpid()}] {time.strftime('%H:%M:%S')} {msg}\n")
        sys.stderr.flush()


def vlog(msg: str) -> None:
    if VERBOSE:
        log(msg)


# --------------------------------------------------------------------------------------------
# Sandbox: path rewriting, getprop, fake sysfs
# --------------------------------------------------------------------------------------------


class PathMap:
    """Device path prefixes -> host folders under the sandbox."""

    _SAFE = re.compile(r"^[A-Za-z0-9_./+-]+$")

    def __init__(self, sandbox: Path, sysfs: bool):
        self.sandbox = sandbox
        if not self._SAFE.match(str(sandbox)):
            raise SystemExit(f"adbd: sandbox path must be shell-safe ([A-Za-z0-9_./+-]): {sandbox}")
        sd = str(sandbox / "sdcard")
        self.prefixes: list[tuple[str, str]] = [
            ("/data/local/tmp", str(sandbox / "data/local/tmp")),
            ("/sdcard", sd),
            ("/storage/emulated/0", sd),
            ("/storage/self/primary", sd),
        ]
        if sysfs:
            self.prefixes += [
                ("/sys/class/thermal", str(sandbox / "sys/class/thermal")),
                ("/sys/devices/system/cpu", str(sandbox / "sys/devices/system/cpu")),
            ]
        self.prefixes.sort(key=lambda p: -len(p[0]))
        alternation = "|".join(re.escape(d) for d, _ in self.prefixes)
        self._cmd_re = re.compile(r"(?<![\w.\-/])(" + alternation + r")(?![\w.\-])")
        self._lookup = dict(self.prefixes)

    def command(self, cmd: str) -> str:
        """Rewrite device paths inside a shell command string (and run arm64 ELF files under
        qemu: see :meth:`wrap_arm64`)."""
        return self.wrap_arm64(self._cmd_re.sub(lambda m: self._lookup[m.group(1)], cmd))

    # Commands that take a file as data, never run it: an arm64 ELF named in their arguments
    # is left alone (``chmod 755 runner``, ``sha256sum runner``, ``rm -f runner``).
    FILE_TOOLS = frozenset(
        "chmod chown rm ls stat cat cp mv sha256sum sha1sum md5sum test [ wc head tail du touch mkdir ln dd "
        "readlink realpath file toybox find echo printf df cmp diff od xxd hexdump truncate basename dirname".split()
    )

    def wrap_arm64(self, cmd: str) -> str:
        """Put ``qemu-aarch64-static`` in front of every sandbox file in ``cmd`` that is an
        aarch64 ELF executable, unless the simple command it is in starts with a file tool
        (:attr:`FILE_TOOLS`). This is what a phone's kernel does by itself; the host's kernel
        cannot, and binfmt_misc (which would) is not assumed. Launchers keep working: ``taskset
        MASK runner``, ``env K=V runner``, ``sh sampler.sh OUT 0.01 runner ARGS`` (the sampler
        then runs ``qemu-aarch64-static runner ARGS``, so the sampled process is qemu, whose
        memory holds the guest's). Without qemu-aarch64-static the command is left as it is."""
        root = re.escape(str(self.sandbox))
        pat = re.compile(r"(?<![\w.\-/])(" + root + r"/[\w.+\-/]*)")
        qemu = None

        def sub(m: re.Match) -> str:
            nonlocal qemu
            path = m.group(1)
            if not _is_arm64_elf(path):
                return path
            head = re.split(r"[;&|()\n]", cmd[:m.start()])[-1].split()
            if head and head[0] in self.FILE_TOOLS:
                return path
            if qemu is None:
                qemu = shutil.which("qemu-aarch64-static") or ""
            return f"{qemu} {path}" if qemu else path

        return pat.sub(sub, cmd)

    def path(self, device_path: str) -> str:
        """Rewrite one device path (sync service)."""
        p = device_path
        while "//" in p:
            p = p.replace("//", "/")
        for dev, host in self.prefixes:
            if p == dev or p == dev + "/":
                return host + p[len(dev):]
            if p.startswith(dev + "/"):
                return host + p[len(dev):]
        return p


def _is_arm64_elf(path: str) -> bool:
    """True for an ELF file whose e_machine is EM_AARCH64 (183)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return False
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return False
    return struct.unpack("<H" if head[5] == 1 else ">H", head[18:20])[0] == 183


GETPROP_SCRIPT = """#!/bin/sh
# getprop for the fake adbd (tests/support/adbd.py): reads the props file on every call.
F='{props}'
if [ $# -eq 0 ]; then exec cat "$F"; fi
exec awk -v k="[$1]: [" -v d="${{2-}}" \\
  'index($0, k) == 1 {{ print substr($0, length(k) + 1, length($0) - length(k) - 1); f = 1; exit }}
   END {{ if (!f) print d }}' "$F"
"""


LOGCAT_SCRIPT = """#!/bin/sh
# logcat for the fake adbd (tests/support/adbd.py): `logcat -d [-b BUFFER] [-s TAG...]` prints
# SANDBOX/.adbd/logcat-BUFFER.txt (main by default; empty when missing): a test appends the lines a
# phone's lmkd or ActivityManager would log. -s keeps lines whose tag is one of those given.
D='{meta}'
buf=main; tags=""
while [ $# -gt 0 ]; do
  case "$1" in
    -b) buf="$2"; shift 2 ;;
    -s) shift; while [ $# -gt 0 ] && [ "${{1#-}}" = "$1" ]; do tags="$tags $1"; shift; done ;;
    *) shift ;;
  esac
done
f="$D/logcat-$buf.txt"
[ -f "$f" ] || exit 0
if [ -z "$tags" ]; then exec cat "$f"; fi
for t in $tags; do grep -E " [VDIWEF] $t *:" "$f"; done
exit 0
"""


def render_props(props: dict) -> str:
    """getprop's listing: ``[key]: [value]`` lines, sorted by key."""
    return "".join(f"[{k}]: [{props[k]}]\n" for k in sorted(props))


def write_if_missing(path: Path, text: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def setup_sandbox(sandbox: Path, props: dict, sysfs: bool) -> Path:
    """Create the sandbox folders; returns the folder that goes first on PATH."""
    (sandbox / "data/local/tmp").mkdir(parents=True, exist_ok=True)
    (sandbox / "sdcard").mkdir(parents=True, exist_ok=True)
    meta = sandbox / ".adbd"
    bindir = meta / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (meta / "pgids").mkdir(exist_ok=True)
    (meta / "props.json").write_text(json.dumps(props, indent=1, sort_keys=True))
    props_file = meta / "props.txt"
    props_file.write_text(render_props(props))
    getprop = bindir / "getprop"
    getprop.write_text(GETPROP_SCRIPT.format(props=str(props_file)))
    getprop.chmod(0o755)
    logcat = bindir / "logcat"
    logcat.write_text(LOGCAT_SCRIPT.format(meta=str(meta)))
    logcat.chmod(0o755)
    if sysfs:
        thermal = sandbox / "sys/class/thermal"
        for i, (kind, temp) in enumerate(THERMAL_ZONES):
            write_if_missing(thermal / f"thermal_zone{i}/type", f"{kind}\n")
            write_if_missing(thermal / f"thermal_zone{i}/temp", f"{temp}\n")
            write_if_missing(thermal / f"thermal_zone{i}/mode", "enabled\n")
        cpu = sandbox / "sys/devices/system/cpu"
        n = len(CPU_FREQS_KHZ)
        for name in ("online", "possible", "present"):
            write_if_missing(cpu / name, f"0-{n - 1}\n")
        for i, f in enumerate(CPU_FREQS_KHZ):
            d = cpu / f"cpu{i}/cpufreq"
            write_if_missing(d / "scaling_cur_freq", f"{f}\n")
            write_if_missing(d / "scaling_max_freq", f"{f}\n")
            write_if_missing(d / "cpuinfo_max_freq", f"{f}\n")
            write_if_missing(d / "cpuinfo_min_freq", "384000\n")
            write_if_missing(d / "scaling_governor", "walt\n")
            write_if_missing(cpu / f"cpu{i}/online", "1\n")
    return bindir


# --------------------------------------------------------------------------------------------
# Streams and the transport connection
# --------------------------------------------------------------------------------------------


class StreamClosed(Exception):
    pass


class Stream:
    """One adb socket: a service on our side, ``remote_id`` on the host's side."""

    def __init__(self, conn: "Connection", local_id: int, remote_id: int, service: str):
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.service = service
        self.cv = threading.Condition()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.rbuf = bytearray()
        self.closed = False  # no more traffic either way
        self.can_write = True  # no WRTE of ours is waiting for its OKAY
        self.write_lock = threading.Lock()
        self.on_remote_close: list = []

    # ---- inbound ----
    def feed(self, data: bytes) -> None:
        with self.cv:
            if self.closed:
                return
            self.inbox.append(data)
            self.cv.notify_all()

    def recv(self, timeout: float | None = None) -> bytes:
        """Next chunk from the host; b"" once the stream is closed. OKAYs the chunk."""
        with self.cv:
            end = None if timeout is None else time.monotonic() + timeout
            while not self.inbox and not self.closed:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                self.cv.wait(left)
            if not self.inbox:
                return b""
            data = self.inbox.popleft()
            closed = self.closed
        if not closed:
            self.conn.send_packet(A_OKAY, self.local_id, self.remote_id)
        return data

    def read_exact(self, n: int) -> bytes:
        while len(self.rbuf) < n:
            chunk = self.recv()
            if not chunk:
                raise StreamClosed
            self.rbuf += chunk
        out = bytes(self.rbuf[:n])
        del self.rbuf[:n]
        return out

    # ---- outbound ----
    def okay(self) -> None:
        with self.cv:
            self.can_write = True
            self.cv.notify_all()

    def send(self, data: bytes) -> None:
        """Send bytes to the host, split to its max payload, one WRTE in flight."""
        if not data:
            return
        with self.write_lock:
            view = memoryview(data)
            step = self.conn.max_payload
            for i in range(0, len(view), step):
                with self.cv:
                    while not self.can_write and not self.closed:
                        self.cv.wait()
                    if self.closed:
                        raise StreamClosed
                    self.can_write = False
                self.conn.send_packet(A_WRTE, self.local_id, self.remote_id, view[i:i + step])

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until our last WRTE was acknowledged (or the stream closed)."""
        with self.cv:
            end = time.monotonic() + timeout
            while not self.can_write and not self.closed:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self.cv.wait(left)

    def close(self) -> None:
        """Close from our side (service finished)."""
        with self.cv:
            if self.closed:
                return
            self.closed = True
            self.cv.notify_all()
        self.conn.forget(self)
        self.conn.send_packet(A_CLSE, self.local_id, self.remote_id)

    def remote_closed(self) -> None:
        """The host closed the stream (or the transport went away)."""
        with self.cv:
            was = self.closed
            self.closed = True
            self.cv.notify_all()
        self.conn.forget(self)
        if not was:
            for cb in list(self.on_remote_close):
                try:
                    cb()
                except Exception as e:  # noqa: BLE001
                    log(f"close callback failed: {e!r}")


class Connection:
    def __init__(self, daemon: "Daemon", sock: socket.socket, peer):
        self.daemon = daemon
        self.sock = sock
        self.peer = peer
        self.send_lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.streams_lock = threading.Lock()
        self.next_id = 1
        self.host_version = A_VERSION
        self.max_payload = MAX_PAYLOAD
        self.online = False
        self.dead = False

    # ---- wire ----
    def send_packet(self, cmd: int, arg0: int, arg1: int, data=b"") -> None:
        if self.dead:
            return
        check = 0
        if self.host_version < A_VERSION_SKIP_CHECKSUM and data:
            check = sum(bytes(data)) & 0xFFFFFFFF
        header = HEADER.pack(cmd, arg0, arg1, len(data), check, cmd ^ 0xFFFFFFFF)
        vlog(f"-> {CMD_NAMES.get(cmd, hex(cmd))} {arg0} {arg1} len={len(data)}")
        try:
            with self.send_lock:
                self.sock.sendall(header)
                if data:
                    self.sock.sendall(data)
        except OSError as e:
            vlog(f"send failed: {e!r}")
            self.dead = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def forget(self, stream: Stream) -> None:
        with self.streams_lock:
            if self.streams.get(stream.local_id) is stream:
                del self.streams[stream.local_id]

    # ---- main loop ----
    def run(self) -> None:
        log(f"host connected from {self.peer}")
        try:
            while True:
                hdr = self.recv_exact(HEADER.size)
                cmd, arg0, arg1, length, _check, magic = HEADER.unpack(hdr)
                if magic != cmd ^ 0xFFFFFFFF:
                    log(f"bad magic for command {cmd:#x}; dropping connection")
                    break
                data = self.recv_exact(length) if length else b""
                vlog(f"<- {CMD_NAMES.get(cmd, hex(cmd))} {arg0} {arg1} len={length}")
                self.dispatch(cmd, arg0, arg1, data)
        except (EOFError, OSError) as e:
            vlog(f"connection ended: {e!r}")
        finally:
            self.teardown()
            log(f"host {self.peer} disconnected")

    def teardown(self) -> None:
        self.dead = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.streams_lock:
            streams = list(self.streams.values())
        for s in streams:
            s.remote_closed()
        self.daemon.forget(self)

    def dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.host_version = arg0
            # The host may send at most what we advertise; we send at most what it accepts.
            self.max_payload = max(4096, min(MAX_PAYLOAD, arg1 or MAX_PAYLOAD))
            log(f"CNXN from host: version={arg0:#x} maxdata={arg1} {data[:200]!r}")
            # A new CNXN resets the session.
            with self.streams_lock:
                streams = list(self.streams.values())
            for s in streams:
                s.remote_closed()
            if self.daemon.unauthorized:
                self.online = False
                self.send_auth_token()
            else:
                self.online = True
                self.send_packet(A_CNXN, A_VERSION, MAX_PAYLOAD, self.daemon.banner())
        elif cmd == A_AUTH:
            if self.daemon.unauthorized:
                if arg0 == ADB_AUTH_SIGNATURE:
                    # Reject every signature: ask again, so the host tries its next key and
                    # finally offers its public key, which we never accept.
                    self.send_auth_token()
                elif arg0 == ADB_AUTH_RSAPUBLICKEY:
                    log("host offered its public key; a user would now have to tap 'Allow'")
            else:
                # We never asked for AUTH; accept whatever and go online.
                self.online = True
                self.send_packet(A_CNXN, A_VERSION, MAX_PAYLOAD, self.daemon.banner())
        elif cmd == A_OPEN:
            if not self.online:
                return
            service = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            self.open_stream(arg0, service)
        elif cmd == A_OKAY:
            with self.streams_lock:
                s = self.streams.get(arg1)
            if s is not None:
                s.okay()
        elif cmd == A_WRTE:
            with self.streams_lock:
                s = self.streams.get(arg1)
            if s is None:
                if arg1 != 0:
                    self.send_packet(A_CLSE, arg1, arg0)
                return
            s.feed(data)
        elif cmd == A_CLSE:
            with self.streams_lock:
                s = self.streams.get(arg1)
            if s is not None and (arg0 == 0 or s.remote_id == arg0):
                s.remote_closed()
        elif cmd == A_SYNC:
            pass
        else:
            log(f"unknown command {cmd:#x}; ignored")

    def send_auth_token(self) -> None:
        self.send_packet(A_AUTH, ADB_AUTH_TOKEN, 0, secrets.token_bytes(20))

    def open_stream(self, remote_id: int, service: str) -> None:
        handler = self.daemon.find_service(service)
        if handler is None:
            log(f"OPEN {service!r}: no such service")
            self.send_packet(A_CLSE, 0, remote_id)
            return
        with self.streams_lock:
            local_id = self.next_id
            self.next_id += 1
            stream = Stream(self, local_id, remote_id, service)
            self.streams[local_id] = stream
        log(f"OPEN {service!r} -> stream {local_id}")
        self.send_packet(A_OKAY, local_id, remote_id)

        def run():
            try:
                handler(stream)
            except StreamClosed:
                vlog(f"stream {local_id} closed by host")
            except Exception as e:  # noqa: BLE001
                log(f"service {service!r} failed: {e!r}")
            finally:
                if not stream.closed:
                    stream.drain()
                    stream.close()

        threading.Thread(target=run, name=f"svc-{local_id}", daemon=True).start()


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, args):
        self.sandbox = Path(args.sandbox).resolve()
        self.sandbox.mkdir(parents=True, exist_ok=True)
        props = dict(DEFAULT_PROPS)
        if args.props:
            with open(args.props) as f:
                extra = json.load(f)
            if not isinstance(extra, dict):
                raise SystemExit("adbd: --props must hold a JSON object")
            props.update({str(k): str(v) for k, v in extra.items()})
        self.props = props
        self.unauthorized = args.unauthorized
        self.features = args.features.split(",") if args.features else list(FEATURES)
        self.paths = PathMap(self.sandbox, args.sysfs)
        if args.sysfs:
            props.setdefault("debug.devprof.sysroot", str(self.sandbox))
        self.bindir = setup_sandbox(self.sandbox, props, args.sysfs)
        self.pgid_dir = self.sandbox / ".adbd" / "pgids"
        self.procs: dict[int, subprocess.Popen] = {}
        self.procs_lock = threading.Lock()
        self.conns: set[Connection] = set()
        self.conns_lock = threading.Lock()
        self.env = self._make_env()
        self.stopping = False
        self.commands: dict[int, str] = {}  # pid -> the command a live spawned shell runs
        if args.sysfs:
            from fake_battery import Gauge

            Gauge(self.sandbox, self.busy).start()

    def busy(self, pattern: "re.Pattern") -> bool:
        """Whether a live spawned command matches ``pattern`` (the fake battery's busy current)."""
        with self.procs_lock:
            return any(pattern.search(c) for c in self.commands.values())

    def _make_env(self) -> dict:
        env = dict(os.environ)
        for k in ("ANDROID_SERIAL", "ANDROID_ADB_SERVER_PORT", "ADB_SERVER_SOCKET"):
            env.pop(k, None)
        env.update(
            PATH=f"{self.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            HOME=str(self.sandbox),
            TMPDIR=str(self.sandbox / "data/local/tmp"),
            EXTERNAL_STORAGE=str(self.sandbox / "sdcard"),
            ANDROID_ROOT="/system",
            ANDROID_DATA="/data",
            SHELL="/bin/sh",
            HOSTNAME=self.props.get("ro.product.device", "localhost"),
        )
        return env

    def banner(self) -> bytes:
        p = self.props
        return (
            f"device::ro.product.name={p['ro.product.name']};"
            f"ro.product.model={p['ro.product.model']};"
            f"ro.product.device={p['ro.product.device']};"
            f"features={','.join(self.features)}"
        ).encode()

    def forget(self, conn: Connection) -> None:
        with self.conns_lock:
            self.conns.discard(conn)

    def find_service(self, service: str):
        if service.startswith("shell"):
            head, sep, cmd = service.partition(":")
            if not sep:
                return None
            opts = head.split(",")[1:]
            if head.split(",")[0] != "shell":
                return None
            v2 = "v2" in opts
            if v2 and "shell_v2" not in self.features:
                return None  # a phone without the shell protocol v2 refuses it, as old adbd does
            return lambda s: self.shell_service(s, cmd, v2=v2)
        if service.startswith("exec:"):
            cmd = service[len("exec:"):]
            return lambda s: self.shell_service(s, cmd, v2=False)
        if service == "sync:":
            return self.sync_service
        if service.startswith("reboot:"):
            return lambda s: None
        return None

    # ---- processes ----
    def spawn(self, cmd: str, v2: bool) -> subprocess.Popen:
        rewritten = self.paths.command(cmd)
        argv = ["/bin/sh", "-c", rewritten] if cmd else ["/bin/sh", "-"]
        proc = subprocess.Popen(
            argv,
            cwd=str(self.sandbox),
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        with self.procs_lock:
            self.procs[proc.pid] = proc
            self.commands[proc.pid] = rewritten
        try:
            (self.pgid_dir / str(proc.pid)).write_text(cmd)
        except OSError:
            pass
        return proc

    def reap(self, proc: subprocess.Popen) -> None:
        with self.procs_lock:
            self.procs.pop(proc.pid, None)
            self.commands.pop(proc.pid, None)
        # Keep the pgid record while members of the group survive (e.g. a background job).
        if not group_alive(proc.pid):
            try:
                (self.pgid_dir / str(proc.pid)).unlink()
            except OSError:
                pass

    def hangup(self, proc: subprocess.Popen, eof_grace: float = 0.0) -> None:
        """The host closed the stream: SIGHUP the process group, then SIGKILL what is left.

        With ``eof_grace`` (raw v1 / exec streams) the process first gets that long to finish
        on its own after stdin reached EOF, so ``adb exec-in 'cat > f' < file`` completes: the
        host closes such streams as soon as it has sent the data.
        """
        pgid = proc.pid

        def run():
            if eof_grace:
                try:
                    proc.wait(eof_grace)
                except subprocess.TimeoutExpired:
                    pass
            vlog(f"hangup process group {pgid}")
            try:
                os.killpg(pgid, signal.SIGHUP)
            except OSError:
                return
            end = time.monotonic() + SHELL_KILL_GRACE_S
            while time.monotonic() < end and group_alive(pgid):
                time.sleep(0.05)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass

        threading.Thread(target=run, daemon=True).start()

    def kill_all(self) -> None:
        with self.procs_lock:
            procs = list(self.procs.values())
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        kill_recorded_groups(self.pgid_dir)

    def shell_service(self, stream: Stream, cmd: str, v2: bool) -> None:
        try:
            proc = self.spawn(cmd, v2)
        except OSError as e:
            msg = f"error: {e}\n".encode()
            if v2:
                stream.send(shell_packet(SHELL_STDERR, msg) + shell_packet(SHELL_EXIT, b"\x7f"))
            else:
                stream.send(msg)
            return
        log(f"stream {stream.local_id}: pid {proc.pid}: {cmd!r}")
        grace = 0.0 if v2 else SHELL_EOF_GRACE_S
        stream.on_remote_close.append(lambda: self.hangup(proc, grace))
        if stream.closed:  # closed before the callback was registered
            self.hangup(proc, grace)

        def pump_out(fobj, ident):
            fd = fobj.fileno()
            try:
                while True:
                    data = os.read(fd, 64 * 1024)
                    if not data:
                        break
                    if stream.closed:
                        continue  # keep draining so the child never blocks on a full pipe
                    try:
                        stream.send(shell_packet(ident, data) if v2 else data)
                    except StreamClosed:
                        pass
            except OSError:
                pass
            finally:
                fobj.close()

        def pump_in():
            stdin = proc.stdin
            buf = bytearray()
            try:
                while True:
                    chunk = stream.recv()
                    if not chunk:
                        break
                    if not v2:
                        stdin.write(chunk)
                        stdin.flush()
                        continue
                    buf += chunk
                    while len(buf) >= 5:
                        ident = buf[0]
                        (length,) = struct.unpack_from("<I", buf, 1)
                        if len(buf) < 5 + length:
                            break
                        payload = bytes(buf[5:5 + length])
                        del buf[:5 + length]
                        if ident == SHELL_STDIN:
                            stdin.write(payload)
                            stdin.flush()
                        elif ident == SHELL_CLOSE_STDIN:
                            stdin.close()
                        # window-size changes are meaningless without a pty
            except (OSError, ValueError):
                pass  # child closed stdin / exited; later stdin is dropped like adbd does
            finally:
                # Keep consuming (and OKAYing) so the host is never stuck on flow control.
                while not stream.closed:
                    try:
                        if not stream.recv():
                            break
                    except Exception:  # noqa: BLE001
                        break
                try:
                    stdin.close()
                except OSError:
                    pass

        threads = [threading.Thread(target=pump_out, args=(proc.stdout, SHELL_STDOUT), daemon=True)]
        if v2:
            threads.append(threading.Thread(target=pump_out, args=(proc.stderr, SHELL_STDERR), daemon=True))
        for t in threads:
            t.start()
        threading.Thread(target=pump_in, daemon=True).start()
        for t in threads:
            t.join()
        rc = proc.wait()
        self.reap(proc)
        code = rc if rc >= 0 else 0x80 | (-rc)
        log(f"stream {stream.local_id}: pid {proc.pid} exited {code}")
        if v2 and not stream.closed:
            try:
                stream.send(shell_packet(SHELL_EXIT, bytes([code & 0xFF])))
            except StreamClosed:
                pass

    # ---- sync ----
    def sync_service(self, stream: Stream) -> None:
        out = SyncWriter(stream)
        while True:
            try:
                req = stream.read_exact(8)
            except StreamClosed:
                return
            ident, length = req[:4], struct.unpack("<I", req[4:])[0]
            if length > 1024:
                out.fail("path too long")
                return
            raw_path = stream.read_exact(length).decode("utf-8", "surrogateescape")
            vlog(f"sync {ident.decode(errors='replace')} {raw_path!r}")
            if ident == b"STAT":
                st = try_stat(self.paths.path(raw_path), follow=False)
                if st is None:
                    out.write(b"STAT" + struct.pack("<III", 0, 0, 0))
                else:
                    out.write(b"STAT" + struct.pack("<III", st.st_mode & 0xFFFFFFFF,
                                                    st.st_size & 0xFFFFFFFF,
                                                    int(st.st_mtime) & 0xFFFFFFFF))
            elif ident in (b"STA2", b"LST2"):
                out.write(ident + stat_v2(self.paths.path(raw_path), follow=ident == b"STA2"))
            elif ident in (b"LIST", b"LIS2"):
                self.sync_list(out, self.paths.path(raw_path), v2=ident == b"LIS2")
            elif ident == b"SEND":
                path, comma, mode_s = raw_path.rpartition(",")
                if not comma:
                    out.fail("missing , in ID_SEND")
                    return
                try:
                    mode = int(mode_s, 0)
                except ValueError:
                    out.fail("bad mode")
                    return
                if not self.sync_send(stream, out, self.paths.path(path), mode):
                    return
            elif ident == b"SND2":
                setup = stream.read_exact(12)
                _sid, mode, flags = struct.unpack("<4sII", setup)
                if flags:
                    out.fail(f"unknown flags: {flags}")
                    return
                if not self.sync_send(stream, out, self.paths.path(raw_path), mode):
                    return
            elif ident in (b"RECV", b"RCV2"):
                if ident == b"RCV2":
                    _rid, flags = struct.unpack("<4sI", stream.read_exact(8))
                    if flags:
                        out.fail(f"unknown flags: {flags}")
                        return
                if not self.sync_recv(out, self.paths.path(raw_path)):
                    return
            elif ident == b"QUIT":
                out.flush()
                return
            else:
                out.fail(f"unknown command {ident!r}")
                return
            out.flush()

    def sync_list(self, out: "SyncWriter", path: str, v2: bool) -> None:
        try:
            names = [".", ".."] + sorted(os.listdir(path))
        except OSError:
            names = []
        for name in names:
            full = os.path.join(path, name)
            bname = os.fsencode(name)
            try:
                st = os.lstat(full)
            except OSError as e:
                if v2:
                    out.write(b"DNT2" + struct.pack("<I", e.errno or 0) + bytes(64)
                              + struct.pack("<I", len(bname)) + bname)
                continue
            if v2:
                out.write(b"DNT2" + stat_v2_fields(st, 0) + struct.pack("<I", len(bname)) + bname)
            else:
                out.write(b"DENT" + struct.pack("<IIII", st.st_mode & 0xFFFFFFFF,
                                                st.st_size & 0xFFFFFFFF,
                                                int(st.st_mtime) & 0xFFFFFFFF, len(bname)) + bname)
        # DONE is a whole (zeroed) dent record: 20 bytes for v1, 76 for v2.
        out.write(b"DONE" + bytes(72 if v2 else 16))

    def sync_send(self, stream: Stream, out: "SyncWriter", path: str, mode: int) -> bool:
        """Receive DATA.../DONE into ``path``. Returns False when the stream must end."""
        error = None
        fd = -1
        is_link = stat.S_ISLNK(mode)
        link_target = bytearray()
        if not is_link:
            # As adbd: copy the user permission bits to group and other.
            perm = mode & 0o777
            perm |= (perm >> 3) & 0o070
            perm |= (perm >> 3) & 0o007
            try:
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno_mod.EISDIR, os.strerror(errno_mod.EISDIR))
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                error = f"couldn't create file: {e.strerror}"
            if error is None:
                try:
                    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, perm)
                    os.fchmod(fd, perm)
                except OSError as e:
                    error = f"couldn't create file: {e.strerror}"
        mtime = 0
        try:
            while True:
                ident, size = struct.unpack("<4sI", stream.read_exact(8))
                if ident == b"DONE":
                    mtime = size
                    break
                if ident != b"DATA":
                    error = error or "invalid data message"
                    out.fail(error)
                    return False
                if size > SYNC_DATA_MAX:
                    out.fail("oversize data message")
                    return False
                data = stream.read_exact(size)
                if error is not None:
                    continue
                if is_link:
                    link_target += data
                    continue
                try:
                    view = memoryview(data)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                except OSError as e:
                    error = f"write failed: {e.strerror}"
        finally:
            if fd >= 0:
                os.close(fd)
        if error is None and is_link:
            try:
                target = bytes(link_target).rstrip(b"\0")
                if os.path.lexists(path):
                    os.unlink(path)
                os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
                os.symlink(target, path)
            except OSError as e:
                error = f"symlink failed: {e.strerror}"
        if error is not None:
            try:
                if not is_link and fd >= 0:
                    os.unlink(path)
            except OSError:
                pass
            out.fail(error)
            return False
        try:
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        except OSError:
            pass
        self._maybe_corrupt(path)
        out.write(b"OKAY" + bytes(4))
        return True

    def _maybe_corrupt(self, path: str) -> None:
        """Test hook: a marker file ``.adbd/corrupt-push`` holding a file-name suffix makes the
        next push of a matching file arrive with its first byte flipped (a transfer gone bad);
        the marker is one-shot."""
        marker = self.sandbox / ".adbd" / "corrupt-push"
        try:
            suffix = marker.read_text().strip()
        except OSError:
            return
        if not suffix or not path.endswith(suffix):
            return
        marker.unlink(missing_ok=True)
        with open(path, "r+b") as f:
            first = f.read(1)
            if first:
                f.seek(0)
                f.write(bytes([first[0] ^ 0xFF]))
        log(f"corrupted the push of {path} (test hook)")

    def sync_recv(self, out: "SyncWriter", path: str) -> bool:
        try:
            f = open(path, "rb")
        except OSError as e:
            out.fail(f"open failed: {e.strerror}")
            return False
        with f:
            while True:
                try:
                    chunk = f.read(SYNC_DATA_MAX)
                except OSError as e:
                    out.fail(f"read failed: {e.strerror}")
                    return False
                if not chunk:
                    break
                out.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        out.write(b"DONE" + bytes(4))
        return True


class SyncWriter:
    """Coalesces sync replies into WRTEs of up to the host's max payload."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data
        limit = self.stream.conn.max_payload
        if len(self.buf) >= limit:
            n = len(self.buf) - len(self.buf) % limit
            chunk = bytes(self.buf[:n])
            del self.buf[:n]
            self.stream.send(chunk)

    def flush(self) -> None:
        if self.buf:
            chunk = bytes(self.buf)
            self.buf.clear()
            self.stream.send(chunk)

    def fail(self, reason: str) -> None:
        msg = reason.encode()
        self.write(b"FAIL" + struct.pack("<I", len(msg)) + msg)
        self.flush()


def shell_packet(ident: int, data: bytes) -> bytes:
    return struct.pack("<BI", ident, len(data)) + data


def try_stat(path: str, follow: bool):
    try:
        return os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None


def stat_v2_fields(st, err: int) -> bytes:
    # error, dev, ino, mode, nlink, uid, gid, size, atime, mtime, ctime  (68 bytes)
    return struct.pack(
        "<IQQIIIIQqqq", err, st.st_dev & (2**64 - 1), st.st_ino & (2**64 - 1),
        st.st_mode & 0xFFFFFFFF, st.st_nlink & 0xFFFFFFFF, st.st_uid & 0xFFFFFFFF,
        st.st_gid & 0xFFFFFFFF, st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime),
    )


def stat_v2(path: str, follow: bool) -> bytes:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as e:
        return struct.pack("<I", e.errno or errno_mod.EIO) + bytes(64)
    return stat_v2_fields(st, 0)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds for zombies too; look for a live member.
    try:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # fields[0] = state, fields[2] = pgrp
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
    except OSError:
        return True
    return False


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def kill_recorded_groups(folder: Path) -> None:
    """SIGKILL every process group recorded as a file named by its pgid in ``folder``, and forget it
    (the daemon at shutdown; the test harness for a daemon that died without doing so)."""
    for f in Path(folder).glob("*"):
        try:
            os.killpg(int(f.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        try:
            f.unlink()
        except OSError:
            pass


def main(argv=None) -> int:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True, help="TCP port (0: pick a free one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--sandbox", required=True, help="folder that holds the device's files")
    ap.add_argument("--props", help="JSON object of system properties (over the defaults)")
    ap.add_argument("--unauthorized", action="store_true", help="never accept the host's key")
    ap.add_argument("--sysfs", action="store_true", help="fake thermal zones and cpufreq files")
    ap.add_argument("--features", help="comma-separated feature list to advertise instead")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every packet")
    args = ap.parse_args(argv)
    VERBOSE = args.verbose

    daemon = Daemon(args)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(16)
    port = lsock.getsockname()[1]

    stop = threading.Event()

    def on_term(signum, _frame):
        log(f"signal {signum}: shutting down")
        stop.set()
        try:
            lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        lsock.close()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_term)

    log(f"listening on {args.host}:{port}, sandbox {daemon.sandbox}, "
        f"model {daemon.props['ro.product.model']}"
        f"{', unauthorized' if args.unauthorized else ''}")
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()

    accept_thread_exc = []

    def accept_loop():
        while not stop.is_set():
            try:
                sock, peer = lsock.accept()
            except OSError as e:
                if not stop.is_set():
                    accept_thread_exc.append(e)
                    stop.set()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(daemon, sock, peer)
            with daemon.conns_lock:
                daemon.conns.add(conn)
            threading.Thread(target=conn.run, name=f"conn-{peer}", daemon=True).start()

    threading.Thread(target=accept_loop, name="accept", daemon=True).start()
    while not stop.wait(0.5):
        pass

    # Shut down: kill every child, drop every host connection.
    daemon.kill_all()
    with daemon.conns_lock:
        conns = list(daemon.conns)
    for c in conns:
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.sock.close()
    if accept_thread_exc:
        log(f"accept failed: {accept_thread_exc[0]!r}")
        return 1
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
