"""The web dashboard: the pipeline, journeys, NPS and each contact, behind the admin login.

Pages (HTML, server-rendered; all but the login need a signed-in session)::

    GET  /dashboard                   pipeline funnel, stage-flow Sankey (detours too),
                                      time in stage, NPS trend, and their tables
    GET  /dashboard/journeys          per-step performance, a Sankey per journey
                                      version, holdout lift and split tests
    GET  /dashboard/contacts?id=&by=  "Open contact": a contact id, userId, email, phone,
                                      openid... (``stagecoach.engine.services.lookup``); one match
                                      opens it, several are listed, none is a 404
    GET  /dashboard/contacts/{id}     stage transitions and segments (database), the
                                      story from the workflow history, a link to the
                                      Temporal Web UI
    GET  /dashboard/segments          every published segment: description, kind,
                                      members, status (ready / backfilling)
    GET  /dashboard/segments/{name}   size, entries and exits per day for 30 days (an
                                      inline SVG and a table), the definition, members
                                      by page (``?after=<contact id>``); unknown: a 404
                                      naming the known ones
    GET  /dashboard/broadcasts        every broadcast: status, a progress bar (done of
                                      the audience), sent, held back, failed
    GET  /dashboard/broadcasts/{id}   one broadcast: recipients by outcome, engagement,
                                      conversions in the attribution window, held back
                                      by reason, the A/B test, WeChat mass-send jobs;
                                      unknown: a 404
    GET  /dashboard/value             customer value from the latest value refresh:
                                      tiers, the CLV distribution, cross-sell pairs,
                                      the model and the orders it left out
    GET  /dashboard/login, POST       the admin token in, a session cookie out
    POST /dashboard/logout            ends the session (same origin only); GET: 405
    GET  /dashboard/static/...        plotly.min.js from the installed plotly package

Report pages take ``since`` and ``until`` (``YYYY-MM-DD``, both included; default the
last 90 days) and say how fresh their numbers are: "numbers as of" the end of the
analytics store's last sync. The store is synced from the database on demand, at most
every ``STAGECOACH_DASHBOARD_CACHE_SECONDS`` (default 60) seconds, in the background
while pages are answered from the previous copy. Each report is computed once per
(report, parameters, sync) and kept (``Numbers``); the pages' default reports and those
asked for recently are computed right after each sync, before pages switch to the new
copy, and on a freshly started API as soon as the login page is shown. So a page load
is a cache hit unless it asks for a period nobody asked for since the last sync, and
numbers are at most that many seconds, plus one sync, old. The contact page reads the
database and Temporal live; the segments pages read the database live
(``stagecoach.engine.services.segments.queries``), each segment's newest ready version;
the broadcasts pages read the database live too
(``stagecoach.engine.services.broadcasts.metrics``) and reload themselves while a
broadcast is scheduled or running.

Nothing on a page comes from another host: charts are drawn by the plotly.js bundled
with the ``plotly`` package, served from this API, under a Content-Security-Policy that
allows scripts from this origin only.
"""

from stagecoach.engine.dashboard._views import Period, dashboard_router, default_reports
from stagecoach.engine.services.analytics.service import Freshness, Numbers

__all__ = [
    "Freshness",
    "Numbers",
    "Period",
    "dashboard_router",
    "default_reports",
]
