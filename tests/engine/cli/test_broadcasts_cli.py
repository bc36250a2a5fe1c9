"""``stagecoach broadcasts`` and ``stagecoach report broadcasts`` as a marketer runs them:
subprocesses against a database on disk and, where a broadcast is launched, the
production worker on the Temporal dev server.

- From nothing: a project made by ``stagecoach init``, deployed with a manual segment;
  readers uploaded with ``segments add`` and forwarded to their workflows by the API;
  ``broadcasts create``, ``preview``, ``schedule``, ``report --follow``; each reader sent
  once (counted in the file sink); ``report broadcasts`` in JSON and CSV; a second
  ``schedule`` answered with the first.
- A broadcast scheduled for later: ``test-send`` to seeds, pause shown at once and kept
  before the first batch, resume, cancel; nothing sent to the audience.
- Every kind of bad input, refused with the field and the fix, nothing sent.
- ``deploy`` keeps a project's broadcasts as drafts, and reports a launched one whose spec
  changed as a problem line instead of failing; ``validate`` checks each.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.segments import MANUAL_VERSION, Segment
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.broadcasts import store
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.services.storage.models import (
    BroadcastRecipient,
    Contact,
    Delivery,
    Identity,
    SegmentMember,
)
from stagecoach.engine.services.storage.segments import save_segment_changes
from tests.engine.cli.conftest import Shell
from tests.helpers import free_port, migrated_engine, run_cli_here
from tests.peers.smtp import SmtpPeer
from tests.workflows.conftest import Runtime, eventually, open_runtime

ROOT = Path(__file__).resolve().parents[3]
STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]
READERS = Segment("newsletter-readers", description="Uploaded readers", manual=True)


def _new_project(parent: Path, *, broadcasts: str = "") -> Path:
    """``stagecoach init`` a project with the manual segment (and ``broadcasts``, the
    source of a ``broadcasts=[...]`` list) added to its definitions."""
    made = subprocess.run(
        [*STAGECOACH, "init", "acme-news", "--no-git"],
        cwd=parent,
        env=_bare_env(parent),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    root = parent / "acme-news"
    _define(root, broadcasts)
    return root


def _define(root: Path, broadcasts: str) -> None:
    definitions = root / "acme_news" / "definitions.py"
    text = definitions.read_text()
    if "Segment" not in text:
        text = text.replace(
            "from stagecoach import Definitions, journeys_in",
            "from stagecoach import Broadcast, Definitions, Segment, journeys_in",
        ).replace(
            '    content="content",\n)',
            '    content="content",\n'
            '    segments=[Segment("newsletter-readers", description="Uploaded readers",'
            " manual=True)],\n"
            "    broadcasts=[],\n)",
        )
    text = re.sub(r"    broadcasts=\[.*\],\n\)", f"    broadcasts=[{broadcasts}],\n)", text)
    definitions.write_text(text)


def _bare_env(where: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(where / ".stagecoach"),
        STAGECOACH_DATABASE_URL=f"sqlite:///{where / 'stagecoach.db'}",
        STAGECOACH_LOG_LEVEL="warning",
        # Nothing listens here: a command that reaches for Temporal fails loudly.
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    env.update(extra)
    return env


def _run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STAGECOACH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def _error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command prints (exit 2, no traceback)."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _runtime_shell(runtime: Runtime, cwd: Path) -> Shell:
    """``stagecoach`` in a user's shell, pointed at this runtime's deployment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    environ.update(
        STAGECOACH_DATA_DIR=str(runtime.settings.data_dir),
        STAGECOACH_DATABASE_URL=runtime.settings.resolved_database_url,
        STAGECOACH_TEMPORAL_ADDRESS=runtime.client.service_client.config.target_host,
        STAGECOACH_TEMPORAL_NAMESPACE=runtime.client.namespace,
        STAGECOACH_TEMPORAL_TASK_QUEUE=runtime.settings.temporal_task_queue,
        STAGECOACH_LOG_LEVEL="warning",
    )
    return Shell(environ, cwd)


def _broadcast_files(runtime: Runtime, broadcast_id: str) -> dict[str, int]:
    """How many messages of ``broadcast_id`` the file sink holds, per contact (test
    sends to seeds left out)."""
    found: dict[str, int] = {}
    for path in (runtime.sink / "email").glob("*/*.json"):
        body = json.loads(path.read_text(encoding="utf-8"))
        key = body["idempotency_key"]
        if key.startswith(f"broadcast:{broadcast_id}:") and ":seed:" not in key:
            found[body["contact_id"]] = found.get(body["contact_id"], 0) + 1
    return found


@pytest.fixture
async def runtime(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> AsyncIterator[Runtime]:
    content = ContentLibrary.load(ROOT / "content")
    async with open_runtime(env, task_queue, tmp_path / "runtime", content) as runtime:
        yield runtime


async def test_from_a_new_project_each_uploaded_reader_is_sent_the_broadcast_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    root = _new_project(tmp_path)
    sh = _runtime_shell(runtime, root)

    code, out, err = await sh.run("deploy", "--to", "local")
    assert code == 0, out + err
    (root / "readers.csv").write_text(
        "email\nli.lei@example.cn\nwang.fang@example.cn\nzhao.min@example.cn\n"
    )
    code, out, err = await sh.run("segments", "add", "newsletter-readers", "--file", "readers.csv")
    assert code == 0, out + err
    assert "3 added to newsletter-readers" in out
    with Session(runtime.engine) as session:
        readers = sorted(
            session.exec(
                select(Identity.contact_id).where(
                    col(Identity.value).in_(
                        ["li.lei@example.cn", "wang.fang@example.cn", "zhao.min@example.cn"]
                    )
                )
            ).all()
        )
    assert len(readers) == 3
    runtime.touched.update(readers)

    # The API's outbox forwarder hands the stored list events to the readers' workflows,
    # which record their membership.
    with TestClient(runtime.app()):

        async def listed() -> bool:
            with Session(runtime.engine) as session:
                members = session.exec(
                    select(func.count()).where(
                        col(SegmentMember.segment) == "newsletter-readers",
                        col(SegmentMember.version) == MANUAL_VERSION,
                    )
                ).one()
            return members == 3

        await eventually(listed, within=60)

    code, out, err = await sh.run(
        "broadcasts",
        "create",
        "jan-news",
        "--segment",
        "newsletter-readers",
        "--content",
        "trial-invitation",
        "--conversion",
        "trial.started",
    )
    assert code == 0, out + err
    assert out.startswith("draft jan-news created: newsletter-readers <- trial-invitation over")
    row = store.get_row(runtime.engine, "jan-news")
    assert (row.source, row.status) == ("cli", "draft")
    assert str(row.actor).startswith("cli:")

    code, out, err = await sh.run("broadcasts", "preview", "jan-news", "--json")
    assert code == 0, out + err
    looked = json.loads(out)
    assert (looked["audience"], looked["problems"], looked["status"]) == (3, [], "draft")
    assert sorted(m["contact_id"] for m in looked["sample"]) == readers

    code, out, err = await sh.run("broadcasts", "schedule", "jan-news")
    assert code == 0, out + err
    assert "launched jan-news (workflow broadcast-jan-news): sends now" in out
    assert "audience: 3 contacts in newsletter-readers now" in out

    code, out, err = await sh.run("broadcasts", "report", "jan-news", "--follow")
    assert code == 0, out + err
    assert re.search(r"^status +completed$", out, re.M), out
    assert re.search(r"^sent +3$", out, re.M), out
    assert "completed: 3 of 3 done (100%)" in err, err

    assert _broadcast_files(runtime, "jan-news") == dict.fromkeys(readers, 1)
    with Session(runtime.engine) as session:
        keys = session.exec(
            select(Delivery.idempotency_key).where(col(Delivery.journey) == "broadcast:jan-news")
        ).all()
    assert sorted(keys) == [f"broadcast:jan-news:{r}" for r in readers]

    code, out, err = await sh.run("report", "broadcasts", "--format", "json")
    assert code == 0, out + err
    [numbers] = json.loads(out)["broadcasts"]
    assert numbers["id"] == "jan-news"
    assert (numbers["status"], numbers["audience"], numbers["sent"]) == ("completed", 3, 3)
    assert (numbers["pending"], numbers["failed"], numbers["held"]) == (0, 0, {})
    assert numbers["conversion_event"] == "trial.started"
    code, out, err = await sh.run("broadcasts", "report", "jan-news", "--json")
    assert code == 0, out + err
    assert json.loads(out) == numbers  # one function, the same numbers

    code, out, err = await sh.run("report", "broadcasts", "--format", "csv")
    assert code == 0, out + err
    [line] = list(csv.DictReader(io.StringIO(out)))
    assert (line["id"], line["status"], line["audience"], line["sent"]) == (
        "jan-news",
        "completed",
        "3",
        "3",
    )

    # A second launch starts nothing and sends nothing more.
    code, out, err = await sh.run("broadcasts", "schedule", "jan-news")
    assert code == 0, out + err
    assert "broadcast jan-news was already launched (completed, audience 3)" in out
    assert _broadcast_files(runtime, "jan-news") == dict.fromkeys(readers, 1)

    code, out, err = await sh.run("broadcasts", "list")
    assert code == 0, out + err
    assert re.search(
        r"^jan-news +completed +newsletter-readers +email +3 +3 +- +\d{4}-", out, re.M
    ), out
    code, out, err = await sh.run("broadcasts", "list", "--json")
    assert [(b["id"], b["source"], b["sent"]) for b in json.loads(out)] == [("jan-news", "cli", 3)]


def _seed_readers(db: Engine, contacts: list[dict[str, Any]]) -> None:
    """Members of the manual segment, as an upload whose events were recorded leaves
    them (the upload itself is driven through the CLI above)."""
    publish_segments(db, [READERS.spec()], source="test")
    with Session(db) as session:
        for c in contacts:
            email = f"{c['id']}@example.com"
            session.add(
                Contact(
                    id=c["id"],
                    locale=c.get("locale", "en"),
                    timezone=c.get("timezone", "UTC"),
                    traits={"email": email},
                )
            )
            session.add(Identity(kind="email", value=email, contact_id=c["id"]))
        session.commit()
    for c in contacts:
        save_segment_changes(
            db,
            SegmentChanges(
                key=f"{c['id']}:seed",
                contact_id=c["id"],
                changes=[
                    {
                        "segment": READERS.name,
                        "version": MANUAL_VERSION,
                        "entered": True,
                        "at": datetime.now(UTC).isoformat(),
                        "reason": "uploaded",
                    }
                ],
                source="list",
            ),
        )


async def test_a_later_broadcast_is_test_sent_paused_resumed_and_cancelled_before_it_sends(
    runtime: Runtime, tmp_path: Path
) -> None:
    _seed_readers(runtime.engine, [{"id": "r1"}, {"id": "r2", "timezone": "Asia/Shanghai"}])
    sh = _runtime_shell(runtime, tmp_path)
    later = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    code, out, err = await sh.run(
        "broadcasts",
        "create",
        "feb-news",
        "--segment",
        "newsletter-readers",
        "--content",
        "newsletter-monthly",
        "--at",
        later.isoformat(),
    )
    assert code == 0, out + err
    assert f"at {later.isoformat()}" in out

    code, out, err = await sh.run(
        "broadcasts", "test-send", "feb-news", "--to", "me@example.cn", "--to", "boss@example.cn"
    )
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["ok", "me@example.cn", "all"],
        ["ok", "boss@example.cn", "all"],
    ]
    seeds = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in (runtime.sink / "email" / "seed").glob("*.json")
    ]
    assert sorted(s["to"] for s in seeds) == ["boss@example.cn", "me@example.cn"]
    assert all(s["message"]["subject"].startswith("[test] ") for s in seeds)
    with Session(runtime.engine) as session:
        assert session.exec(select(Delivery)).all() == []  # seeds are not contacts

    code, out, err = await sh.run("broadcasts", "schedule", "feb-news")
    assert code == 0, out + err
    assert f"sends at {later.isoformat()}" in out
    code, out, err = await sh.run("broadcasts", "pause", "feb-news", "--reason", "legal review")
    assert code == 0, out + err
    # Paused while waiting for its send time: shown at once, with the reason.
    assert out.startswith("broadcast feb-news paused (legal review): 0 sent"), out
    assert store_status(runtime, "feb-news") == ("paused", "legal review")
    code, out, err = await sh.run("broadcasts", "resume", "feb-news")
    assert code == 0, out + err
    assert out.startswith("broadcast feb-news scheduled")
    code, out, err = await sh.run("broadcasts", "cancel", "feb-news", "--reason", "wrong list")
    assert code == 0, out + err
    assert out.startswith("broadcast feb-news cancelled (wrong list): 0 sent"), out

    code, out, err = await sh.run("broadcasts", "show", "feb-news", "--json")
    assert code == 0, out + err
    shown = json.loads(out)
    assert shown["source"] == "cli"
    assert shown["spec"]["segment"] == "newsletter-readers"
    assert (shown["report"]["status"], shown["report"]["sent"]) == ("cancelled", 0)
    assert _broadcast_files(runtime, "feb-news") == {}

    code, out, err = await sh.run("broadcasts", "pause", "feb-news")
    paused = _error(subprocess.CompletedProcess([], code, out, err))
    assert paused == (
        "stagecoach: error: broadcast 'feb-news' is cancelled: it cannot be paused. Fix: see"
        " where it is with 'stagecoach broadcasts show feb-news'"
    )


def test_every_kind_of_bad_input_is_refused_with_the_field_and_the_fix(tmp_path: Path) -> None:
    db = migrated_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    # Readers in English and in French: the newsletter has no French variant.
    _seed_readers(db, [{"id": "r1"}, {"id": "r2", "locale": "fr"}])
    env = _bare_env(tmp_path)

    def create(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli_here(
            tmp_path,
            env,
            "broadcasts",
            "create",
            "mar-news",
            "--segment",
            "newsletter-readers",
            "--content",
            "newsletter-monthly",
            *extra,
        )

    for args, expected in [
        (
            ("--segment", "newsletter-reader"),
            "--segment 'newsletter-reader' is not a published segment (did you mean"
            " 'newsletter-readers'?). Fix: use one of: newsletter-readers",
        ),
        (
            ("--content", "newsleter-monthly"),
            "--content 'newsleter-monthly' is not in the content library (did you mean"
            " 'newsletter-monthly'?). Fix: name one of the items 'stagecoach content list'"
            " shows, or add it under content/",
        ),
        (
            ("--at", "2027-01-05T09:00"),
            "--at 2027-01-05T09:00 has no time zone. Fix: add its offset, e.g."
            " 2027-01-05T09:00+08:00 for Beijing time or 2027-01-05T09:00Z for UTC",
        ),
        (("--at", "next tuesday"), "--at 'next tuesday' is not an ISO 8601 time"),
        (("--at", "2020-01-05T09:00+08:00"), "--at 2020-01-05T09:00+08:00 is in the past"),
        (("--channel", "fax"), "--channel 'fax' is not a broadcast channel. Fix: use one of:"),
        (("--local-time", "9am"), "--local-time '9am' is not a time of day"),
        (
            ("--when-passed", "skip"),
            "--when-passed applies to a local-time send only. Fix: add --local-time HH:MM",
        ),
        (
            ("--conversion", "order.payed"),
            "--conversion 'order.payed' is not in the event catalog (did you mean 'order.paid'?)",
        ),
    ]:
        refused = _error(create(*args))
        assert refused.startswith("stagecoach: error: "), refused
        assert expected in refused, refused
    # One refusal through the installed command: the real process exits the same way.
    named = _error(
        _run(tmp_path, env, "broadcasts", "create", "March News", "--segment", "x", "--content=y")
    )
    assert "broadcast name 'March News' is not valid. Fix: use lowercase letters" in named
    assert store.list_rows(db) == []  # nothing was kept

    for command in ("show", "preview", "schedule", "report", "cancel"):
        unknown = _error(run_cli_here(tmp_path, env, "broadcasts", command, "apr-news"))
        assert unknown == (
            "stagecoach: error: no broadcast 'apr-news'. Fix: list them with 'stagecoach"
            " broadcasts list'"
        ), command

    # Content without a variant for part of the audience: the preview names it and exits
    # 1; the launch is refused before Temporal is asked (nothing listens there).
    made = create()
    assert made.returncode == 0, made.stdout + made.stderr
    assert "not launchable yet: broadcast 'mar-news': content 'newsletter-monthly' has no" in (
        made.stdout
    )
    looked = run_cli_here(tmp_path, env, "broadcasts", "preview", "mar-news")
    assert looked.returncode == 1, looked.stdout + looked.stderr
    assert "mar-news (draft): 2 contacts in segment newsletter-readers now" in looked.stdout
    assert re.search(r"^locales  en 1, fr 1$", looked.stdout, re.M), looked.stdout
    assert (
        "problem: broadcast 'mar-news': content 'newsletter-monthly' has no email variant for"
        " fr, which part of the audience reads" in looked.stdout
    )
    launched = run_cli_here(tmp_path, env, "broadcasts", "schedule", "mar-news")
    assert launched.returncode == 1, launched.stdout + launched.stderr
    assert "broadcast mar-news not launched; nothing was sent:" in launched.stderr
    assert "  - broadcast 'mar-news': content 'newsletter-monthly' has no email variant" in (
        launched.stderr
    )
    assert store.get_row(db, "mar-news").status == "draft"
    with Session(db) as session:
        assert session.exec(select(BroadcastRecipient)).all() == []
        assert session.exec(select(Delivery)).all() == []
    no_seeds = _error(run_cli_here(tmp_path, env, "broadcasts", "test-send", "mar-news"))
    assert "broadcast 'mar-news' has no seed addresses. Fix: pass --to ADDR" in no_seeds
    assert not (tmp_path / ".stagecoach" / "sink").exists()

    wrong = run_cli_here(tmp_path, env, "report", "broadcasts", "--format", "xlsx")
    assert wrong.returncode == 2
    assert "--format cannot be 'xlsx'. Fix: use one of: table, json, csv" in wrong.stderr
    nowhere = _bare_env(tmp_path, STAGECOACH_DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    no_db = _error(run_cli_here(tmp_path, nowhere, "broadcasts", "list"))
    assert "no database at sqlite:///" in no_db
    assert not (tmp_path / "none.db").exists()
    db.dispose()


def test_deploy_keeps_project_broadcasts_as_drafts_and_never_rewrites_a_launched_one(
    tmp_path: Path,
) -> None:
    jan = 'Broadcast("jan-news", segment="newsletter-readers", content="trial-invitation")'
    root = _new_project(tmp_path, broadcasts=jan)
    env = _bare_env(tmp_path)

    checked = _run(root, env, "validate")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(
        r"^ok    broadcast jan-news  \w{12}  newsletter-readers <- trial-invitation over email$",
        checked.stdout,
        re.M,
    ), checked.stdout
    assert checked.stdout.rstrip().endswith("; 1 segment valid; 1 broadcast valid")

    planned = _run(root, env, "deploy", "--to", "local", "--dry-run")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "broadcast jan-news: draft (new)" in planned.stdout
    deployed = _run(root, env, "deploy", "--to", "local")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "broadcast jan-news: draft (new)" in deployed.stdout
    listed = _run(root, env, "broadcasts", "list", "--json")
    assert [(b["id"], b["status"], b["source"]) for b in json.loads(listed.stdout)] == [
        ("jan-news", "draft", "project")
    ]
    again = _run(root, env, "deploy", "--to", "local")
    assert "broadcast jan-news: unchanged (draft)" in again.stdout

    # Launched (the state 'broadcasts schedule' leaves before its workflow snapshots),
    # then changed in the project: deploy keeps the launched spec and says what to do.
    db = make_engine(env["STAGECOACH_DATABASE_URL"])  # the deployed one, as it is
    launched_version = store.get_row(db, "jan-news").version
    store.mark_launched(db, "jan-news", actor="test")
    _define(root, jan.replace("trial-invitation", "onboarding-welcome"))
    refused = (
        "broadcast jan-news: launched (scheduled); spec changed: refused, the launched"
        " broadcast keeps its spec. Fix: give the changed broadcast a new name in the project"
    )
    planned = _run(root, env, "deploy", "--to", "local", "--dry-run")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert refused in planned.stdout
    deployed = _run(root, env, "deploy", "--to", "local")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "Traceback" not in deployed.stderr
    assert refused in deployed.stdout
    assert store.get_row(db, "jan-news").version == launched_version

    # A broadcast naming content the project does not have fails validate and deploy.
    _define(root, jan.replace("jan-news", "feb-news").replace("trial-invitation", "nope"))
    checked = _run(root, env, "validate")
    assert checked.returncode == 1, checked.stdout
    assert "FAIL  broadcast feb-news" in checked.stdout
    assert (
        "      - broadcast 'feb-news': content 'nope' is not in the content library. Fix: add"
        " it under content/" in checked.stdout
    )
    blocked = _run(root, env, "deploy", "--to", "local")
    assert blocked.returncode == 1
    assert "nothing was deployed" in blocked.stdout
    assert [r.id for r in store.list_rows(db)] == ["jan-news"]
    db.dispose()


def test_a_test_send_goes_through_the_configured_smtp_relay_and_names_each_refusal(
    tmp_path: Path,
) -> None:
    """The seeds get the broadcast from the relay the settings name, the subject marked
    as a test; a seed the relay refuses is a FAIL line with the relay's answer (exit 1);
    the audience gets nothing."""
    db = migrated_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    _seed_readers(db, [{"id": "r1"}])
    with SmtpPeer() as peer:
        peer.fail_address("gone@example.cn", "550 5.1.1 no such user")
        env = _bare_env(
            tmp_path,
            STAGECOACH_EMAIL_CONNECTOR="smtp",
            STAGECOACH_SMTP_HOST=peer.host,
            STAGECOACH_SMTP_PORT=str(peer.port),
            STAGECOACH_EMAIL_FROM="news@example.cn",
        )
        made = _run(
            tmp_path,
            env,
            "broadcasts",
            "create",
            "apr-news",
            "--segment",
            "newsletter-readers",
            "--content",
            "newsletter-monthly",
            "--seed",
            "editor@example.cn",
        )
        assert made.returncode == 0, made.stdout + made.stderr
        seeded = _run(tmp_path, env, "broadcasts", "test-send", "apr-news", "--locale", "zh-CN")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        assert re.fullmatch(r"ok    editor@example\.cn  all  \S+\n", seeded.stdout), seeded.stdout
        sent = _run(
            tmp_path,
            env,
            "broadcasts",
            "test-send",
            "apr-news",
            "--to",
            "me@example.cn",
            "--to",
            "gone@example.cn",
        )
        assert sent.returncode == 1, sent.stdout + sent.stderr
        ok, failed = sent.stdout.splitlines()
        assert ok.startswith("ok    me@example.cn  all  ")
        assert failed.startswith("FAIL  gone@example.cn  all  ")
        assert "550" in failed
        received = {m.rcpt_tos: m.message for m in peer.accepted}
    assert set(received) == {("editor@example.cn",), ("me@example.cn",)}
    assert all(str(m["Subject"]).startswith("[test] ") for m in received.values())
    assert all(m["From"] == "news@example.cn" for m in received.values())
    with Session(db) as session:
        assert session.exec(select(Delivery)).all() == []
    assert store.get_row(db, "apr-news").status == "draft"
    db.dispose()


def store_status(runtime: Any, broadcast_id: str) -> tuple[str, str | None]:
    from stagecoach.engine.services.broadcasts.store import get_row

    row = get_row(runtime.engine, broadcast_id)
    return row.status, row.reason
