"""A real Prometheus scrapes the API serving the simulated deployment, with the rules of
alerts/prometheus/ loaded, and its query API returns what the checks stored."""

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
            expr = re.sub(r"\$(model_version|window)\b", ".*", target["expr"])
            exprs.append(re.sub(r"\$model\b", MODEL, expr))
    return exprs


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
    # The latest 1d window checked is the new-vendor day; the 7d one is the late window.
    new_vendor = simulated_template.check_run_ids["new-vendor"]
    late = simulated_template.check_run_ids["late"]
    expected_1d = stored_results(runtime, new_vendor)
    expected_7d = stored_results(runtime, late)
    assert expected_1d[("CategoricalDrift", "vendor")].drift  # the simulated episode

    app = app_with_metrics(runtime)
    with running_app(app) as api_url, running_prometheus(
        prometheus_binary, tmp_path / "prometheus", api_url.removeprefix("http://")
    ) as prometheus:
        prod = f'model="{MODEL}", model_version="{PRODUCTION}"'
        prometheus.wait_for('up{job="monitor"} == 1')

        # Drift metrics: the values the checks stored, by window.
        for window, expected in (("1d", expected_1d), ("7d", expected_7d)):
            for (detector, feature), row in expected.items():
                if detector in ("SubgroupBias", "Attribution") or row.p_value is None:
                    continue
                selector = (f'{prod}, window="{window}", detector="{detector}", '
                            f'feature="{feature}"')
                [(labels, p_value)] = prometheus.wait_for(
                    f"monitor_drift_p_value{{{selector}}}")
                assert p_value == pytest.approx(row.p_value, rel=1e-12, abs=1e-300)
                [(_, verdict)] = prometheus.vector(f"monitor_drift_detected{{{selector}}}")
                assert verdict == (1.0 if row.drift else 0.0)
                assert labels["job"] == "monitor"

        [(_, vendor)] = prometheus.vector(
            f'monitor_drift_detected{{{prod}, window="1d", family="metadata", '
            f'detector="CategoricalDrift", feature="vendor"}}')
        assert vendor == 1.0
        [(_, health)] = prometheus.vector(f'monitor_health_score{{{prod}, window="1d"}}')
        assert health == pytest.approx(health_of(runtime, new_vendor))

        # Performance and subgroups of the late window (override rise, subgroup drop).
        override = expected_7d[("PerformanceDrift", "override_rate")]
        current = override.details["current"]
        [(_, rate)] = prometheus.vector(
            f'monitor_performance_ratio{{{prod}, window="7d", metric="override_rate"}}')
        assert rate == pytest.approx(current["value"])
        [(_, upper)] = prometheus.vector(
            f'monitor_performance_ci_upper_ratio{{{prod}, window="7d", '
            f'metric="override_rate"}}')
        assert upper == pytest.approx(current["ci_high"])
        gaps = prometheus.vector(f'monitor_subgroup_gap_ratio{{{prod}, window="7d"}}')
        stored_gaps = {key: row for key, row in expected_7d.items()
                       if key[0] == "SubgroupBias" and "=" in key[1]}
        assert len(gaps) == min(len(stored_gaps), len(gaps)) > 0
        for labels, gap in gaps:
            row = stored_gaps[("SubgroupBias",
                               f"{labels['field']}={labels['value']}:{labels['metric']}")]
            assert gap == pytest.approx(row.statistic)

        # Store-derived counters and the registry.
        [(_, inferences)] = prometheus.vector(f"monitor_inferences_total{{{prod}}}")
        production_studies = int(
            (simulated_template.deployment.truth.model_version == PRODUCTION).sum())
        assert inferences == production_studies
        live = {labels["model_version"] for labels, _ in
                prometheus.vector("monitor_model_active_version_info")}
        assert live == {PRODUCTION, PREVIOUS}

        # The rules are loaded and evaluate: the new-vendor finding is a pending input-drift
        # alert (it fires after 5 minutes), the performance drop of the late window too.
        prometheus.wait_for(
            f'ALERTS{{alertname="MonitorInputDrift", {prod}, window="1d", '
            f'family="metadata"}}')
        pending = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=10).json()["data"]
        drift = next(a for a in pending["alerts"]
                     if a["labels"]["alertname"] == "MonitorInputDrift")
        assert drift["labels"]["model_version"] == PRODUCTION
        assert drift["annotations"]["runbook_url"] == "docs/runbooks/MonitorInputDrift.md"
        assert drift["annotations"]["dashboard_url"] == "http://127.0.0.1:8501/drift"
        rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]
        names = {group["name"] for group in rules["groups"]}
        assert names == {"monitor-service", "monitor-model-quality"}
        for group in rules["groups"]:
            for rule in group["rules"]:
                assert rule["health"] != "err", rule

        # A new check is visible at the next scrape: nothing is cached between scrapes.
        outcome = run_check(runtime, model=MODEL, version=PREVIOUS, window="1d",
                            now=simulated_template.day(15),
                            options=CheckOptions(report=False, n_permutations=200))
        assert outcome.health is not None
        prometheus.wait_for(
            f'monitor_health_score{{model="{MODEL}", model_version="{PREVIOUS}", window="1d"}}',
            lambda result: len(result) == 1
            and result[0][1] == pytest.approx(outcome.health.score))

        # Every expression of the Grafana dashboard is valid PromQL here.
        answered = [expr for expr in dashboard_expressions() if prometheus.query(expr)["result"]]
        assert len(answered) >= len(dashboard_expressions()) // 2
