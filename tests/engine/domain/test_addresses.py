"""stagecoach.engine.domain.addresses: the canonical form of an email address and the mailbox
comparison
key used against self-referral (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagecoach.engine.domain.addresses import (
    PROVIDER_RULES,
    AddressError,
    EmailAddress,
    canonical_email,
    comparison_key,
    parse_email,
    sending_address,
)


@pytest.mark.parametrize(
    ("raw", "canonical", "sending"),
    [
        ("someone@example.com", "someone@example.com", "someone@example.com"),
        ("  SomeOne@Example.COM ", "someone@example.com", "someone@example.com"),
        ("someone@ｅｘａｍｐｌｅ.com", "someone@example.com", "someone@example.com"),
        ("ｓｏｍｅｏｎｅ@ｅｘａｍｐｌｅ．ｃｏｍ", "someone@example.com", "someone@example.com"),
        ("someone@example\u3002com", "someone@example.com", "someone@example.com"),
        ("someone@example.com.", "someone@example.com", "someone@example.com"),
        ("ana@bücher.example", "ana@bücher.example", "ana@xn--bcher-kva.example"),
        ("ana@XN--BCHER-KVA.example", "ana@bücher.example", "ana@xn--bcher-kva.example"),
        ("李雷@example.cn", "李雷@example.cn", "李雷@example.cn"),
        ("e\u0301@example.com", "\u00e9@example.com", "\u00e9@example.com"),  # NFC
    ],
)
def test_one_canonical_form_and_its_envelope_form(raw: str, canonical: str, sending: str) -> None:
    assert canonical_email(raw) == canonical
    assert sending_address(raw) == sending
    assert canonical_email(canonical) == canonical  # a fixed point


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("someone@exa\u200bmple.com", "ZERO WIDTH SPACE"),
        ("some\u200done@example.com", "ZERO WIDTH JOINER"),
        ("\u202esomeone@example.com", "RIGHT-TO-LEFT OVERRIDE"),
        ("someone@exa\u00admple.com", "SOFT HYPHEN"),
        ("someone@example.com..", "period"),
        ("someone", "no @-sign"),
        ("", "empty"),
        ("someone@localhost", "period"),
        ("a" * 300 + "@example.com", "too long"),
    ],
)
def test_what_has_no_canonical_form_is_refused_saying_why(raw: str, says: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_email(raw)
    assert says in caught.value.message
    assert caught.value.message.endswith("send name@domain")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Some.One+promo@gmail.com", "someone@gmail.com"),
        ("s.o.m.e.o.n.e@googlemail.com", "someone@gmail.com"),
        ("someone+x@outlook.com", "someone@outlook.com"),
        ("someone+x@hotmail.com", "Someone@Hotmail.com"),
        ("someone+x@icloud.com", "someone@icloud.com"),
        ("someone+x@fastmail.com", "someone@fastmail.com"),
        ("someone+x@proton.me", "someone@proton.me"),
        ("someone@ｇｍａｉｌ.com.", "some.one@gmail.com"),
    ],
)
def test_documented_provider_rules_give_one_mailbox_key(a: str, b: str) -> None:
    assert comparison_key(a) == comparison_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("some.one@outlook.com", "someone@outlook.com"),  # Outlook keeps dots
        ("someone+x@example.com", "someone@example.com"),  # no documented rule
        ("someone-x@yahoo.com", "someone@yahoo.com"),  # a disposable base name, not a tag
        ("someone@gmail.com", "someone@gmail.co"),
        ("+x@gmail.com", "x@gmail.com"),  # nothing before the tag: kept whole
    ],
)
def test_other_mailboxes_keep_different_keys(a: str, b: str) -> None:
    try:
        other = comparison_key(b)
    except AddressError:
        other = None
    assert comparison_key(a) != other


def test_every_provider_rule_names_its_documentation() -> None:
    assert all(rule.source for rule in PROVIDER_RULES.values())


@given(st.emails())
def test_canonicalising_is_idempotent_and_the_key_is_stable(raw: str) -> None:
    try:
        canonical = canonical_email(raw)
    except AddressError:
        return  # hypothesis's generator allows special-use domains the library refuses
    assert canonical_email(canonical) == canonical
    assert comparison_key(canonical) == comparison_key(raw)
    assert canonical_email(sending_address(raw)) == canonical


def _by_the_validator(local: str, domain: str) -> EmailAddress | None:
    """What ``parse_email`` answers without its plain-address path: the validator's."""
    from stagecoach.engine.domain.addresses import _validated

    try:
        return _validated(f"{local}@{domain}", local, domain)
    except AddressError:
        return None


_LOCAL_CHARS = "ab9_+-.!#'"
_DOMAIN_CHARS = "aZ9-._"
# Near the plain path's edges most of the time (dots, hyphens and lengths where the
# rules bite), anything from the alphabets otherwise.
_LOCALS = st.one_of(
    st.from_regex(r"[a-z0-9_+.-]{1,66}", fullmatch=True),
    st.text(_LOCAL_CHARS, min_size=0, max_size=70),
)
_LABELS = st.one_of(
    st.from_regex(r"[a-zA-Z0-9-]{1,64}", fullmatch=True),
    st.text(_DOMAIN_CHARS, min_size=0, max_size=70),
)
_TLDS = st.sampled_from(["com", "c", "io", "test", "local", "123", "x1", "xn--p1ai", "Org"])


@given(
    local=_LOCALS,
    domain=st.builds(
        lambda labels, tld: ".".join([*labels, tld]), st.lists(_LABELS, max_size=4), _TLDS
    ),
)
def test_the_plain_address_path_answers_what_the_validator_answers(local: str, domain: str) -> None:
    from stagecoach.engine.domain.addresses import _plain_address

    plain = _plain_address(local.lower(), domain)
    if plain is None:
        return  # the validator decides, as before
    assert plain == _by_the_validator(local.lower(), domain)


@pytest.mark.parametrize(
    "raw",
    ["reader1@example.com", "a.b+tag@mail.example.co", "x_y-z@sub-1.example.org", "A@B.IO"],
)
def test_common_addresses_take_the_plain_path_and_match_the_validator(raw: str) -> None:
    from stagecoach.engine.domain.addresses import _plain_address

    local, _, domain = raw.rpartition("@")
    plain = _plain_address(local.lower(), domain)
    assert plain is not None
    assert plain == _by_the_validator(local.lower(), domain)
