"""The names that cross the Temporal boundary are defined once, in ``stagecoach.engine.protocol``,
and never change value: histories recorded by running contacts hold them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from temporalio import activity
from temporalio.client import WorkflowHistory

from stagecoach.engine import protocol
from stagecoach.engine.cli.compose import (
    build_activities,
    build_broadcast_activities,
    build_prediction_activities,
    build_value_activities,
)
from stagecoach.engine.domain.contact import new_contact
from stagecoach.engine.protocol.search_attributes import (
    SEARCH_ATTRIBUTES,
    dev_server_args,
    search_values,
)
from stagecoach.engine.protocol.search_keys import ALL_KEYS, KEYS
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.temporal.history import (
    ActivityScheduled,
    Signalled,
    TimerStarted,
    UpdateAccepted,
    read_run,
)
from stagecoach.workflows.pipeline import DEFAULT
from stagecoach.workflows.system import SystemActivities
from tests.helpers import runtime_settings

HISTORIES = sorted((Path(__file__).parents[2] / "workflows" / "histories").glob("**/*.json"))

WIRE = {
    "CONTACT_WORKFLOW": "Contact",
    "SYSTEM_CHECK_WORKFLOW": "SystemCheck",
    "VALUE_REFRESH_WORKFLOW": "ValueRefresh",
    "VALUE_REFRESH_ACTIVITY": "value.refresh",
    "VALUE_SCHEDULE_ID": "stagecoach-value-refresh",
    "EVENT_SIGNAL": "event",
    "EVENTS_SIGNAL": "events",
    "MERGED_SIGNAL": "merged",
    "STATE_QUERY": "state",
    "ENROL_UPDATE": "enrol",
    "OPEN_ACTIVITY": "contact.open",
    "LOAD_DEFINITIONS_ACTIVITY": "contact.load_definitions",
    "RECORD_TRANSITION_ACTIVITY": "contact.record_transition",
    "DELIVER_ACTIVITY": "contact.deliver",
    "HAND_OFF_ACTIVITY": "contact.hand_off",
    "HANDOFF_SLA_ACTIVITY": "contact.handoff_sla",
    "RECORD_ENROLMENT_ACTIVITY": "contact.record_enrolment",
    "RECORD_CONVERSION_ACTIVITY": "contact.record_conversion",
    "RELEASE_REWARDS_ACTIVITY": "contact.release_rewards",
    "CHECK_DATABASE_ACTIVITY": "system.check_database",
    "DEFER_TIMER_PREFIX": "defer:",
    "CHANNEL_TIMER_PREFIX": "channel:",
    "SALES_TIMERS": "__sales__",
    "SLA_REMINDER_TIMER": "sla:reminder",
    "SLA_ESCALATION_TIMER": "sla:escalation",
    "REFERRAL_TIMERS": "__referral__",
    "REWARD_RELEASE_TIMER": "release",
    "RECORD_SEGMENTS_ACTIVITY": "contact.record_segments",
    "CANCEL_REWARD_ACTIVITY": "contact.cancel_reward",
    "SEGMENT_TIMERS": "__segments__",
    "SEGMENT_FLIP_TIMER": "flip",
    "CONTACT_WORKFLOW_ID_PREFIX": "contact-",
    "BROADCAST_WORKFLOW": "Broadcast",
    "BROADCAST_WORKFLOW_ID_PREFIX": "broadcast-",
    "PAUSE_SIGNAL": "pause",
    "RESUME_SIGNAL": "resume",
    "CANCEL_SIGNAL": "cancel",
    "PROGRESS_QUERY": "progress",
    "BROADCAST_TIMERS": "__broadcast__",
    "SNAPSHOT_ACTIVITY": "broadcast.snapshot",
    "SEND_BATCH_ACTIVITY": "broadcast.send_batch",
    "EVALUATE_AB_ACTIVITY": "broadcast.evaluate_ab",
    "BROADCAST_STATUS_ACTIVITY": "broadcast.set_status",
}


def test_the_values_written_into_histories_never_change() -> None:
    assert {name: getattr(protocol, name) for name in WIRE} == WIRE
    assert protocol.contact_workflow_id("c_1") == "contact-c_1"
    assert protocol.defer_timer("welcome") == "defer:welcome"
    assert protocol.timer_summary("b2b_nurture", "defer:welcome") == "b2b_nurture/defer:welcome"


def test_the_worker_registers_exactly_the_protocol_activities(tmp_path: Path) -> None:
    # The activities ``stagecoach worker`` registers, built the way it builds them.
    settings = runtime_settings(tmp_path, "protocol")
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    registered = [
        *SystemActivities(engine).all(),
        *build_activities(engine, settings).all(),
        *build_broadcast_activities(engine, settings).all(),
        *build_prediction_activities(engine, settings).all(),
        *build_value_activities(engine, settings).all(),
    ]
    # The SDK reads an activity's name from its definition the same way when a worker
    # registers it; there is no public accessor for it.
    names = [activity._Definition.must_from_callable(fn).name for fn in registered]

    assert len(names) == len(set(names))
    # A name spelled as a literal anywhere but ``stagecoach.engine.protocol`` shows up here as an
    # activity the protocol does not know (or a protocol name nobody registers).
    assert set(names) == protocol.ACTIVITIES
    assert (
        protocol.ACTIVITIES - {protocol.CHECK_DATABASE_ACTIVITY}
        == protocol.CONTACT_ACTIVITIES
        | protocol.BROADCAST_ACTIVITIES
        | protocol.PREDICTION_ACTIVITIES
        | protocol.VALUE_ACTIVITIES
    )


JOURNEY_NAME = re.compile(r"[a-z][a-z0-9_]*")


def test_every_recorded_history_speaks_only_the_protocol() -> None:
    assert HISTORIES
    signals = {protocol.EVENT_SIGNAL, protocol.EVENTS_SIGNAL, protocol.MERGED_SIGNAL}
    protocol_namespaces = {protocol.SALES_TIMERS, protocol.REFERRAL_TIMERS, protocol.SEGMENT_TIMERS}
    broadcast_signals = {protocol.PAUSE_SIGNAL, protocol.RESUME_SIGNAL, protocol.CANCEL_SIGNAL}
    for path in HISTORIES:
        history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
        started = history.events[0].workflow_execution_started_event_attributes
        if started.workflow_type.name == protocol.BROADCAST_WORKFLOW:
            for record in read_run(list(history.events), path.stem):
                if isinstance(record, ActivityScheduled):
                    assert record.name in protocol.BROADCAST_ACTIVITIES, (path.stem, record.name)
                elif isinstance(record, Signalled):
                    assert record.name in broadcast_signals, (path.stem, record.name)
                elif isinstance(record, TimerStarted):
                    assert record.namespace == protocol.BROADCAST_TIMERS, record.summary
            continue
        scheduled = {
            protocol.VALUE_REFRESH_WORKFLOW: protocol.VALUE_ACTIVITIES,
            protocol.PROPENSITY_RETRAIN_WORKFLOW: protocol.PREDICTION_ACTIVITIES,
        }.get(started.workflow_type.name)
        if scheduled is not None:  # a Schedule's run: its activity, and no signal or timer
            for record in read_run(list(history.events), path.stem):
                assert not isinstance(record, Signalled | TimerStarted), (path.stem, record)
                if isinstance(record, ActivityScheduled):
                    assert record.name in scheduled, (path.stem, record.name)
            continue
        assert started.workflow_type.name == protocol.CONTACT_WORKFLOW, path.stem
        records = read_run(list(history.events), path.stem)
        for record in records:
            if isinstance(record, ActivityScheduled):
                assert record.name in protocol.CONTACT_ACTIVITIES, (path.stem, record.name)
            elif isinstance(record, Signalled):
                assert record.name in signals, (path.stem, record.name)
            elif isinstance(record, UpdateAccepted):
                assert record.name == protocol.ENROL_UPDATE, path.stem
            elif isinstance(record, TimerStarted):
                # A journey's timers are named under the journey (a journey name: lower
                # case, no leading underscore); the others under the protocol's namespaces.
                assert record.namespace in protocol_namespaces or JOURNEY_NAME.fullmatch(
                    record.namespace
                ), (path.stem, record.summary)
                assert protocol.timer_summary(record.namespace, record.name) == record.summary


def test_search_attributes_are_named_once_for_the_workflow_the_keys_and_the_server() -> None:
    values = search_values(new_contact("c_1", DEFAULT, datetime(2026, 1, 1, tzinfo=UTC)))

    assert list(values) == list(SEARCH_ATTRIBUTES) == list(KEYS)
    assert [key.name for key in ALL_KEYS] == list(SEARCH_ATTRIBUTES)
    assert dev_server_args()[:2] == ["--search-attribute", "Stage=Keyword"]
    assert SEARCH_ATTRIBUTES == {
        "Stage": "Keyword",
        "Score": "Double",
        "Grade": "Keyword",
        "Journeys": "KeywordList",
        "Locale": "Keyword",
        "Segments": "KeywordList",
    }
