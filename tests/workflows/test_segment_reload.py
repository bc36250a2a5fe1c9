"""A segment published after a contact's workflow loaded its definitions, on the dev
server (real time: nothing here needs time skipped): the list change makes the workflow
load its definitions again, so the upload is adopted and the journey published with the
list runs."""

from __future__ import annotations

from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import Journey, send
from stagecoach.engine.domain.segments import LIST_ADDED, segment_entered
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.temporal.gateway import contact_view
from tests.workflows.conftest import eventually, open_runtime
from tests.workflows.test_segments import VIP, members, publish_journeys, sent


async def test_a_list_published_after_the_contact_opened_is_still_adopted(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    """The contact's workflow loaded its definitions before the list existed: the list
    change makes it load them again, so the upload is adopted and the journey published
    with the list runs."""
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        who = "seg-late-list"
        await runtime.event(who, "identify", traits={"email": "lu@example.cn", "locale": "en"})

        async def opened() -> bool:  # its definitions are loaded: no segment among them
            return (await contact_view(runtime.client, who)).stage != ""

        await eventually(opened, within=30)
        publish_segments(runtime.engine, [VIP.spec()], source="test")
        publish_journeys(
            runtime,
            content_library,
            Journey(
                "seg_late_invite",
                entry=segment_entered("vip-list"),
                steps=[send("customer-story-invite", channel="email", id="invite")],
            ),
        )
        await runtime.event(who, LIST_ADDED, properties={"segment": "vip-list"})

        async def invited() -> bool:
            return sent(runtime, who, "seg_late_invite") == ["customer-story-invite"]

        await eventually(invited, within=30)
        assert members(runtime, "vip-list") == {who}
