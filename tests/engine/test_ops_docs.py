"""docs/ops.md is copied into Prometheus as is: its YAML must parse, its alert rules must
be well formed, and every Stagecoach metric it names must be one ``stagecoach.engine.metrics``
exports (and every exported one must be documented)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagecoach.engine import metrics
from stagecoach.engine.settings import Settings

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops.md"
TEXT = OPS.read_text(encoding="utf-8")
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", TEXT, flags=re.DOTALL)
OURS = re.compile(r"\bstagecoach_[a-z_]+\b")
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def exported() -> set[str]:
    """Every ``stagecoach_`` sample name the API and the worker can expose."""
    gate = dict.fromkeys(("in_flight", "waiting", "concurrency", "hold_seconds"), 0.0)
    registry = metrics.registry_with(
        metrics.OutboxCollector(lambda: {"outbox_backlog": 0, "outbox_oldest_seconds": None}),
        metrics.AdmissionCollector(lambda: gate),
    )
    return {
        family.name + suffix
        for family in registry.collect()
        if family.name.startswith("stagecoach_")
        for suffix in SUFFIXES[family.type]
    }


def documents() -> list[Any]:
    return [yaml.safe_load(block) for block in YAML_BLOCKS]


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for doc in documents()
        if isinstance(doc, dict) and "groups" in doc
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def test_every_yaml_block_parses() -> None:
    assert len(YAML_BLOCKS) >= 2  # the scrape configuration and the alert rules
    for block in YAML_BLOCKS:
        yaml.safe_load(block)


def test_alert_rules_are_well_formed() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}
        assert rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


@pytest.mark.parametrize(
    ("alert", "needs"),
    [
        ("StagecoachOutboxBacklog", ["stagecoach_outbox_backlog", "> 1000"]),
        ("StagecoachSendFailures", ['outcome="failed"', 'outcome=~"sent|failed"', "> 0.05"]),
    ],
)
def test_the_backlog_and_send_failure_alerts_say_what_ops_asked_for(
    alert: str, needs: list[str]
) -> None:
    [rule] = [r for r in rules() if r["alert"] == alert]
    for part in needs:
        assert part in rule["expr"]
    assert rule["for"] == {"StagecoachOutboxBacklog": "10m", "StagecoachSendFailures": "15m"}[alert]


def test_alert_expressions_name_only_exported_metrics() -> None:
    available = exported()
    for rule in rules():
        unknown = set(OURS.findall(rule["expr"])) - available
        assert not unknown, f"{rule['alert']} names {sorted(unknown)}"


def test_every_exported_metric_is_documented_and_nothing_else() -> None:
    documented = set(OURS.findall(TEXT))
    assert documented - exported() == set()
    assert exported() - documented == set()


def test_the_scrape_configuration_uses_the_default_ports_and_the_admin_token() -> None:
    [config] = [d for d in documents() if isinstance(d, dict) and "scrape_configs" in d]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    defaults = Settings(_env_file=None)
    assert jobs["stagecoach-api"]["authorization"]["type"] == "Bearer"
    assert jobs["stagecoach-api"]["static_configs"][0]["targets"] == [f"api:{defaults.api_port}"]
    assert jobs["stagecoach-worker"]["dns_sd_configs"][0]["port"] == defaults.worker_metrics_port
    sdk = jobs["stagecoach-temporal-sdk"]["dns_sd_configs"][0]["port"]
    assert sdk == defaults.temporal_metrics_port
