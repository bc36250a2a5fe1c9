"""``STAGECOACH_RETRY_HINT_MAX_SECONDS``: the longest a retried send waits on its
connector's hint. A real SMTP relay (aiosmtpd) answers 421, which the SMTP connector
turns into "retry in two minutes"; the delivery activity hands Temporal that delay as
given, or capped by the setting. The fault suite's short form relies on the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from stagecoach.engine.cli.compose import build_activities
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.protocol.messages import DeliverRequest
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.settings import load_settings
from tests.helpers import runtime_settings
from tests.peers.smtp import SmtpPeer


def _request() -> DeliverRequest:
    return DeliverRequest(
        contact_id="c-hint",
        idempotency_key="c-hint:k1",
        journey="probe",
        journey_version="v",
        step_id="whitepaper",
        enrolment=1,
        channel="email",
        address="wei.zhang@example.com",
        locale="en",
        content_id="wp-digital-transformation",
        consented=True,
        now=datetime.now(UTC),
    )


async def _retry_delay(tmp_path: Path, **overrides: Any) -> timedelta | None:
    with SmtpPeer() as peer:
        settings = runtime_settings(
            tmp_path,
            "unused",
            email_connector="smtp",
            smtp_host=peer.host,
            smtp_port=peer.port,
            smtp_security="none",
            **overrides,
        )
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        try:
            activities = build_activities(engine, settings)
            peer.fail_next(1, "421 4.3.2 service shutting down, try later")
            with pytest.raises(ApplicationError) as caught:
                await ActivityEnvironment().run(activities.deliver, _request())
        finally:
            engine.dispose()
    assert caught.value.type == "RetryableDeliveryError"
    assert peer.accepted == []
    return caught.value.next_retry_delay


async def test_a_421_is_retried_after_the_connectors_two_minutes_by_default(
    tmp_path: Path,
) -> None:
    assert await _retry_delay(tmp_path) == timedelta(minutes=2)


async def test_the_setting_caps_the_connectors_retry_hint(tmp_path: Path) -> None:
    assert await _retry_delay(tmp_path, retry_hint_max_seconds=3) == timedelta(seconds=3)


async def test_a_cap_longer_than_the_hint_leaves_the_hint_alone(tmp_path: Path) -> None:
    assert await _retry_delay(tmp_path, retry_hint_max_seconds=600) == timedelta(minutes=2)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STAGECOACH_RETRY_HINT_MAX_SECONDS", "0"),
        ("STAGECOACH_RETRY_HINT_MAX_SECONDS", "soon"),
        ("STAGECOACH_OPENER_TTL_SECONDS", "-1"),
    ],
)
def test_bad_timings_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()
