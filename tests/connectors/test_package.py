"""The connectors package: one subpackage per channel, each exporting its public names,
and the top level exporting every connector and its configuration."""

from __future__ import annotations

import importlib

import pytest

from stagecoach import connectors

CHANNELS = (
    "stagecoach.connectors.email",
    "stagecoach.connectors.smtp",
    "stagecoach.connectors.wechat",
    "stagecoach.connectors.crm",
)


@pytest.mark.parametrize("name", CHANNELS)
def test_each_channel_package_exports_what_it_lists(name: str) -> None:
    package = importlib.import_module(name)
    assert package.__all__, f"{name} exports nothing"
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert missing == [], f"{name}.__all__ lists names it lacks: {missing}"


def test_the_top_level_exports_every_connector_from_its_channel_package() -> None:
    exported = {n: getattr(connectors, n) for n in connectors.__all__}
    classes = {n for n in exported if n.endswith("Connector")}
    assert classes == {
        "FileSinkConnector",
        "HttpEmailConnector",
        "PostmarkConnector",
        "SmtpConnector",
        "WeChatConnector",
        "WebhookConnector",
        "HubSpotConnector",
    }
    # One object per name: the top level re-exports, it does not define its own.
    for name in CHANNELS:
        package = importlib.import_module(name)
        for n in set(package.__all__) & set(exported):
            assert exported[n] is getattr(package, n), f"connectors.{n} is not {name}.{n}"
    for n in classes:
        assert hasattr(exported[n], "send"), f"{n} has no send()"
