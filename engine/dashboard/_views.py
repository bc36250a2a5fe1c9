"""The dashboard's pages, and the report cache that keeps them fast.

Pages are rendered on the server from Jinja2 templates (autoescaped) and carry their
charts as figure JSON (``stagecoach.engine.dashboard._charts``); the only scripts are
``plotly.min.js`` from the installed ``plotly`` package and a ten-line renderer, both
served from ``/dashboard/static/``, so a page needs no network beyond this API.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.exceptions import TemporalError

from stagecoach.engine.api._common import (
    client_address,
    in_thread,
    read_body,
    too_many_failures,
)
from stagecoach.engine.api.deps import SessionDep, temporal_client
from stagecoach.engine.api.sessions import Sessions
from stagecoach.engine.dashboard import _broadcasts, _charts, _prediction, _segments, _value
from stagecoach.engine.domain.errors import DatabaseError, TemporalUnavailable
from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.services.analytics import Params, Report, ReportError
from stagecoach.engine.services.analytics.service import (
    EARLIEST,
    LATEST,
    Freshness,
    Numbers,
    Wanted,
    reports_for,
)
from stagecoach.engine.services.broadcasts.store import BroadcastNotFound, contact_broadcast_sends
from stagecoach.engine.services.lookup import (
    LOOKUP_KINDS,
    ContactNotMatched,
    MalformedLookup,
    Person,
    find_contacts,
    find_person,
)
from stagecoach.engine.services.segments.queries import (
    ContactSegment,
    UnknownSegment,
    contact_segments,
    daily_activity,
    members,
    segment_summaries,
    segment_summary,
)
from stagecoach.engine.services.storage.models import StageTransition
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import ContactNotFound, missing_contact
from stagecoach.engine.temporal.timeline import (
    Entry,
    broadcast_entry,
    contact_timeline,
    with_entries,
)

PREFIX = "/dashboard"
DEFAULT_DAYS = 90
"""The period a page shows when the URL names none: the last 90 days, today included."""
TIMELINE_TIMEOUT = 5.0
"""Seconds the contact page waits for Temporal's history before showing the rest."""
FORM_LIMIT = 4096

_log = structlog.get_logger("stagecoach.dashboard")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""Scripts only from this origin; plotly.js styles its charts with inline styles."""

PAGE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
}

TimelineReader = Callable[[Client, str], Awaitable[list[Entry]]]
TemporalDep = Callable[[Request], Awaitable[Client | None]]


# --- the period a page shows ----------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """``since`` to ``until``, both dates included, in UTC."""

    since: date
    until: date
    problem: str | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None, *, today: date) -> Period:
        """The period a page's query asks for; one that does not read as dates falls
        back to the default and says why (a hand-edited URL), one outside the dates
        reports cover is refused.

        Raises:
            ReportError: ``since`` or ``until`` is outside ``EARLIEST``..``LATEST``
                (``until`` is included, so it ends the day before ``LATEST``).
        """
        default = cls(today - timedelta(days=DEFAULT_DAYS - 1), today)
        first, last = EARLIEST.date(), LATEST.date() - timedelta(days=1)
        try:
            end = date.fromisoformat(until) if until else default.until
            start = date.fromisoformat(since) if since else None
        except ValueError:
            return cls(default.since, default.until, "dates are YYYY-MM-DD: showing the default")
        for name, given in (("until", end), ("since", start)):
            if given is not None and not first <= given <= last:
                raise ReportError(
                    f"{name}={given.isoformat()} is outside the dates reports cover "
                    f"({first.isoformat()} to {last.isoformat()})",
                    fix=f"give {name} between {first.isoformat()} and {last.isoformat()}",
                )
        if start is None:
            start = max(end - timedelta(days=DEFAULT_DAYS - 1), first)
        if start > end:
            return cls(default.since, default.until, "since is after until: showing the default")
        return cls(start, end)

    def params(self, *, include_rehearsals: bool = False, **options: Any) -> Params:
        start = datetime.combine(self.since, dt_time(), UTC)
        end = datetime.combine(self.until + timedelta(days=1), dt_time(), UTC)
        return Params(
            since=start, until=end, options=options, include_rehearsals=include_rehearsals
        )

    @property
    def query(self) -> str:
        return "?" + urlencode({"since": self.since.isoformat(), "until": self.until.isoformat()})


# --- rendering --------------------------------------------------------------------------------

_PERCENT = ("rate", "relative_lift")


def cell(value: Any, column: str = "") -> str:
    """A table cell's text: thousands separators, rates as percentages, dashes for none."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if column.endswith(_PERCENT):
            return f"{value * 100:.1f}%"
        if column == "lift":
            return f"{value * 100:+.1f} pp"
        if column == "p_value":
            return f"{value:.3f}"
        return f"{value:,.1f}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="minutes")
    return str(value)


def utc(value: datetime) -> str:
    """A stored time in UTC to the minute; SQLite hands times back without their zone,
    and every time Stagecoach stores is UTC."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["cell"] = cell
    env.filters["utc"] = utc
    return env


TEMPLATES = _environment()


def render(template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``templates/<template>``, with the dashboard's headers."""
    html = TEMPLATES.get_template(template).render(prefix=PREFIX, **context)
    return HTMLResponse(html, status_code=status, headers=dict(PAGE_HEADERS))


def problem_page(
    status: int, title: str, problem: str, fix: str = "", *, signed_in: bool = False
) -> HTMLResponse:
    """A page saying what went wrong and what to do about it."""
    return render(
        "problem.html", status=status, title=title, problem=problem, fix=fix, signed_in=signed_in
    )


@dataclass
class _Plotly:
    """``plotly.min.js`` from the installed package, read once, gzipped once."""

    version: str
    raw: bytes = b""
    gzipped: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, gzip_ok: bool) -> bytes:
        with self.lock:
            if not self.raw:
                self.raw = (
                    resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()
                )
            if gzip_ok and not self.gzipped:
                self.gzipped = gzip.compress(self.raw, compresslevel=6, mtime=0)
        return self.gzipped if gzip_ok else self.raw


def _plotly_version() -> str:
    from plotly.offline import get_plotlyjs_version  # type: ignore[import-untyped]

    return str(get_plotlyjs_version())


def default_reports() -> Wanted:
    """The pages' reports for their default period: worth computing before anyone asks."""
    params = Period.parse(None, None, today=datetime.now(UTC).date()).params()
    return [("funnel", params), ("nps", params), ("journeys", params)]


# --- the router -------------------------------------------------------------------------------


def dashboard_router(
    settings: Settings,
    *,
    temporal: TemporalDep = temporal_client,
    timeline: TimelineReader = contact_timeline,
    sessions: Sessions | None = None,
    numbers: Numbers | None = None,
) -> APIRouter:
    """The dashboard's routes under ``/dashboard``, for ``app.include_router``.

    Args:
        settings: Admin token (sign-in), link secret (session cookies), analytics store
            path, how often the store syncs, Temporal Web UI address and namespace.
        temporal: The app's Temporal client, or None when Temporal is not wired; the
            default is the contacts API's (``app.state.temporal``), one client for both.
        timeline: Reads a contact's story from its workflow history.
        sessions: Signs and checks session cookies (default: from ``settings``).
        numbers: The reports, shared with the JSON API (default: a cache of its own,
            as ``stagecoach.engine.services.analytics.service.reports_for`` builds it).

    The router reads the database through ``app.state`` (``db`` to sync the store,
    the session dependency for a contact's stage transitions).
    """
    if numbers is None:
        numbers = reports_for(settings, defaults=default_reports)
    auth = sessions or Sessions(settings, path=PREFIX)
    plotly_js = _Plotly(_plotly_version())
    plotly_path = f"{PREFIX}/static/plotly-{plotly_js.version}.min.js"
    scripts = (plotly_path, f"{PREFIX}/static/dashboard.js")
    router = APIRouter(prefix=PREFIX, tags=["dashboard"], include_in_schema=False)
    signed_in = [Depends(auth.require)]

    def base(title: str, active: str = "") -> dict[str, Any]:
        return {"title": title, "signed_in": True, "scripts": scripts, "active": active}

    def page_period(since: str | None, until: str | None) -> Period | HTMLResponse:
        try:
            return Period.parse(since, until, today=datetime.now(UTC).date())
        except ReportError as exc:
            return problem_page(
                400, "Cannot show this period", exc.message, exc.fix, signed_in=True
            )

    def page_numbers(
        request: Request, wanted: Sequence[tuple[str, Params]]
    ) -> tuple[Freshness, list[Report]] | HTMLResponse:
        try:
            fresh = numbers.freshness(request.app.state.db)
            return fresh, numbers.reports(wanted)
        except ReportError as exc:
            return problem_page(
                400, "Cannot compute this report", exc.message, exc.fix, signed_in=True
            )
        except DatabaseError as exc:
            return problem_page(
                503, "The numbers are not available", exc.message, exc.fix, signed_in=True
            )

    # --- sign-in ------------------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    def login_page(
        request: Request, *, next: Annotated[str | None, Query()] = None, expired: bool = False
    ) -> HTMLResponse:
        if not auth.enabled:
            return problem_page(
                503,
                "The dashboard is off",
                "STAGECOACH_ADMIN_TOKEN is not set, so nobody can sign in.",
                "Set it to a long random secret (openssl rand -hex 32) and restart the API.",
            )
        with contextlib.suppress(DatabaseError):  # the pages' numbers, ready at sign-in
            numbers.prepare(request.app.state.db)
        message = "Your session ended: sign in again." if expired else ""
        return render(
            "login.html",
            title="Sign in",
            signed_in=False,
            next=auth.safe_next(next),
            message=message,
        )

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        body = await read_body(request, FORM_LIMIT)
        form = parse_qs(body.decode("utf-8", "replace")) if body is not None else {}
        given = (form.get("token") or [""])[0]
        wanted = auth.safe_next((form.get("next") or [""])[0])
        if not auth.enabled:
            return problem_page(503, "The dashboard is off", "STAGECOACH_ADMIN_TOKEN is not set.")
        attempt = auth.attempt(request, given)
        if attempt.retry_after:
            page = problem_page(
                429,
                "Too many wrong tokens",
                too_many_failures(attempt.retry_after),
                "Check the value of STAGECOACH_ADMIN_TOKEN before trying again.",
            )
            page.headers["Retry-After"] = str(attempt.retry_after)
            return page
        if not attempt.granted:
            _log.warning("dashboard sign-in refused", client=client_address(request))
            return render(
                "login.html",
                status=401,
                title="Sign in",
                signed_in=False,
                next=wanted,
                message="That is not the admin token.",
            )
        response = RedirectResponse(wanted, status_code=303)
        auth.issue(response, datetime.now(UTC), db=request.app.state.db)
        return response

    # POST only, from our own pages: a link or another site's form cannot sign anyone out.
    @router.post("/logout")
    def logout(request: Request) -> Response:
        if not auth.same_origin(request):
            return problem_page(
                403, "Not signed out", "This sign-out did not come from the dashboard's pages."
            )
        auth.end(request)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        auth.clear(response)
        return response

    # --- static files ---------------------------------------------------------------------

    @router.get(plotly_path.removeprefix(PREFIX))
    def plotly_script(request: Request) -> Response:
        gzip_ok = "gzip" in request.headers.get("accept-encoding", "")
        headers = {
            "Cache-Control": "public, max-age=31536000, immutable",
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if gzip_ok:
            headers["Content-Encoding"] = "gzip"
        return Response(
            plotly_js.body(gzip_ok), media_type="text/javascript; charset=utf-8", headers=headers
        )

    @router.get("/static/dashboard.js")
    def render_script() -> Response:
        return Response(
            _charts.RENDER_JS,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    # --- pages ----------------------------------------------------------------------------

    @router.get("", response_class=HTMLResponse, dependencies=signed_in)
    def overview(
        request: Request,
        *,
        since: str | None = None,
        until: str | None = None,
        include_rehearsals: bool = False,
    ) -> HTMLResponse:
        period = page_period(since, until)
        if isinstance(period, HTMLResponse):
            return period
        params = period.params(include_rehearsals=include_rehearsals)
        got = page_numbers(request, [("funnel", params), ("nps", params)])
        if isinstance(got, HTMLResponse):
            return got
        fresh, (funnel, nps) = got
        charts = _charts.overview_charts(funnel)
        if nps.section("trend").rows:
            charts.append(_charts.nps_trend(nps))
        return render(
            "overview.html",
            **base("Pipeline overview", "overview"),
            period=period,
            freshness=fresh,
            funnel=funnel,
            nps=nps,
            charts=charts,
            tables=[funnel.section("conversion"), funnel.section("length")],
            nps_tables=[nps.section("by_touchpoint"), nps.section("referrals")],
        )

    @router.get("/journeys", response_class=HTMLResponse, dependencies=signed_in)
    def journeys(
        request: Request,
        *,
        since: str | None = None,
        until: str | None = None,
        journey: str | None = None,
        include_rehearsals: bool = False,
    ) -> HTMLResponse:
        period = page_period(since, until)
        if isinstance(period, HTMLResponse):
            return period
        params = period.params(
            include_rehearsals=include_rehearsals, **({"journey": journey} if journey else {})
        )
        got = page_numbers(request, [("journeys", params)])
        if isinstance(got, HTMLResponse):
            return got
        fresh, (report,) = got
        return render(
            "journeys.html",
            **base("Journeys", "journeys"),
            period=period,
            freshness=fresh,
            report=report,
            journey=journey,
            steps=report.section("steps"),
            lift=report.section("lift"),
            splits=report.section("splits"),
            charts=_charts.journey_flows(report),
        )

    @router.get("/contacts", dependencies=signed_in)
    async def find_contact(*, session: SessionDep, id: str = "", by: str = "auto") -> Response:
        """ "Open contact": one match opens it, several are listed, none is a 404 naming
        what was searched (``stagecoach.engine.services.lookup`` says how a value is read)."""
        wanted = id.strip()
        if not wanted:
            return RedirectResponse(PREFIX, status_code=303)
        region = settings.referral_phone_country
        try:
            people = await in_thread(session, lambda s: find_contacts(s, wanted, by, region=region))
            if not people:  # raises the 404 naming what was searched (or erased when)
                await in_thread(session, lambda s: find_person(s, wanted, by, region=region))
        except DatabaseError as exc:
            return problem_page(
                503, "The database did not answer", exc.message, exc.fix, signed_in=True
            )
        except MalformedLookup as exc:
            title = f"Not a valid {exc.field}"
            return problem_page(400, title, exc.message, exc.fix, signed_in=True)
        except ContactNotMatched as exc:
            if by in ("auto", "id") and _could_be_contact_id(wanted):
                # A workflow may exist without a stored row (a rehearsal): the contact
                # page shows its history, or says that there is none.
                return RedirectResponse(_contact_url(wanted), status_code=303)
            return problem_page(404, "No such contact", exc.message, exc.fix, signed_in=True)
        if len(people) == 1:
            return RedirectResponse(_contact_url(people[0].survivor.id), status_code=303)
        return render(
            "contacts.html",
            **base(f"{len(people)} contacts match {wanted}"),
            query=wanted,
            by=by,
            people=people,
            kinds=LOOKUP_KINDS,
        )

    @router.get("/contacts/{contact_id}", response_class=HTMLResponse, dependencies=signed_in)
    async def contact(request: Request, contact_id: str, session: SessionDep) -> HTMLResponse:
        try:
            found = await in_thread(session, _contact_rows, contact_id)
        except DatabaseError as exc:
            return problem_page(
                503, "The database did not answer", exc.message, exc.fix, signed_in=True
            )
        person, transitions = found
        subject = contact_id if isinstance(person, str) else person.survivor.id
        segments: list[ContactSegment] | None
        try:
            segments = await _segments.read(contact_segments, request.app.state.db, subject)
        except DatabaseError:  # the rest of the page is still worth showing
            segments = None
        try:
            valued = await _segments.read(_value.of_contact, request.app.state.db, subject)
        except DatabaseError:  # not migrated to customer value yet: the page still shows
            valued = None
        story, note = await _story(request, temporal, timeline, subject)
        # Broadcast sends are in the delivery records, not the workflow's history: shown
        # even when the history cannot be read (the note still says why).
        try:
            sends = await asyncio.to_thread(contact_broadcast_sends, request.app.state.db, subject)
        except SADatabaseError:
            sends = []
        if sends:
            story = with_entries(
                story or [],
                [
                    broadcast_entry(b.at, b.broadcast, b.channel, b.content_id, b.status, b.arm)
                    for b in sends
                ],
            )
        if isinstance(person, str) and story is None:
            return problem_page(404, "No such contact", person, signed_in=True)
        propensity = await asyncio.to_thread(
            _prediction.contact_propensity, request.app.state.db, subject
        )
        workflow = contact_workflow_id(subject)
        ui = (
            f"{settings.temporal_ui_url}/namespaces/{quote(settings.temporal_namespace, safe='')}"
            f"/workflows/{quote(workflow, safe='')}"
        )
        return render(
            "contact.html",
            **base(f"Contact {subject}"),
            contact_id=subject,
            person=None if isinstance(person, str) else person,
            transitions=transitions,
            segments=segments,
            value=valued,
            story=story,
            note=note,
            temporal_ui=ui,
            workflow_id=workflow,
            read_at=datetime.now(UTC),
            propensity=propensity,
        )

    # --- segments ---------------------------------------------------------------------

    @router.get("/segments", response_class=HTMLResponse, dependencies=signed_in)
    async def segments(request: Request) -> HTMLResponse:
        try:
            summaries = await _segments.read(segment_summaries, request.app.state.db)
        except DatabaseError as exc:
            return problem_page(
                503, "The database did not answer", exc.message, exc.fix, signed_in=True
            )
        return render(
            "segments.html",
            **base("Segments", "segments"),
            summaries=summaries,
            kind=_segments.kind,
            read_at=datetime.now(UTC),
        )

    @router.get("/segments/{name}", response_class=HTMLResponse, dependencies=signed_in)
    async def segment(request: Request, name: str, after: str | None = None) -> HTMLResponse:
        """One segment: size, entries and exits per day, and its members by page (keyset:
        ``after`` is the last contact id of the previous page)."""
        if after is not None and not 0 < len(after) <= _segments.CONTACT_ID_LIMIT:
            return problem_page(
                400,
                "Not a page of members",
                f"after={after[:80]!r} is not a contact id"
                f" (1 to {_segments.CONTACT_ID_LIMIT} characters)",
                "Follow the page's own Next link, or drop after= for the first page.",
                signed_in=True,
            )
        db = request.app.state.db
        try:
            summary = await _segments.read(segment_summary, db, name)
            days = await _segments.read(daily_activity, db, name, days=_segments.DAYS)
            page = await _segments.read(
                members, db, name, after=after, limit=_segments.MEMBERS_PAGE + 1
            )
        except UnknownSegment as exc:
            return problem_page(404, "No such segment", exc.message, exc.fix, signed_in=True)
        except DatabaseError as exc:
            return problem_page(
                503, "The database did not answer", exc.message, exc.fix, signed_in=True
            )
        more = len(page) > _segments.MEMBERS_PAGE
        page = page[: _segments.MEMBERS_PAGE]
        return render(
            "segment.html",
            **base(f"Segment {summary.name}", "segments"),
            summary=summary,
            kind=_segments.kind(summary),
            definition=_segments.definition(summary),
            days=days,
            chart=_segments.day_chart(days),
            members=page,
            after=after,
            next_after=page[-1].contact_id if more and page else None,
            page_size=_segments.MEMBERS_PAGE,
            read_at=datetime.now(UTC),
        )

    # --- prediction ---------------------------------------------------------------------

    @router.get("/forecast", response_class=HTMLResponse, dependencies=signed_in)
    def forecast(request: Request, *, origin: str | None = None) -> HTMLResponse:
        """New customers and revenue per week ahead, with 80% bands, against actuals."""
        try:
            at = _prediction.origin_time(origin)
        except ReportError as exc:
            return problem_page(
                400, "Cannot forecast from there", exc.message, exc.fix, signed_in=True
            )
        got = page_numbers(request, [("forecast", Params.last(options={}, now=at))])
        if isinstance(got, HTMLResponse):
            return got
        fresh, (report,) = got
        return render(
            "forecast.html",
            **base("Pipeline forecast", "forecast"),
            freshness=fresh,
            report=report,
            origin=report.params.until.date().isoformat() if origin else "",
            charts=[
                _prediction.forecast_chart(report, "customers"),
                _prediction.forecast_chart(report, "revenue"),
            ],
        )

    @router.get("/propensity", response_class=HTMLResponse, dependencies=signed_in)
    async def propensity(request: Request) -> HTMLResponse:
        """Model versions, calibration on held-out contacts, drivers, score spread."""
        from stagecoach.engine.services.prediction.report import propensity_report

        report = await asyncio.to_thread(propensity_report, request.app.state.db)
        charts = (
            [_prediction.calibration_chart(report)] if report.section("calibration").rows else []
        )
        return render(
            "propensity.html",
            **base("Conversion propensity", "propensity"),
            report=report,
            charts=charts,
        )

    # --- broadcasts -------------------------------------------------------------------

    @router.get("/broadcasts", response_class=HTMLResponse, dependencies=signed_in)
    async def broadcasts(request: Request) -> HTMLResponse:
        try:
            reports = await _segments.read(_broadcasts.all_reports, request.app.state.db)
        except DatabaseError as exc:
            return problem_page(
                503, "The database did not answer", exc.message, exc.fix, signed_in=True
            )
        live = any(r.status in _broadcasts.LIVE for r in reports)
        return render(
            "broadcasts.html",
            **base("Broadcasts", "broadcasts"),
            reports=reports,
            progress=_broadcasts.progress,
            refresh=_broadcasts.REFRESH_SECONDS if live else None,
            read_at=datetime.now(UTC),
        )

    @router.get("/broadcasts/{broadcast_id}", response_class=HTMLResponse, dependencies=signed_in)
    async def broadcast(request: Request, broadcast_id: str) -> HTMLResponse:
        """One broadcast: progress, outcomes, engagement, conversions, held back by
        reason, the A/B test and any WeChat mass-send jobs."""
        try:
            report, spec = await _segments.read(
                _broadcasts.one_report, request.app.state.db, broadcast_id
            )
        except BroadcastNotFound as exc:
            return problem_page(404, "No such broadcast", exc.message, exc.fix, signed_in=True)
        except DatabaseError as exc:
            return problem_page(
                503, "The database did not answer", exc.message, exc.fix, signed_in=True
            )
        return render(
            "broadcast.html",
            **base(f"Broadcast {report.id}", "broadcasts"),
            report=report,
            spec=spec,
            progress=_broadcasts.progress(report),
            engagement=[(name, report.engagement.get(name, 0)) for name in _broadcasts.ENGAGEMENT],
            rate=_broadcasts.rate,
            attribution=_broadcasts.span(spec.get("attribution")),
            ab=_broadcasts.ab_view(report, spec),
            refresh=_broadcasts.REFRESH_SECONDS if report.status in _broadcasts.LIVE else None,
            read_at=datetime.now(UTC),
        )

    # --- customer value -----------------------------------------------------------------

    @router.get("/value", response_class=HTMLResponse, dependencies=signed_in)
    async def value(request: Request) -> HTMLResponse:
        """Value tiers, the CLV distribution, the model and what it left out, and the
        cross-sell pairs, from the latest value refresh."""
        try:
            tiers, pairs = await _segments.read(_value.reports, request.app.state.db)
        except DatabaseError as exc:
            return problem_page(
                503, "The database did not answer", exc.message, exc.fix, signed_in=True
            )
        buckets, most = _value.buckets(tiers)
        return render(
            "value.html",
            **base("Customer value", "value"),
            report=tiers,
            tiers=_value.section(tiers, "tiers"),
            churn=_value.section(tiers, "churn"),
            buckets=buckets,
            most=most,
            model=_value.section(tiers, "model"),
            left_out=_value.section(tiers, "left_out"),
            customers=_value.section(tiers, "customers"),
            pairs=_value.section(pairs, "pairs"),
        )

    return router


def _contact_url(contact_id: str) -> str:
    return f"{PREFIX}/contacts/{quote(contact_id, safe='')}"


def _could_be_contact_id(value: str) -> bool:
    return "@" not in value and "/" not in value


def _contact_rows(session: Session, contact_id: str) -> tuple[Person | str, list[StageTransition]]:
    """The person behind ``contact_id`` (or why there is none) and its stage transitions,
    those of every id merged into it included, oldest first."""
    person: Person | str
    try:
        person = find_person(session, contact_id, "id")
    except (ContactNotMatched, MalformedLookup) as exc:
        person = exc.message
    ids = list(person.ids) if isinstance(person, Person) else [contact_id]
    rows = session.exec(
        select(StageTransition)
        .where(col(StageTransition.contact_id).in_(ids))
        .order_by(col(StageTransition.at), col(StageTransition.id))
    ).all()
    return person, list(rows)


async def _story(
    request: Request, temporal: TemporalDep, timeline: TimelineReader, contact_id: str
) -> tuple[list[Entry] | None, str]:
    """The contact's timeline from its workflow history, or None and a note saying why."""
    try:
        client = await temporal(request)
    except TemporalUnavailable as exc:
        return None, f"Temporal is unreachable ({exc.message})"
    if client is None:
        return None, "Temporal is not wired to this API: the timeline needs it"
    try:
        async with asyncio.timeout(TIMELINE_TIMEOUT):
            with missing_contact(contact_id):
                return await timeline(client, contact_id), ""
    except ContactNotFound:
        return None, f"no workflow {contact_workflow_id(contact_id)} (not started yet, or ended)"
    except TimeoutError:
        return None, f"Temporal did not send the history within {TIMELINE_TIMEOUT:g} s"
    except (TemporalError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"reading the history failed: {reason}"
