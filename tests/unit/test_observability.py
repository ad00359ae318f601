"""Operator-facing artefacts: alert rules, dashboard, state gauges, status page and JSON logs.

The rules and the dashboard may only reference metrics the product really exports (names taken
from its Prometheus registry), so a renamed metric cannot silently blind an alert. When
``promtool`` is installed (Debian package ``prometheus``) the rules and every dashboard query are
also checked by Prometheus's own parser; without it those two checks are left out, the rest runs.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import vsync_stream.metrics as metrics
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.logging_setup import CorrelationFilter, JsonFormatter, faust_logging_config, log_context
from vsync_stream.status_page import CONTENT_SECURITY_POLICY, STATUS_HTML
from vsync_stream.tables.entries import PartitionState

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "observability" / "prometheus-rules.yml"
DASHBOARD = REPO / "deploy" / "observability" / "grafana-dashboard.json"

# Series Prometheus makes itself when it scrapes (not in the product's registry).
PROMETHEUS_BUILTINS = {"up"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created"), "gauge": ("",), "info": ("_info",), "unknown": ("",)}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan"}
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
CID = "28c06eb41c4dc9c3ae114831efcac7446c8747777fca8b145ecd31ff8480ae88"


def exported_names() -> set[str]:
    """Every series name the product's registry can expose (family name + its type's suffixes)."""
    names = set(PROMETHEUS_BUILTINS)
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\$\{?__\w+\}?|\$\{?\w+\}?", "5m", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    found = set()
    for match in re.finditer(r"(?<![\w:.])[a-zA-Z_:][\w:]*", text):
        name, rest = match.group(0), text[match.end():].lstrip()
        if rest.startswith("(") or name in _KEYWORDS:
            continue
        found.add(name)
    return found


def load_rules() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text("utf-8"))
    return doc


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text("utf-8"))

    def walk(panels: list[dict[str, Any]]) -> list[str]:
        exprs = []
        for panel in panels:
            exprs += [t["expr"] for t in panel.get("targets", [])]
            exprs += walk(panel.get("panels", []))
        return exprs

    return walk(doc["panels"])


# -- the PromQL name extractor itself --------------------------------------------------------------
def test_metric_names_skips_functions_keywords_labels_and_durations() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{code!="OK",m=~"x|y"}[5m]))) > 2 '
            'and on (method) b_total offset 1h unless c:recorded - time() > 36 * 3600 + 1e3 '
            '/ rate(d_sum[$__rate_interval])')
    assert metric_names(expr) == {"a_bucket", "b_total", "c:recorded", "d_sum"}


# -- alert rules -------------------------------------------------------------------------------------
def test_rules_have_the_prometheus_rule_file_shape() -> None:
    doc = load_rules()
    assert set(doc) == {"groups"} and doc["groups"], "a rule file is {groups: [...]}"
    names = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and isinstance(group["name"], str)
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert _DURATION.match(str(rule["for"])), f"{rule['alert']}: 'for' is not a duration"
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names)), "alert names repeat"


def test_rules_cover_what_an_operator_must_be_told() -> None:
    by_name = {rule["alert"]: rule for rule in all_rules()}
    assert "36 * 3600" in by_name["VsyncNoOkWithin36h"]["expr"]  # BACEN's limit
    assert by_name["VsyncNokUnresolved"]["for"] == "2h"
    for alert in ("VsyncDeadLettersRising", "VsyncConsumerLagGrowing", "VsyncWorkerDown", "VsyncRecoveringTooLong",
                  "VsyncLedgerDrift", "VsyncBridgeErrors", "VsyncReconciliationFailed"):
        assert alert in by_name, f"missing alert {alert}"


def test_rules_reference_only_exported_metrics() -> None:
    exported = exported_names()
    for rule in all_rules():
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} references metrics the product does not export: {sorted(unknown)}"


def test_dashboard_is_grafana_json_using_only_exported_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text("utf-8"))
    assert doc["title"] and doc["uid"] and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    exported = exported_names()
    referenced: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"query selects no metric: {expr}"
        assert not names - exported, f"dashboard query references unknown metrics {sorted(names - exported)}: {expr}"
        referenced |= names
    # Every product metric family is on the dashboard (a new metric gets a panel).
    families = {f.name for f in REGISTRY.collect() if f.name.startswith("vsync_")}
    shown = {f for f in families if any(n == f or n.startswith(f + "_") for n in referenced)}
    assert families - shown == set(), f"metrics without a panel: {sorted(families - shown)}"


@pytest.mark.integration
def test_promtool_accepts_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    assert shutil.which("promtool"), "promtool is missing: `make system-deps` (apt-get install prometheus)"
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # Dashboard queries, with Grafana's variables resolved, as recording rules: promtool parses them.
    records = [{"record": f"dashboard:query{i}", "expr": re.sub(r"\$__\w+", "5m", expr)}
               for i, expr in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), "utf-8")
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- state gauges, refreshed on scrape ---------------------------------------------------------------
class FakeTable:
    def __init__(self, states: dict[int, PartitionState], recovering: bool = False) -> None:
        self.partition_states = states
        self.recovering = recovering


class FakeConsumer:
    def __init__(self, highwaters: dict[int, int]) -> None:
        self.highwaters = highwaters

    def highwater(self, tp: Any) -> int:
        if tp.partition not in self.highwaters:
            raise AssertionError("Partition is not assigned")
        return self.highwaters[tp.partition]


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _ledger(*cids: str) -> VSyncLedger:
    ledger = VSyncLedger()
    for cid in cids:
        ledger.add("99990001", "EMAIL", cid)
    return ledger


def test_table_gauges_count_entries_per_pair_and_say_whether_the_vsync_is_complete() -> None:
    table = FakeTable({0: PartitionState(_ledger(CID)), 1: PartitionState(_ledger(CID[::-1], "ab" * 32))})
    metrics.MetricsRefresher(["99990001"], ["EMAIL", "EVP"], partitions=2).refresh_table(table)
    assert _value("vsync_entries", participant="99990001", key_type="EMAIL") == 3
    assert _value("vsync_entries", participant="99990001", key_type="EVP") == 0
    assert _value("vsync_vsync_known", participant="99990001", key_type="EMAIL") == 1
    assert _value("vsync_table_recovering") == 0 and _value("vsync_table_active_partitions") == 2

    metrics.MetricsRefresher(["99990001"], ["EMAIL"], partitions=3).refresh_table(table)  # partition 2 elsewhere
    assert _value("vsync_vsync_known", participant="99990001", key_type="EMAIL") == 0
    metrics.MetricsRefresher(["99990001"], ["EMAIL"], partitions=2).refresh_table(FakeTable({}, recovering=True))
    assert _value("vsync_table_recovering") == 1
    assert _value("vsync_vsync_known", participant="99990001", key_type="EMAIL") == 0
    assert _value("vsync_entries", participant="99990001", key_type="EMAIL") == 3  # kept while recovering


def test_consumer_lag_is_end_offset_minus_next_offset_to_fold() -> None:
    table = FakeTable({0: PartitionState(offset=89), 1: PartitionState(), 2: PartitionState(offset=5)})
    refresher = metrics.MetricsRefresher(["99990001"], ["EMAIL"], partitions=3)
    # Partition 1: nothing folded since start, the group's committed offset is 40; partition 2 not fetched.
    refresher.refresh_lag(FakeConsumer({0: 100, 1: 50}), table, "key-events", {("key-events", 1): 40})
    assert _value("vsync_consumer_lag_messages", partition="0") == 10
    assert _value("vsync_consumer_lag_messages", partition="1") == 10
    assert _value("vsync_consumer_lag_messages", partition="2") is None
    refresher.refresh_lag(FakeConsumer({0: 90}), FakeTable({0: PartitionState(offset=89)}), "key-events")
    assert _value("vsync_consumer_lag_messages", partition="0") == 0
    assert _value("vsync_consumer_lag_messages", partition="1") is None  # moved away: not reported


async def test_audit_gauges_give_last_result_one_hot_and_last_ok() -> None:
    class Last:
        def __init__(self, result: str, at: datetime) -> None:
            self.result, self.finished_at = result, at

    ok_at, nok_at = datetime(2026, 1, 1, 3, tzinfo=UTC), datetime(2026, 1, 2, 3, tzinfo=UTC)

    async def latest() -> dict[tuple[str, str], Last]:
        return {("99990002", "CPF"): Last("NOK", nok_at)}

    async def last_ok() -> dict[tuple[str, str], datetime]:
        return {("99990002", "CPF"): ok_at, ("55555555", "CPF"): ok_at}  # not configured: no label

    await metrics.MetricsRefresher(["99990002"], ["CPF"], partitions=1).refresh_audit(latest, last_ok)
    pair = {"participant": "99990002", "key_type": "CPF"}
    assert _value("vsync_last_verification_result", **pair, result="NOK") == 1
    assert _value("vsync_last_verification_result", **pair, result="OK") == 0
    assert _value("vsync_last_verification_timestamp_seconds", **pair) == nok_at.timestamp()
    assert _value("vsync_last_ok_timestamp_seconds", **pair) == ok_at.timestamp()
    assert _value("vsync_last_ok_timestamp_seconds", participant="55555555", key_type="CPF") is None


async def test_a_failing_audit_store_does_not_fail_the_scrape() -> None:
    async def broken() -> dict[Any, Any]:
        raise ConnectionError("PostgreSQL is down")

    await metrics.MetricsRefresher(["99990003"], ["CPF"], partitions=1).refresh_audit(broken, broken)


# -- status page -------------------------------------------------------------------------------------
def test_status_page_is_self_contained() -> None:
    urls = set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"')]*", STATUS_HTML))
    assert urls <= {"http://www.w3.org/2000/svg"}, f"external references: {urls}"  # the SVG namespace is a name
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", STATUS_HTML)
    assert "innerHTML" not in STATUS_HTML  # data goes in as text, never as markup
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "connect-src 'self'" in CONTENT_SECURITY_POLICY
    for endpoint in ("healthz", "vsync", "verifications?limit=", "reconciliations"):
        assert f'getJson("{endpoint}' in STATUS_HTML


# -- JSON logs -----------------------------------------------------------------------------------------
def test_json_log_lines_carry_the_correlation_ids_in_force() -> None:
    record = logging.LogRecord("vsync_stream.verification", logging.INFO, __file__, 1, "round %s done", ("r1",), None)
    with log_context(round_id="r1", trigger="web"), log_context(reconciliation_id="c1"):
        CorrelationFilter().filter(record)
    record.event_id = "e1"  # as ``extra={"event_id": ...}`` does
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "round r1 done" and doc["level"] == "INFO" and doc["logger"] == "vsync_stream.verification"
    assert (doc["round_id"], doc["trigger"], doc["reconciliation_id"], doc["event_id"]) == ("r1", "web", "c1", "e1")
    assert doc["ts"].endswith("Z")


def test_log_format_setting_selects_the_faust_logging_config() -> None:
    assert faust_logging_config("text") is None
    config = faust_logging_config("json")
    assert config is not None and config["merge"] is True
    assert config["handlers"]["default"]["formatter"] == "json"


def test_a_json_logging_worker_starts_quiet_so_faust_prints_no_banner() -> None:
    from vsync_stream.cli import quiet_for_json_logs

    argv = ["vsync-stream", "worker", "-l", "info"]
    assert quiet_for_json_logs(argv, "json") == ["vsync-stream", "--quiet", "worker", "-l", "info"]
    assert quiet_for_json_logs(argv, "text") == argv
    assert quiet_for_json_logs(["vsync-stream", "-q", "worker"], "json") == ["vsync-stream", "-q", "worker"]
    assert quiet_for_json_logs(["vsync-stream", "verify"], "json") == ["vsync-stream", "verify"]
