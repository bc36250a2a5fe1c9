"""Replay: every recorded history of the bundled journeys must replay on today's code.

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

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from stagecoach.engine.protocol.messages import ContactInput
from stagecoach.workflows.contact import ContactWorkflow

HISTORIES = sorted(Path(__file__).with_name("histories").glob("*.json"))
RETIRED = sorted(Path(__file__).with_name("histories").glob("retired/*.json"))


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text(encoding="utf-8"))


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
    await Replayer(workflows=[ContactWorkflow]).replay_workflow(_history(path))


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
    result = await Replayer(workflows=[ContactWorkflowThatForgetsTransitions]).replay_workflow(
        _history(path), raise_on_replay_failure=False
    )
    assert result.replay_failure is not None


@workflow.defn(name="Contact")
class ContactWorkflowThatIgnoresItsGates(ContactWorkflow):
    """A careless edit: background enrolment records for every run, whatever its input."""

    @workflow.run
    async def run(self, inp: ContactInput) -> None:
        self._records_in_background = True
        await super().run(inp)


async def test_a_behaviour_gated_by_the_input_replays_only_behind_its_gate() -> None:
    # A run started before ``records_in_background`` waited for each enrolment record;
    # issuing those commands in the new order breaks its replay, which is why the
    # change is gated by the start input rather than made for every run.
    path = next(p for p in HISTORIES if p.stem == "enrolment_recorded_awaited")
    result = await Replayer(workflows=[ContactWorkflowThatIgnoresItsGates]).replay_workflow(
        _history(path), raise_on_replay_failure=False
    )
    assert result.replay_failure is not None


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


@pytest.mark.parametrize(
    ("edit", "stem"),
    [
        # This run's send found no address and left the journey; waiting instead arms a
        # timer its history does not hold.
        (ContactWorkflowThatWaitsForChannelsUngated, "no_address_exit"),
        # This run enrolled before its creating download moved the stage; applying the
        # download first records the stage move before the send.
        (ContactWorkflowThatOpensFirstUngated, "created_by_a_download"),
    ],
    ids=["waits_for_channel", "applies_opening_first"],
)
async def test_the_reachability_changes_replay_only_behind_their_gates(
    edit: type[ContactWorkflow], stem: str
) -> None:
    path = next(p for p in HISTORIES if p.stem == stem)
    result = await Replayer(workflows=[edit]).replay_workflow(
        _history(path), raise_on_replay_failure=False
    )
    assert result.replay_failure is not None


def test_histories_of_the_reachability_changes_are_recorded() -> None:
    stems = {p.stem for p in HISTORIES}
    assert {
        "no_address_waits_for_a_channel",
        "qr_follower_whitepaper_by_wechat",
        "anonymous_visitor_identified_later",
    } <= stems
