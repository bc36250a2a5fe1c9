"""A broadcast with its worker SIGKILLed mid-run: the short form of the issue's
100,000-recipient kill benchmark (``tests/bench/test_broadcast_kill.py``).

A broadcast to ``RECIPIENTS`` (300) members of a manual list, over email to a real peer,
sent by ``stagecoach worker`` as a child process in batches of ``BATCH`` (50). The
worker is SIGKILLed twice while the peer is taking messages in (once a third of the
audience arrived, and again at two thirds after the first kill's batch was picked up
again) and started again at once each time. Then the books:

- the broadcast completed, and its report counts every recipient sent;
- every recipient's snapshot row is ``sent``, with one ``sent`` delivery row each under
  the broadcast's key;
- no recipient lost at the peer, and nobody else sent.

Two peers, two guarantees:

- ``http``: the generic HTTP email provider (``tests/peers/http_email``), which honours
  the ``Idempotency-Key`` as Postmark's or SendGrid's batch APIs do with theirs: every
  recipient exactly once. The killed batch's retry sends again every recipient whose
  delivery row said ``sending``; the provider answers those as duplicates.
- ``smtp``: a real SMTP server (aiosmtpd, counting copies per
  ``X-Stagecoach-Idempotency-Key``). SMTP has no idempotency key, so the batch commits
  each recipient's ``sent`` row at the connector's point of no return (after DATA's 354,
  before the content and its final dot): a worker killed before that commit leaves a
  message the server discards with the dropped connection, one killed after it leaves a
  ``sent`` row the retry skips. The test measures, at each kill, the messages the peer
  holds that the books do not record ``sent`` (what a retry would send again; before
  the point of no return there were a few per kill) and asserts there are none, and
  that nobody is received twice.

A kill costs the killed batch's heartbeat timeout (30 s: the new worker cannot know the
old one died until then), so each case takes about 65 s; the two run at once.

    pytest tests/faults/test_faults_broadcast.py -s
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.broadcasts import Broadcast
from stagecoach.engine.services.broadcasts import store
from stagecoach.engine.services.broadcasts.metrics import broadcast_report
from stagecoach.engine.services.publishing import latest_versions
from stagecoach.engine.services.storage.models import BroadcastRecipient, Delivery
from tests.bench._support import (
    BROADCAST_CONTENT,
    broadcast_status,
    broadcast_with_kills,
    launch_broadcast,
    seed_broadcast_audience,
)
from tests.faults._harness import Stack, until
from tests.peers.http_email import GENERIC, HttpEmailPeer
from tests.peers.smtp import SmtpPeer

pytestmark = pytest.mark.faults

RECIPIENTS = 300
BATCH = 50
KILLS_AT = (RECIPIENTS // 3, 2 * RECIPIENTS // 3)
PEERS = ("http", "smtp")


def sent_rows(stack: Stack, name: str) -> set[str]:
    """Key digests of the broadcast's delivery rows recorded ``sent``."""
    with Session(stack.engine) as session:
        keys = session.exec(
            select(col(Delivery.idempotency_key)).where(
                col(Delivery.journey) == f"broadcast:{name}", col(Delivery.status) == "sent"
            )
        ).all()
    return {key_digest(k) for k in keys}


@pytest.mark.timeout(300)
async def test_broadcast_with_its_worker_sigkilled_twice_loses_and_repeats_nobody(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Both peers at once, each with its own stack and worker: the kills' waits overlap."""
    for kind in PEERS:
        (tmp_path / kind).mkdir()
    await asyncio.gather(
        *(
            killed_twice(
                env, f"broadcast-kill-{kind}-{uuid.uuid4().hex[:8]}", tmp_path / kind, kind
            )
            for kind in PEERS
        )
    )


async def killed_twice(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, peer_kind: str
) -> None:
    name = f"killed-{uuid.uuid4().hex[:6]}"
    with contextlib.ExitStack() as peers:
        if peer_kind == "smtp":
            smtp = peers.enter_context(SmtpPeer())
            connector = {"smtp_host": smtp.host, "smtp_port": str(smtp.port)}

            def received() -> list[str | None]:
                return [m.key_digest for m in smtp.received]

        else:
            http = peers.enter_context(HttpEmailPeer())
            connector = {
                "email_http_url": http.generic_url,
                "email_http_token": http.generic_token,
            }

            def received() -> list[str | None]:
                return [r.key_digest for r in http.received(GENERIC)]

        stack = Stack.create(
            tmp_path, env.client, task_queue, email_connector=peer_kind, **connector
        )
        window: set[str] = set()
        try:
            ids = seed_broadcast_audience(stack.engine, f"{name}-list", RECIPIENTS, prefix=name)
            worker = stack.worker()
            await until(
                lambda: asyncio.to_thread(lambda: "b2b_nurture" in latest_versions(stack.engine)),
                within=60,
                what="the worker started",
                every=0.2,
            )
            started = time.monotonic()
            await launch_broadcast(
                stack.client,
                stack.engine,
                Broadcast(name=name, segment=f"{name}-list", content=BROADCAST_CONTENT),
                task_queue=task_queue,
                batch_size=BATCH,
            )

            async def count() -> int:
                return len(received())

            async def completed() -> bool:
                return await asyncio.to_thread(broadcast_status, stack.engine, name) == "completed"

            async def measure_window() -> None:
                # The worker is dead: what the peer holds and the books do not record
                # ``sent`` is what the retry will send again.
                window.update({k for k in received() if k is not None} - sent_rows(stack, name))

            kills = await broadcast_with_kills(
                worker,
                KILLS_AT,
                progress=count,
                done=completed,
                within=200,
                on_kill=measure_window,
            )
            seconds = time.monotonic() - started
        finally:
            for child in stack.children.values():
                child.kill()
        copies = Counter(received())

    duplicated = {k for k, n in copies.items() if n > 1}
    print(
        f"\n  {peer_kind}: broadcast to {RECIPIENTS}, batches of {BATCH}, worker SIGKILLed "
        f"{len(kills)} times: "
        + "; ".join(
            f"at {k.at:.1f} s with {k.progress} received, sending again {k.stalled:.1f} s later"
            for k in kills
        )
        + f"; completed in {seconds:.1f} s; peer: {sum(copies.values())} messages, "
        f"{len(copies)} recipients, {len(duplicated)} received twice "
        f"({len(window)} taken in but not yet recorded sent when killed)"
    )
    assert len(kills) == 2
    assert all(k.progress < RECIPIENTS for k in kills), "a kill came after the last send"
    expected = {key_digest(store.delivery_key(name, cid)) for cid in ids}
    assert set(copies) == expected, (
        f"{len(expected - set(copies))} recipients lost, "
        f"{len(set(copies) - expected)} strangers sent"
    )
    assert max(copies.values()) <= 2
    if peer_kind == "smtp":
        # The point of no return: every message the server took is recorded sent. (Over
        # HTTP such messages are expected; the provider drops the retry by its key.)
        assert not window, f"{len(window)} messages at the peer not recorded as sent"
    assert not duplicated, f"{len(duplicated)} recipients received twice"

    report = broadcast_report(stack.engine, name)
    assert (report.status, report.audience, report.sent) == ("completed", RECIPIENTS, RECIPIENTS)
    with Session(stack.engine) as session:
        statuses = Counter(
            session.exec(
                select(col(BroadcastRecipient.status)).where(
                    col(BroadcastRecipient.broadcast_id) == name
                )
            ).all()
        )
        rows = session.exec(
            select(col(Delivery.idempotency_key), col(Delivery.status)).where(
                col(Delivery.journey) == f"broadcast:{name}"
            )
        ).all()
    assert statuses == Counter({"sent": RECIPIENTS})
    assert sorted(rows) == sorted((store.delivery_key(name, cid), "sent") for cid in ids)
    await stack.close([])
