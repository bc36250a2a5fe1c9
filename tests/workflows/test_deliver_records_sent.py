"""Past the send, the delivery activity must not fail on the database: a failed attempt is
retried and sends again, and SMTP and customer-service messages carry no key the
provider could drop a repeat by. Found by fault scenario 5 under SQLite lock contention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

import stagecoach.workflows.contact.activities as activities_module
from stagecoach.engine.cli.compose import build_activities
from stagecoach.engine.protocol.connector import OutgoingMessage, SendResult
from stagecoach.engine.protocol.messages import DeliverRequest
from stagecoach.engine.services.storage.models import Delivery
from stagecoach.workflows.contact import ContactActivities
from tests.helpers import migrated_engine, runtime_settings


class CountingEmail:
    """An email connector that accepts every message and counts what it was given."""

    channel = "email"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message.idempotency_key)
        return SendResult(provider_message_id=f"m-{len(self.sent)}")


def _request(key: str) -> DeliverRequest:
    return DeliverRequest(
        contact_id="c-locked",
        idempotency_key=key,
        journey="probe",
        journey_version="v",
        step_id="whitepaper",
        enrolment=1,
        channel="email",
        address="li.na@example.com",
        locale="en",
        content_id="wp-digital-transformation",
        consented=True,
        now=datetime.now(UTC),
    )


def _locked_for(activities: ContactActivities, failures: int) -> list[int]:
    """Make the next ``failures`` writes of status "sent" fail as a locked SQLite does."""
    calls = [0]
    record = activities._record

    def flaky(request: DeliverRequest, *, status: str, **fields: Any) -> None:
        if status == "sent" and calls[0] < failures:
            calls[0] += 1
            raise OperationalError("UPDATE deliveries", {}, Exception("database is locked"))
        record(request, status=status, **fields)

    activities._record = flaky  # type: ignore[method-assign]
    return calls


@pytest.fixture
def wired(tmp_path: Path) -> Any:
    settings = runtime_settings(tmp_path, "unused")
    engine = migrated_engine(settings.resolved_database_url)
    email = CountingEmail()
    yield engine, email, build_activities(engine, settings, connectors={"email": email})
    engine.dispose()


async def test_a_locked_database_after_the_send_is_waited_out_not_a_second_send(
    wired: Any,
) -> None:
    engine, email, activities = wired
    failures = _locked_for(activities, 3)
    outcome = await ActivityEnvironment().run(activities.deliver, _request("k-locked"))
    assert outcome.status == "sent"
    assert failures == [3]
    assert email.sent == ["k-locked"]  # once
    with Session(engine) as session:
        row = session.exec(select(Delivery).where(Delivery.idempotency_key == "k-locked")).one()
    assert (row.status, row.provider_message_id) == ("sent", "m-1")
    # The activity's retry, if Temporal made one anyway, finds it sent: no second send.
    again = await ActivityEnvironment().run(activities.deliver, _request("k-locked"))
    assert again.status == "duplicate"
    assert email.sent == ["k-locked"]


async def test_a_database_away_past_the_patience_fails_the_attempt(
    wired: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the patience the attempt fails (the activity's own timeout would end it
    anyway); the row still says "sending", so nothing claims a send that was recorded."""
    engine, email, activities = wired
    monkeypatch.setattr(activities_module, "SENT_RECORD_PATIENCE", 0.3)
    _locked_for(activities, 10_000)
    with pytest.raises(OperationalError):
        await ActivityEnvironment().run(activities.deliver, _request("k-away"))
    assert email.sent == ["k-away"]
    with Session(engine) as session:
        row = session.exec(select(Delivery).where(Delivery.idempotency_key == "k-away")).one()
    assert row.status == "sending"
