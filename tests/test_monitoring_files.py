"""The sample Grafana dashboard and Prometheus alert rules in docs/monitoring parse, and use
only metrics the daemon exports (a renamed metric must not silently blank a panel)."""

import json
import re
from pathlib import Path

import yaml

from openhosting.api.metrics import PlatformMetrics
from openhosting.services.platform_state import PlatformState

MONITORING = Path(__file__).resolve().parents[1] / "docs" / "monitoring"
METRIC = re.compile(r"\bopenhosting_[a-z_]+")


def exported_names() -> set[str]:
    text = PlatformMetrics().render(PlatformState(), transfers=0, event_streams=0).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            names.update(name + suffix for suffix in suffixes.get(kind, []))
    return names


def test_alert_rules_parse_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 5
    exported = exported_names()
    for alert in alerts:
        assert alert["alert"] and alert["expr"] and alert["labels"]["severity"]
        assert set(METRIC.findall(alert["expr"])) <= exported, alert["alert"]


def test_dashboard_parses_and_every_panel_queries_exported_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exported = exported_names()
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        used = {m for target in panel["targets"] for m in METRIC.findall(target["expr"])}
        assert used and used <= exported, panel["title"]
