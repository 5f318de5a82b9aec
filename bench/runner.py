"""One benchmark session: start the stack, run every measurement, return the raw results.

Configurations alternate within each round (``direct``, ``gateway``,
``gateway_cached``, then again), at each concurrency, for Chat and StreamChat, so
drift on a shared machine hits all of them alike. Around each run the CPU time of
the server processes is read from ``/proc`` (the vault and the LLM service of that
configuration; the fake provider's separately) and their RSS afterwards. Then come
the soak (RSS growth over many Chats), the many-open-streams run against a slow
fake, and the 1-versus-2-worker scaling of the LLM service.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstat
from bench.plan import Plan
from bench.stack import ROOT, Proc, Stack, raise_fd_limit
from rmllm_common.registry import default_registry

log = logging.getLogger("bench")
CONFIGS = ("direct", "gateway", "gateway_cached")
KINDS = ("chat", "stream")
MB = 1024 * 1024


class LoadGen:
    """The load-generator process (``bench.loadgen``), one job at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        first = self._line()
        if first.get("event") != "ready":
            raise RuntimeError(f"load generator did not start: {first}")

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({self.proc.wait()})")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def run(
        self, job: dict[str, Any], on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Send one job; return its result (``on_event`` gets the lines before it)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self._line()
            if line.get("event") == "result":
                return line
            if on_event is not None:
                on_event(line)

    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def channels_for(concurrency: int) -> int:
    """Client connections for a concurrency: one per 32 calls in flight, 1 to 8."""
    return max(1, min(8, concurrency // 32))


@dataclass
class Target:
    """A configuration under test: what the load generator calls, and whose CPU counts."""

    name: str
    job: dict[str, Any]
    services: dict[str, list[int]]  # service name -> pids (CPU and RSS are read from these)


class Session:
    """The stack, the load generator and the results of one run of ``python -m bench``."""

    def __init__(self, plan: Plan, data_dir: Path, say: Callable[[str], None]) -> None:
        self.plan = plan
        self.say = say
        self.stack = Stack(data_dir)
        self.gen: LoadGen | None = None
        self.targets: dict[str, Target] = {}
        self.fake: Proc | None = None
        self.results: dict[str, Any] = {}

    # -- set-up -----------------------------------------------------------------------------------
    def start(self) -> None:
        plan, stack = self.plan, self.stack
        self.say("starting the fake providers, the vault and two LLM services")
        fake = self.fake = stack.start_fake("fake")
        slow = stack.start_fake(
            "slow-fake",
            "--default",
            "slow",
            "--slow-delay",
            f"{plan.stream_delay:g}",
            "--slow-pieces",
            str(plan.stream_pieces),
        )
        vault = stack.start_vault()
        token = stack.create_user()
        api_key = "sk-bench" + secrets.token_hex(16)
        stack.put_key("openai", api_key, f"http://{fake.address}/v1")
        stack.put_key("openrouter", "sk-or-bench" + secrets.token_hex(16), f"http://{slow.address}/api/v1")
        llm = stack.start_llm("llm")
        cached = stack.start_llm("llm-cached", cache_seconds=5)
        self.results["rss_at_start_mb"] = {
            "llm": procstat.rss_bytes(llm.pid) / MB,
            "vault": procstat.rss_bytes(vault.pid) / MB,
        }
        spec = default_registry().resolve("openai")
        grpc_job = {"token": token, "provider": "openai"}
        self.targets = {
            "direct": Target(
                "direct",
                {
                    "kind": "direct",
                    "url": f"http://{fake.address}/v1/chat/completions",
                    "api_key": api_key,
                    "model": spec.default_model,
                },
                {},
            ),
            "gateway": Target(
                "gateway", {**grpc_job, "address": llm.address}, {"llm": [llm.pid], "vault": [vault.pid]}
            ),
            "gateway_cached": Target(
                "gateway_cached",
                {**grpc_job, "address": cached.address},
                {"llm": [cached.pid], "vault": [vault.pid]},
            ),
        }
        self.llm, self.vault, self.slow = llm, vault, slow
        self.gen = LoadGen()

    def stop(self) -> None:
        if self.gen is not None:
            self.gen.close()
        self.stack.stop()

    # -- one measured run -------------------------------------------------------------------------
    def measure(self, target: Target, kind: str, concurrency: int, **extra: Any) -> dict[str, Any]:
        """Run one bounded job against ``target``; add server CPU per request and RSS."""
        assert self.gen is not None and self.fake is not None
        job = {
            "kind": kind if target.name != "direct" else "direct",
            "concurrency": concurrency,
            "requests": self.plan.run_requests,
            "seconds": self.plan.run_seconds,
            "channels": channels_for(concurrency),
            **target.job,
            **extra,
        }
        pids = {name: list(p) for name, p in target.services.items()}
        before = {name: procstat.cpu_seconds(p) for name, p in pids.items()}
        fake_before = procstat.cpu_seconds([self.fake.pid])
        gen_before = procstat.cpu_seconds([self.gen.pid()])
        result = self.gen.run(job)
        after = {name: procstat.cpu_seconds(p) for name, p in pids.items()}
        fake_after = procstat.cpu_seconds([self.fake.pid])
        gen_after = procstat.cpu_seconds([self.gen.pid()])
        ok = max(1, int(result["ok"]))
        cpu = {f"cpu_{name}_ms": (after[name] - before[name]) * 1e3 / ok for name in pids}
        row = {
            "config": target.name,
            "kind": kind,
            "concurrency": concurrency,
            **{k: v for k, v in result.items() if k != "event"},
            **cpu,
            "cpu_server_ms": sum(cpu.values()),
            "cpu_fake_ms": (fake_after - fake_before) * 1e3 / ok,
            # The load generator's share of one core: near 100 % it would be the bottleneck.
            "loadgen_core_pct": 100 * (gen_after - gen_before) / max(1e-9, float(result["elapsed_s"])),
            "rss_mb": {name: procstat.total_rss_bytes(p) / MB for name, p in pids.items()},
        }
        return row

    # -- the phases -------------------------------------------------------------------------------
    def warm_up(self) -> None:
        plan = self.plan
        self.say("warming up every configuration")
        for target in self.targets.values():
            for kind in KINDS:
                self.measure(target, kind, 16, requests=plan.warmup_requests, seconds=10.0)
        time.sleep(0.5)
        self.results["idle_rss_mb"] = {
            "llm": procstat.rss_bytes(self.llm.pid) / MB,
            "llm_cached": procstat.rss_bytes(self.targets["gateway_cached"].services["llm"][0]) / MB,
            "vault": procstat.rss_bytes(self.vault.pid) / MB,
        }

    def alternate(self) -> None:
        plan = self.plan
        runs: list[dict[str, Any]] = []
        for round_no in range(plan.rounds):
            for concurrency in plan.concurrency:
                for kind in KINDS:
                    for name in CONFIGS:
                        row = self.measure(self.targets[name], kind, concurrency)
                        row["round"] = round_no
                        runs.append(row)
                        self.say(
                            f"round {round_no} c={concurrency:<3} {kind:<6} {name:<14} "
                            f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                            f"{row['rps']:7.0f}/s  cpu {row['cpu_server_ms']:.3f} ms/req  "
                            f"errors {row['errors']}"
                        )
        self.results["runs"] = runs

    def soak(self) -> None:
        plan = self.plan
        self.say(f"soak: {plan.soak_requests} Chats at concurrency {plan.soak_concurrency}")
        target = self.targets["gateway"]
        steps = 10
        samples = [
            {
                "requests": 0,
                "llm_mb": procstat.rss_bytes(self.llm.pid) / MB,
                "vault_mb": procstat.rss_bytes(self.vault.pid) / MB,
            }
        ]
        done = errors = 0
        started = time.monotonic()
        for _ in range(steps):
            row = self.measure(
                target,
                "chat",
                plan.soak_concurrency,
                requests=plan.soak_requests // steps,
                seconds=plan.soak_seconds / steps,
            )
            done += int(row["ok"])
            errors += int(row["errors"])
            samples.append(
                {
                    "requests": done,
                    "llm_mb": procstat.rss_bytes(self.llm.pid) / MB,
                    "vault_mb": procstat.rss_bytes(self.vault.pid) / MB,
                }
            )
        first, last = samples[0], samples[-1]
        self.results["soak"] = {
            "requests": done,
            "errors": errors,
            "seconds": time.monotonic() - started,
            "samples": samples,
            "llm_growth_pct": 100 * (last["llm_mb"] - first["llm_mb"]) / first["llm_mb"],
            "vault_growth_pct": 100 * (last["vault_mb"] - first["vault_mb"]) / first["vault_mb"],
        }

    def open_streams(self) -> None:
        """Many StreamChats at once against the slow fake, in the cache-on LLM process.

        The cache keeps the vault out of the way of the burst (one resolve, not
        thousands); every stream still crosses the LLM service. RSS and open file
        descriptors are sampled twice a second; memory per stream is taken at the
        moment the most streams were open.
        """
        plan = self.plan
        assert self.gen is not None
        self.say(f"holding {plan.streams} streams open against the slow fake in one LLM process")
        target = self.targets["gateway_cached"]
        pid = target.services["llm"][0]
        before = procstat.rss_bytes(pid)
        peak: dict[str, Any] = {"open_now": 0, "rss": before, "fds": 0, "after_s": 0.0}
        max_rss = before

        def on_event(event: dict[str, Any]) -> None:
            nonlocal max_rss
            rss = procstat.rss_bytes(pid)
            max_rss = max(max_rss, rss)
            if event.get("event") == "progress" and int(event["open_now"]) > int(peak["open_now"]):
                peak.update(
                    open_now=int(event["open_now"]),
                    rss=rss,
                    fds=len(os.listdir(f"/proc/{pid}/fd")),
                    after_s=float(event["after_s"]),
                )

        cpu_before = procstat.cpu_seconds([pid, self.vault.pid])
        result = self.gen.run(
            {
                **target.job,
                "kind": "hold",
                "provider": "openrouter",
                "concurrency": plan.streams,
                "seconds": plan.streams_seconds,
                "timeout": plan.streams_seconds,
                "channels": max(1, min(64, plan.streams // 100)),
            },
            on_event,
        )
        cpu_after = procstat.cpu_seconds([pid, self.vault.pid])
        peak_open = int(peak["open_now"])
        self.results["streams"] = {
            "target": plan.streams,
            "stream_seconds": plan.stream_pieces * plan.stream_delay,
            "opened": int(result["opened"]),
            "peak_open": peak_open,
            "peak_after_s": float(peak["after_s"]),
            "completed_ok": int(result["ok"]),
            "errors": int(result["errors"]),
            "error_kinds": result["error_kinds"],
            "error_samples": result["error_samples"],
            "rss_before_mb": before / MB,
            "rss_at_peak_mb": int(peak["rss"]) / MB,
            "rss_max_mb": max_rss / MB,
            "kb_per_stream": (int(peak["rss"]) - before) / 1024 / max(1, peak_open),
            "llm_fds_at_peak": int(peak["fds"]),
            "deltas": int(result["deltas"]),
            "cpu_ms_per_stream": (cpu_after - cpu_before) * 1e3 / max(1, int(result["ok"])),
        }

    def scaling(self) -> None:
        """Chat at one concurrency through 1 and 2 LLM workers, with the cache off and on, alternating."""
        plan = self.plan
        self.say("scaling: the LLM service with 1 and with 2 worker processes (Chat, cache off and on)")
        pairs = {
            0.0: self.stack.start_llm("llm-2-workers", workers=2),
            5.0: self.stack.start_llm("llm-2-workers-cached", workers=2, cache_seconds=5),
        }
        channels = 16
        setups: list[tuple[bool, int, Target]] = []
        for cache, name in ((0.0, "gateway"), (5.0, "gateway_cached")):
            one = self.targets[name]
            pair = pairs[cache]
            two = Target(
                f"{name}_2_workers",
                {**one.job, "address": pair.address},
                {"llm": [pair.pid], "vault": [self.vault.pid]},  # the supervisor; its workers are counted
            )
            self.measure(
                two, "chat", plan.scaling_concurrency, requests=plan.warmup_requests, channels=channels
            )
            setups += [(cache > 0, 1, one), (cache > 0, 2, two)]
        rows = []
        try:
            for round_no in range(plan.scaling_rounds):
                for cached, workers, target in setups:
                    row = self.measure(
                        target,
                        "chat",
                        plan.scaling_concurrency,
                        seconds=plan.scaling_seconds,
                        channels=channels,
                    )
                    row.update(round=round_no, workers=workers, cached=cached)
                    rows.append(row)
                    self.say(
                        f"scaling {workers} worker(s), cache {'on' if cached else 'off'}: "
                        f"{row['rps']:.0f} Chat/s, p50 {row['p50_ms']:.2f} ms"
                    )
        finally:
            for pair in pairs.values():
                self.stack.stop_proc(pair)
        self.results["scaling"] = rows

    def hops(self) -> None:
        """The in-process per-hop CPU figures (``bench.hops``), against the fast fake."""
        assert self.fake is not None
        self.say("timing each hop in-process (bench.hops)")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.hops",
                "--fake",
                self.fake.address,
                "--repeat",
                str(self.plan.hops_repeat),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        self.results["hops"] = json.loads(done.stdout.strip().splitlines()[-1])


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "loadavg_at_start": load,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_session(plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement of ``plan``; the raw results (see ``bench.report`` for the summary)."""
    raise_fd_limit()
    started = time.monotonic()
    results: dict[str, Any] = {"plan": plan.name, "environment": environment()}
    with tempfile.TemporaryDirectory(prefix="rmllm-bench-") as tmp:
        session = Session(plan, Path(tmp), say)
        try:
            session.start()
            session.warm_up()
            session.alternate()
            session.soak()
            session.open_streams()
            session.scaling()
            session.hops()
        finally:
            session.stop()
    results.update(session.results)
    results["plan_sizes"] = {k: v for k, v in vars(plan).items() if k != "name"}
    results["duration_s"] = time.monotonic() - started
    return results
