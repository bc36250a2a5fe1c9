"""A channel's rate holds across every worker (issue 22): with ``STAGECOACH_EMAIL_RATE``
set, journeys' email sends run on the email send queue, whose activity rate the Temporal
server enforces for the whole queue, however many workers poll it.

Two workers, each on a connection of its own as two worker processes would be, share the
queue. The 24 sends took 1.2 s at 1,000 a second and 8.5 s at 4 a second (the suite
running beside), so the limit is what holds them back. Only the lower bound of the time
the sends take is asserted: a loaded machine can make a run slower, never faster, so the
check cannot flake under load.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlmodel import Session, select
from temporalio.client import Client

from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.engine.cli.compose import build_activities
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.services.storage.models import Delivery
from stagecoach.workflows.worker import build_send_workers
from tests.workflows.conftest import eventually, open_runtime
from tests.workflows.test_broadcasts import Counting

RATE = 4.0
CONTACTS = 24


async def test_the_email_rate_holds_across_two_workers(
    env: Any, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    sink = FileSinkConnector(tmp_path / "sink", channel="email")
    counters = [Counting(sink), Counting(sink)]
    async with open_runtime(
        env,
        task_queue,
        tmp_path,
        content_library,
        connectors={"email": counters[0]},
        email_rate=RATE,
    ) as runtime:
        queues = runtime.settings.send_queues()
        assert queues == {"email": (f"{task_queue}-send-email", RATE)}
        # The second worker: its own connection, its own activities and connector.
        target = runtime.client.service_client.config.target_host
        client = await Client.connect(target, data_converter=runtime.client.data_converter)
        theirs = build_activities(
            runtime.engine,
            runtime.settings,
            content=content_library,
            connectors={"email": counters[1]},
        )
        [twin] = build_send_workers(
            client, queues, deliver=theirs.deliver, hand_off=theirs.hand_off
        )
        async with twin:
            await asyncio.gather(
                *(
                    runtime.event(
                        f"paced-{n:02}",
                        "page.viewed",
                        properties={"category": "blog"},
                        traits={"email": f"p{n}@example.cn", "locale": "en", "timezone": "UTC"},
                    )
                    for n in range(CONTACTS)
                )
            )

            def sent() -> int:
                with Session(runtime.engine) as session:
                    rows = session.exec(select(Delivery).where(Delivery.status == "sent")).all()
                return len([r for r in rows if r.contact_id.startswith("paced-")])

            async def all_sent() -> bool:
                return sent() >= CONTACTS

            await eventually(all_sent, within=90)
    times = sorted(t for c in counters for t in c.times)
    assert len(times) == CONTACTS == sent()  # each once
    elapsed = times[-1] - times[0]
    print(f"\n  {CONTACTS} journey emails at {RATE:.0f}/s on 2 workers: {elapsed:.1f} s")
    # The server lets a second's burst through, then RATE a second.
    assert elapsed >= CONTACTS / RATE - 1.5, elapsed
    assert all(c.times for c in counters), [len(c.times) for c in counters]  # both sent
