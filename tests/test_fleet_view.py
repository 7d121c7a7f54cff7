"""The fleet view: the shipped Prometheus alerting rules (packaging/prometheus/) pass `promtool check rules`
and their own `promtool test rules` series, the Grafana dashboard's queries are valid PromQL, and every
metric name a rule, a rule test or a dashboard query uses is one the daemon really exports (read from a
scrape of nmfailover/metrics.py's registry, not from a list kept by hand)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nmfailover.engine.state import SwitchEvent, UplinkView
from nmfailover.metrics import Metrics
from nmfailover.status import BudgetStatus, OutageStatus, UplinkStatus
from tests import status_samples as samples

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "packaging" / "prometheus" / "nmfailover.rules.yml"
RULE_TESTS = REPO / "packaging" / "prometheus" / "nmfailover.rules.test.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "nmfailover.json"
# Not the daemon's: Prometheus's own scrape health and node_exporter's textfile collector, for the alerts
# that fire when the daemon is gone (README, "Alerting rules and dashboard").
FOREIGN = {"up", "node_textfile_mtime_seconds"}
# What a Grafana query may hold that PromQL does not, replaced before promtool checks it.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, numbers, function calls and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", text)
    calls = set(re.findall(r"([A-Za-z_]\w*)\s*\(", text))
    return set(re.findall(r"[A-Za-z_:][\w:]*", text)) - calls - KEYWORDS


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'nmfailover_uplink_carrying_traffic{uplink!="primary"} == 1',
            {"nmfailover_uplink_carrying_traffic"},
        ),
        (
            'sum without (action, from, to) (increase(nmfailover_switches_total{action=~"a|b"}[1h])) >= 4',
            {"nmfailover_switches_total"},
        ),
        ('time() - node_textfile_mtime_seconds{file=~"x{1}"} > 3e2', {"node_textfile_mtime_seconds"}),
        ("a_total * on (instance) group_left () b and bool c", {"a_total", "b", "c"}),
        ("label_values(nmfailover_uplink_info, instance)", {"nmfailover_uplink_info", "instance"}),
        ("rate(x_bytes_total[$__rate_interval])", {"x_bytes_total"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# -- what the daemon exports ---------------------------------------------------------------------------------


def _uplink_status(role: str, health: str, carrying: bool) -> UplinkStatus:
    return samples.uplink(
        role,
        role,
        health=health,
        carrying_traffic=carrying,
        loss_pct=0.0,
        rtt_p50_ms=12.0,
        rtt_p95_ms=20.0,
        failed_rounds=1,
        probe_bytes=1000,
    )


async def exported_names() -> set[str]:
    """Every sample name a scrape of the daemon's registry holds, with every optional field in the status
    and a switch behind it, so that no family is empty."""
    uplinks = (
        UplinkView("primary", "primary", "wan-primary", "192.0.2.1", "", ()),
        UplinkView("backup", "backup", "wan-backup", "192.0.2.65", "", ()),
    )
    status = samples.status(
        _uplink_status("primary", "down", False),
        _uplink_status("backup", "up", True),
        last_switch_at=1_750_000_000.0,
        switches=1,
        task_restarts={"nm-events": 0},
        metered_budget=BudgetStatus(
            month="2026-12",
            month_bytes=800,
            month_bytes_by_uplink={"backup": 800},
            budget_bytes=1000,
            used_pct=80.0,
            warned_pct=75,
            outage=OutageStatus(uplink="backup", started_at=1.0, ended_at=None, bytes=300),
        ),
    )
    metrics = Metrics(lambda: status)
    await metrics.on_switch(
        SwitchEvent(
            "failover",
            "BACKUP",
            "primary",
            "backup",
            "wan-primary",
            "wan-backup",
            "",
            "",
            "why",
            0.0,
            uplinks,
        )
    )
    text = metrics.exposition().decode()
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    families = {family.name for family in text_string_to_metric_families(text)}
    assert not {f for f in families if not any(n.startswith(f) for n in names)}, "an empty family"
    return names


def _rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _test_series() -> list[str]:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    return [series["series"] for test in tests["tests"] for series in test["input_series"]]


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(METRIC, LABEL): the metric is what must exist.
            exprs.append(re.sub(r"label_values\((\w+),\s*\w+\)", r"\1", query["query"]))
    return exprs


async def test_every_metric_a_rule_or_the_dashboard_reads_is_exported() -> None:
    exported = await exported_names() | FOREIGN
    sources = {"rule": _rule_exprs(), "rule test series": _test_series(), "dashboard": _dashboard_queries()}
    assert all(sources.values())
    for source, exprs in sources.items():
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{source}: no metric in {expr!r}"
            assert names <= exported, f"{source}: {sorted(names - exported)} not exported, in {expr!r}"
    used = {name for exprs in sources.values() for expr in exprs for name in metric_names(expr)}
    # The dashboard shows every metric there is: a metric nobody can see is one nobody maintains.
    missing = {n for n in exported - FOREIGN if not n.endswith("_created")} - used
    assert not missing, f"exported but in no rule or panel: {sorted(missing)}"


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "instance"]


# -- promtool ------------------------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        # scripts/bootstrap installs Debian's prometheus package: a skip in CI would hide a broken setup.
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is missing (Debian package prometheus)")
    return found


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rule_exprs())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules() -> None:
    result = _promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # Every alert has a test that sees it fire.
    tests = yaml.safe_load(RULE_TESTS.read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {
        rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    assert fired == alerts


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    queries = _dashboard_queries()
    rules = []
    for index, expr in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query{index}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
