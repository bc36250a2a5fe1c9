"""Talking to contact workflows from outside: the API, the CLI, the demo and the tests.

By workflow, signal, update and query names from ``stagecoach.engine.protocol.messages``: callers
never import workflow code. Events use signal-with-start, so the first event for an unknown
contact creates the contact; enrolments use update-with-start, so the caller gets the
enrolment number back whether or not the workflow existed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.protocol.messages import (
    CONTACT_WORKFLOW,
    ENROL_UPDATE,
    EVENT_SIGNAL,
    STATE_QUERY,
    ContactInput,
    ContactView,
    Definitions,
    EnrolRequest,
    EnrolResult,
    EventMessage,
    contact_workflow_id,
)
from stagecoach.engine.protocol.search_keys import typed
from stagecoach.engine.settings import Settings


@dataclass(frozen=True)
class Opening:
    """A new contact its caller has already recorded at the first stage.

    Starting the workflow with it saves the workflow two billed actions: the
    ``contact.open`` activity (the definitions travel in the start input) and the first
    search-attribute upsert (the values are set at start). ``stagecoach.workflows.runtime.
    ContactOpener`` makes one; without it the workflow opens the contact itself.
    """

    definitions: Definitions
    search_attributes: Mapping[str, Any] = field(default_factory=dict)


def _start_input(
    settings: Settings, contact_id: str, *, rehearsal: bool, opening: Opening | None
) -> ContactInput:
    return ContactInput.current(
        contact_id,
        max_events_per_run=settings.max_events_per_run,
        rehearsal=rehearsal,
        definitions=opening.definitions if opening else None,
        opened=opening is not None,
    )


def _check(message: EventMessage) -> None:
    problem = message.problem()
    if problem is not None:
        field_name, _, fix = problem.partition(": ")
        raise InvalidEvent(f"event {message.message_id!r}: {field_name}", fix=fix)


async def send_event(
    client: Client,
    settings: Settings,
    contact_id: str,
    message: EventMessage,
    *,
    rehearsal: bool = False,
    opening: Opening | None = None,
) -> None:
    """Deliver one event to the contact's workflow, starting it if needed.

    Raises:
        InvalidEvent: the event is malformed; nothing is sent.
    """
    _check(message)
    await client.start_workflow(
        CONTACT_WORKFLOW,
        _start_input(settings, contact_id, rehearsal=rehearsal, opening=opening),
        id=contact_workflow_id(contact_id),
        task_queue=settings.temporal_task_queue,
        start_signal=EVENT_SIGNAL,
        start_signal_args=[message],
        static_summary=f"contact {contact_id}",
        search_attributes=typed(opening.search_attributes) if opening else None,
    )


async def enrol(
    client: Client,
    settings: Settings,
    contact_id: str,
    request: EnrolRequest,
    *,
    rehearsal: bool = False,
    opening: Opening | None = None,
) -> EnrolResult:
    """Enrol a contact now (creating it if needed) and return the enrolment.

    ``request.event`` (an identify, say) is applied first, in the same update. A new
    rehearsal contact (``opening`` and ``rehearsal``) is started with the enrolment in
    its input instead, which saves the update's billed action.
    ``rehearsal=True`` creates a rehearsal contact: only explicitly enrolled, every send
    to the rehearsal sink. It and ``opening`` apply when this call creates the workflow.

    Raises:
        InvalidEvent: ``request.event`` is malformed; nothing is sent.
    """
    if request.event is not None:
        _check(request.event)
    raw = opening.definitions.journeys.get(request.journey) if opening else None
    if opening is not None and rehearsal and raw is not None and request.problem() is None:
        # A new rehearsal contact has no enrolments and none automatic, so the workflow
        # is certain to accept this one, on the version in the definitions it is given:
        # start it with the enrolment in its input and save the update's action.
        try:
            await client.start_workflow(
                CONTACT_WORKFLOW,
                replace(
                    _start_input(settings, contact_id, rehearsal=True, opening=opening),
                    enrol=request,
                ),
                id=contact_workflow_id(contact_id),
                task_queue=settings.temporal_task_queue,
                static_summary=f"contact {contact_id}",
                search_attributes=typed(opening.search_attributes),
            )
        except WorkflowAlreadyStartedError:
            pass  # not new after all: the update below asks the workflow
        else:
            return EnrolResult(True, request.journey, enrolment=1, version=str(raw["version"]))
    start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        CONTACT_WORKFLOW,
        _start_input(settings, contact_id, rehearsal=rehearsal, opening=opening),
        id=contact_workflow_id(contact_id),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"contact {contact_id}",
        search_attributes=typed(opening.search_attributes) if opening else None,
    )
    result: EnrolResult = await client.execute_update_with_start_workflow(
        ENROL_UPDATE, request, start_workflow_operation=start, result_type=EnrolResult
    )
    return result


async def contact_view(client: Client, contact_id: str) -> ContactView:
    """The contact's live state, read with the ``state`` query.

    Raises:
        ContactNotFound: no workflow exists for this contact id.
    """
    handle = client.get_workflow_handle(contact_workflow_id(contact_id))
    with missing_contact(contact_id):
        view: ContactView = await handle.query(STATE_QUERY, result_type=ContactView)
    return view


@contextmanager
def missing_contact(contact_id: str) -> Iterator[None]:
    """Turn the server's NOT_FOUND for this contact's workflow into ContactNotFound."""
    try:
        yield
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ContactNotFound(
                f"no contact workflow {contact_workflow_id(contact_id)}",
                fix="check the contact id ('temporal workflow list' shows contact-* ids)",
            ) from exc
        raise


class InvalidEvent(StagecoachError):
    """An event is malformed: the message names the field, the fix says what to send."""


class ContactNotFound(StagecoachError):
    """No workflow exists for the contact asked about."""
