"""The event catalog type: validation at build time and lookups with suggestions."""

from __future__ import annotations

import json

import pytest

from stagecoach.engine.domain.events import (
    EventCatalog,
    EventCatalogError,
    EventType,
    UnknownEventError,
)


def catalog() -> EventCatalog:
    return EventCatalog(
        [
            EventType("content.downloaded", "Content was downloaded", {"content_id": "id"}),
            EventType("content.viewed", "Content was viewed"),
            EventType("email.delivered", "Accepted by the provider", signal=False),
        ]
    )


def test_names_keep_declaration_order() -> None:
    assert catalog().names() == ("content.downloaded", "content.viewed", "email.delivered")


def test_get_returns_the_event_type() -> None:
    assert catalog().get("content.downloaded").properties == {"content_id": "id"}


def test_get_unknown_name_suggests_the_closest_names() -> None:
    with pytest.raises(UnknownEventError, match=r"'content.downlaoded'.*'content.downloaded'") as e:
        catalog().get("content.downlaoded")
    assert e.value.name == "content.downlaoded"
    assert e.value.suggestions[0] == "content.downloaded"


def test_unknown_event_error_is_a_lookup_error_and_a_value_error() -> None:
    with pytest.raises(LookupError):
        catalog().get("nothing.like.it")
    with pytest.raises(ValueError, match="add it to the event catalog"):
        catalog().get("nothing.like.it")


def test_contains_len_and_iteration() -> None:
    cat = catalog()
    assert "content.viewed" in cat
    assert "content" not in cat
    assert len(cat) == 3
    assert [t.name for t in cat] == list(cat.names())


def test_signal_names_leave_out_analytics_only_events() -> None:
    assert catalog().signal_names() == frozenset({"content.downloaded", "content.viewed"})


def test_check_names_the_user_of_an_unknown_event() -> None:
    with pytest.raises(UnknownEventError, match=r"^rule 'x': event type 'content.gone'"):
        catalog().check({"content.viewed", "content.gone"}, where="rule 'x'")


@pytest.mark.parametrize(
    "name", ["Content.Downloaded", "downloaded", "content.", ".downloaded", "content downloaded"]
)
def test_badly_formed_name_is_refused_with_the_expected_form(name: str) -> None:
    with pytest.raises(EventCatalogError, match=r"lowercase dotted words such as"):
        EventType(name, "something")


def test_underscores_and_several_dots_are_accepted() -> None:
    assert EventType("wechat.menu_clicked", "x").name == "wechat.menu_clicked"
    assert EventType("shop.order.paid", "x").name == "shop.order.paid"


def test_duplicate_name_is_refused_naming_the_event() -> None:
    with pytest.raises(EventCatalogError, match=r"'a.b' is declared twice; keep one"):
        EventCatalog([EventType("a.b", "x"), EventType("a.b", "y")])


def test_missing_description_is_refused_naming_the_event() -> None:
    with pytest.raises(EventCatalogError, match=r"'a.b' has no description"):
        EventType("a.b", "  ")


def test_non_event_type_entry_is_refused() -> None:
    with pytest.raises(EventCatalogError, match=r"not an EventType"):
        EventCatalog(["a.b"])  # type: ignore[list-item]


def test_property_descriptions_must_be_strings() -> None:
    with pytest.raises(EventCatalogError, match=r"'a.b': property 'n' must map to a description"):
        EventType("a.b", "x", {"n": 1})  # type: ignore[dict-item]


def test_properties_are_copied_so_the_caller_cannot_change_them() -> None:
    props = {"k": "v"}
    et = EventType("a.b", "x", props)
    props["k2"] = "v2"
    assert dict(et.properties) == {"k": "v"}


def test_catalog_round_trips_through_json() -> None:
    cat = catalog()
    assert EventCatalog.from_dict(json.loads(json.dumps(cat.to_dict()))) == cat
