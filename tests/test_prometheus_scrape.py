"""A real Prometheus scrapes the API serving the simulated deployment, with the rules of
alerts/prometheus/ loaded, and its query API returns what the newest daily grid check stored:
p-values, effect sizes, sequential evidence, performance, subgroups and health."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from monitor.checks import CheckOptions, run_check
from monitor.metrics import total_variation_distance
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import CheckResult, CheckRun
from tests.conftest import require_server
from tests.servers import free_port, running_app, stop_process
from tests.simdb import (
    MODEL,
    PREVIOUS,
    PRODUCTION,
    SimulatedTemplate,
)
from tests.test_metrics import app_with_metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "alerts" / "prometheus" / "monitor-rules.yml"
DASHBOARD = ROOT / "dashboards" / "grafana" / "monitor.json"
WAIT_S = 60.0

pytestmark = pytest.mark.server

Vector = list[tuple[dict[str, str], float]]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]

    def vector(self, expr: str) -> Vector:
        data = self.query(expr)
        assert data["resultType"] == "vector", expr
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def wait_for(self, expr: str, accept: Callable[[Vector], bool] = bool) -> Vector:
        """Poll until ``expr`` gives a vector that ``accept`` takes (at most WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            assert self.process.poll() is None, self.log.read_text()[-4000:]
            result = self.vector(expr)
            if accept(result):
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus gave no accepted value of {expr} within "
                            f"{WAIT_S:.0f}s; last: {result}")
            time.sleep(0.5)


@contextmanager
def running_prometheus(binary: str, directory: Path, target: str) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping ``target`` every second with the
    project's rules; stopped (and killed if need be) on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "monitor", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    }
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as log_handle:
        process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log_handle, stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            try:
                if httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        yield prometheus
    finally:
        stop_process(process)


def stored_results(runtime: Runtime, run_id: int) -> dict[tuple[str, str], CheckResult]:
    with session_scope(runtime.sessions) as session:
        rows = session.scalars(select(CheckResult).where(CheckResult.check_run_id == run_id))
        return {(row.detector, row.feature): row for row in rows}


def health_of(runtime: Runtime, run_id: int) -> float:
    with session_scope(runtime.sessions) as session:
        return session.scalar(select(CheckRun.health_score).where(CheckRun.id == run_id))


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$model_version\b", ".*", target["expr"])
            exprs.append(re.sub(r"\$model\b", MODEL, expr))
    return exprs


def evidence_by_family(rows: dict[tuple[str, str], CheckResult]) -> dict[str, float]:
    """What monitor_sequential_evidence should say: per family, the largest statistic over
    page threshold of its streams."""
    ratios: dict[str, float] = {}
    for (detector, _), row in rows.items():
        if detector == "SequentialEvidence":
            family = row.details["of_family"]
            ratios[family] = max(ratios.get(family, -1e9), row.statistic / row.threshold)
    return ratios


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    require_server(binary is not None, "Prometheus (Debian package prometheus)")
    assert binary is not None
    return binary


def test_prometheus_scrapes_the_checks_of_the_simulated_deployment(
    prometheus_binary: str,
    simulated_runtime: Runtime,
    simulated_template: SimulatedTemplate,
    tmp_path: Path,
) -> None:
    runtime = simulated_runtime
    # The newest grid day checked is the new-vendor day (the late window is 7 days: not on
    # the daily grid, so not reported).
    new_vendor = simulated_template.check_run_ids["new-vendor"]
    expected = stored_results(runtime, new_vendor)
    assert expected[("CategoricalDrift", "vendor")].p_value < 1e-3  # the simulated episode

    app = app_with_metrics(runtime)
    with running_app(app) as api_url, running_prometheus(
        prometheus_binary, tmp_path / "prometheus", api_url.removeprefix("http://")
    ) as prometheus:
        prod = f'model="{MODEL}", model_version="{PRODUCTION}"'
        prometheus.wait_for('up{job="monitor"} == 1')

        # Every test's p-value, and the effect sizes of the tests that have one.
        for (detector, feature), row in expected.items():
            if detector in ("SubgroupBias", "Attribution", "SequentialEvidence"):
                continue
            selector = f'{prod}, detector="{detector}", feature="{feature}"'
            if row.p_value is None:
                assert not prometheus.vector(f"monitor_test_p_value{{{selector}}}")
                continue
            [(labels, p_value)] = prometheus.wait_for(f"monitor_test_p_value{{{selector}}}")
            assert p_value == pytest.approx(row.p_value, rel=1e-12, abs=1e-300)
            assert labels["job"] == "monitor"
            assert "window" not in labels
            if detector in ("NumericDrift", "ScoreDrift"):
                [(_, distance)] = prometheus.vector(
                    f"monitor_test_distribution_distance_ratio{{{selector}}}")
                assert distance == pytest.approx(row.details["ks_statistic"])
        vendor = expected[("CategoricalDrift", "vendor")]
        [(_, distance)] = prometheus.vector(
            f'monitor_test_distribution_distance_ratio{{{prod}, feature="vendor"}}')
        assert distance == pytest.approx(total_variation_distance(vendor.details["counts"]))
        assert distance > 0.01  # a new vendor's share of the day
        [(_, health)] = prometheus.vector(f"monitor_health_score{{{prod}}}")
        assert health == pytest.approx(health_of(runtime, new_vendor))

        # The sequential evidence per family, as the grid check stored its streams.
        evidence = {labels["family"]: ratio for labels, ratio in prometheus.vector(
            f"monitor_sequential_evidence{{{prod}}}")}
        assert evidence == pytest.approx(evidence_by_family(expected))
        assert "metadata" in evidence  # the new vendor's stream has evidence that day

        # Performance and subgroups of the same day.
        override = expected[("PerformanceDrift", "override_rate")]
        current = override.details["current"]
        if current.get("value") is not None:
            [(_, rate)] = prometheus.vector(
                f'monitor_performance_ratio{{{prod}, metric="override_rate"}}')
            assert rate == pytest.approx(current["value"])
        gaps = prometheus.vector(f"monitor_subgroup_gap_ratio{{{prod}}}")
        stored_gaps = {key: row for key, row in expected.items()
                       if key[0] == "SubgroupBias" and row.p_value is not None}
        assert len(gaps) == len(stored_gaps) > 0
        for labels, gap in gaps:
            row = stored_gaps[("SubgroupBias",
                               f"{labels['field']}={labels['value']}:{labels['metric']}")]
            assert gap == pytest.approx(row.statistic)

        # Store-derived counters, the registry and the incidents.
        [(_, inferences)] = prometheus.vector(f"monitor_inferences_total{{{prod}}}")
        production_studies = int(
            (simulated_template.deployment.truth.model_version == PRODUCTION).sum())
        assert inferences == production_studies
        live = {labels["model_version"] for labels, _ in
                prometheus.vector("monitor_model_active_version_info")}
        assert live == {PRODUCTION, PREVIOUS}
        incidents = prometheus.vector(f"monitor_open_incidents{{{prod}}}")
        assert {labels["severity"] for labels, _ in incidents} == {"warning", "critical"}

        # The rules are loaded and evaluate: no new inference arrives, so ingestion of both
        # live versions has stopped (pending: it fires after 30 minutes).
        prometheus.wait_for('ALERTS{alertname="MonitorIngestionStopped"}',
                            lambda result: len(result) == 2)
        pending = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=10).json()["data"]
        stopped = [a for a in pending["alerts"]
                   if a["labels"]["alertname"] == "MonitorIngestionStopped"]
        assert {a["labels"]["model_version"] for a in stopped} == {PRODUCTION, PREVIOUS}
        assert stopped[0]["annotations"]["runbook_url"] == (
            "docs/runbooks/MonitorIngestionStopped.md")
        assert stopped[0]["annotations"]["dashboard_url"] == "http://127.0.0.1:8501/overview"
        rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]
        names = {group["name"] for group in rules["groups"]}
        assert names == {"monitor-service", "monitor-ingestion", "monitor-checks",
                         "monitor-health"}
        for group in rules["groups"]:
            for rule in group["rules"]:
                assert rule["health"] != "err", rule

        # A new grid check is visible at the next scrape: nothing is cached between scrapes.
        outcome = run_check(runtime, model=MODEL, version=PREVIOUS, window="1d",
                            now=simulated_template.day(15),
                            options=CheckOptions(report=False, n_permutations=200))
        assert outcome.health is not None
        prometheus.wait_for(
            f'monitor_health_score{{model="{MODEL}", model_version="{PREVIOUS}"}}',
            lambda result: len(result) == 1
            and result[0][1] == pytest.approx(outcome.health.score))

        # Every expression of the Grafana dashboard is valid PromQL here.
        answered = [expr for expr in dashboard_expressions() if prometheus.query(expr)["result"]]
        assert len(answered) >= len(dashboard_expressions()) // 2
