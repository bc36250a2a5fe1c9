"""The HubSpot connector: hand a qualified lead to sales in HubSpot's CRM (v3 APIs).

One hand-off (``channel="crm"``) does three things, in this order:

1. **Create or update the contact by email.** ``POST /crm/v3/objects/contacts`` with
   the contact's traits, the lifecycle stage (``marketingqualifiedlead`` by default) and
   optionally a lead status, score and grade. If HubSpot answers ``409 CONFLICT``
   ("Contact already exists. Existing ID: 123") we ``PATCH`` that id instead; if the
   id cannot be read from the message we ``PATCH .../contacts/{email}?idProperty=email``.
   Email is HubSpot's unique key for contacts, so this step is idempotent by nature.
   Lifecycle stages only move forward in HubSpot: if an update is refused because of
   ``lifecyclestage`` (the contact is already further along, e.g. a customer), the update
   is repeated without it rather than failing the hand-off.
2. **Look for this hand-off's note.** HubSpot has no idempotency header, so each note
   carries a marker derived from the idempotency key (``sc-`` and 24 hex digits of its
   SHA-256) in its body. Before creating one we list the notes associated with the
   contact (``GET /crm/v4/objects/contacts/{id}/associations/notes``) and read the
   newest 100 (``POST /crm/v3/objects/notes/batch/read``). We deliberately do not use
   the search API: its index lags writes by seconds, while the associations and object
   reads see a note as soon as it exists. If the marker is found, the send reports
   ``duplicate=True`` and creates nothing.
3. **Create the note** (``POST /crm/v3/objects/notes``), associated with the contact
   (association type 202, note to contact), carrying the reason, journey and step,
   score, grade, stage and a link to the contact's timeline in Stagecoach. It appears on
   the contact's timeline, where sales look.

So a retry after any failure (even one where HubSpot did the work but the answer was
lost) updates the same contact and finds the same note: one contact, one note per key.
Temporal runs one attempt at a time, so two attempts never race on the same key.

Errors, per HubSpot's documented error JSON (``status``, ``message``,
``correlationId``, ``category``) and status codes:

==============================  =========================================================
401 ``INVALID_AUTHENTICATION``  :class:`PermanentDeliveryError` ``code="hubspot_auth"``:
                                set ``STAGECOACH_HUBSPOT_TOKEN``
403 (missing scopes)            ``code="hubspot_auth"``: grant the private app the
                                ``crm.objects.contacts.read`` and ``.write`` scopes
429 ``RATE_LIMITS``             :class:`RetryableDeliveryError`; ``retry_after`` from
                                ``Retry-After``, else one hour for the ``DAILY`` policy,
                                else ``X-HubSpot-RateLimit-Interval-Milliseconds``
                                (the rolling window, 10 s)
423 (locked), 408, 5xx          retryable (423 after 2 s, as HubSpot advises)
timeouts, refused connections   retryable
400 ``VALIDATION_ERROR``        ``code="hubspot_validation"``, naming the property
hand-off without an email       ``code="missing_email"``, raised before any request
other 4xx                       ``code="hubspot_http_<status>"``
==============================  =========================================================

The private app needs the scopes ``crm.objects.contacts.read`` and
``crm.objects.contacts.write`` (notes on contacts use the contact scopes). Use the
hand-off retry policy documented in :mod:`stagecoach.connectors.crm.webhook`.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import structlog

from stagecoach.connectors._http import (
    build_client,
    parse_retry_after,
    response_json,
    transport_error,
)
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.protocol.connector import (
    DeliveryError,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)

DEFAULT_BASE_URL = "https://api.hubapi.com"
NOTE_TO_CONTACT = 202
"""HubSpot-defined association type id: note to contact."""
NOTES_CHECKED = 100
"""How many of a contact's newest notes are read when looking for a hand-off's marker."""

AUTH_FIX = (
    "set STAGECOACH_HUBSPOT_TOKEN to the access token of a HubSpot private app "
    "(HubSpot: Settings > Integrations > Private apps > your app > Auth)"
)
SCOPES_FIX = (
    "give the HubSpot private app the scopes crm.objects.contacts.read and "
    "crm.objects.contacts.write, then put its token in STAGECOACH_HUBSPOT_TOKEN"
)

DEFAULT_TRAIT_PROPERTIES: Mapping[str, str] = {
    "first_name": "firstname",
    "firstname": "firstname",
    "last_name": "lastname",
    "lastname": "lastname",
    "company": "company",
    "phone": "phone",
    "job_title": "jobtitle",
    "jobtitle": "jobtitle",
    "website": "website",
    "city": "city",
    "country": "country",
}
"""Hand-off trait name -> HubSpot contact property (HubSpot's default properties)."""

_SECTIONS = ("traits", "attributes", "identities")
_EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
_PROPERTY_IN_MESSAGE = re.compile(r'[Pp]roperty\s+\\?"([^"\\]+)\\?"')

log = structlog.get_logger(__name__)


def _permanent(message: str, *, code: str, fix: str) -> PermanentDeliveryError:
    error = PermanentDeliveryError(message, code=code)
    error.fix = fix  # the generic "correct the address" does not fit CRM failures
    return error


def lookup(rendered: Mapping[str, Any], name: str) -> Any:
    """A trait from the hand-off payload: top level first, then traits, attributes, ids."""
    value = rendered.get(name)
    if value not in (None, ""):
        return value
    for section in _SECTIONS:
        inner = rendered.get(section)
        if isinstance(inner, Mapping) and inner.get(name) not in (None, ""):
            return inner[name]
    return None


def note_marker(idempotency_key: str) -> str:
    """The token a hand-off's note carries so a retry can find it."""
    return "sc-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


def validation_properties(data: Mapping[str, Any]) -> list[str]:
    """The property names a HubSpot ``VALIDATION_ERROR`` body complains about."""
    names: list[str] = []
    for error in data.get("errors") or []:
        if not isinstance(error, Mapping):
            continue
        context = error.get("context")
        if isinstance(context, Mapping):
            found = context.get("propertyName")
            names += [found] if isinstance(found, str) else [str(n) for n in found or []]
        names += _PROPERTY_IN_MESSAGE.findall(str(error.get("message", "")))
    message = str(data.get("message", ""))
    _, sep, listing = message.partition("Property values were not valid: ")
    if sep:
        try:
            items = json.loads(listing)
        except ValueError:
            items = []
        names += [str(i["name"]) for i in items if isinstance(i, Mapping) and i.get("name")]
    names += _PROPERTY_IN_MESSAGE.findall(message)
    return list(dict.fromkeys(names))


def rate_limit_delay(response: httpx.Response, data: Mapping[str, Any]) -> timedelta:
    """How long to wait after a 429, from HubSpot's headers and body."""
    hinted = parse_retry_after(response.headers.get("Retry-After"))
    if hinted is not None:
        return hinted
    daily_left = response.headers.get("X-HubSpot-RateLimit-Daily-Remaining")
    if str(data.get("policyName", "")).upper() == "DAILY" or daily_left == "0":
        # The daily limit resets at midnight in the account's time zone, which we do not
        # know: look again every hour rather than hammer it.
        return timedelta(hours=1)
    try:
        return timedelta(
            milliseconds=int(response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"])
        )
    except (KeyError, ValueError):
        return timedelta(seconds=10)


def hubspot_error(response: httpx.Response, *, what: str) -> DeliveryError:
    """Translate one non-2xx HubSpot answer into the delivery error tree."""
    status = response.status_code
    data = response_json(response)
    category = str(data.get("category") or data.get("errorType") or "")
    detail = str(data.get("message") or response.reason_phrase or "").strip()
    correlation = data.get("correlationId")
    where = f"HubSpot answered {status}{' ' + category if category else ''} to {what}"
    said = f": {detail}" if detail else ""
    ref = f" (correlationId {correlation})" if correlation else ""
    if status == 401:
        return _permanent(
            f"{where}: the private-app token was refused{ref}", code="hubspot_auth", fix=AUTH_FIX
        )
    if status == 403:
        return _permanent(f"{where}{said}{ref}", code="hubspot_auth", fix=SCOPES_FIX)
    if status == 429:
        return RetryableDeliveryError(
            f"{where}{said}{ref}", retry_after=rate_limit_delay(response, data)
        )
    if status == 423:
        return RetryableDeliveryError(
            f"{where}{said}{ref}",
            retry_after=parse_retry_after(response.headers.get("Retry-After"))
            or timedelta(seconds=2),
        )
    if status == 408 or status >= 500:
        return RetryableDeliveryError(
            f"{where}{said}{ref}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status == 400 and category == "VALIDATION_ERROR":
        names = validation_properties(data)
        named = ", ".join(names) if names else "(not named by HubSpot)"
        return _permanent(
            f"{where}: property {named} was not accepted{said}{ref}",
            code="hubspot_validation",
            fix=f"correct the value sent for HubSpot property {named}, or create the "
            "property in HubSpot (Settings > Properties) if it does not exist, or drop it "
            "from the connector's property mapping",
        )
    return _permanent(
        f"{where}{said}{ref}",
        code=f"hubspot_http_{status}",
        fix="see HubSpot's message; the hand-off is not retried",
    )


class HubSpotConnector:
    """Hands leads to sales in HubSpot: upsert the contact by email, add a note.

    Args:
        token: A private-app access token (``STAGECOACH_HUBSPOT_TOKEN``).
        base_url: HubSpot's API root; a local peer in tests.
        lifecycle_stage: Internal value of the lifecycle stage to set; ``None`` leaves it.
        lead_status: ``hs_lead_status`` to set (e.g. ``NEW``); ``None`` leaves it.
        trait_properties: Hand-off trait -> HubSpot contact property; the default maps
            names, company, phone, job title, website, city and country.
        score_property: A numeric contact property to hold the score, if you made one.
        grade_property: A contact property to hold the grade, if you made one.
        timeline_url: A template for the link in the note, with ``{contact_id}``; the
            payload's own ``timeline_url`` wins when it has one.
        timeout: Seconds for connecting, and for each read and write.
        limiter: Acquired before every request (a hand-off makes three to five).
        client: A client to use instead of building one; the caller closes it.
        transport: The transport of the built client (``httpx.MockTransport`` in tests).
        clock: Unix seconds, for the note's timestamp.
    """

    channel = "crm"

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        lifecycle_stage: str | None = "marketingqualifiedlead",
        lead_status: str | None = None,
        trait_properties: Mapping[str, str] | None = None,
        score_property: str | None = None,
        grade_property: str | None = None,
        timeline_url: str | None = None,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token or not token.strip():
            raise ConfigurationError("no HubSpot access token is configured", fix=AUTH_FIX)
        self.base_url = base_url.rstrip("/")
        self.lifecycle_stage = lifecycle_stage
        self.lead_status = lead_status
        self.trait_properties = dict(
            DEFAULT_TRAIT_PROPERTIES if trait_properties is None else trait_properties
        )
        self.score_property = score_property
        self.grade_property = grade_property
        self.timeline_url = timeline_url
        self._limiter = limiter
        self._clock = clock
        self._headers = {
            "Authorization": f"Bearer {token.strip()}",
            "Accept": "application/json",
            "User-Agent": "Stagecoach-HubSpot/1",
        }
        self._client, self._owns_client = build_client(
            client=client, transport=transport, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"HubSpotConnector(base_url={self.base_url!r})"

    # --- the hand-off -------------------------------------------------------------

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Upsert the contact, then add this hand-off's note unless it already exists."""
        rendered = message.rendered
        email = lookup(rendered, "email")
        if not isinstance(email, str) or "@" not in email:
            raise _permanent(
                f"hand-off of contact {message.contact_id} has no usable email "
                "(looked for 'email' at the top level and in traits, attributes and "
                "identities): HubSpot matches contacts by email",
                code="missing_email",
                fix="record the contact's email as a trait (traits.email) before the "
                "hand-off step, or hand off through the webhook connector instead",
            )
        contact_id, created = await self._upsert_contact(
            email.strip(), self.contact_properties(rendered)
        )
        marker = note_marker(message.idempotency_key)
        existing = await self._find_note(contact_id, marker)
        if existing is not None:
            log.info("hubspot.handoff", contact_id=message.contact_id, duplicate=True)
            return SendResult(
                provider_message_id=existing,
                response={"contact_id": contact_id, "note_id": existing, "created": False},
                duplicate=True,
            )
        note_id = await self._create_note(contact_id, message, marker)
        log.info(
            "hubspot.handoff",
            contact_id=message.contact_id,
            hubspot_contact_created=created,
            duplicate=False,
        )
        return SendResult(
            provider_message_id=note_id,
            response={"contact_id": contact_id, "note_id": note_id, "created": created},
        )

    def contact_properties(self, rendered: Mapping[str, Any]) -> dict[str, str]:
        """The contact properties one hand-off writes (HubSpot takes strings)."""
        props: dict[str, str] = {}
        for trait, prop in self.trait_properties.items():
            value = lookup(rendered, trait)
            if value is not None and prop not in props:
                props[prop] = str(value)
        name = lookup(rendered, "name")
        if isinstance(name, str) and name.strip() and "firstname" not in props:
            first, _, last = name.strip().partition(" ")
            props["firstname"] = first
            if last and "lastname" not in props:
                props["lastname"] = last.strip()
        email = lookup(rendered, "email")
        if isinstance(email, str):
            props["email"] = email.strip()
        if self.lifecycle_stage:
            props["lifecyclestage"] = self.lifecycle_stage
        if self.lead_status:
            props["hs_lead_status"] = self.lead_status
        if self.score_property and rendered.get("score") is not None:
            props[self.score_property] = str(rendered["score"])
        if self.grade_property and rendered.get("grade"):
            props[self.grade_property] = str(rendered["grade"])
        return props

    def note_body(self, message: OutgoingMessage, marker: str) -> str:
        """The note's HTML: what sales read on the contact's timeline."""
        r = message.rendered
        e = html.escape
        rows = [
            ("Reason", r.get("reason")),
            # An MQL hand-off has no journey step (null): the row is left out.
            ("Journey", f"{r['journey']} (step {r.get('step_id')})" if r.get("journey") else None),
            ("Score", r.get("score")),
            ("Grade", r.get("grade")),
            ("Stage", r.get("stage")),
        ]
        items = "".join(
            f"<li><strong>{e(label)}:</strong> {e(str(value))}</li>"
            for label, value in rows
            if value not in (None, "")
        )
        link = r.get("timeline_url") or (
            self.timeline_url.format(contact_id=quote(message.contact_id, safe=""))
            if self.timeline_url
            else None
        )
        timeline = (
            f'<p><a href="{e(str(link), quote=True)}">Timeline in Stagecoach</a></p>'
            if link
            else ""
        )
        return (
            "<p><strong>Stagecoach hand-off to sales</strong></p>"
            f"<ul>{items}</ul>{timeline}"
            f"<p>Stagecoach contact {e(message.contact_id)} · hand-off {marker}</p>"
        )

    # --- steps --------------------------------------------------------------------

    async def _upsert_contact(self, email: str, props: dict[str, str]) -> tuple[str, bool]:
        response = await self._request(
            "POST", "/crm/v3/objects/contacts", body={"properties": props}, what="create contact"
        )
        if response.status_code in (200, 201):
            return self._id_of(response, "create contact"), True
        if response.status_code != 409:
            raise hubspot_error(response, what="create contact")
        match = _EXISTING_ID.search(str(response_json(response).get("message", "")))
        update = {k: v for k, v in props.items() if k != "email"}
        if match:
            contact_id = await self._update_contact(match.group(1), update, by_email=False)
        else:
            contact_id = await self._update_contact(email, update, by_email=True)
        return contact_id, False

    async def _update_contact(self, ref: str, props: dict[str, str], *, by_email: bool) -> str:
        path = f"/crm/v3/objects/contacts/{quote(ref, safe='')}"
        params = {"idProperty": "email"} if by_email else None
        response = await self._request(
            "PATCH", path, body={"properties": props}, params=params, what="update contact"
        )
        if (
            response.status_code == 400
            and "lifecyclestage" in props
            and "lifecyclestage" in validation_properties(response_json(response))
        ):
            # Already further along than the stage we set (a customer, say): keep theirs.
            props = {k: v for k, v in props.items() if k != "lifecyclestage"}
            response = await self._request(
                "PATCH", path, body={"properties": props}, params=params, what="update contact"
            )
        if response.status_code != 200:
            raise hubspot_error(response, what="update contact")
        return self._id_of(response, "update contact")

    async def _find_note(self, contact_id: str, marker: str) -> str | None:
        what = "list the contact's notes"
        response = await self._request(
            "GET",
            f"/crm/v4/objects/contacts/{contact_id}/associations/notes",
            params={"limit": "500"},
            what=what,
        )
        if response.status_code != 200:
            raise hubspot_error(response, what=what)
        ids = {
            str(item["toObjectId"])
            for item in response_json(response).get("results") or []
            if isinstance(item, Mapping) and item.get("toObjectId") is not None
        }
        if not ids:
            return None
        # Ids grow over time: the newest notes are the ones a retry could have written.
        newest = sorted(ids, key=lambda i: (len(i), i), reverse=True)[:NOTES_CHECKED]
        what = "read the contact's notes"
        response = await self._request(
            "POST",
            "/crm/v3/objects/notes/batch/read",
            body={"properties": ["hs_note_body"], "inputs": [{"id": i} for i in newest]},
            what=what,
        )
        if response.status_code not in (200, 207):
            raise hubspot_error(response, what=what)
        for note in response_json(response).get("results") or []:
            if not isinstance(note, Mapping):
                continue
            body = (note.get("properties") or {}).get("hs_note_body") or ""
            if marker in str(body) and note.get("id") is not None:
                return str(note["id"])
        return None

    async def _create_note(self, contact_id: str, message: OutgoingMessage, marker: str) -> str:
        stamp = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds")
        payload = {
            "properties": {
                "hs_timestamp": stamp.replace("+00:00", "Z"),
                "hs_note_body": self.note_body(message, marker),
            },
            "associations": [
                {
                    "to": {"id": contact_id},
                    "types": [
                        {
                            "associationCategory": "HUBSPOT_DEFINED",
                            "associationTypeId": NOTE_TO_CONTACT,
                        }
                    ],
                }
            ],
        }
        response = await self._request(
            "POST", "/crm/v3/objects/notes", body=payload, what="create note"
        )
        if response.status_code not in (200, 201):
            raise hubspot_error(response, what="create note")
        return self._id_of(response, "create note")

    # --- HTTP ---------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            return await self._client.request(
                method, self.base_url + path, json=body, params=params, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, peer=f"HubSpot ({what})") from exc

    @staticmethod
    def _id_of(response: httpx.Response, what: str) -> str:
        object_id = response_json(response).get("id")
        if object_id in (None, ""):
            # A 2xx without an id is not HubSpot's contract; a retry starts over safely.
            raise RetryableDeliveryError(f"HubSpot's answer to {what} carried no id")
        return str(object_id)

    async def aclose(self) -> None:
        """Close the pooled client, if this connector built it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
