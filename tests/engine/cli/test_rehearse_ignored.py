"""``stagecoach journeys rehearse`` says which scripted events the journey ignored.

``b2b_nurture`` waits for ``trial.started`` only in its purchase phase, without
``since``: a trial started while the contact is still in awareness is ignored, and the
rehearsal's story and its closing warning say so. The worker is the production one on
the Temporal dev server; the command runs in a subprocess, as a user runs it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.settings import Settings
from tests.engine.cli.conftest import Shell
from tests.workflows.conftest import open_runtime


async def test_a_trial_started_during_awareness_is_shown_as_ignored(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    shell: Callable[[Settings], Shell],
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        code, out, err = await shell(runtime.settings).run(
            "journeys",
            "rehearse",
            "b2b_nurture",
            "--time-scale",
            "0.00002",
            "--event",
            "1d:trial.started",
            "--timeout",
            "12",
        )
        contact_id = out.split(" as ", 1)[1].split()[0]
        runtime.touched.add(contact_id)

    assert code == 0, err
    story = out.splitlines()
    [line] = [s for s in story if s.split()[2:3] == ["ignored"]]
    # Where the event arrived in the story, in journey time, and why it was lost.
    assert " trial.started arrived at d1 " in line
    assert (
        "while b2b_nurture/awareness-await-interest was waiting for content.downloaded or"
        " page.viewed; purchase-await-trial waits for it later and will not count it"
    ) in line
    event_line = next(
        n for n, s in enumerate(story) if s.split()[2:4] == ["event", "trial.started"]
    )
    assert story.index(line) == event_line + 1
    warning = story.index(
        "warning: 1 event(s) arrived while no step was waiting for them and were ignored:"
    )
    assert story[warning + 1].startswith("  ignored: trial.started arrived at d1 ")
