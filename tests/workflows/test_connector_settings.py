"""Which connector each channel gets, from settings; misconfiguration names the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from stagecoach.connectors.crm import HubSpotConnector, WebhookConnector
from stagecoach.connectors.email import HttpEmailConnector, PostmarkConnector
from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.connectors.smtp import SmtpConnector
from stagecoach.connectors.wechat import WeChatConnector
from stagecoach.engine.cli.compose import connectors_from_settings
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.settings import Settings


def _settings(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(data_dir=tmp_path, **fields)


def test_every_channel_goes_to_the_sink_until_configured(tmp_path: Path) -> None:
    chosen = connectors_from_settings(_settings(tmp_path))
    assert set(chosen) == {"email", "wechat", "crm"}
    assert all(isinstance(c, FileSinkConnector) for c in chosen.values())


def test_webhook_crm_with_rotating_secrets(tmp_path: Path) -> None:
    chosen = connectors_from_settings(
        _settings(
            tmp_path,
            crm_connector="webhook",
            webhook_url="https://crm.example.com/hooks",
            webhook_secret=SecretStr("new-secret, old-secret"),
            crm_rate=5,
        )
    )
    assert isinstance(chosen["crm"], WebhookConnector)


def test_hubspot_crm(tmp_path: Path) -> None:
    chosen = connectors_from_settings(
        _settings(tmp_path, crm_connector="hubspot", hubspot_token=SecretStr("pat-na1-x"))
    )
    assert isinstance(chosen["crm"], HubSpotConnector)


def test_wechat_official_account(tmp_path: Path) -> None:
    chosen = connectors_from_settings(
        _settings(
            tmp_path,
            wechat_connector="wechat",
            wechat_appid="wx123",
            wechat_secret=SecretStr("s3cret"),
        )
    )
    assert isinstance(chosen["wechat"], WeChatConnector)


def test_email_connectors(tmp_path: Path) -> None:
    smtp = connectors_from_settings(
        _settings(tmp_path, email_connector="smtp", smtp_host="mail.example.com", email_rate=14)
    )
    assert isinstance(smtp["email"], SmtpConnector)
    postmark = connectors_from_settings(
        _settings(tmp_path, email_connector="postmark", postmark_token=SecretStr("pm-token"))
    )
    assert isinstance(postmark["email"], PostmarkConnector)
    generic = connectors_from_settings(
        _settings(tmp_path, email_connector="http", email_http_url="http://127.0.0.1:9/send")
    )
    assert isinstance(generic["email"], HttpEmailConnector)


@pytest.mark.parametrize(
    ("fields", "fix"),
    [
        ({"email_connector": "http"}, "STAGECOACH_EMAIL_HTTP_URL"),
        ({"email_connector": "postmark"}, "STAGECOACH_POSTMARK_TOKEN"),
        ({"wechat_connector": "wechat"}, "STAGECOACH_WECHAT_APPID"),
        ({"crm_connector": "webhook"}, "STAGECOACH_WEBHOOK_URL"),
        ({"crm_connector": "hubspot"}, "STAGECOACH_HUBSPOT_TOKEN"),
    ],
)
def test_a_chosen_connector_without_its_settings_names_them(
    tmp_path: Path, fields: dict[str, Any], fix: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        connectors_from_settings(_settings(tmp_path, **fields))
    assert fix in raised.value.fix
