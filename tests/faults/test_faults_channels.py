"""Fault scenarios 5 and 6: a WeChat API and a CRM receiver misbehaving under the workload.

Same harness and books as ``test_faults.py`` (contacts created through the real API,
their events streaming in, real worker and API processes on a real Temporal dev server,
loopback peers that record what they took in), with the channel under fault swapped in:

5. **WeChat.** Every contact has an openid, follows the Official Account (consent
   ``wechat``) and prefers WeChat, so ``b2b_nurture``'s first send (``send`` with the
   default ``"preferred"`` channel) goes out as the whitepaper's WeChat template message
   through the real ``WeChatConnector``. The peer expires every token at each boundary of
   ``STAGECOACH_FAULT_TOKEN_SECONDS`` (3 s) while announcing 7200 s, so the connector
   learns of each expiry only from a 42001; and it answers a burst of ``-1`` (system
   busy) once a tenth of the messages are in, then a burst of ``45011`` (minute quota)
   once two fifths are. From the peer's records: one template message per openid (a
   resend that WeChat drops as a repeat ``client_msg_id`` is counted, not received), and
   one token request per token issued (the token service renews once for all the sends
   refused with one token).
6. **CRM.** Every contact becomes a marketing-qualified lead (fit grade A or B from its
   identify; score 75 from pricing views, the whitepaper download and a demo request),
   which the contact workflow hands to sales through the webhook connector. Once a
   quarter of the hand-offs are in, the receiver goes down for
   ``STAGECOACH_FAULT_CRM_DOWN_SECONDS`` (12 s in the short form, 1800 s in the full
   form): the first half refusing connections, the second half answering 503. Then it
   comes back. From the receiver's records: one hand-off per contact, one delivery per
   idempotency key, none lost; and the time from the receiver's return until the last
   hand-off arrived, which the hand-off retry policy (10 s doubling to 30 min) bounds.

    pytest tests/faults/test_faults_channels.py -m faults -s                  # short form
    STAGECOACH_FAULT_CONTACTS=500 pytest tests/faults/test_faults_channels.py -m faults -s
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.services.storage.models import Handoff
from stagecoach.engine.temporal.gateway import contact_view
from tests.faults._harness import (
    EVENTS_PER_CONTACT,
    WAITING_STEP,
    Books,
    Figures,
    Person,
    Stack,
    _messages,
    contact_ids,
    contacts_from_env,
    deliveries,
    drive,
    people,
    seconds,
    until,
)
from tests.peers.crm import WebhookReceiver
from tests.peers.http_email import GENERIC, HttpEmailPeer
from tests.peers.wechat import PEER_APPID, PEER_SECRET, WeChatPeer

pytestmark = pytest.mark.faults

CONTACTS = contacts_from_env()
FULL = CONTACTS >= 500
RATE = 60.0 if not FULL else 150.0
SETTLE = 200.0 if not FULL else 600.0

TOKEN_SECONDS = seconds("TOKEN", short=3.0, full=3.0)
"""Scenario 5: every WeChat token dies at each multiple of this many seconds."""
ANNOUNCED_LIFETIME = 7200.0
"""...while the peer says ``expires_in`` 7200, as WeChat does."""
CRM_DOWN = seconds("CRM_DOWN", short=12.0, full=1800.0)
"""Scenario 6: how long the CRM receiver is down."""
HANDOFF_MAX_INTERVAL = 1800.0
"""``HANDOFF_RETRY.maximum_interval`` (workflows/contact/sales.py): the longest wait between
two hand-off attempts, so the longest a recovered receiver waits for the last one."""
WEBHOOK_SECRET = "whsec-faults"


def _openid(person: Person) -> str:
    return f"o{person.user_id}"


async def _settle(
    stack: Stack, persons: list[Person], *, events: int, step: str = WAITING_STEP
) -> float:
    """Seconds until every contact's send settled and its workflow applied ``events``
    events and reached ``step`` of ``b2b_nurture``."""

    async def done() -> bool:
        ids = contact_ids(stack.engine, persons)
        if len(ids) < len(persons):
            return False
        rows = deliveries(stack.engine, ids.values())
        if sum(r.status in ("sent", "failed") for r in rows) < len(persons):
            return False
        for person in persons:
            view = await contact_view(stack.client, ids[person.user_id])
            if view.run_events < events:
                return False
            if [j["step"] for j in view.journeys if j["journey"] == "b2b_nurture"] != [step]:
                return False
        return True

    return await until(
        done, within=SETTLE, what="every send settled and every event applied", every=1.0
    )


# --- 5. WeChat --------------------------------------------------------------------------


def _wechat_messages(person: Person) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The standard five, from a follower of the Official Account who prefers WeChat.
    The email stays: the channel is the contact's preference, not the only address."""
    identify, later = _messages(person)
    identify["traits"].update(
        wechat_openid=_openid(person),
        consent={"wechat": True},
        preferred_channel="wechat",
        locale="zh-CN",
        timezone="Asia/Shanghai",
    )
    return identify, later


@pytest.mark.timeout(420 if not FULL else 1800)
async def test_wechat_tokens_expiring_early_and_error_bursts_send_each_message_once(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """5. The WeChat peer expires every token early and answers -1 and 45011 bursts."""
    persons = people(f"x{uuid.uuid4().hex[:6]}", CONTACTS)
    burst_size = max(5, CONTACTS // 10)
    started = time.monotonic()
    with WeChatPeer(token_lifetime=ANNOUNCED_LIFETIME, expire_every=TOKEN_SECONDS) as peer:
        stack = Stack.create(
            tmp_path, env.client, task_queue,
            wechat_connector="wechat", wechat_appid=PEER_APPID, wechat_secret=PEER_SECRET,
            wechat_api_base=peer.url,
        )  # fmt: skip
        try:
            stack.worker()
            await stack.api()
            faults = [
                f"every token dies at each {TOKEN_SECONDS:g} s boundary "
                f"(announced {ANNOUNCED_LIFETIME:.0f} s)"
            ]

            async def burst(errcode: int, share: float) -> None:
                await until(
                    lambda: _true(len(peer.accepted) >= CONTACTS * share),
                    within=SETTLE, what=f"{share:.0%} of the messages in", every=0.05,
                )  # fmt: skip
                at = time.monotonic() - started
                peer.fail_next(errcode, times=burst_size, endpoint="template")
                await until(
                    lambda: _true(peer.refused(errcode) >= burst_size),
                    within=SETTLE, what=f"the errcode {errcode} burst met {burst_size} sends",
                    every=0.05,
                )  # fmt: skip
                faults.append(f"{burst_size} x errcode {errcode} from {at:.1f} s")

            async def bursts() -> None:
                await burst(-1, 0.1)
                await burst(45011, 0.4)

            workload, _ = await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE, messages_of=_wechat_messages),
                bursts(),
            )
            settle = await _settle(stack, persons, events=EVENTS_PER_CONTACT)
            seconds = time.monotonic() - started
            accepted = peer.accepted
            figures = Figures(
                "5 WeChat tokens expire early, -1 and 45011 bursts", CONTACTS, workload.rate,
                faults, seconds=seconds, settle_seconds=settle,
                notes=f"send calls {peer.send_calls()}, refused 42001 x{peer.refused(42001)}, "
                f"-1 x{peer.refused(-1)}, 45011 x{peer.refused(45011)}; token requests "
                f"{peer.token_requests}, tokens issued {peer.tokens_issued}, "
                f"expired {peer.expiries}; resent and dropped by WeChat as repeats of a "
                f"client_msg_id {peer.duplicates_suppressed}",
            )  # fmt: skip
            books = Books(
                stack, persons, workload,
                received=Counter(m.openid for m in accepted),
                keys=Counter(m.client_msg_id for m in accepted),
                recipient=_openid,
            )  # fmt: skip
            await books.check(figures)
            figures.publish()

            ids = contact_ids(stack.engine, persons)
            assert {r.channel for r in deliveries(stack.engine, ids.values())} == {"wechat"}
            assert {(m.kind, m.body.get("template_id")) for m in accepted} == {
                ("template", "IB-TM-CONTENT-READY")
            }
            assert all(m.client_msg_id for m in accepted), "a template message without a key"
            # Nothing went by email although every contact has an address.
            assert not list((stack.settings.resolved_sink_dir / "email").glob("*/*.json"))
            # A resend of a message WeChat took is dropped by its client_msg_id (counted in
            # the notes): it happens when the delivery's "sent" record fails after the send
            # (SQLite "database is locked" under load), and the retry sends again.
            # The faults met the workload.
            assert peer.refused(42001) > 0, "no send met an expired token"
            assert peer.refused(-1) == burst_size
            assert peer.refused(45011) == burst_size
            # Single flight: every token request got a new token (none asked for the
            # token another send had just fetched), none was forced, and at most one
            # was issued per expiry (boundaries passed, plus the first).
            assert peer.force_refreshes == 0
            assert peer.token_requests == peer.tokens_issued, (
                peer.token_requests,
                peer.tokens_issued,
            )
            assert peer.tokens_issued <= math.ceil(seconds / TOKEN_SECONDS) + 1
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


async def _true(value: bool) -> bool:
    return value


# --- 6. CRM -----------------------------------------------------------------------------

HANDOFF_EVENTS = 7
"""Identify, three pricing views, the whitepaper download, a demo request, a blog view."""


def _lead_messages(person: Person) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A lead that qualifies: grade A (a CTO: 85 or 100) or B (an engineer outside the
    served regions: 70) from its identify, score
    30 + 15 + 30 = 75 from pricing views, the download and a demo request (MQL: 60 and
    B), then one more page view that a blocked hand-off holds back."""
    identify, later = _messages(person)
    n = int(person.user_id.rsplit("c", 1)[1])
    identify["traits"].update(
        industry="manufacturing",
        company_size=250,
        role="cto" if n % 2 else "engineer",
        # Overseas leads go to the international pool; the rest by grade.
        region="overseas" if n % 5 == 0 else "east_china" if n % 2 else "west_europe",
    )
    pages, download = later[:-1], later[-1]
    for page in pages:
        page["name"] = "Pricing"
        page["properties"] = {"category": "pricing", "url": "https://example.com/pricing"}
    uid = person.user_id
    demo = {
        "type": "track",
        "userId": uid,
        "messageId": f"{uid}-demo",
        "event": "demo.requested",
        "properties": {},
    }
    blog = {
        "type": "page",
        "userId": uid,
        "messageId": f"{uid}-after",
        "name": "Blog",
        "properties": {"category": "blog", "url": "https://example.com/blog/after"},
    }
    return identify, [*pages, download, demo, blog]


def _handoffs(stack: Stack, contacts: list[str]) -> list[Handoff]:
    with Session(stack.engine) as session:
        return list(session.exec(select(Handoff).where(col(Handoff.contact_id).in_(contacts))))


async def _held(stack: Stack, contacts: list[str], receiver: WebhookReceiver) -> str:
    """The hand-offs pending now (routed and recorded, not received), and how many of
    those contacts have events not yet applied: the workflow applies a contact's events
    in order, so a hand-off being retried holds back the events after it."""
    received = {str(d.payload["contact_id"]) for d in receiver.deliveries}
    pending = [r.contact_id for r in _handoffs(stack, contacts) if r.contact_id not in received]
    held = answered = 0
    for contact_id in pending:
        with contextlib.suppress(RPCError, WorkflowQueryFailedError):
            view = await contact_view(stack.client, contact_id)
            answered += 1
            held += view.run_events < HANDOFF_EVENTS
    return f"{len(pending)} hand-offs pending, {held} of {answered} queried with events held"


@pytest.mark.timeout(480 if not FULL else int(CRM_DOWN * 2 + 1800))
async def test_crm_down_while_hand_offs_are_due_hands_each_lead_over_once(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """6. The CRM (a webhook receiver) is down while hand-offs are due, then comes back."""
    persons = people(f"m{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    with HttpEmailPeer() as peer, receiver:
        stack = Stack.create(
            tmp_path, env.client, task_queue,
            email_connector="http", email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
            crm_connector="webhook", webhook_url=receiver.endpoint,
            webhook_secret=WEBHOOK_SECRET,
        )  # fmt: skip
        try:
            stack.worker()
            await stack.api()
            faults: list[str] = []
            marks: dict[str, Any] = {}

            async def outage() -> None:
                await until(
                    lambda: _true(len(receiver.deliveries) >= CONTACTS // 4),
                    within=SETTLE, what="a quarter of the hand-offs in", every=0.05,
                )  # fmt: skip
                marks["down"] = time.monotonic()
                await asyncio.to_thread(receiver.stop)
                marks["in_before"] = len(receiver.deliveries)
                await asyncio.sleep(CRM_DOWN / 2)
                receiver.down()  # before it listens again: no request slips through
                seen_503 = len(receiver.seen)
                await asyncio.to_thread(receiver.start)
                halfway = time.monotonic()
                # While it is down: the hand-offs due, and the events they hold back.
                marks["held"] = await _held(
                    stack, list(contact_ids(stack.engine, persons).values()), receiver
                )
                await asyncio.sleep(max(0.0, CRM_DOWN / 2 - (time.monotonic() - halfway)))
                # Retries back off exponentially (1, 2, 4, 8, 16 s...), so on a busy machine
                # every pending hand-off can be between attempts for the whole 503 half.
                # The receiver keeps answering 503 until it has refused one, so the 503
                # path is always exercised; the extra time is in the figures.
                await until(
                    lambda: _true(len(receiver.seen) > seen_503),
                    within=120, what="a hand-off attempted while it answers 503",
                    every=0.1,
                )  # fmt: skip
                marks["answered_503"] = len(receiver.seen) - seen_503
                marks["in_at_back"] = len(receiver.deliveries)
                receiver.up()
                marks["back"] = time.monotonic()
                at = marks["down"] - started
                faults.append(
                    f"CRM down {CRM_DOWN:.0f} s from {at:.1f} s "
                    f"({CRM_DOWN / 2:.0f} s refusing connections, then "
                    f"{CRM_DOWN / 2:.0f} s of 503: {marks['answered_503']} attempts)"
                )

            down = asyncio.create_task(outage())
            try:
                workload = await drive(
                    stack.api_url, stack.key, persons, rate=RATE, messages_of=_lead_messages
                )
                loaded = time.monotonic()
                await down
            finally:
                down.cancel()
            ids = contact_ids(stack.engine, persons)
            recovery = await until(
                lambda: _true(len(receiver.deliveries) >= CONTACTS),
                within=min(2 * CRM_DOWN, HANDOFF_MAX_INTERVAL) + 120,
                what="every hand-off delivered after the CRM came back",
            )
            await _settle(stack, persons, events=HANDOFF_EVENTS)
            settle = time.monotonic() - loaded  # the outage and the recovery included
            handoffs = receiver.deliveries
            duplicates = (
                len(receiver.seen)
                - marks["answered_503"]
                - len(handoffs)
                - len(receiver.rejections)
            )
            figures = Figures(
                "6 CRM webhook down while hand-offs are due", CONTACTS, workload.rate,
                faults, seconds=time.monotonic() - started, settle_seconds=settle,
                notes=f"hand-offs expected {CONTACTS}, received {len(handoffs)} "
                f"({marks['in_before']} before the outage, "
                f"{len(handoffs) - marks['in_at_back']} after it), "
                f"resent and answered 409 by the receiver {duplicates}; "
                f"all delivered {recovery:.1f} s after the CRM came back; "
                f"halfway through the outage: {marks['held']}",
            )  # fmt: skip
            books = Books(
                stack, persons, workload,
                received=Counter(str(r.body["to"]).lower() for r in peer.received(GENERIC)),
                keys=Counter(r.key_digest for r in peer.received(GENERIC)),
                events_per_contact=HANDOFF_EVENTS,
                stage="lead",
            )  # fmt: skip
            await books.check(figures)
            figures.publish()

            # Exactly once at the receiver: one hand-off per contact, one per key.
            by_contact = Counter(str(d.payload["contact_id"]) for d in handoffs)
            assert by_contact == Counter({c: 1 for c in ids.values()}), by_contact.most_common(3)
            assert all(n == 1 for n in Counter(d.key for d in handoffs).values())
            assert receiver.rejections == [], receiver.rejections[:3]
            # ...and as the database says: one hand-off row each, the one received.
            rows = _handoffs(stack, list(ids.values()))
            assert Counter(r.contact_id for r in rows) == by_contact
            assert {r.id for r in rows} == {d.payload["data"]["handoff_id"] for d in handoffs}
            assert {r.status for r in rows} == {"sent"}
            expected_grade = {
                ids[p.user_id]: "A" if int(p.user_id.rsplit("c", 1)[1]) % 2 else "B"
                for p in persons
            }
            assert {r.contact_id: r.grade for r in rows} == expected_grade
            # The outage met hand-offs that were due: some arrived only after it.
            assert marks["in_at_back"] < CONTACTS, "every hand-off went through before it"
            assert marks["in_at_back"] == marks["in_before"], "the receiver took one while down"
            assert marks["answered_503"] > 0, "no hand-off was attempted while it answered 503"
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())
