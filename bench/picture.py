"""``python -m bench.picture OUT.png``: the README's picture of the metrics, from a real Prometheus.

It starts the test stack (fake provider, vault, LLM service with two workers, both
services with ``--metrics-listen``), Debian's ``prometheus`` scraping both every
second, and a few client threads making calls for about a minute: mostly answers
streamed with a random delay between pieces, some refused keys, provider outages
in the second half, and for twenty seconds a second user far past our own rate
limit. Then it asks Prometheus's HTTP API for three
range queries and draws them with matplotlib: calls per second by code and reason,
time to first token p50 and p95, and tokens per second by type.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench.stack import ROOT

SECONDS = 75.0
QUERIES = {
    "Calls per second by code and reason": (
        'sum by (code, reason) (rate(rmllm_llm_requests_total{method="StreamChat"}[15s]))',
        "{code} {reason}",
    ),
    "Time to first token (seconds)": (
        "histogram_quantile({q}, sum by (le) (rate(rmllm_llm_time_to_first_token_seconds_bucket[15s])))",
        "p{p}",
    ),
    "Tokens per second by type": ("sum by (type) (rate(rmllm_llm_tokens_total[15s]))", "{type}"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _range(prometheus: str, promql: str, start: float, end: float) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": 2})
    with urllib.request.urlopen(f"http://{prometheus}/api/v1/query_range?{query}", timeout=10) as reply:
        result: list[dict[str, Any]] = json.loads(reply.read())["data"]["result"]
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the workload and draw the picture."""
    out = Path((argv or sys.argv[1:] or ["docs/operating-metrics.png"])[0])
    sys.path.insert(0, str(ROOT / "tests"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fakes.harness import KEYS
    from testkit.stack import Stack

    from clients import Client
    from clients import errors as cerr

    binary = shutil.which("prometheus")
    if binary is None:
        print("prometheus is not installed (apt-get install prometheus)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rmllm-picture-") as tmp_name:
        tmp = Path(tmp_name)
        stack = Stack.start(
            tmp,
            RMLLM_WORKERS="2",
            RMLLM_METRICS_LISTEN="127.0.0.1:0",
            RMLLM_CHAT_RATE_PER_MINUTE="300",
            RMLLM_CHAT_BURST="20",
        )
        metrics = {
            name: next(str(e["address"]) for e in proc.events() if e.get("event") == "metrics")
            for name, proc in (("llm", stack.llm), ("vault", stack.vault))
        }
        (tmp / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n"
            + "".join(
                f"  - job_name: rmllm-{name}\n    static_configs:\n      - targets: ['{address}']\n"
                for name, address in metrics.items()
            )
        )
        address = f"127.0.0.1:{_free_port()}"
        prometheus = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={address}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            start = time.time()
            _workload(stack, KEYS, Client, cerr)
            time.sleep(5)
            end = time.time()
            fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
            for axis, (title, (promql, legend)) in zip(axes, QUERIES.items(), strict=True):
                queries = (
                    [(promql.format(q=q), {"p": int(q * 100)}) for q in (0.5, 0.95)]
                    if "{q}" in promql
                    else [(promql, {})]
                )
                for text, extra in queries:
                    for series in _range(address, text, start, end):
                        points = [(float(t) - start, float(v)) for t, v in series["values"] if v != "NaN"]
                        label = legend.format(
                            **{"code": "", "reason": "", "type": "", **series["metric"], **extra}
                        )
                        axis.plot([p[0] for p in points], [p[1] for p in points], label=label.strip())
                axis.set_title(title, fontsize=10)
                axis.set_xlabel("seconds")
                axis.legend(fontsize=7)
                axis.grid(alpha=0.3)
            fig.suptitle("RealMultiLLM LLM service, scraped by Prometheus (two workers, summed)", fontsize=11)
            fig.tight_layout()
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=110)
            print(f"wrote {out}", file=sys.stderr)
        finally:
            prometheus.terminate()
            prometheus.wait(15)
            stack.stop()
    return 0


def _workload(stack: Any, keys: dict[str, str], client_class: Any, cerr: Any) -> None:
    """Three threads of one user (mixed outcomes) and, for a while, a greedy second user."""
    steady, greedy = stack.create_user("picture"), stack.create_user("greedy")
    started = time.monotonic()
    deadline = started + SECONDS
    rng = random.Random(7)

    def call(client: Any) -> None:
        try:
            with client.stream_chat("openai", "Hello") as stream:
                "".join(stream)
        except cerr.RmllmClientError:
            pass

    def worker() -> None:
        with client_class(steady, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
            while time.monotonic() < deadline:
                roll = rng.random()
                if roll < 0.06:
                    stack.enqueue({"canned": ["openai", "bad_key"]})
                elif roll < 0.1 and time.monotonic() > started + SECONDS / 2:
                    stack.enqueue({"canned": ["openai", "overloaded"]})
                else:
                    pieces = ["word "] * rng.randint(5, 40)
                    delay = rng.choice([0.005, 0.01, 0.02, 0.05])
                    stack.enqueue({"pieces": pieces, "delay": delay, "route": "chat"})
                call(client)
                time.sleep(rng.random() * 0.3)

    def hurry() -> None:  # seconds 20 to 40: far past the per-user rate limit
        time.sleep(20)
        with client_class(greedy, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
            client.put_config("openai", keys["openai"], base_url=stack.base_url("openai"))
            while time.monotonic() < started + 40:
                call(client)
                time.sleep(0.05)

    with client_class(steady, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", keys["openai"], base_url=stack.base_url("openai"))
    threads = [threading.Thread(target=worker) for _ in range(3)] + [threading.Thread(target=hurry)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    sys.exit(main())
