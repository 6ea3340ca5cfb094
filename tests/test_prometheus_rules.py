"""The Prometheus alerting rules and the Alertmanager configs, checked by the real tools:
`promtool check rules`, `promtool test rules` (alerts/prometheus/monitor-rules.test.yml) and
`amtool check-config`; and that the Prometheus rules and the service's rules never describe
the same condition."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitor.alerting.config import load_config_file
from monitor.alerting.notify import INCIDENT_ALERTNAME
from monitor.alerting.rules import DEFAULT_RULES, Rule
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


@pytest.mark.parametrize(("original", "changed", "alert"), [
    ("(avg_over_time(monitor_health_score[3d])) < 0.6",
     "(avg_over_time(monitor_health_score[3d])) < 0.25", "MonitorHealthPersistentlyLow"),
    ("max by (model, model_version) (monitor_health_score offset 60h)",
     "max by (model, model_version) (monitor_health_score)", "MonitorHealthPersistentlyLow"),
    ("(28 * 3600 + max(", "(26 * 3600 + max(", "MonitorChecksLate"),
    ("for: 26h", "for: 6h", "MonitorNeverChecked"),
    ("and on (model, model_version) monitor_model_active_version_info\n        for: 1h",
     "\n        for: 1h", "MonitorChecksFailing"),
], ids=["health-threshold", "health-history", "late-after", "never-checked-for",
        "failing-live-only"])
def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path, original: str, changed: str,
                                             alert: str) -> None:
    """The rule tests have teeth: moving a threshold, dropping the three-day history the
    slow burn needs, or alerting on versions that are not live breaks them."""
    promtool = tool("promtool", "prometheus")
    text = RULES.read_text()
    assert text.count(original) == 1, original
    (tmp_path / RULES.name).write_text(text.replace(original, changed))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    tested = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert f"alertname: {alert}" in tested.stdout + tested.stderr


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
    assert document["route"]["group_by"] == ["alertname", "model", "model_version",
                                             "incident_id"]
    for rule in document["inhibit_rules"]:
        assert "version" not in rule.get("equal", [])
    (per_version,) = [r for r in document["inhibit_rules"]
                      if r["source_matchers"] == ['severity = "critical"']]
    assert per_version["target_matchers"] == ['severity = "warning"']
    assert per_version["equal"] == ["model", "model_version"]


# --- one event pages once -------------------------------------------------------------------

# What a Prometheus rule watches, by the metrics its expression reads. Check findings (test
# p-values and effect sizes, sequential evidence, performance, subgroups, incidents) are
# deliberately absent: the service's rules page on them, through incidents.
PROMETHEUS_SUBJECTS = {
    "up": "service up",
    "monitor_store_up": "service up",
    "monitor_ingest_rejected_batches_total": "ingestion",
    "monitor_ingest_request_duration_seconds_count": "ingestion",
    "monitor_inferences_total": "ingestion",
    "monitor_check_last_success_timestamp_seconds": "check schedule",
    "monitor_check_last_failure_timestamp_seconds": "check schedule",
    "monitor_check_interval_seconds": "check schedule",
    "monitor_health_score": "health score",
}
# Selects which versions a rule applies to (the live ones); watches nothing by itself.
SELECTORS = {"monitor_model_active_version_info"}
STACK_ALERTING = ROOT / "docker" / "monitor-alerting.yml"


def service_rule_subject(rule: Rule) -> str:
    """What a service rule watches: a run's health score or study count, or check findings
    (any detector or family: tests, sequential evidence, performance, subgroups)."""
    if rule.metric == "health_score":
        return "health score"
    if rule.metric == "n_studies":
        return "ingestion"
    return "check findings"


def normalised(name: str) -> str:
    """``MonitorPerformanceDrop`` and ``performance-drop`` both give ``performancedrop``."""
    return re.sub(r"[^a-z0-9]", "", name.removeprefix("Monitor").lower())


def test_no_prometheus_rule_describes_a_condition_the_service_pages_on() -> None:
    """One event pages once. The service pages on check findings through incidents; the
    Prometheus rules must watch something else. Checked here: (1) every metric a Prometheus
    rule reads is one of the service-health, ingestion, check-schedule or health-score metrics
    above, so no Prometheus rule reads a test result, sequential evidence, performance,
    subgroup or incident metric; (2) no rule of the service, as the compose stack runs it
    (docker/monitor-alerting.yml, built-in rules where it names none) and as it ships
    (DEFAULT_RULES), watches a subject a Prometheus rule watches (health score, ingestion);
    (3) no Prometheus alert name and service rule name are the same words
    (MonitorPerformanceDrop against performance-drop), and none is the incidents' alertname;
    (4) the slow burn on the health score is a warning, which the version's critical incident
    inhibits in Alertmanager."""
    prometheus_subjects: dict[str, set[str]] = {}
    for rule in rules():
        names = set(re.findall(r"\b(monitor_[a-z0-9_]+|up)\b", str(rule["expr"])))
        unknown = names - set(PROMETHEUS_SUBJECTS) - SELECTORS
        assert not unknown, f"{rule['alert']} reads {sorted(unknown)}: findings are the service's"
        for subject in {PROMETHEUS_SUBJECTS[n] for n in names - SELECTORS}:
            prometheus_subjects.setdefault(subject, set()).add(str(rule["alert"]))
    health_rules = [rule for rule in rules()
                    if "health score" in {PROMETHEUS_SUBJECTS.get(n) for n in re.findall(
                        r"\bmonitor_[a-z0-9_]+\b", str(rule["expr"]))}]
    assert [rule["alert"] for rule in health_rules] == ["MonitorHealthPersistentlyLow"]
    assert health_rules[0]["labels"]["severity"] == "warning"
    assert "[3d]" in str(health_rules[0]["expr"])

    stack = load_config_file(STACK_ALERTING).rules
    for rule in (*stack, *DEFAULT_RULES):
        subject = service_rule_subject(rule)
        assert subject not in prometheus_subjects, (
            f"service rule {rule.name} and {sorted(prometheus_subjects[subject])} both "
            f"watch the {subject}")
    service_names = {normalised(rule.name) for rule in (*stack, *DEFAULT_RULES)}
    service_names.add(normalised(INCIDENT_ALERTNAME))
    for rule in rules():
        assert normalised(str(rule["alert"])) not in service_names, rule["alert"]


def test_the_stack_sends_incidents_and_prometheus_alerts_to_one_alertmanager() -> None:
    config = load_config_file(STACK_ALERTING)
    assert [c.url for c in config.notifications.alertmanager] == ["http://alertmanager:9093"]
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    (targets,) = [c["targets"] for am in prometheus["alerting"]["alertmanagers"]
                  for c in am["static_configs"]]
    assert targets == ["alertmanager:9093"]
    assert prometheus["rule_files"] == ["rules/monitor-rules.yml"]
