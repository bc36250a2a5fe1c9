"""The versioning path of the sales hand-off's episodes: a run recorded before them (where
accepting brought a second hand-off) replays on today's code only because the change sits
behind ``workflow.patched``. Its own module, so the workflow sandbox re-imports little."""

from __future__ import annotations

from pathlib import Path

from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from stagecoach.engine.domain.conditions import EventRecord
from stagecoach.engine.protocol.messages import ContactInput
from stagecoach.workflows.contact import ContactWorkflow

HISTORIES = Path(__file__).with_name("histories")


@workflow.defn(name="Contact")
class ContactWorkflowThatSettlesUnpatched(ContactWorkflow):
    """A careless edit: episodes kept for every run, without the patch's marker."""

    @workflow.run
    async def run(self, inp: ContactInput) -> str | None:
        return await super().run(inp)

    async def _on_feedback(self, decision: str, record: EventRecord) -> None:
        handoff = self._handoff
        await super()._on_feedback(decision, record)
        if decision != "rejected" and handoff is not None:
            self._handoff = {**handoff, "status": decision}


def _history(name: str) -> WorkflowHistory:
    path = HISTORIES / f"{name}.json"
    return WorkflowHistory.from_json(f"replay-{name}", path.read_text(encoding="utf-8"))


async def test_a_run_answered_before_episodes_replays_only_behind_the_patch() -> None:
    # Recorded on the code before the patch: accepting brought a second hand-off. The
    # patched code replays it (the patch is off in that run); the same change made
    # without the patch does not.
    old = _history("handoff_answered_before_episodes")
    await Replayer(workflows=[ContactWorkflow]).replay_workflow(old)
    # Unsandboxed: the sandbox re-imports this module, where an activity result's
    # datetime fails to decode, a failure that would pass this test whatever the edit.
    result = await Replayer(
        workflows=[ContactWorkflowThatSettlesUnpatched],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ).replay_workflow(old, raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, workflow.NondeterminismError), result.replay_failure
    # And a run with the patch replays with its one hand-off.
    await Replayer(workflows=[ContactWorkflow]).replay_workflow(
        _history("handoff_episode_accepted_then_converted")
    )
