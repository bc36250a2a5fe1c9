"""Replay: every recorded history (the contact and broadcast workflows, and the
Schedules' value refresh and propensity retrain) must replay on today's code.

Histories under ``histories/`` were recorded from real runs (see ``record_history`` in
conftest). A change to workflow code that alters the commands an old history recorded
fails here before it can fail a running contact. The patching path for such a change is
``workflow.patched(id)``, then ``workflow.deprecate_patch(id)``, then removal, each step
replayed against these files. A step that drops support for runs recorded before it
(deprecation drops runs without the marker, removal drops runs with it) is taken only
when no such run is open; their histories then move to ``histories/retired/``, where a
test keeps proving they no longer replay, which is why they had to be closed first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from stagecoach.engine.protocol import PROPENSITY_RETRAIN_WORKFLOW, VALUE_REFRESH_WORKFLOW
from stagecoach.engine.protocol.messages import BroadcastInput, ContactInput
from stagecoach.workflows.broadcasts import BroadcastWorkflow
from stagecoach.workflows.contact import ContactWorkflow
from stagecoach.workflows.prediction import PropensityRetrainWorkflow
from stagecoach.workflows.value import ValueRefreshWorkflow

HISTORIES = sorted(Path(__file__).with_name("histories").glob("*.json"))
RETIRED = sorted(Path(__file__).with_name("histories").glob("retired/*.json"))


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text(encoding="utf-8"))


async def _replay_edit(
    edit: type[ContactWorkflow] | type[BroadcastWorkflow], path: Path
) -> BaseException:
    """Replay ``path`` on a careless edit of the workflow and return why it failed, which
    must be nondeterminism: the edit issues other commands than the history recorded.

    The edits are subclasses defined in this test module, which the SDK's sandbox
    re-imports with its own ``datetime``; there an activity result holding a datetime
    fails to decode, a failure that made these tests pass whatever the edit did. Replay
    without the sandbox checks the commands the same way, and the unchanged workflow
    replays the same file cleanly on that runner (the first assertion).
    """
    original = BroadcastWorkflow if issubclass(edit, BroadcastWorkflow) else ContactWorkflow
    clean = await Replayer(
        workflows=[original], workflow_runner=UnsandboxedWorkflowRunner()
    ).replay_workflow(_history(path), raise_on_replay_failure=False)
    assert clean.replay_failure is None, clean.replay_failure
    result = await Replayer(
        workflows=[edit], workflow_runner=UnsandboxedWorkflowRunner()
    ).replay_workflow(_history(path), raise_on_replay_failure=False)
    failure = result.replay_failure
    assert failure is not None, f"{edit.__name__} replays {path.stem}: the edit went unseen"
    assert isinstance(failure, workflow.NondeterminismError), repr(failure)
    return failure


def test_histories_are_recorded() -> None:
    assert len(HISTORIES) >= 5


@pytest.mark.parametrize("path", RETIRED, ids=lambda p: p.stem)
async def test_retired_history_no_longer_replays(path: Path) -> None:
    result = await Replayer(workflows=[ContactWorkflow]).replay_workflow(
        _history(path), raise_on_replay_failure=False
    )
    assert result.replay_failure is not None


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays_on_current_code(path: Path) -> None:
    workflows = [
        ContactWorkflow,
        BroadcastWorkflow,
        ValueRefreshWorkflow,
        PropensityRetrainWorkflow,
    ]
    await Replayer(workflows=workflows).replay_workflow(_history(path))


def test_the_scheduled_workflows_have_recorded_histories() -> None:
    """The Schedules' workflows (value refresh, propensity retrain) are replayed too: a
    change to the commands they issue (another activity, a timer) fails here first."""
    kinds = {
        WorkflowHistory.from_json(p.stem, p.read_text(encoding="utf-8"))
        .events[0]
        .workflow_execution_started_event_attributes.workflow_type.name
        for p in HISTORIES
    }
    assert {VALUE_REFRESH_WORKFLOW, PROPENSITY_RETRAIN_WORKFLOW} <= kinds


@workflow.defn(name="Contact")
class ContactWorkflowThatForgetsTransitions(ContactWorkflow):
    """A careless edit: stage changes no longer recorded by an activity."""

    @workflow.run
    async def run(self, inp: ContactInput) -> None:
        await super().run(inp)

    async def _record_transition(self, transition: object) -> None:
        return None


async def test_a_change_to_recorded_commands_is_caught_by_replay() -> None:
    path = next(p for p in HISTORIES if p.stem.startswith("created_by_a_download"))
    await _replay_edit(ContactWorkflowThatForgetsTransitions, path)


@workflow.defn(name="Contact")
class ContactWorkflowThatWaitsForChannelsUngated(ContactWorkflow):
    """A careless edit: every run waits for a channel, whatever its input."""

    @workflow.run
    async def run(self, inp: ContactInput) -> None:
        self._waits_for_channel = True
        await super().run(inp)


@workflow.defn(name="Contact")
class ContactWorkflowThatOpensFirstUngated(ContactWorkflow):
    """A careless edit: every new contact applies its opening first, whatever its input."""

    @workflow.run
    async def run(self, inp: ContactInput) -> None:
        self._applies_opening_first = True
        await super().run(inp)


@workflow.defn(name="Contact")
class ContactWorkflowThatOpensInOrderUngated(ContactWorkflow):
    """A careless edit: every new contact's opening batch enrols in order."""

    @workflow.run
    async def run(self, inp: ContactInput) -> None:
        self._opens_in_order = True
        await super().run(inp)


@pytest.mark.parametrize(
    ("edit", "stem"),
    [
        # This run, recorded before the gate, met a send with no usable channel and
        # recorded the enrolment's end; waiting instead issues other commands there.
        (ContactWorkflowThatWaitsForChannelsUngated, "enrolment_recorded_awaited"),
        # This run enrolled before its creating download moved the stage; applying the
        # download first records the stage move before the send.
        (ContactWorkflowThatOpensFirstUngated, "created_by_a_download"),
        # This run's opening batch (webinar, trial, order) enrolled its journey on the
        # whole batch; in order, the journey hears the trial and waits for no offer.
        (ContactWorkflowThatOpensInOrderUngated, "opening_batch_before_in_order"),
    ],
    ids=["waits_for_channel", "applies_opening_first", "opening_in_order"],
)
async def test_the_reachability_changes_replay_only_behind_their_gates(
    edit: type[ContactWorkflow], stem: str
) -> None:
    path = next(p for p in HISTORIES if p.stem == stem)
    await _replay_edit(edit, path)


def test_histories_of_the_reachability_changes_are_recorded() -> None:
    stems = {p.stem for p in HISTORIES}
    assert {
        "no_address_waits_for_a_channel",
        "qr_follower_whitepaper_by_wechat",
        "anonymous_visitor_identified_later",
        "opening_batch_in_order",
    } <= stems


@workflow.defn(name="Broadcast")
class BroadcastWorkflowThatSkipsStatusRecords(BroadcastWorkflow):
    """A careless edit: pause, resume and the end no longer recorded by an activity."""

    @workflow.run
    async def run(self, progress: BroadcastInput) -> dict[str, Any]:
        return await super().run(progress)

    async def _mark(self, status: str, reason: str | None) -> None:
        self._status = status


async def test_a_change_to_a_broadcasts_recorded_commands_is_caught_by_replay() -> None:
    path = next(p for p in HISTORIES if p.stem == "broadcast_paused_resumed_cancelled")
    await _replay_edit(BroadcastWorkflowThatSkipsStatusRecords, path)


@workflow.defn(name=VALUE_REFRESH_WORKFLOW)
class ValueRefreshThatWaitsFirst(ValueRefreshWorkflow):
    """A careless edit: a timer before the refresh."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        await workflow.sleep(60)
        return await super().run()


@workflow.defn(name=PROPENSITY_RETRAIN_WORKFLOW)
class PropensityRetrainThatWaitsFirst(PropensityRetrainWorkflow):
    """The same careless edit of the retrain."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        await workflow.sleep(60)
        return await super().run()


@pytest.mark.parametrize(
    ("stem", "original", "edit"),
    [
        ("value_refresh_scheduled", ValueRefreshWorkflow, ValueRefreshThatWaitsFirst),
        (
            "propensity_retrain_scheduled",
            PropensityRetrainWorkflow,
            PropensityRetrainThatWaitsFirst,
        ),
    ],
)
async def test_a_change_to_a_scheduled_workflows_commands_is_caught_by_replay(
    stem: str, original: type, edit: type
) -> None:
    path = next(p for p in HISTORIES if p.stem == stem)
    clean = await Replayer(
        workflows=[original], workflow_runner=UnsandboxedWorkflowRunner()
    ).replay_workflow(_history(path), raise_on_replay_failure=False)
    assert clean.replay_failure is None, clean.replay_failure
    result = await Replayer(
        workflows=[edit], workflow_runner=UnsandboxedWorkflowRunner()
    ).replay_workflow(_history(path), raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, workflow.NondeterminismError), result.replay_failure
