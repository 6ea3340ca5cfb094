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


# --- one vocabulary, runbooks and dashboard links -------------------------------------------

RUNBOOKS = ROOT / "docs" / "runbooks"
DASHBOARD_BASE = "http://127.0.0.1:8501/"
# A `version` label (in a selector, by/on list or template) is the old name.
BARE_VERSION = re.compile(r"(?<![\w])version\b")


def dashboard_pages() -> set[str]:
    text = (ROOT / "dashboards" / "app.py").read_text()
    return set(re.findall(r'\("\w+\.py", "[^"]+", "[^"]+", "(\w+)"\)', text))


def test_every_rule_links_its_runbook_and_a_dashboard_page() -> None:
    pages = dashboard_pages()
    assert {"overview", "drift", "bias", "alerts"} <= pages
    for rule in rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["runbook_url"] == f"docs/runbooks/{rule['alert']}.md"
        assert (ROOT / annotations["runbook_url"]).is_file(), rule["alert"]
        dashboard = str(annotations["dashboard_url"])
        assert dashboard.startswith(DASHBOARD_BASE), rule["alert"]
        assert dashboard.removeprefix(DASHBOARD_BASE) in pages, rule["alert"]


def test_rules_and_their_tests_name_model_version_never_version() -> None:
    for rule in rules():
        assert not BARE_VERSION.findall(str(rule["expr"])), rule["alert"]
        assert "$labels.version" not in " ".join(map(str, rule["annotations"].values()))
        if "model" in str(rule["expr"]):
            assert "model_version" in str(rule["expr"]), rule["alert"]
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in test.get("input_series", []):
            assert not re.search(r"[{,]\s*version=", series["series"]), series
        for case in test.get("alert_rule_test", []):
            for expected in case.get("exp_alerts") or []:
                assert "version" not in expected["exp_labels"], case["alertname"]


@pytest.mark.parametrize("config", ALERTMANAGER_CONFIGS, ids=lambda p: p.name)
def test_alertmanager_groups_and_inhibits_per_model_version(config: Path) -> None:
    document = yaml.safe_load(config.read_text())
    assert document["route"]["group_by"] == ["alertname", "model", "model_version"]
    for rule in document["inhibit_rules"]:
        assert "version" not in rule.get("equal", [])
    (per_version,) = [r for r in document["inhibit_rules"]
                      if r["source_matchers"] == ['severity = "critical"']]
    assert per_version["equal"] == ["model", "model_version"]
