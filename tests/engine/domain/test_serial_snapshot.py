"""The serialised form of every bundled definition and of each runtime value stays
byte-identical: versions are content hashes, and running workflows carry these forms
across continue-as-new and in their recorded histories.

The snapshot in ``snapshots/serial.json`` was written by the hand-written ``to_dict``
methods before ``stagecoach.engine.domain.serial`` replaced them (``python
tests/engine/domain/test_serial_snapshot.py``
rewrites it; do that only for a deliberate, versioned change of form).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from stagecoach.engine.domain.conditions import (
    EventMatcher,
    EventRecord,
    PropertyFilter,
    has_tag,
)
from stagecoach.engine.domain.contact import ContactState, JourneyRecord
from stagecoach.engine.domain.content import RenderedMessage
from stagecoach.engine.domain.events import EventCatalog
from stagecoach.engine.domain.hashing import canonical_json
from stagecoach.engine.domain.journeys import (
    ChangeStageStep,
    EnrolStep,
    EventEntry,
    ExitStep,
    GoalStep,
    HandOffStep,
    JourneySpec,
    NextBestItem,
    NoChannel,
    ReEntry,
    SendStep,
    SetAttributeStep,
    SplitBranch,
    SplitStep,
    StageEntered,
    ValidationContext,
    WaitStep,
    WaitUntilStep,
)
from stagecoach.engine.domain.journeys._interpreter import (
    Completed,
    Cursor,
    Deliver,
    Passage,
    SetAttribute,
    StartTimer,
    WaitForEvent,
    Waiting,
)
from stagecoach.engine.domain.pipeline import Pipeline, Transition
from stagecoach.engine.domain.policy import SendPolicy
from stagecoach.engine.domain.sales import (
    Assignment,
    BusinessHours,
    Owner,
    Routing,
    Sla,
    SlaDeadlines,
)
from stagecoach.engine.domain.scoring import (
    Contribution,
    GradeResult,
    ScoreChange,
    ScoreState,
    TopContribution,
)
from stagecoach.engine.services.ingest._segment import Problem
from stagecoach.engine.temporal.why import Link
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.journeys import compile_journeys
from stagecoach.workflows.pipeline import PIPELINES

SNAPSHOT = Path(__file__).parent / "snapshots" / "serial.json"
AT = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def _specs() -> dict[str, JourneySpec]:
    stages = frozenset(s.name for p in PIPELINES.values() for s in p.stages)
    return compile_journeys(ValidationContext(frozenset(CATALOG.names()), stages))


def _every_kind_spec() -> JourneySpec:
    """Every step kind and optional part, including those no bundled journey uses yet."""
    return JourneySpec(
        name="every_kind",
        description="each step kind once",
        entry=(StageEntered("lead"), EventEntry(EventMatcher("form.submitted"))),
        reentry=ReEntry.after(timedelta(days=7)),
        exit_when=has_tag("unsubscribed"),
        goal=None,
        locales=("zh-CN", "en"),
        steps=(
            SendStep(id="s1", content="wp-1", channel="email", next="s2"),
            SendStep(
                id="s2",
                content=NextBestItem(stage="lead", kinds=("case_study",), tags=("x",)),
                on_no_channel=NoChannel.wait(days=3),
                on_failure="ex",
            ),
            SendStep(id="s3", content="wp-2", on_no_channel=NoChannel.exit("gone")),
            WaitUntilStep(id="wu", at=time(9, 30)),
            SplitStep(id="sp", branches=(SplitBranch(1, "ex", "a"), SplitBranch(2.5, label="b"))),
            SetAttributeStep(id="sa", name="plan", value=["pro", 2]),
            ChangeStageStep(id="cs", stage="lead"),
            HandOffStep(id="ho", reason="mql"),
            EnrolStep(id="en", journey="onboarding"),
            WaitStep(id="w", duration=timedelta(hours=36)),
            GoalStep(id="g"),
            ExitStep(id="ex", reason="holdout"),
        ),
        on_no_channel=NoChannel.skip(),
    )


def _contribution() -> Contribution:
    return Contribution(rule="downloads", event_type="content.downloaded", at=AT, points=5.0)


def _runtime_values() -> dict[str, Any]:
    """One value of each runtime type, with every optional part filled and one left empty."""
    score = ScoreState(
        value=12.5,
        as_of=AT,
        per_rule_totals={"downloads": 10.0, "visits": 2.5},
        per_rule_window={"downloads": ((AT, 5.0), (AT + timedelta(hours=1), 5.0))},
        top=(_contribution(),),
    )
    waiting = Waiting(kind="timer", step_id="wait-2d", timer_id="t-1", deadline=AT)
    return {
        "contribution": _contribution(),
        "score_state": score,
        "score_state_empty": ScoreState(),
        "score_change": ScoreChange(
            rule="downloads",
            event_type="content.downloaded",
            at=AT,
            points=5.0,
            points_awarded=2.0,
            capped=True,
            value=12.0,
        ),
        "top_contribution": TopContribution(_contribution(), 3.25),
        "grade_result": GradeResult(grade="A", points=30.0, matched_rules=("size", "title")),
        "transition": Transition(
            from_stage="prospect",
            to_stage="lead",
            at=AT,
            reason="mql",
            trigger_event_type="form.submitted",
            trigger_message_id="m-1",
            source="rule",
            kind="rule",
        ),
        "transition_minimal": Transition("lead", "recycled", AT, ""),
        "assignment": Assignment(
            team="north",
            owner="ana",
            owner_timezone="Asia/Shanghai",
            lead="li",
            reason="territory north",
            kind="round_robin",
            territory="north",
        ),
        "sla_deadlines": SlaDeadlines(respond_by=AT, escalate_at=AT + timedelta(hours=4)),
        "sla": Sla(
            first_response=timedelta(hours=2),
            escalate_after=timedelta(minutes=90),
            business_hours=BusinessHours(
                start=time(8, 30),
                end=time(17, 0),
                weekdays=(0, 1, 2, 3),
                holidays=(date(2026, 10, 1),),
                extra_workdays=(date(2026, 9, 27),),
            ),
        ),
        "owner": Owner("ana", "Asia/Shanghai"),
        "waiting": waiting,
        "waiting_bare": Waiting(kind="event", step_id="wait-for-x"),
        "cursor": Cursor(
            journey="b2b_nurture",
            version="abc",
            contact_id="c-1",
            enrolment=2,
            step_id="wait-2d",
            status="active",
            reason=None,
            waiting=waiting,
            history=7,
            visits=(("send-a", 1), ("wait-2d", 2)),
        ),
        "passage": Passage("send-a", "send", "sent"),
        "journey_record": JourneyRecord(enrolments=2, active=True, last_ended_at=AT),
        "contact_state": ContactState(
            contact_id="c-1",
            stage="lead",
            stage_entered_at=AT,
            score=score,
            grade="B",
            grade_rules=("size",),
            attributes={"company": "Acme", "nested": {"a": [1, 2]}},
            tags=("vip",),
            consent={"email": True},
            events=(EventRecord("page.viewed", AT, {"url": "/x"}),),
            seen_ids=("m-1", "m-2"),
            transitions=3,
            received_content=("wp-1",),
            journeys={"b2b_nurture": JourneyRecord(1, False, AT)},
        ),
        "contact_state_bare": ContactState(contact_id="c-2", stage="suspect", stage_entered_at=AT),
        "send_policy": SendPolicy(
            quiet_start=time(22, 15),
            quiet_end=time(7, 0),
            frequency_cap=2,
            frequency_window=timedelta(hours=12),
        ),
        "rendered": RenderedMessage(
            content_id="wp-1",
            content_version="v1",
            channel="email",
            locale="zh-CN",
            kind="whitepaper",
            subject="白皮书",
            text="t",
            html="<p>h</p>",
            headers={"List-Unsubscribe": "<x>"},
            wechat=None,
        ),
        "rendered_wechat": RenderedMessage(
            content_id="wp-1",
            content_version="v1",
            channel="wechat",
            locale="en",
            kind="whitepaper",
            wechat={"template_id": "T", "data": {"k": "v"}},
        ),
        "problem": Problem(index=3, field="email", message="is not an address"),
        "problem_unindexed": Problem(index=None, field="file", message="is empty"),
        # Optional parts a bundled definition declares, left out: their keys must not appear.
        "pipeline_without_routing_or_recycle": replace(
            PIPELINES["default"], routing=None, recycle=None
        ),
        "routing_without_service": replace(_routing(), service=None, service_sla=None),
        "deliver": Deliver(
            step_id="send-a",
            channel="email",
            content_id=None,
            selector=NextBestItem(stage="lead", kinds=("whitepaper",)),
            idempotency_key="k-1",
        ),
        "start_timer": StartTimer(timer_id="t-1", fire_at=AT),
        "wait_for_event": WaitForEvent(
            step_id="wait-for-x",
            matchers=(EventMatcher("email.clicked", (PropertyFilter("n", "in", (1, 2)),)),),
            deadline=AT,
            timer_id="t-2",
        ),
        "set_attribute": SetAttribute(name="plan", value=("a", {"b": [1]})),
        "completed": Completed(reason="goal"),
        "every_kind_spec": _every_kind_spec(),
        "why_link": Link(AT, "send", "sent", "whitepaper by email"),
        "why_link_undated": Link(None, "consent", "blocked", "no email consent"),
        "scoring_without_decay": replace(PIPELINES["default"].scoring, half_life=None),
    }


def _routing() -> Routing:
    routing = PIPELINES["default"].routing
    assert routing is not None
    return routing


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def current_forms() -> dict[str, Any]:
    """What the snapshot holds: exact JSON text (key order included) and versions."""
    specs = _specs()
    return {
        "journeys": {name: _dump(spec.to_dict()) for name, spec in sorted(specs.items())},
        "journey_versions": {name: spec.version for name, spec in sorted(specs.items())},
        "pipelines": {name: _dump(p.to_dict()) for name, p in sorted(PIPELINES.items())},
        "pipeline_versions": {name: p.version for name, p in sorted(PIPELINES.items())},
        "catalog": _dump(CATALOG.to_dict()),
        "runtime": {name: _dump(v.to_dict()) for name, v in _runtime_values().items()},
    }


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def forms() -> dict[str, Any]:
    return current_forms()


@pytest.mark.parametrize(
    "part",
    ["journeys", "journey_versions", "pipelines", "pipeline_versions", "catalog", "runtime"],
)
def test_serialised_forms_are_byte_identical(
    part: str, snapshot: dict[str, Any], forms: dict[str, Any]
) -> None:
    assert forms[part] == snapshot[part]


def test_bundled_definitions_round_trip() -> None:
    for spec in _specs().values():
        again = JourneySpec.from_dict(json.loads(spec.to_json()))
        assert again == spec
        assert again.to_json() == spec.to_json()
    for pipeline in PIPELINES.values():
        again_p = Pipeline.from_dict(json.loads(_dump(pipeline.to_dict())), catalog=CATALOG)
        assert canonical_json(again_p.to_dict()) == canonical_json(pipeline.to_dict())
        assert again_p.version == pipeline.version
    assert EventCatalog.from_dict(CATALOG.to_dict()).to_dict() == CATALOG.to_dict()


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "contribution": Contribution.from_dict,
    "score_state": ScoreState.from_dict,
    "score_state_empty": ScoreState.from_dict,
    "score_change": ScoreChange.from_dict,
    "grade_result": GradeResult.from_dict,
    "transition": Transition.from_dict,
    "transition_minimal": Transition.from_dict,
    "assignment": Assignment.from_dict,
    "sla": Sla.from_dict,
    "owner": Owner.from_dict,
    "waiting": Waiting.from_dict,
    "waiting_bare": Waiting.from_dict,
    "cursor": Cursor.from_dict,
    "journey_record": JourneyRecord.from_dict,
    "contact_state": ContactState.from_dict,
    "contact_state_bare": ContactState.from_dict,
    "send_policy": SendPolicy.from_dict,
    "rendered": RenderedMessage.from_dict,
    "rendered_wechat": RenderedMessage.from_dict,
    "routing_without_service": Routing.from_dict,
    "every_kind_spec": JourneySpec.from_dict,
}


@pytest.mark.parametrize("name", sorted(_DECODERS))
def test_snapshot_forms_decode_to_the_same_value(name: str, snapshot: dict[str, Any]) -> None:
    """The recorded JSON (as a history holds it) decodes to the value that wrote it."""
    decoded = _DECODERS[name](json.loads(snapshot["runtime"][name]))
    assert decoded == _runtime_values()[name]


if __name__ == "__main__":
    SNAPSHOT.write_text(
        json.dumps(current_forms(), ensure_ascii=False, indent=1, sort_keys=True) + "\n",
        encoding="utf-8",
    )
