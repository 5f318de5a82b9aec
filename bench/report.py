"""Turn a session's raw results into the summary, the target verdicts, the table and the plot.

``summarize`` takes the median over rounds of each (configuration, kind,
concurrency) cell, and the median over rounds of each *paired* difference between
a gateway run and the direct run measured right next to it. ``targets`` checks the
issue's targets against those figures and says plainly which ones are missed.
``markdown`` and ``plot`` write ``results.md`` and ``results.png``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

FIGURES = (
    "p50_ms",
    "p99_ms",
    "ttfd_p50_ms",
    "ttfd_p99_ms",
    "rps",
    "deltas_per_s",
    "cpu_server_ms",
    "cpu_llm_ms",
    "cpu_vault_ms",
    "cpu_fake_ms",
    "loadgen_core_pct",
    "errors",
)
TARGET_CONCURRENCY_LATENCY = 1
TARGET_CONCURRENCY_CPU = 64
NA = "-"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per cell, paired overheads, and the per-service CPU split."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in results["runs"]:
        cells[(row["config"], row["kind"], row["concurrency"])].append(row)
    table = []
    for (config, kind, concurrency), rows in sorted(
        cells.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])
    ):
        cell: dict[str, Any] = {
            "config": config,
            "kind": kind,
            "concurrency": concurrency,
            "rounds": len(rows),
        }
        for name in FIGURES:
            values = [float(r[name]) for r in rows if name in r]
            cell[name] = _median(values) if values else None
        cell["rss_mb"] = max((max(r["rss_mb"].values(), default=0.0) for r in rows), default=0.0)
        direct = {r["round"]: r for r in cells.get(("direct", kind, concurrency), [])}
        if config != "direct":
            paired = [r for r in rows if r["round"] in direct]
            cell["added_p50_ms"] = _median([r["p50_ms"] - direct[r["round"]]["p50_ms"] for r in paired])
            cell["added_ttfd_p50_ms"] = _median(
                [r["ttfd_p50_ms"] - direct[r["round"]]["ttfd_p50_ms"] for r in paired]
            )
            cell["rps_ratio"] = _median(
                [r["rps"] / direct[r["round"]]["rps"] for r in paired if direct[r["round"]]["rps"]]
            )
        table.append(cell)
    scaling: dict[tuple[bool, int], list[dict[str, Any]]] = defaultdict(list)
    for row in results.get("scaling", []):
        scaling[(bool(row.get("cached")), int(row["workers"]))].append(row)
    scaled = [
        {
            "cache": "on" if cached else "off",
            "workers": workers,
            "rps": _median([r["rps"] for r in rows]),
            "p50_ms": _median([r["p50_ms"] for r in rows]),
            "cpu_server_ms": _median([r["cpu_server_ms"] for r in rows]),
            "errors": sum(int(r["errors"]) for r in rows),
        }
        for (cached, workers), rows in sorted(scaling.items())
    ]
    return {"cells": table, "scaling": scaled}


def _cell(summary: dict[str, Any], config: str, kind: str, concurrency: int) -> dict[str, Any] | None:
    for cell in summary["cells"]:
        if (cell["config"], cell["kind"], cell["concurrency"]) == (config, kind, concurrency):
            return dict(cell)
    return None


def _verdict(
    name: str, value: float | None, limit: float, unit: str, *, at_most: bool = True, note: str = ""
) -> dict[str, Any]:
    if value is None:
        return {
            "target": name,
            "value": None,
            "limit": limit,
            "unit": unit,
            "met": False,
            "note": "not measured in this plan",
        }
    met = value <= limit if at_most else value >= limit
    return {"target": name, "value": round(value, 4), "limit": limit, "unit": unit, "met": met, "note": note}


def targets(results: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 6 with the measured value and whether it is met."""
    low = (
        TARGET_CONCURRENCY_LATENCY
        if TARGET_CONCURRENCY_LATENCY in results["plan_sizes"]["concurrency"]
        else min(results["plan_sizes"]["concurrency"])
    )
    high = (
        TARGET_CONCURRENCY_CPU
        if TARGET_CONCURRENCY_CPU in results["plan_sizes"]["concurrency"]
        else max(results["plan_sizes"]["concurrency"])
    )
    chat = _cell(summary, "gateway", "chat", low) or {}
    stream = _cell(summary, "gateway", "stream", low) or {}
    cpu = _cell(summary, "gateway", "chat", high) or {}
    cpu_cached = _cell(summary, "gateway_cached", "chat", high) or {}
    out = [
        _verdict(
            f"Chat adds at most 1.0 ms at p50 (c={low}, vs direct)", chat.get("added_p50_ms"), 1.0, "ms"
        ),
        _verdict(
            f"StreamChat adds at most 1.0 ms to time to first delta (c={low})",
            stream.get("added_ttfd_p50_ms"),
            1.0,
            "ms",
        ),
        _verdict(
            f"server CPU per Chat, both services, cache off (c={high})", cpu.get("cpu_server_ms"), 1.0, "ms"
        ),
        _verdict(
            f"server CPU per Chat, both services, cache on (c={high})",
            cpu_cached.get("cpu_server_ms"),
            0.5,
            "ms",
        ),
    ]
    candidates = [
        (f"1 worker, cache {'on' if name == 'gateway_cached' else 'off'}", float(cell.get("rps") or 0.0))
        for name in ("gateway", "gateway_cached")
        if (cell := _cell(summary, name, "chat", high))
    ]
    candidates += [
        (f"{s['workers']} workers, cache {s['cache']}", float(s["rps"]))
        for s in summary["scaling"]
        if s["workers"] > 1
    ]
    best_name, best = max(candidates, key=lambda c: c[1], default=("none", 0.0))
    out.append(
        _verdict(
            f"Chat/s at c={high}, best configuration",
            best,
            1500.0,
            "/s",
            at_most=False,
            note=f"{best_name}; " + ", ".join(f"{n} {v:.0f}/s" for n, v in candidates),
        )
    )
    idle = results.get("idle_rss_mb", {})
    for name, value in sorted(idle.items()):
        out.append(_verdict(f"idle RSS of {name} (after warm-up)", value, 80.0, "MB"))
    soak = results.get("soak", {})
    for name in ("llm", "vault"):
        out.append(
            _verdict(
                f"RSS growth of {name} over the soak ({soak.get('requests', 0)} Chats)",
                soak.get(f"{name}_growth_pct"),
                10.0,
                "%",
            )
        )
    streams = results.get("streams", {})
    dropped = streams.get("target", 0) - streams.get("completed_ok", 0) if streams else None
    out.append(
        _verdict(
            f"open streams dropped ({streams.get('target', 0)} at once, one LLM process)",
            dropped,
            0.0,
            "streams",
        )
    )
    peak = streams.get("peak_open")
    out.append(
        _verdict(
            "streams open at the same time", peak, float(streams.get("target", 0)), "streams", at_most=False
        )
    )
    out.append(_verdict("memory per open stream", streams.get("kb_per_stream"), 20.0, "KB"))
    return out


def hop_costs(results: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, float, str]]:
    """CPU microseconds per Chat for each hop: measured in-process, or derived from process CPU.

    The process figures are the Chat runs at concurrency 16 (or the nearest measured).
    """
    hops = results.get("hops")
    if not hops:
        return []
    levels = sorted(results["plan_sizes"]["concurrency"], key=lambda c: abs(c - 16))
    level = levels[0]
    off = _cell(summary, "gateway", "chat", level) or {}
    on = _cell(summary, "gateway_cached", "chat", level) or {}
    llm_off = float(off.get("cpu_llm_ms") or 0) * 1e3
    llm_on = float(on.get("cpu_llm_ms") or 0) * 1e3
    vault_total = float(off.get("cpu_vault_ms") or 0) * 1e3
    resolve = hops["vault_resolve_total"]
    lookup, decrypt, token_hash = hops["vault_db_lookup"], hops["vault_decrypt"], hops["vault_token_hash"]
    adapter, json_sse = hops["llm_adapter_call"], hops["llm_json_sse"]
    grpc_in_out = llm_on - adapter - hops["llm_protobuf"] - hops["llm_validation"]
    measured, derived = "in-process, measured", f"derived from process CPU at c={level}"
    return [
        ("LLM service, whole Chat, credentials cache on", llm_on, f"process CPU at c={level}"),
        ("LLM service, whole Chat, cache off", llm_off, f"process CPU at c={level}"),
        ("gRPC in and out, servicer, interceptor, event loop (LLM)", grpc_in_out, derived),
        ("protobuf: parse ChatRequest, build and serialise ChatResponse", hops["llm_protobuf"], measured),
        ("request validation", hops["llm_validation"], measured),
        ("provider HTTP call (aiohttp, warm connection)", adapter - json_sse, "in-process, measured"),
        ("JSON and SSE (request body, decode and parse the stream)", json_sse, measured),
        ("vault round trip, LLM side (gRPC client call)", llm_off - llm_on, derived),
        ("vault process per ResolveCredentials", vault_total, f"process CPU at c={level}"),
        ("vault gRPC in and out, auth, thread hop", vault_total - resolve, derived),
        ("vault database lookup (the resolve SELECT)", lookup, measured),
        ("vault token hash (SHA-256)", token_hash, measured),
        ("vault decryption (AES-256-GCM)", decrypt, measured),
        (
            "vault usage count, audit row and commit (fsync)",
            resolve - lookup - decrypt - token_hash,
            measured,
        ),
    ]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return NA
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any], summary: dict[str, Any], verdicts: list[dict[str, Any]]) -> str:
    """``results.md``: the targets, the latency/throughput table, soak, streams and scaling."""
    env = results["environment"]
    lines = [
        "# Benchmark results",
        "",
        f"Plan `{results['plan']}`, {env['time_utc']}, {env['cores']} cores ({env['cpu']}), "
        f"Python {env['python']}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}; {results['duration_s']:.0f} s in all. "
        "Produced by `python -m bench`; raw numbers in `results.json`.",
        "",
        "**direct**: the load generator calls the fake provider over HTTP (the gateway's own request). "
        "**gateway**: client → LLM service → vault → fake provider, one process each. "
        "**gateway_cached**: the same with `RMLLM_CREDENTIAL_CACHE_SECONDS=5`. Configurations alternate "
        "run by run; each figure is the median over rounds, and *added* is the median of the paired "
        "differences to the direct run measured next to it. CPU is user+system time of the LLM service "
        "and the vault from `/proc`, per request.",
        "",
        "## Targets",
        "",
        "| target | measured | limit | verdict |",
        "|---|---:|---:|---|",
    ]
    for v in verdicts:
        verdict = "met" if v["met"] else "**MISSED**"
        note = f" ({v['note']})" if v.get("note") else ""
        lines.append(
            f"| {v['target']}{note} | {_fmt(v['value'], 3)} {v['unit']} | {v['limit']:g} {v['unit']} "
            f"| {verdict} |"
        )
    lines += [
        "",
        "## Latency, throughput and CPU",
        "",
        "| kind | c | config | p50 ms | p99 ms | added p50 ms | first delta p50 ms | added first delta ms "
        "| req/s | deltas/s | CPU ms/req (LLM + vault) | fake CPU ms/req | load gen % of a core | RSS MB "
        "| errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in summary["cells"]:
        cpu = (
            f"{_fmt(c['cpu_server_ms'], 3)} "
            f"({_fmt(c.get('cpu_llm_ms'), 3)} + {_fmt(c.get('cpu_vault_ms'), 3)})"
            if c["config"] != "direct"
            else NA
        )
        lines.append(
            f"| {c['kind']} | {c['concurrency']} | {c['config']} | {_fmt(c['p50_ms'])} | {_fmt(c['p99_ms'])} "
            f"| {_fmt(c.get('added_p50_ms'))} | {_fmt(c['ttfd_p50_ms'])} "
            f"| {_fmt(c.get('added_ttfd_p50_ms'))} "
            f"| {_fmt(c['rps'], 0)} | {_fmt(c['deltas_per_s'], 0) if c['kind'] == 'stream' else NA} | {cpu} "
            f"| {_fmt(c['cpu_fake_ms'], 3)} | {_fmt(c['loadgen_core_pct'], 0)} "
            f"| {_fmt(c['rss_mb'], 1) if c['config'] != 'direct' else NA} "
            f"| {_fmt(c['errors'], 0)} |"
        )
    soak = results.get("soak", {})
    if soak:
        samples = soak["samples"]
        lines += [
            "",
            "## Soak",
            "",
            f"{soak['requests']} Chats ({soak['errors']} errors) in {soak['seconds']:.0f} s. RSS of the LLM "
            f"service {samples[0]['llm_mb']:.1f} → {samples[-1]['llm_mb']:.1f} MB "
            f"({soak['llm_growth_pct']:+.1f}%), of the vault {samples[0]['vault_mb']:.1f} → "
            f"{samples[-1]['vault_mb']:.1f} MB ({soak['vault_growth_pct']:+.1f}%).",
        ]
    streams = results.get("streams", {})
    if streams:
        lines += [
            "",
            "## Many open streams",
            "",
            f"{streams['target']} StreamChat calls started at once against the slow fake (each answer "
            f"lasts {streams['stream_seconds']:g} s), one LLM process (credentials cache on): "
            f"{streams['opened']} had their first delta, at most {streams['peak_open']} were open "
            f"at the same time ({streams['peak_after_s']:.1f} s in); "
            f"{streams['completed_ok']} ended with their final message and OK, "
            f"{streams['errors']} failed {streams['error_kinds'] or ''}. RSS "
            f"{streams['rss_before_mb']:.1f} MB before, {streams['rss_at_peak_mb']:.1f} MB at the peak "
            f"(max {streams['rss_max_mb']:.1f} MB): {streams['kb_per_stream']:.1f} KB per open stream, "
            f"{streams['llm_fds_at_peak']} file descriptors open. CPU (LLM + vault) "
            f"{streams['cpu_ms_per_stream']:.2f} ms per stream.",
        ]
    if summary["scaling"]:
        lines += [
            "",
            "## Workers (SO_REUSEPORT)",
            "",
            "| credentials cache | LLM workers | Chat/s | p50 ms | CPU ms/req (LLM + vault) | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in summary["scaling"]:
            lines.append(
                f"| {s['cache']} | {s['workers']} | {s['rps']:.0f} | {s['p50_ms']:.2f} "
                f"| {s['cpu_server_ms']:.3f} | {s['errors']} |"
            )
        lines.append("")
        lines.append(
            "The vault, the fake provider and the load generator share the same cores, so the second "
            "worker competes with them; see `docs/PERFORMANCE.md`."
        )
    costs = hop_costs(results, summary)
    if costs:
        lines += [
            "",
            "## Where the CPU of a Chat goes",
            "",
            "| hop | µs of CPU | how |",
            "|---|---:|---|",
        ]
        lines += [f"| {name} | {value:.0f} | {how} |" for name, value, how in costs]
        wall = results["hops"]["vault_resolve_wall_ms"]
        lines.append("")
        lines.append(f"A resolve takes {wall:.2f} ms of wall time in-process: its commit waits for the disk.")
    lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """``results.png``: p50 and p99 latency against concurrency, gateway next to direct."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"direct": ("black", "o"), "gateway": ("tab:blue", "s"), "gateway_cached": ("tab:green", "^")}
    for ax, kind, field, title in (
        (axes[0], "chat", "p50_ms", "Chat latency"),
        (axes[1], "stream", "ttfd_p50_ms", "StreamChat time to first delta"),
    ):
        for config, (color, marker) in styles.items():
            cells = sorted(
                (c for c in summary["cells"] if c["config"] == config and c["kind"] == kind),
                key=lambda c: c["concurrency"],
            )
            if not cells:
                continue
            xs = [c["concurrency"] for c in cells]
            p99 = "p99_ms" if field == "p50_ms" else "ttfd_p99_ms"
            ax.plot(xs, [c[field] for c in cells], color=color, marker=marker, label=f"{config} p50")
            ax.plot(
                xs,
                [c[p99] for c in cells],
                color=color,
                marker=marker,
                linestyle="--",
                alpha=0.5,
                label=f"{config} p99",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
