"""Reading a MASSSENDJOBFINISH callback: WeChat's counts and status, and what is refused."""

from __future__ import annotations

import pytest

from stagecoach.engine.domain.wechat_callback import (
    MalformedMessage,
    MassSendFinished,
    mass_send_finished,
)

FIELDS = {
    "ToUserName": "gh_0123456789ab",
    "FromUserName": "oMassSendHelper0000000000000",
    "CreateTime": "1763802000",
    "MsgType": "event",
    "Event": "MASSSENDJOBFINISH",
    "MsgID": "1000001625",
    "Status": "send success",
    "TotalCount": "100",
    "FilterCount": "80",
    "SentCount": "75",
    "ErrorCount": "5",
}


def test_the_counts_and_status_are_read() -> None:
    finished = mass_send_finished(FIELDS)
    assert finished == MassSendFinished(
        msg_id="1000001625", status="send success", total=100, filter_count=80, sent=75, errors=5
    )
    assert finished.filtered_out == 20
    assert finished.outcome == "finished"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [("send fail", "failed"), ("err(10001)", "rejected_10001"), ("something new", "failed")],
)
def test_a_failed_or_refused_job_has_its_outcome(status: str, outcome: str) -> None:
    assert mass_send_finished(FIELDS | {"Status": status}).outcome == outcome


def test_msgid_is_read_in_either_spelling() -> None:
    fields = {k: v for k, v in FIELDS.items() if k != "MsgID"} | {"MsgId": "42"}
    assert mass_send_finished(fields).msg_id == "42"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"TotalCount": "many"}, "TotalCount"),
        ({"SentCount": "-1"}, "SentCount"),
        ({"ErrorCount": ""}, "ErrorCount"),
        ({"FilterCount": "1" * 12}, "FilterCount"),
        ({"MsgID": "abc"}, "MsgID"),
        ({"Status": ""}, "Status"),
    ],
)
def test_a_malformed_field_is_refused_by_name(change: dict[str, str], named: str) -> None:
    with pytest.raises(MalformedMessage, match=named):
        mass_send_finished(FIELDS | change)
