"""Rule config and evaluation on one check run (no database)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.alerting.config import (
    AlertingConfig,
    load_config,
    load_config_file,
    parse_config,
    parse_duration,
)
from monitor.alerting.rules import DEFAULT_RULES, Rule, alert_key, observe, parse_condition
from monitor.errors import ConfigError
from monitor.store.results import CheckResultInfo, CheckRunInfo
from tests.conftest import make_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "alerts" / "monitor-rules.example.yml"
START = datetime(2026, 10, 10, tzinfo=UTC)


def _result(detector: str, feature: str, *, p_value: float | None, drift: bool = False,
            details: dict | None = None, statistic: float = 0.2) -> CheckResultInfo:
    return CheckResultInfo(1, 7, "cxr-triage", "1.4.0", "1d", START, START + timedelta(days=1),
                           detector, feature, statistic, p_value, 0.05, drift, 400, 150,
                           details or {})


def _run(*results: CheckResultInfo, health: float | None = 0.9, status: str = "ok",
         version: str = "1.4.0", label: str = "1d") -> CheckRunInfo:
    return CheckRunInfo(7, "cxr-triage", version, 3, 1, "time", label, START,
                        START + timedelta(days=1), START, START, status, 150, health, "green",
                        None, None, tuple(results))


def _rule(**fields: object) -> Rule:
    return Rule.model_validate(fields)


def test_conditions_parse_and_compare() -> None:
    (c,) = parse_condition("p_value < 0.01")
    assert (c.field, c.op, c.value) == ("p_value", "<", 0.01)
    assert c.holds({"p_value": 0.005}) and not c.holds({"p_value": 0.02})
    assert not c.holds({"p_value": None}) and not c.holds({})  # missing: false, not an error
    (flag,) = parse_condition("drift == TRUE")
    assert flag.holds({"drift": True}) and not flag.holds({"drift": False})
    assert not flag.holds({"drift": 0.3})  # a number is not a flag
    both = parse_condition("value < 0.8 and n_current >= 50")
    assert [str(c) for c in both] == ["value < 0.8", "n_current >= 50.0"]
    (nested,) = parse_condition("details.status == 'ok'")
    assert nested.holds({"details": {"status": "ok"}}) and not nested.holds({"details": {}})
    for bad in ("p_value", "p_value << 3", "p_value < low", "< 3"):
        with pytest.raises(ValueError, match="condition"):
            parse_condition(bad)


def test_a_bad_rule_file_names_the_key_and_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules\.0\.condition.*'p_value <<< 1'"):
        parse_config({"rules": [{"name": "x", "family": "embedding",
                                 "condition": "p_value <<< 1"}]})
    with pytest.raises(ConfigError, match=r"rules\.0\.severity.*'urgent'"):
        parse_config({"rules": [{"name": "x", "family": "embedding", "condition": "drift == true",
                                 "severity": "urgent"}]})
    with pytest.raises(ConfigError, match="needs detector:, family: or metric:"):
        parse_config({"rules": [{"name": "x", "condition": "drift == true"}]})
    with pytest.raises(ConfigError, match=r"rules\.0\.colour"):
        parse_config({"rules": [{"name": "x", "family": "bias", "condition": "drift == true",
                                 "colour": "red"}]})
    with pytest.raises(ConfigError, match="repeated"):
        parse_config({"rules": [{"name": "x", "family": "bias", "condition": "drift == true"}] * 2})
    with pytest.raises(ConfigError, match=r"notifications\.resend_interval"):
        parse_config({"notifications": {"resend_interval": "soon"}})
    with pytest.raises(ConfigError, match="no such file"):
        load_config_file(tmp_path / "missing.yml")
    (tmp_path / "bad.yml").write_text("rules: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(tmp_path / "bad.yml")


def test_durations() -> None:
    assert parse_duration("90s", field="f") == 90
    assert parse_duration("5m", field="f") == 300
    assert parse_duration("2h", field="f") == 7200
    assert parse_duration(12, field="f") == 12
    with pytest.raises(ConfigError, match="'tomorrow'"):
        parse_duration("tomorrow", field="f")


def test_the_example_file_holds_the_built_in_rules_and_every_section() -> None:
    config = load_config_file(EXAMPLE)
    assert config.rules == list(DEFAULT_RULES)
    kinds = [c.kind for c in config.notifications.channels]
    assert kinds == ["alertmanager", "webhook", "email"]
    assert config.rollback_policies[0].firing_windows == 2
    assert config.deploy_hook is not None
    assert AlertingConfig().rules == list(DEFAULT_RULES)  # no file: the built-in rules


def test_config_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text("rules:\n  - {name: a, family: bias, condition: drift == true}\n")
    settings = make_settings("sqlite://", tmp_path, alert_rules_file=path)
    assert [r.name for r in load_config(settings).rules] == ["a"]
    path.write_text("rules:\n  - {name: b, family: bias, condition: drift == true}\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert [r.name for r in load_config(settings).rules] == ["b"]
    assert load_config(make_settings("sqlite://", tmp_path)).source == "built-in defaults"


def test_detector_rules_select_results_by_family_detector_and_feature() -> None:
    run = _run(
        _result("MMDDrift", "embedding", p_value=0.001, drift=True,
                details={"family": "embedding"}),
        _result("CategoricalDrift", "software_version", p_value=1e-6, drift=True),
        _result("CategoricalDrift", "site", p_value=0.4),
        _result("NumericDrift", "kvp", p_value=0.03, drift=True),
    )
    by_family = observe(_rule(name="meta", family="metadata", condition="drift == true"), run)
    assert {(o.labels["feature"], o.active) for o in by_family} == {
        ("software_version", True), ("site", False), ("kvp", True)}
    by_feature = observe(_rule(name="sw", detector="CategoricalDrift", feature="soft*",
                               condition="p_value < 0.01"), run)
    assert [(o.labels["feature"], o.active) for o in by_feature] == [("software_version", True)]
    embedding = observe(_rule(name="emb", family="embedding", condition="p_value < 0.01"), run)
    assert [o.active for o in embedding] == [True]


def test_labels_key_and_summary() -> None:
    run = _run(_result("PerformanceDrift", "sensitivity", p_value=0.004, drift=True,
                       details={"family": "performance", "current": {"value": 0.71}}))
    rule = _rule(name="perf", family="performance", condition="p_value < 0.01",
                 severity="critical", labels={"team": "imaging"},
                 summary="{model} {model_version}: {feature} now {value} (p={p_value})")
    (obs,) = observe(rule, run)
    assert obs.active
    assert obs.labels == {"alertname": "perf", "model": "cxr-triage", "model_version": "1.4.0",
                          "severity": "critical", "category": "performance",
                          "detector": "PerformanceDrift", "feature": "sensitivity",
                          "team": "imaging"}
    assert obs.summary == "cxr-triage 1.4.0: sensitivity now 0.71 (p=0.004)"
    # the key is stable, and differs by version and by feature
    assert obs.key == alert_key("perf", "cxr-triage", "1.4.0",
                                {"detector": "PerformanceDrift", "feature": "sensitivity"})
    (other_version,) = observe(rule, _run(*run.results, version="1.3.0"))
    assert other_version.key != obs.key
    assert alert_key("perf", "cxr-triage", "1.4.0", {"feature": "ppv"}) != obs.key


def test_metric_rules_read_the_run_or_the_metric_value() -> None:
    run = _run(_result("PerformanceDrift", "sensitivity", p_value=0.3,
                       details={"family": "performance", "current": {"value": 0.75}}),
               health=0.55)
    (health,) = observe(_rule(name="h", metric="health_score", condition="value < 0.6"), run)
    assert health.active and health.values["value"] == 0.55 and "feature" not in health.labels
    assert not observe(_rule(name="h", metric="health_score", condition="health_score < 0.5"),
                       run)[0].active
    (sens,) = observe(_rule(name="s", metric="sensitivity", condition="value < 0.8"), run)
    assert sens.active and sens.values["sensitivity"] == 0.75
    (floor,) = observe(_rule(name="s", metric="sensitivity", condition="sensitivity < 0.7"), run)
    assert not floor.active
    assert observe(_rule(name="h", metric="health_score", condition="value < 0.6"),
                   _run(health=None)) == []


def test_no_evidence_gives_no_observation() -> None:
    rule = _rule(name="perf", family="performance", condition="p_value < 0.01")
    thin = _result("PerformanceDrift", "ppv", p_value=None,
                   details={"family": "performance", "status": "insufficient data"})
    failed = _result("PerformanceDrift", "npv", p_value=None,
                     details={"family": "performance", "status": "failed"})
    assert observe(rule, _run(thin, failed)) == []
    good = _result("PerformanceDrift", "sensitivity", p_value=0.001,
                   details={"family": "performance"})
    assert observe(rule, _run(good, status="failed")) == []
    assert len(observe(rule, _run(good, status="partial"))) == 1
    only_7d = _rule(name="perf", family="performance", condition="p_value < 0.01",
                    windows=["7d"], models=["cxr-triage"])
    assert observe(only_7d, _run(good)) == [] and len(observe(only_7d, _run(good, label="7d")))
    other_model = _rule(name="perf", family="performance", condition="p_value < 0.01",
                        models=["ct-bleed"])
    assert observe(other_model, _run(good)) == []
