"""The Prometheus alerting rules and the Alertmanager configs, checked by the real tools:
`promtool check rules`, `promtool test rules` (alerts/prometheus/monitor-rules.test.yml) and
`amtool check-config`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitor.metrics import exposed_metric_names
from tests.conftest import require_server

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "alerts" / "prometheus"
RULES = RULES_DIR / "monitor-rules.yml"
RULE_TESTS = RULES_DIR / "monitor-rules.test.yml"
ALERTMANAGER_CONFIGS = (ROOT / "alerts" / "alertmanager.example.yml",
                        ROOT / "docker" / "alertmanager.yml")
# Metrics the rules may use besides ours: Prometheus's own.
PROMETHEUS_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    require_server(path is not None, f"{name} (Debian package {package})")
    assert path is not None
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    checked = run(tool("promtool", "prometheus"), "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    tested = run(tool("promtool", "prometheus"), "test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    fired = {case["alertname"] for test in document["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    quiet = {case["alertname"] for test in document["tests"]
             for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")}
    alerts = {str(rule["alert"]) for rule in rules()}
    assert alerts <= fired, f"never seen firing: {sorted(alerts - fired)}"
    assert alerts <= quiet, f"never seen quiet: {sorted(alerts - quiet)}"


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The rule tests have teeth: moving the red health threshold breaks them."""
    promtool = tool("promtool", "prometheus")
    text = RULES.read_text()
    assert "(monitor_health_score) < 0.6" in text
    (tmp_path / RULES.name).write_text(text.replace("(monitor_health_score) < 0.6",
                                                    "(monitor_health_score) < 0.4"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    tested = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "MonitorHealthRed" in tested.stdout + tested.stderr


def test_rules_use_only_exported_metrics_and_carry_severity_and_summary() -> None:
    exported = exposed_metric_names() | PROMETHEUS_METRICS
    for rule in rules():
        expr = str(rule["expr"])
        names = set(re.findall(r"\b(monitor_[a-z0-9_]+|ALERTS|up)\b", expr))
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: unknown {sorted(names - exported)}"
        labels = rule["labels"]
        assert isinstance(labels, dict)
        assert labels["severity"] in ("info", "warning", "critical")
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["summary"] and annotations["description"]


@pytest.mark.parametrize("config", ALERTMANAGER_CONFIGS, ids=lambda p: p.name)
def test_amtool_check_config(config: Path) -> None:
    checked = run(tool("amtool", "prometheus-alertmanager"), "check-config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_amtool_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check can fail: a route to a receiver that does not exist."""
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(ALERTMANAGER_CONFIGS[0].read_text().replace("receiver: ai-oncall",
                                                                  "receiver: nobody"))
    checked = run(tool("amtool", "prometheus-alertmanager"), "check-config", broken)
    assert checked.returncode != 0
    assert "nobody" in checked.stdout + checked.stderr
