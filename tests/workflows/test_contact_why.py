"""``stagecoach contact why`` on the real server, with the production worker, the real
delivery activity and the file sink: a sent whitepaper, a send blocked by withdrawn
consent, one held by quiet hours, one deferred by the frequency cap, a step a branch
steered away from, a journey never entered, and the command itself with bad input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.conditions import attribute
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import (
    END,
    Journey,
    ReEntry,
    branch,
    compile_journey,
    on_event,
    send,
)
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)
from stagecoach.engine.protocol.messages import EnrolRequest
from stagecoach.engine.services.publishing import definitions_context, publish
from stagecoach.engine.services.storage.models import Suppression
from stagecoach.engine.temporal.gateway import enrol
from stagecoach.engine.temporal.timeline import contact_timeline
from stagecoach.engine.temporal.why import (
    NEVER_ENROLLED,
    NOT_SENT,
    PENDING,
    SENT,
    InvalidJourneyStep,
    UnknownJourneyStep,
    Why,
    contact_why,
    parse_journey_step,
)
from tests.workflows.conftest import Runtime, eventually, open_runtime

ROOT = Path(__file__).resolve().parents[2]
PERSON = {"email": "lin.yue@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}
BLOG = {"category": "blog"}
WHITEPAPER = ("b2b_nurture", "awareness-whitepaper")


async def _why(runtime: Runtime, contact_id: str, journey: str, step_id: str) -> Why:
    return await contact_why(runtime.client, contact_id, journey, step_id)


async def _until(
    runtime: Runtime,
    contact_id: str,
    journey: str,
    step_id: str,
    status: str,
    *,
    last_verdict: str | None = None,
) -> Why:
    """The answer once it has the status (and its last link this verdict): the server
    applies signals and runs activities asynchronously."""

    answers: list[Why] = []

    async def settled() -> bool:
        try:
            why = await _why(runtime, contact_id, journey, step_id)
        except UnknownJourneyStep:
            return False  # the workflow has not opened the contact (no definitions) yet
        if any(link.verdict == "unavailable" for link in why.links):
            return False  # the state query went unanswered (a busy worker): ask again
        answers.append(why)
        return why.status == status and last_verdict in (None, why.links[-1].verdict)

    await eventually(settled, within=30)
    return answers[-1]


def _kinds(why: Why) -> list[str]:
    return [link.kind for link in why.links]


async def test_a_sent_whitepaper_ends_with_the_delivery_result(runtime: Runtime) -> None:
    await runtime.event("why-sent", "page.viewed", properties=BLOG, traits=PERSON)
    why = await _until(runtime, "why-sent", *WHITEPAPER, SENT)

    assert why.answer.startswith("sent: awareness-whitepaper wp-digital-transformation v")
    assert "via email at" in why.answer
    assert (why.enrolment, len(why.version)) == (1, 64)
    entry = why.links[0]
    assert (entry.kind, entry.verdict) == ("entry", "enrolled")
    # Automatic: nothing in history says "enrolled", the first send's input shows it.
    assert "automatically (b2b_nurture is entered on stage suspect)" in entry.detail
    assert "contact.deliver input" in entry.detail
    assert _kinds(why) == ["entry", "reached", "consent", "delivery"]
    assert why.links[2].verdict == "ok"
    delivery = why.links[-1]
    assert delivery.verdict == "sent"
    assert "wp-digital-transformation v" in delivery.detail
    assert f"to {PERSON['email']}, provider message " in delivery.detail
    times = [link.at for link in why.links if link.at is not None]
    assert len(times) == len(why.links)
    assert times == sorted(times)
    assert len(runtime.sent("why-sent")) == 1


async def test_withdrawn_email_consent_leaves_no_channel_to_send_on(runtime: Runtime) -> None:
    withdrawn = {**PERSON, "consent": {"email": False}}
    await runtime.event("why-consent", "page.viewed", properties=BLOG, traits=withdrawn)
    why = await _until(runtime, "why-consent", *WHITEPAPER, PENDING, last_verdict="waiting")

    # The whitepaper goes by the preferred channel: with email consent withdrawn there is
    # none, so the workflow holds the send, without calling the delivery activity, until
    # the contact has one (the journey's default: wait up to 30 days).
    assert why.answer.startswith("not sent yet: waiting for a channel until ")
    assert ": email consent withdrawn by page.viewed with traits.consent.email=False at " in (
        why.answer
    )
    assert why.answer.endswith("; no wechat address")
    assert _kinds(why) == ["entry", "reached", "channel"]
    channel = why.links[-1]
    assert channel.detail.startswith(
        "no channel the contact may be sent on (no_address:preferred): email consent withdrawn"
    )
    # The live state's trail and the wait's timer show it.
    assert "the live state" in why.links[0].detail
    assert runtime.sent("why-consent") == []


async def test_a_suppressed_address_is_blocked_by_the_delivery_activity(
    runtime: Runtime,
) -> None:
    with Session(runtime.engine) as session:
        session.add(Suppression(channel="email", address=PERSON["email"], reason="consent_revoked"))
        session.commit()
    await runtime.event("why-suppressed", "page.viewed", properties=BLOG, traits=PERSON)
    why = await _until(runtime, "why-suppressed", *WHITEPAPER, NOT_SENT)

    assert why.answer.startswith("not sent: the email address is suppressed (suppressed:email) at ")
    assert _kinds(why) == ["entry", "reached", "consent"]
    blocked = why.links[-1]
    assert blocked.verdict == "blocked"
    assert blocked.detail == f"{PERSON['email']} is suppressed for email (suppressed:email)"
    assert runtime.sent("why-suppressed") == []


class BouncesAfterRetries:
    """An email provider that answers 421 ``retries`` times, then bounces the address."""

    channel = "email"

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.calls = 0

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.calls += 1
        if self.calls <= self.retries:
            raise RetryableDeliveryError("421 try later")
        raise PermanentDeliveryError("550 no such user", code="bounce")


async def test_a_bounce_after_retries_names_the_error_and_the_attempts(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    bouncing = BouncesAfterRetries(retries=2)
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": bouncing}
    ) as runtime:
        await runtime.event("why-bounce", "page.viewed", properties=BLOG, traits=PERSON)
        why = await _until(runtime, "why-bounce", *WHITEPAPER, NOT_SENT)

    assert why.answer.startswith(
        "not sent: delivery failed (PermanentDeliveryError: 550 no such user) after 3 attempts"
    )
    failed = why.links[-1]
    assert (failed.kind, failed.verdict) == ("delivery", "failed")
    assert failed.detail == (
        "PermanentDeliveryError: 550 no such user; attempt 3 (2 retried); last failure before"
        " it: RetryableDeliveryError: 421 try later"
    )
    assert bouncing.calls == 3


VIP = Journey(
    "why_vip",
    entry=on_event("webinar.attended"),
    reentry=ReEntry.always(),
    steps=[
        branch(attribute("vip"), then="vip-offer", else_="whitepaper", id="is-vip"),
        send("consultation-offer", channel="email", id="vip-offer", next=END),
        send("wp-digital-transformation", channel="email", id="whitepaper"),
    ],
)
"""Sends by email (not the preferred channel), so consent is the delivery activity's to
check; VIPs get the consultation offer, everyone else the whitepaper."""


async def test_a_branch_that_went_the_other_way_and_an_email_without_consent(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    ctx = definitions_context(runtime.settings, content=content_library)
    publish(runtime.engine, compile_journey(VIP, ctx), source="test")
    await runtime.event("why-vip", "webinar.attended", traits=PERSON)
    refused = {**PERSON, "consent": {"email": False}}
    await runtime.event("why-vip-no", "webinar.attended", traits=refused)

    steered = await _until(
        runtime, "why-vip", "why_vip", "vip-offer", NOT_SENT, last_verdict="completed"
    )
    assert steered.answer == "not sent: the branch is-vip went else -> whitepaper"
    [entry, decision, finish] = steered.links
    assert "why_vip is entered on event webinar.attended" in entry.detail
    assert (decision.kind, decision.verdict) == ("branch", "else")
    assert decision.detail == (
        "is-vip: else -> whitepaper; vip-offer cannot be reached from whitepaper"
    )
    assert finish.detail == "enrolment #1 completed: end"
    sent = await _why(runtime, "why-vip", "why_vip", "whitepaper")
    assert sent.status == SENT
    assert _kinds(sent) == ["entry", "branch", "reached", "consent", "delivery"]

    blocked = await _until(runtime, "why-vip-no", "why_vip", "whitepaper", NOT_SENT)
    assert blocked.answer.startswith("not sent: no consent for email (no_consent:email) at ")
    consent = blocked.links[-1]
    assert (consent.kind, consent.verdict) == ("consent", "blocked")
    assert consent.detail.startswith(
        "no consent for email (no_consent:email); email consent withdrawn by"
        " webinar.attended with traits.consent.email=False at "
    )


async def test_the_chain_reads_across_continued_runs_and_names_the_enrol_update(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(
        env, task_queue, tmp_path, content_library, max_events_per_run=2
    ) as runtime:
        await runtime.event("why-long", "page.viewed", properties=BLOG, traits=PERSON)
        await _until(runtime, "why-long", *WHITEPAPER, SENT)
        result = await enrol(
            runtime.client, runtime.settings, "why-long", EnrolRequest("onboarding")
        )
        assert (result.accepted, result.enrolment) == (True, 1)
        for n in range(3):
            await runtime.event("why-long", "page.viewed", properties={**BLOG, "n": n})

        async def continued() -> bool:
            story = await contact_timeline(runtime.client, "why-long")
            return sum(e.kind == "continued" for e in story) >= 1

        await eventually(continued, within=30)
        welcome = await _until(runtime, "why-long", "onboarding", "welcome", SENT)
        whitepaper = await _why(runtime, "why-long", *WHITEPAPER)
        video = await _why(runtime, "why-long", "b2b_nurture", "awareness-video")

    assert f"onboarding v{result.version[:12]} via the enrol update" in welcome.links[0].detail
    assert whitepaper.status == SENT  # sent in the first run
    assert video.status == PENDING
    assert video.answer.startswith(
        "not sent yet: enrolment #1 is at awareness-await-interest, waiting for an event until "
    )
    assert video.links[-1].kind == "waiting"


def _night_zone(now: datetime) -> str:
    """An ``Etc/GMT`` zone where it is about 02:00 at ``now`` (signs are POSIX-inverted)."""
    offset = (2 - now.astimezone(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}"


async def test_quiet_hours_hold_the_send_of_a_contact_whose_night_it_is(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    zone = _night_zone(datetime.now(UTC))
    async with open_runtime(
        env,
        task_queue,
        tmp_path,
        content_library,
        quiet_hours_start="21:00",
        quiet_hours_end="08:00",
    ) as runtime:
        await runtime.event(
            "why-night", "page.viewed", properties=BLOG, traits={**PERSON, "timezone": zone}
        )
        why = await _until(runtime, "why-night", *WHITEPAPER, PENDING)
    # The runtime terminated the contact: the history alone answers, and says so.
    after = await contact_why(env.client, "why-night", *WHITEPAPER)

    assert why.answer.startswith("not sent yet: waiting for quiet hours to end at ")
    assert _kinds(why) == ["entry", "reached", "quiet_hours"]
    # No delivery activity ran: the live state and the defer timer show the enrolment.
    assert "the live state (state query) and a b2b_nurture timer" in why.links[0].detail
    held = why.links[-1]
    assert held.verdict == "held"
    assert f"quiet hours 21:00-08:00 in {zone}" in held.detail
    assert "defer:awareness-whitepaper" in held.detail
    assert "(08:00 local)" in held.detail
    assert runtime.sent("why-night") == []
    assert after.status == NOT_SENT
    assert after.answer.startswith(
        "not sent: the contact's workflow terminated while waiting for quiet hours to end at "
    )
    assert (after.links[-1].kind, after.links[-1].verdict) == ("workflow", "terminated")


async def test_the_frequency_cap_defers_the_onboarding_welcome(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(
        env, task_queue, tmp_path, content_library, frequency_cap=1, frequency_window_hours=96
    ) as runtime:
        await runtime.event("why-cap", "page.viewed", properties=BLOG, traits=PERSON)
        await _until(runtime, "why-cap", *WHITEPAPER, SENT)
        # A purchase makes a customer: onboarding's welcome is due at once, over the cap.
        await runtime.event("why-cap", "order.paid", properties={"amount": 9800})
        # Pending twice over: first the delivery in flight, then held once the activity
        # has answered that the cap is reached (the timer it arms is the last link).
        why = await _until(
            runtime, "why-cap", "onboarding", "welcome", PENDING, last_verdict="held"
        )

    assert why.answer.startswith("not sent yet: held by the frequency cap until ")
    assert _kinds(why) == ["entry", "reached", "consent", "frequency_cap", "frequency_cap"]
    deferred, timer = why.links[-2:]
    assert deferred.verdict == "deferred"
    assert "deferred (frequency_cap): not before " in deferred.detail
    assert "the cap is 1 per 4d" in deferred.detail
    assert timer.verdict == "held"
    assert "armed defer:welcome for 3d" in timer.detail
    assert "onboarding is entered on stage customer" in why.links[0].detail
    assert [m["message"]["content_id"] for m in runtime.sent("why-cap")] == [
        "wp-digital-transformation"
    ]


@pytest.mark.time_skipping
async def test_a_passive_answer_steers_the_survey_away_from_the_promoter_thanks(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    customer = {"email": "qian.lu@example.cn", "locale": "en", "timezone": "UTC"}
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        paid = {"amount": 9800}
        await runtime.event("why-passive", "order.paid", properties=paid, traits=customer)
        await env.sleep(timedelta(days=3, hours=1))

        def sent_ids() -> list[str]:
            return [m["message"]["content_id"] for m in runtime.sent("why-passive")]

        async def asked() -> bool:
            return "survey-nps" in sent_ids()

        await eventually(asked, within=30)
        await runtime.event("why-passive", "nps.answered", properties={"score": 8})

        async def nurtured() -> bool:
            # The survey enrols the value nurture as it ends, after recording its trail.
            return "customer-story-invite" in sent_ids()

        await eventually(nurtured, within=30)
        why = await _why(runtime, "why-passive", "nps_survey", "thank-promoter")
        survey = await _why(runtime, "why-passive", "nps_survey", "survey")

    assert why.status == NOT_SENT
    assert why.answer == "not sent: the branch is-promoter went else -> is-passive"
    assert _kinds(why) == ["entry", "wait_for_event", "branch", "branch", "finish"]
    promoter, passive = why.links[2:4]
    assert (promoter.verdict, passive.verdict) == ("else", "then")
    assert "thank-promoter cannot be reached from is-passive" in promoter.detail
    assert why.links[-1].detail == "enrolment #1 completed: end"
    assert "automatically (nps_survey is entered on event order.paid" in why.links[0].detail
    assert survey.status == SENT


async def test_a_journey_never_entered_says_the_stage(runtime: Runtime) -> None:
    await runtime.event("why-never", "page.viewed", properties=BLOG, traits=PERSON)
    await _until(runtime, "why-never", *WHITEPAPER, SENT)
    why = await _why(runtime, "why-never", "onboarding", "welcome")

    assert why.status == NEVER_ENROLLED
    assert why.answer == "not sent: never enrolled in onboarding (the contact is at stage suspect)"
    [entry] = why.links
    assert entry.verdict == "never"
    assert "onboarding is entered on stage customer" in entry.detail


def test_journey_step_is_journey_slash_step_or_journey_colon_step() -> None:
    assert parse_journey_step("b2b_nurture/awareness-whitepaper") == WHITEPAPER
    assert parse_journey_step("b2b_nurture:awareness-whitepaper") == WHITEPAPER
    for bad in ("b2b_nurture", "b2b_nurture/", "/awareness-whitepaper", "a/b/c", ""):
        with pytest.raises(InvalidJourneyStep, match="JOURNEY_STEP"):
            parse_journey_step(bad)


# --- the command --------------------------------------------------------------------------


def _stagecoach(runtime: Runtime, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m stagecoach.engine.cli`` against the test server, off the worker's event loop."""
    env = {
        **os.environ,
        "STAGECOACH_TEMPORAL_ADDRESS": runtime.client.service_client.config.target_host,
        "STAGECOACH_TEMPORAL_NAMESPACE": runtime.client.namespace,
        "STAGECOACH_DATA_DIR": str(tmp_path / ".stagecoach"),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # no .env from the checkout
        env=env,
    )


async def test_the_command_prints_the_chain_and_refuses_bad_input_in_one_line(
    runtime: Runtime, tmp_path: Path
) -> None:
    await runtime.event("why-cli", "page.viewed", properties=BLOG, traits=PERSON)
    await _until(runtime, "why-cli", *WHITEPAPER, SENT)
    calls = {
        "text": ("why-cli", "b2b_nurture/awareness-whitepaper"),
        "json": ("why-cli", "b2b_nurture:awareness-whitepaper", "--format", "json"),
        "no contact": ("why-nobody", "b2b_nurture/awareness-whitepaper"),
        "malformed": ("why-cli", "b2b_nurture"),
        "no journey": ("why-cli", "nurture/awareness-whitepaper"),
        "no step": ("why-cli", "b2b_nurture/whitepaper"),
    }
    done = dict(
        zip(
            calls,
            await asyncio.gather(
                *(
                    asyncio.to_thread(_stagecoach, runtime, tmp_path, "contact", "why", *args)
                    for args in calls.values()
                )
            ),
            strict=True,
        )
    )

    text = done["text"]
    assert text.returncode == 0, text.stderr
    head, *chain = text.stdout.splitlines()
    assert head.startswith("why-cli b2b_nurture/awareness-whitepaper: sent: awareness-whitepaper")
    assert [line.split()[1] for line in chain] == ["entry", "reached", "consent", "delivery"]

    as_json = done["json"]
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert (data["status"], data["journey"], data["step"]) == (SENT, *WHITEPAPER)
    assert data["answer"] == head.split(": ", 1)[1]
    assert [link["kind"] for link in data["links"]] == ["entry", "reached", "consent", "delivery"]
    assert all(datetime.fromisoformat(link["at"]) for link in data["links"])

    errors = {name: done[name] for name in ("no contact", "malformed", "no journey", "no step")}
    for name, result in errors.items():
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert result.stdout == "", name
        [line] = result.stderr.splitlines()
        assert line.startswith("stagecoach: error: "), name
    assert "no contact workflow contact-why-nobody" in errors["no contact"].stderr
    assert "JOURNEY_STEP 'b2b_nurture' is not <journey>/<step_id>" in errors["malformed"].stderr
    assert "no journey 'nurture'" in errors["no journey"].stderr
    assert "b2b_nurture" in errors["no journey"].stderr.split("Fix:")[1]
    assert "journey 'b2b_nurture' has no step 'whitepaper'" in errors["no step"].stderr
    assert "awareness-whitepaper, awareness-await-interest" in errors["no step"].stderr
