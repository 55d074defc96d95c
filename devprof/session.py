"""One profiling session: stage, run every (model, workload, context) repeatedly, store each result.

Data flows one way: the device runs and samples a process, the runtime adapter parses what it
printed, and each repetition is written to the store the moment it is finished, so an
interruption (Ctrl-C, a device that disappears, a runtime that fails) loses nothing measured.
Repetitions of the subject and the baseline are interleaved so that drift on a shared, noisy
machine falls on both alike and the ratio between them stays honest.
"""

from __future__ import annotations

from devprof import __version__

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import click

from devprof import interference, memory
from devprof.host_threads import host_default_threads, threads_warning
from devprof import workloads as wl
from devprof.catalog import ModelSpec, check_context
from devprof.devices.base import Device, RunRequest
from devprof.errors import (DeviceLost, DevprofError, Interrupted, ParseError, RuntimeFailed, UsageError,
                            killed_by, signal_hint, signal_name, stop_signal)
from devprof.results import ProcessOutcome, Repetition, RunMeta
from devprof.runtimes import base as rt
from devprof.store import Store


@dataclass
class Plan:
    """What to run: every field is a user choice from the command line."""

    models: list[ModelSpec]  # models[0] is the subject, the rest baselines
    workloads: list[str]
    contexts: list[int]
    new_tokens: int = 128
    reps: int = 3
    warmup: int = 1
    sample_ms: int = 10
    runtime: str = rt.DEFAULT_RUNTIME
    weights: str = "fp32"  # fp32 | q8_0 | q4_0: the format of devprof's seeded weights the runtime is given
    cache: str = "cold"  # cold: evict the weights file before every repetition; warm: leave it
    seed: int = 0
    threads: int = -1
    timeout_s: float = 900.0
    cpu_mask: str | None = None
    cooldown_c: float | None = None  # wait before each repetition until the hottest zone is below this
    cooldown_timeout_s: float = 300.0
    #: the readiness gate before each repetition (devprof.readiness): "cpu<30,temp<45", "none", or None for
    #: the device kind's default
    ready: str | None = None
    ready_timeout_s: float = 60.0
    #: --reps auto: the stopping rule (devprof.adaptive.Rule); None: exactly ``reps`` repetitions
    adaptive: object | None = None
    binary_name: str | None = None  # a registered binary by name (else chosen by runtime/platform/ABI)
    #: model name -> (model file, tokenizer file or None): the user's prebuilt model files
    model_files: dict[str, tuple[Path, Path | None]] = field(default_factory=dict)
    runtime_args: list[str] = field(default_factory=list)  # appended to every runtime command line
    energy: bool | None = None  # battery J/token (devprof.energy): None = where the battery is readable
    energy_baseline_s: float = 2.0  # idle window measured right before each repetition
    soak_min: float = 0.0  # --soak: minutes of back-to-back generations after the plan (devprof.soak)
    settings: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.weights not in ("fp32", "q8_0", "q4_0"):
            raise UsageError(f"unknown --weights {self.weights!r}; known: fp32, q8_0, q4_0")
        adapter = rt.get_adapter(self.runtime)
        adapter.check_weights(self.weights)
        for m in self.models:
            for c in self.contexts:
                check_context(m, c)
        if self.cpu_mask is not None:
            mask = self.cpu_mask.strip().lower().removeprefix("0x")
            if not mask or any(ch not in "0123456789abcdef" for ch in mask) or int(mask, 16) == 0:
                raise UsageError(f"--cpu-mask must be a non-zero hex CPU mask like f0, got {self.cpu_mask!r}")
        missing = [m.name for m in self.models if m.name not in self.model_files]
        if not adapter.weight_formats and missing:  # checked before a run is stored
            raise UsageError(f"--runtime {self.runtime} runs a prebuilt model file: give {missing[0]}'s with "
                             + ("--model-bundle" if missing[0] == self.models[0].name else "--baseline-bundle")
                             + (" (and the baseline's with --baseline-bundle)" if len(missing) > 1 else ""))


#: warn when the estimate uses more than this share of the phone's MemAvailable
MEM_WARN_SHARE = 0.75


def memory_need(plan: Plan) -> dict[str, int]:
    """Bytes each model of ``plan`` needs in RAM at once (one model runs at a time): its weights (the
    user's model file's size, else the catalog's size at ``plan.weights``) plus its KV cache at the largest
    context. Compute buffers and the runtime itself are not counted: a lower bound."""
    dtype = {"q4_0": "int4", "q8_0": "int8"}.get(plan.weights, "fp32")
    ctx = max(plan.contexts) + plan.new_tokens
    need = {}
    for spec in plan.models:
        if spec.name in plan.model_files:
            weights = Path(plan.model_files[spec.name][0]).stat().st_size
        else:
            weights = spec.weight_bytes(dtype)
        need[spec.name] = weights + spec.kv_cache_bytes(ctx, rt.get_adapter(plan.runtime).kv_bytes)
    return need


def check_memory(plan: Plan, available: int | None, where: str) -> str | None:
    """Refuse a plan whose largest model cannot fit in ``available`` bytes of free RAM (UsageError naming
    what will not fit); return a one-line warning when it takes most of it, else None."""
    if not available:
        return None
    need = memory_need(plan)
    ctx = max(plan.contexts)
    too_big = {m: b for m, b in need.items() if b > available}
    if too_big:
        parts = ", ".join(f"{m} {b / 2**20:,.0f} MiB" for m, b in too_big.items())
        raise UsageError(f"will not fit in {where}'s free RAM ({available / 2**20:,.0f} MiB MemAvailable): {parts} "
                         f"(weights at {plan.weights} + KV cache at context {ctx}, a lower bound); "
                         "try a smaller --context, --weights q4_0 or the -mini models")
    top = max(need, key=need.get)
    if need[top] > MEM_WARN_SHARE * available:
        return (f"warning: {top} needs at least {need[top] / 2**20:,.0f} MiB (weights + KV cache at context {ctx}) of "
                f"{where}'s {available / 2**20:,.0f} MiB free RAM: the phone may kill it or page its weights")
    return None


class Observer(Protocol):
    """Progress callbacks (the CLI draws them with rich; tests may ignore them)."""

    def stage(self, message: str) -> None: ...
    def total(self, n: int) -> None: ...
    def repetition(self, rep: Repetition, done: int) -> None: ...


class _Quiet:
    def stage(self, message: str) -> None:
        pass

    def total(self, n: int) -> None:
        pass

    def repetition(self, rep: Repetition, done: int) -> None:
        pass


@dataclass
class _Staged:
    model: ModelSpec
    model_path: str  # on the device
    tokenizer_path: str | None
    weights_path: str  # on the device, for page-cache control
    binary: str
    command: str = ""  # the registered binary's command template, if any
    #: the arguments with which the binary drops its weights from the page cache itself (a runner that
    #: also reports its own VmHWM and residency); empty: the device evicts them
    evict_args: list[str] = field(default_factory=list)

    @property
    def native(self) -> bool:
        return bool(self.evict_args)


class Session:
    def __init__(self, device: Device, store: Store, plan: Plan, artifacts_root: Path,
                 observer: Observer | None = None) -> None:
        self.device, self.store, self.plan = device, store, plan
        self.artifacts_root = Path(artifacts_root)
        self.obs = observer or _Quiet()
        self.adapter = rt.get_adapter(plan.runtime)
        self.cancel = threading.Event()
        self.meta: RunMeta | None = None
        self.kept = 0
        self.pushed_bytes = 0
        self.threads = plan.threads  # -1: the runtime's default (on this host devprof picks the runner's)

    # ------------------------------------------------------------------------------------
    def run(self) -> RunMeta:
        plan = self.plan
        plan.validate()
        info = self.device.info()
        if self.device.kind != "local":  # before anything is pushed or stored
            warn = check_memory(plan, self.device.mem_available_bytes(), info.serial or self.device.kind)
            if warn:
                click.echo(warn, err=True)
        meta = self._new_meta(info)
        run_id, run_dir = self._open_run(meta)
        try:
            self._measure(meta, run_id, run_dir)
        except KeyboardInterrupt:
            # Ctrl-C, or SIGTERM (a CI cancel), which the CLI turns into the same path: the
            # device backend has already stopped the runtime; what was measured stays stored.
            sig = stop_signal[0] if stop_signal else None
            self._finish(run_id, "interrupted", f"stopped by {signal_name(sig)}" if sig
                         else "stopped by the user (Ctrl-C)")
            err = Interrupted(f"interrupted{' by ' + signal_name(sig) if sig else ''}: kept {self.kept} "
                              f"finished repetition(s) in run {run_id}")
            if sig:
                err.exit_code = 128 + sig
            raise err from None
        except DeviceLost as e:
            self._finish(run_id, "lost", e.message)
            raise DeviceLost(f"{e.message}; kept {self.kept} finished repetition(s) in run {run_id}") from None
        except DevprofError as e:
            self._finish_quietly(run_id, "failed", e.message)
            err = type(e)(f"{e.message}; kept {self.kept} finished repetition(s) in run {run_id}")
            err.exit_code = e.exit_code  # e.g. a bad path's 2 (errors.path_error)
            raise err from None
        except OSError as e:  # the artifacts' disk filled up or went away: the store keeps what it has
            msg = f"cannot write the run's files under {run_dir}: {e.strerror or e}"
            self._finish_quietly(run_id, "failed", msg)
            raise DevprofError(f"{msg}; kept {self.kept} finished repetition(s) in run {run_id}") from None
        self._finish(run_id, "complete", "")
        return meta

    def _new_meta(self, info) -> RunMeta:
        """The run's description and settings, with this host's thread default and warning."""
        plan = self.plan
        from devprof import readiness

        self.ready_conds = readiness.parse(plan.ready if plan.ready is not None
                                           else readiness.default_spec(self.device.kind))
        meta = RunMeta(
            run_id="", created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            device=info, runtime=plan.runtime, models=[m.name for m in plan.models],
            baseline=plan.models[1].name if len(plan.models) > 1 else None,
            workloads=list(plan.workloads), contexts=list(plan.contexts),
            new_tokens=plan.new_tokens, warmup=plan.warmup, sample_ms=plan.sample_ms,
            reps=plan.adaptive.min_reps if plan.adaptive is not None else plan.reps,
            settings={**plan.settings, "devprof_version": __version__, "weights": plan.weights, "cache": plan.cache, "seed": plan.seed, "threads": plan.threads,
                      "cpu_mask": plan.cpu_mask, "timeout_s": plan.timeout_s,
                      **({"runtime_args": list(plan.runtime_args)} if plan.runtime_args else {}),
                      "ready": readiness.describe(self.ready_conds), "ready_timeout_s": plan.ready_timeout_s,
                      **({"reps": "auto"} if plan.adaptive is not None else {}),
                      "prompt_sources": wl.source_report()},
        )
        if plan.threads == -1 and self.adapter.picks_host_threads and self.device.kind == "local":
            self.threads, why = host_default_threads(plan.cpu_mask)
            meta.settings["threads_default"] = f"{self.threads} ({why})"
        if self.adapter.picks_host_threads and plan.threads > 0:
            ncpu = (self.device.cpu_snapshot() or {}).get("ncpu")
            if warn := threads_warning(plan.threads, ncpu, info.serial or self.device.kind):
                click.echo(warn, err=True)
                meta.settings["threads_warning"] = warn
        return meta

    def _open_run(self, meta: RunMeta) -> tuple[str, Path]:
        """Store the run and make its artifacts directory; announce the planned repetitions."""
        plan = self.plan
        run_id = self.store.create_run(meta)
        self.meta = meta
        run_dir = self.artifacts_root / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        self.store.update_run(run_id, artifacts_dir=str(run_dir))
        meta.artifacts_dir = str(run_dir)
        per_cell = plan.warmup + (plan.adaptive.min_reps if plan.adaptive is not None else plan.reps)
        self._planned = len(plan.models) * len(plan.workloads) * len(plan.contexts) * per_cell
        self.obs.total(self._planned)
        return run_id, run_dir

    def _measure(self, meta: RunMeta, run_id: str, run_dir: Path) -> None:
        """Stage the binary and models, open the energy meter, then every cell (and the soak)."""
        plan = self.plan
        binary = self._binary()
        staged = [self._stage_model(m, binary) for m in plan.models]
        setup = {"bytes_pushed": self.pushed_bytes,
                 "binary": binary.name if binary else self.adapter.host_command()}
        if binary is not None:
            setup["binary_info"] = {k: getattr(binary, k) for k in
                                    ("name", "sha256", "abi", "variant", "cpu_features", "source") if getattr(binary, k)}
        meta.settings.update(setup)
        from devprof.energy import Meter

        self.meter, meta.settings["energy"] = Meter.open(self.device, plan.energy, plan.energy_baseline_s,
                                                         plan.timeout_s + 60, lambda m: click.echo(m, err=True))
        self.store.update_run(run_id, settings=dict(meta.settings))
        for context in plan.contexts:
            for workload in plan.workloads:
                self._run_cell(run_id, run_dir, staged, workload, context)
        if plan.soak_min > 0:
            from devprof import soak

            soak.run(self, run_id, run_dir, staged[0])

    def _finish_quietly(self, run_id: str, status: str, note: str) -> None:
        """Mark the run ended while already reporting an error: a store that cannot take even
        that (its disk is full) must not replace the error the user needs to see."""
        try:
            self._finish(run_id, status, note)
        except DevprofError:
            pass

    def _finish(self, run_id: str, status: str, note: str) -> None:
        if status != "complete" and self.kept == 0:  # nothing measured: a failed run, never `latest`
            status, note = "failed", f"{note or status} (before its first measured repetition)"
        self.store.finish_run(run_id, status, note)
        if self.meta:
            self.meta.status, self.meta.note = status, note

    # ------------------------------------------------------------------------------------
    def _binary(self):
        """The runtime binary for this device: none for a runtime that runs on this host by itself,
        else the registered one for (runtime, platform, ABI), checked against its hash."""
        from devprof import bins

        plan, kind = self.plan, self.device.kind
        if kind == "local" and self.adapter.host_command() and not plan.binary_name:
            return None
        info = self.device.info()
        platform = "host" if kind == "local" else kind
        abi = str(info.extra.get("abi") or info.extra.get("machine") or "")
        flags = self.device.cpu_features() if self.adapter.needs_cpu_features else None
        try:
            b = bins.select(plan.runtime, platform, abi, name=plan.binary_name, cpu_flags=flags)
        except UsageError:
            if self.device.runtime_preinstalled and not plan.binary_name:
                return None
            raise
        b.verify()
        return b

    def _stage_model(self, spec: ModelSpec, binary) -> _Staged:
        plan = self.plan
        files: dict[str, Path] = {}
        if spec.name in plan.model_files:
            model_file, tok = plan.model_files[spec.name]
            files["model"] = Path(model_file)
            if tok:
                files["tokenizer"] = Path(tok)
            digest = hashlib.sha256(
                "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files.values()).encode()
            ).hexdigest()[:16]
            group = f"{spec.name}-{digest}"
        else:
            files, group = self.adapter.model_files(spec, plan.seed, plan.weights, self.obs.stage)
        if binary is not None:
            files["__binary__"] = binary.file()
        self.obs.stage(f"staging {spec.display} on {self.device.kind}")
        rep = self.device.stage(files, group)
        self.pushed_bytes += rep.bytes_pushed
        self.obs.stage(f"{spec.display}: pushed {rep.bytes_pushed / 2**20:.1f} MiB in {rep.seconds:.1f} s "
                       f"({rep.files_pushed} pushed, {rep.files_skipped} unchanged)"
                       if self.device.kind != "local" else f"{spec.display}: bundle ready")
        model_path, tok, weights = self.adapter.staged_paths(rep.paths, rep.remote_dir)
        return _Staged(model=spec, model_path=model_path, tokenizer_path=tok, weights_path=weights,
                       binary=rep.paths.get("__binary__", ""), command=binary.command if binary else "",
                       evict_args=self.adapter.native_evict(binary))

    def _stage_prompt(self, run_dir: Path, workload: str, context: int) -> tuple[wl.Prompt, dict[str, str]]:
        prompt = wl.build_prompt(workload, context, seed=self.plan.seed)
        pdir = run_dir / "prompts"
        pdir.mkdir(parents=True, exist_ok=True)
        stem = f"{workload.replace(':', '-')}-c{context}"
        ids_file = pdir / f"{stem}.ids"
        txt_file = pdir / f"{stem}.txt"
        ids_file.write_text("\n".join(map(str, prompt.token_ids)) + "\n")
        txt_file.write_text(prompt.text, encoding="utf-8")
        digest = hashlib.sha256(ids_file.read_bytes()).hexdigest()[:16]
        staged = self.device.stage({"prompt.ids": ids_file, "prompt.txt": txt_file}, f"prompt-{digest}")
        return prompt, staged.paths

    def _run_cell(self, run_id: str, run_dir: Path, staged: list[_Staged], workload: str, context: int) -> None:
        plan = self.plan
        self.obs.stage(f"{workload} prompt, {context} tokens")
        _, ppaths = self._stage_prompt(run_dir, workload, context)
        schedule = [(s, -(w + 1), True) for w in range(plan.warmup) for s in staged]
        if plan.adaptive is None:
            schedule += [(s, i, False) for i in range(plan.reps) for s in staged]
        for s, index, warm in schedule:
            self._rep(run_id, run_dir, s, workload, context, index, warm, ppaths)
        if plan.adaptive is not None:
            self._adaptive_rounds(run_id, run_dir, staged, workload, context, ppaths)

    def _rep(self, run_id: str, run_dir: Path, s: _Staged, workload: str, context: int, index: int, warm: bool,
             ppaths: dict[str, str]) -> Repetition:
        if self.cancel.is_set():  # SIGTERM (or a sibling phone's stop) between repetitions
            raise KeyboardInterrupt
        rep = self._one(run_dir, s, workload, context, index, warm, ppaths)
        self.store.add_repetition(run_id, rep)
        if not warm and rep.outcome.status == "ok":
            self.kept += 1
        self.obs.repetition(rep, self.kept)
        self._raise_for(rep)
        return rep

    def _adaptive_rounds(self, run_id: str, run_dir: Path, staged: list[_Staged], workload: str, context: int,
                         ppaths: dict[str, str]) -> None:
        """--reps auto: interleaved rounds until the speed ratios are known to ±target, or a cap."""
        import time

        from devprof import adaptive

        rule = self.plan.adaptive
        models = [s.model.name for s in staged]
        reps: list[Repetition] = []
        t0 = time.monotonic()
        rounds = 0
        while True:
            for s in staged:
                reps.append(self._rep(run_id, run_dir, s, workload, context, rounds, False, ppaths))
            rounds += 1
            why, w, what = adaptive.stop_reason(rule, rounds, time.monotonic() - t0, reps, models)
            if why is not None:
                break
            if rounds >= rule.min_reps:
                self._planned += len(staged)
                self.obs.total(self._planned)
        cell = {"workload": workload, "context": context, "rounds": rounds, "stopped": why,
                "widest_pct": None if w == float("inf") else round(w * 100, 2), "what": what,
                "seconds": round(time.monotonic() - t0, 1), **rule.to_dict()}
        self.obs.stage(adaptive.describe_cell(cell))
        ad = self.meta.settings.setdefault("adaptive", {**rule.to_dict(), "cells": []})
        ad["cells"].append(cell)
        self.store.update_run(run_id, settings=dict(self.meta.settings))

    def _one(self, run_dir: Path, s: _Staged, workload: str, context: int, index: int, warm: bool,
             ppaths: dict[str, str], label: str | None = None) -> Repetition:
        plan, dev = self.plan, self.device
        label = label or (f"warmup{-index}" if warm else f"rep{index}")
        rdir = run_dir / s.model.name / f"{workload.replace(':', '-')}-c{context}" / label
        rdir.mkdir(parents=True, exist_ok=True)
        trace_dev = dev.scratch_path(f"{s.model.name}-{workload.replace(':', '-')}-{context}-{label}.npz")
        inv = rt.Invocation(
            binary=s.binary, model_path=s.model_path, tokenizer_path=s.tokenizer_path,
            prompt_file=ppaths["prompt.txt"], max_new_tokens=plan.new_tokens, threads=self.threads,
            extra={"prompt_ids_file": ppaths["prompt.ids"], "routing_trace": trace_dev,
                   "extra_args": list(plan.runtime_args)},
        )
        argv = self._argv(s, inv)
        ready = self._settle()
        cache_state, cache_note = self._set_cache(s, argv)
        thermal_before = dev.thermal()
        freqs_before = dev.cpu_freqs()
        meter = getattr(self, "meter", None)  # the battery's idle baseline, then sampling through the run
        power = meter.start(self.cancel) if meter is not None and not warm else None
        cpu_before = dev.cpu_snapshot()
        outcome = dev.run(RunRequest(argv=argv, sample_ms=plan.sample_ms,
                                     timeout_s=plan.timeout_s, cpu_mask=plan.cpu_mask, cancel=self.cancel))
        gone = outcome.status == "lost"  # a device that stopped answering is not asked again
        cpu_after = None if gone else dev.cpu_snapshot()
        thermal_after = {} if gone else dev.thermal()
        freqs_after = {} if gone else dev.cpu_freqs()
        conditions = {"interference": {**interference.measure(cpu_before, cpu_after, outcome),
                                       **interference.thermal_figures(thermal_before, thermal_after,
                                                                      freqs_before, freqs_after)}}
        if ready is not None:
            conditions["ready"] = ready
        artifacts = _save_outputs(rdir, run_dir, outcome)
        result = self._parse(outcome)
        if result is not None and s.native:
            # the runner's own status at exit: the peak can no longer fall between two samples
            memory.fold_runner_exit(outcome, result.extra.get("runner_status_kb"))
        if result is not None and s.native and plan.cache == "cold":
            cache_state, cache_note = _cold_residency(result, cache_state, cache_note)
        energy = meter.finish(power, outcome, result) if power is not None else {}
        if result is not None:
            result.extra.setdefault("cpu_freq_mhz_before", freqs_before)
            result.extra.setdefault("cpu_freq_mhz_after", freqs_after)
            (rdir / "stats.json").write_text(json.dumps(result.to_dict(), indent=1))
            artifacts["stats"] = str((rdir / "stats.json").relative_to(run_dir))
        routing = self._routing(s, outcome, trace_dev, rdir, run_dir, artifacts)
        return Repetition(
            model=s.model.name, workload=workload, context=context, index=index, warmup=warm,
            result=result, outcome=outcome, cache_state=cache_state, cache_note=cache_note,
            routing=routing, thermal_before=thermal_before, thermal_after=thermal_after,
            artifacts=artifacts, conditions=conditions, energy=energy,
        )

    def _settle(self) -> dict | None:
        """Cool down and wait until the device is ready, as the plan asks; the readiness figures."""
        plan = self.plan
        if plan.cooldown_c is not None:
            self._cool_down(plan.cooldown_c, plan.cooldown_timeout_s)
        if not getattr(self, "ready_conds", None):
            return None
        from devprof import readiness

        return readiness.wait(self.device, self.ready_conds, plan.ready_timeout_s, cancel=self.cancel,
                              progress=self.obs.stage)

    def _set_cache(self, s: _Staged, argv: list[str]) -> tuple[str, str]:
        """Put the weights in the planned page-cache state (a native runner evicts them itself:
        its arguments are appended to argv); the state and how it was reached."""
        if self.plan.cache == "cold" and s.native:
            argv += s.evict_args
            return "cold", f"fadvise (the runner's {' '.join(s.evict_args)}, no root needed)"
        if self.plan.cache == "cold":
            return self.device.drop_page_cache(s.weights_path)
        return self.device.cache_state(s.weights_path)

    def _parse(self, outcome: ProcessOutcome):
        """The runtime's figures of a finished run; a parse error marks the outcome failed."""
        if outcome.status != "ok":
            return None
        try:
            return self.adapter.parse(outcome.stdout, outcome.stderr)
        except ParseError as e:
            outcome.status, outcome.note = "failed", e.message
            return None

    def _routing(self, s: _Staged, outcome: ProcessOutcome, trace_dev: str, rdir: Path, run_dir: Path,
                 artifacts: dict[str, str]):
        """Pull and summarize an MoE model's routing trace, then remove it from the device."""
        routing = None
        if s.model.is_moe and outcome.status == "ok":
            local_trace = rdir / "routing.npz"
            if self.device.pull(trace_dev, local_trace):
                from devprof.routing import summarize

                routing = summarize(local_trace)
                artifacts["routing"] = str(local_trace.relative_to(run_dir))
        if s.model.is_moe and outcome.status != "lost":
            self.device.discard(trace_dev)  # pulled or not, the trace does not pile up on the device
        return routing

    def _argv(self, s: _Staged, inv: rt.Invocation) -> list[str]:
        if not s.command:
            return self.adapter.argv(inv)
        from devprof.bins import Binary

        values = {"binary": s.binary, "model": s.model_path, "tokenizer": s.tokenizer_path or "",
                  "prompt_file": inv.prompt_file, "prompt_ids_file": inv.extra.get("prompt_ids_file", ""),
                  "max_new_tokens": inv.max_new_tokens, "threads": inv.threads,
                  "routing_trace": inv.extra.get("routing_trace", "")}
        # --runtime-arg values go after the template's own arguments, as the adapters append them
        return Binary("", "", "", "", "", "", command=s.command).argv(values) + list(inv.extra.get("extra_args") or [])

    def _cool_down(self, limit_c: float, timeout_s: float) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            zones = self.device.thermal()
            hottest = max(zones.values()) if zones else None
            if hottest is None or hottest < limit_c:
                return
            if time.monotonic() > deadline:
                self.obs.stage(f"still {hottest:.1f} C after {timeout_s:g} s of cool-down; going on")
                return
            self.obs.stage(f"cooling down: hottest zone {hottest:.1f} C >= {limit_c:g} C")
            if self.cancel.wait(5.0):
                raise KeyboardInterrupt

    def _raise_for(self, rep: Repetition) -> None:
        o = rep.outcome
        where = f"{rep.model} on {rep.workload} at {rep.context} tokens"
        if o.status == "ok":
            return
        if o.status == "interrupted":
            raise KeyboardInterrupt
        if o.status == "lost":
            raise DeviceLost(f"device lost while running {where}: {o.note}")
        if o.status == "oom":
            raise RuntimeFailed(f"{where} was killed for memory (OOM): {o.note}")
        last = _last_line(o.stderr) or _last_line(o.stdout) or o.note
        if o.status == "timeout":  # the note's first clause; the rest (how the peak was read) stays stored
            raise RuntimeFailed(f"{where}: {o.note.split(';')[0]}")
        if o.exit_code is not None and o.exit_code < 0:  # died by a signal: name it and what to try
            sig = -o.exit_code
            raise RuntimeFailed(f"runtime {killed_by(sig)} on {where}: {signal_hint(sig, self.plan.runtime)}")
        if o.exit_code not in (0, None):
            raise RuntimeFailed(f"runtime exited with code {o.exit_code} on {where}: {last}")
        raise RuntimeFailed(f"runtime printed no usable stats on {where}: {o.note}")


def _save_outputs(rdir: Path, run_dir: Path, outcome: ProcessOutcome) -> dict[str, str]:
    (rdir / "stdout.txt").write_text(outcome.stdout, encoding="utf-8")
    (rdir / "stderr.txt").write_text(outcome.stderr, encoding="utf-8")
    return {"stdout": str((rdir / "stdout.txt").relative_to(run_dir)),
            "stderr": str((rdir / "stderr.txt").relative_to(run_dir))}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _cold_residency(result, cache_state: str, cache_note: str) -> tuple[str, str]:
    """A cold run's weights residency before load (the runner's mincore), added to the note; a run
    whose pages mostly stayed resident (mapped by another process) was warm."""
    before = next((r for r in result.extra.get("residency", []) if r.get("stage") == "before_load"), None)
    if before and before.get("resident_kb") is not None:
        cache_note += f"; {before['resident_kb']} of {before['file_kb']} kB resident before load (mincore)"
        if before["file_kb"] and before["resident_kb"] > 0.5 * before["file_kb"]:
            cache_state = "warm"  # pages mapped by another process cannot be dropped
    return cache_state, cache_note
