"""Manual segment lists through their Python API (``stagecoach.engine.services.segments.
lists``): who a row names, what is stored (one event with its outbox row per change),
what a retry or a repeat does, and every kind of bad input, on a migrated database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.domain.conditions import grade_in
from stagecoach.engine.domain.segments import LIST_ADDED, LIST_REMOVED, Segment
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.segments.lists import (
    ListError,
    ListRef,
    NotAManualSegment,
    add_to_list,
    parse_list_csv,
    prepare_change,
    remove_from_list,
    store_change,
)
from stagecoach.engine.services.segments.queries import UnknownSegment
from stagecoach.engine.services.storage.models import Event, Identity, Outbox

WHEN = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(db_engine: Engine) -> Engine:
    publish_segments(
        db_engine,
        [
            Segment("vip-list", description="Uploaded by the events team", manual=True).spec(),
            Segment("press", manual=True).spec(),
            Segment("a-grade", when=grade_in("A")).spec(),
        ],
    )
    return db_engine


def _contact(db: Engine, user_id: str, email: str) -> str:
    [[outcome]] = Ingestor(db).store(
        [
            [
                Incoming(
                    kind="identify",
                    message_id=f"identify-{user_id}",
                    type="identify",
                    occurred_at=WHEN,
                    user_id=user_id,
                    traits={"email": email},
                    identities={"user_id": user_id, "email": email},
                )
            ]
        ]
    )
    return outcome.contact_id


def _list_events(db: Engine) -> list[Event]:
    with Session(db) as session:
        return list(
            session.exec(
                select(Event)
                .where(col(Event.name).in_((LIST_ADDED, LIST_REMOVED)))
                .order_by(col(Event.id))
            ).all()
        )


def _outboxed(db: Engine) -> set[int]:
    with Session(db) as session:
        return {e for e in session.exec(select(Outbox.event_id)).all() if e is not None}


def test_a_csv_upload_stores_one_outboxed_event_per_contact_and_reports_bad_rows(
    db: Engine,
) -> None:
    known = _contact(db, "u-1", "li.lei@example.cn")
    other = _contact(db, "u-2", "wang.fang@example.cn")
    upload = (
        "contact_id,email,name\n"
        f"{known},,Li Lei\n"
        ",Wang.Fang@Example.CN,Wang Fang\n"  # known by address, in any case
        ",new.person@example.cn,New\n"  # nobody has it: a new contact
        ",zhang@,Zhang\n"
        ",,Nobody\n"
        "\n"
        "c_doesnotexist,,Ghost\n"
    ).encode()
    parsed = parse_list_csv(upload, name="vip.csv")
    assert len(parsed.refs) == 5
    result = add_to_list(db, None, "vip-list", parsed, actor="events-team")
    assert (result.stored, result.unchanged, result.created, result.accepted) == (3, 0, 1, 3)
    assert [(r.line, r.field, r.value) for r in result.rejected] == [
        (5, "email", "zhang@"),
        (6, "contact_id or email", ""),
        (8, "contact_id", "c_doesnotexist"),
    ]
    bad_email, empty, ghost = result.rejected
    assert bad_email.reason == (
        "'zhang@' is not an email address (There must be something after the @-sign):"
        " send name@domain"
    )
    assert empty.reason == "empty: fill in contact_id or email"
    assert ghost.reason.startswith("no contact has the id 'c_doesnotexist'")

    events = _list_events(db)
    assert len(events) == 3
    assert {e.contact_id for e in events} >= {known, other}
    assert all(e.name == LIST_ADDED and e.source == "list" for e in events)
    assert all(e.properties == {"segment": "vip-list", "actor": "events-team"} for e in events)
    assert {e.id for e in events} <= _outboxed(db)
    with Session(db) as session:
        created = session.exec(
            select(Identity.contact_id).where(Identity.value == "new.person@example.cn")
        ).one()
    assert created in result.contacts
    [new_event] = [e for e in events if e.contact_id == created]
    assert new_event.context["traits"] == {"email": "new.person@example.cn"}


def test_a_retried_upload_stores_nothing_twice_and_a_re_add_after_removal_is_a_new_change(
    db: Engine,
) -> None:
    known = _contact(db, "u-1", "li.lei@example.cn")
    first = add_to_list(db, None, "vip-list", [known, "li.lei@example.cn"], actor="ops")
    assert (first.stored, first.unchanged) == (1, 1)  # the same person named twice
    again = add_to_list(db, None, "vip-list", [known], actor="ops")
    assert (again.stored, again.unchanged, again.accepted) == (0, 1, 1)
    assert len(_list_events(db)) == 1

    not_on = remove_from_list(db, None, "press", [known], actor="ops")
    assert (not_on.stored, not_on.unchanged) == (0, 1)  # never on the press list

    removed = remove_from_list(db, None, "vip-list", ["LI.LEI@example.cn"], actor="ops")
    assert removed.stored == 1
    back = add_to_list(db, None, "vip-list", [known], actor="ops")
    assert back.stored == 1
    events = _list_events(db)
    assert [e.name for e in events] == [LIST_ADDED, LIST_REMOVED, LIST_ADDED]
    assert len({e.message_id for e in events}) == 3


def test_two_identical_uploads_racing_store_each_change_once(db: Engine) -> None:
    known = _contact(db, "u-1", "li.lei@example.cn")
    one = prepare_change(db, "vip-list", [known, "zhao@example.cn"], action="add", actor="a")
    two = prepare_change(db, "vip-list", [known, "zhao@example.cn"], action="add", actor="a")
    assert store_change(db, one).stored == 2
    late = store_change(db, two)
    assert (late.stored, late.unchanged) == (0, 2)
    assert len(_list_events(db)) == 2


def test_a_merged_id_means_the_contact_it_was_merged_into(db: Engine) -> None:
    survivor = _contact(db, "u-1", "li.lei@example.cn")
    merged = _contact(db, "u-3", "x@example.cn")
    # One identify carrying u-1 and u-3's address: they are one person, u-1 survives.
    Ingestor(db).store(
        [
            [
                Incoming(
                    kind="identify",
                    message_id="merge",
                    type="identify",
                    occurred_at=WHEN,
                    user_id="u-1",
                    identities={"user_id": "u-1", "email": "x@example.cn"},
                )
            ]
        ]
    )
    result = add_to_list(db, None, "vip-list", [merged], actor="ops")
    assert result.contacts == [survivor]
    assert [e.contact_id for e in _list_events(db)] == [survivor]


def test_unknown_and_computed_segments_are_refused_naming_the_right_ones(db: Engine) -> None:
    with pytest.raises(UnknownSegment) as unknown:
        add_to_list(db, None, "vip-lists", ["a@example.cn"], actor="ops")
    line = unknown.value.one_line()
    assert "segment 'vip-lists' is not published (did you mean 'vip-list'?)" in line
    assert "use one of: a-grade, press, vip-list" in line
    with pytest.raises(NotAManualSegment) as computed:
        add_to_list(db, None, "a-grade", ["a@example.cn"], actor="ops")
    line = computed.value.one_line()
    assert "segment 'a-grade' is computed from its condition, not a manual list" in line
    assert "use a manual segment: press, vip-list" in line
    with pytest.raises(ListError, match="actor '' is empty"):
        add_to_list(db, None, "vip-list", ["a@example.cn"], actor="  ")
    assert _list_events(db) == []


def test_removing_an_unknown_address_or_a_bad_value_rejects_that_row_only(db: Engine) -> None:
    known = _contact(db, "u-1", "li.lei@example.cn")
    add_to_list(db, None, "vip-list", [known], actor="ops")
    result = remove_from_list(
        db,
        None,
        "vip-list",
        [ListRef("nobody@example.cn", 2, "email"), ListRef("x" * 65, 3, "contact_id"), known],
        actor="ops",
    )
    assert result.stored == 1
    assert [(r.line, r.field) for r in result.rejected] == [(2, "email"), (3, "contact_id")]
    assert result.rejected[0].reason == "no contact has the address nobody@example.cn"
    assert "longer than 64 characters" in result.rejected[1].reason


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (b"", "vip.csv is empty"),
        (b"\n\n  \n", "vip.csv is empty"),
        (b"email\n", "vip.csv has a header and no rows"),
        (
            b"name,phone\nLi Lei,+8613800138000\n",
            "vip.csv has no contact_id or email column (its columns: 'name', 'phone')",
        ),
        (b"\xff\xfe\x00e\x00m", "vip.csv is neither UTF-8 nor GBK/GB18030 text"),
    ],
)
def test_a_file_that_is_not_a_list_is_refused_whole(upload: bytes, message: str) -> None:
    with pytest.raises(ListError) as refused:
        parse_list_csv(upload, name="vip.csv")
    assert message in refused.value.one_line()


def test_csv_reading_takes_gbk_semicolons_and_header_spelling_and_rejects_long_rows() -> None:
    upload = "姓名;E-Mail\n李雷;li.lei@example.cn\n韩梅梅;han@example.cn;extra\n".encode("gb18030")
    # "E-Mail" is not "email": only the two column names are read.
    with pytest.raises(ListError, match="no contact_id or email column"):
        parse_list_csv(upload, name="vip.csv")
    upload = "姓名;Email\n李雷;li.lei@example.cn\n韩梅梅;han@example.cn;extra\n".encode("gb18030")
    parsed = parse_list_csv(upload, name="vip.csv")
    assert [(r.value, r.line, r.field) for r in parsed.refs] == [("li.lei@example.cn", 2, "email")]
    [long_row] = parsed.rejected
    assert (long_row.line, long_row.field) == (3, "row")
    assert "3 cells but 2 columns in the header" in long_row.reason


@pytest.mark.postgres
def test_an_upload_on_postgresql(db: Engine) -> None:
    test_a_csv_upload_stores_one_outboxed_event_per_contact_and_reports_bad_rows(db)


@pytest.mark.postgres
def test_retries_and_repeats_on_postgresql(db: Engine) -> None:
    test_a_retried_upload_stores_nothing_twice_and_a_re_add_after_removal_is_a_new_change(db)
