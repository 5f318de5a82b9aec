"""The Grafana dashboard and the scrape config under deploy/ match the code.

Every metric a dashboard query names must be one the services export (the sample
names prometheus_client derives from the metric objects: ``_total`` for counters,
``_bucket``/``_count``/``_sum`` for histograms), every label it groups or filters by
must be a label of that metric, and the scrape targets must be the compose file's
metrics addresses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from llm_service import metrics as llm_metrics
from vault_service import metrics as vault_metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "realmultillm.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, for every rmllm_* metric the code defines."""
    names: dict[str, set[str]] = {}
    # Private registries: this test must not turn recording on for the rest of the process.
    for holder in (
        llm_metrics.LLMMetrics(CollectorRegistry()),
        vault_metrics.VaultMetrics(CollectorRegistry()),
    ):
        for metric in vars(holder).values():
            kind = getattr(metric, "_type", None)
            if kind not in SUFFIXES:
                continue
            labels = set(metric._labelnames)
            for suffix in SUFFIXES[kind]:
                names[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_metric_exists_in_the_code() -> None:
    known = exported()
    assert "rmllm_llm_requests_total" in known
    assert "rmllm_llm_time_to_first_token_seconds_bucket" in known
    used = set()
    for expr in expressions():
        for name in re.findall(r"\b(rmllm_[a-z_]+)\b", expr):
            assert name in known, f"{name} (in {expr!r}) is not a metric the services export"
            used.add(name)
        metric_labels = set().union(*(known[n] for n in re.findall(r"\b(rmllm_[a-z_]+)\b", expr)))
        grouped = re.findall(r"by \(([^)]*)\)", expr)
        filtered = re.findall(r"\{([^}]*)\}", expr)
        for label in [part.strip() for group in grouped for part in group.split(",")] + [
            re.split(r"[!=~]", item)[0].strip() for group in filtered for item in group.split(",")
        ]:
            assert label in metric_labels, f"label {label!r} of {expr!r} is not on its metric"
    # Every metric family is on the dashboard.
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in known}
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families == shown, f"not on the dashboard: {sorted(families - shown)}"


def test_scrape_targets_are_the_compose_metrics_addresses() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape["scrape_configs"]}
    for service in ("llm", "vault"):
        listen = compose["services"][service]["environment"]["RMLLM_METRICS_LISTEN"]
        assert targets[f"rmllm-{service}"] == f"{service}:{listen.rsplit(':', 1)[1]}"
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"]
    assert compose["services"]["grafana"]["profiles"] == ["monitoring"]
