"""``stagecoach segments`` as a user runs it: a subprocess against a database on disk,
from a project made by ``stagecoach init`` to a list upload whose events are stored and
waiting in the outbox; the reading commands over membership rows as the contact
workflow's record activity writes them; every kind of bad input; and ``contact show``
listing a live contact's segments."""

from __future__ import annotations

import asyncio
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

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.conditions import grade_in
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.segments import LIST_ADDED, LIST_REMOVED, Segment, SegmentSpec
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.segments.catalog import mark_ready, publish_segments
from stagecoach.engine.services.storage.models import Event, Outbox
from stagecoach.engine.services.storage.segments import save_segment_changes
from tests.helpers import migrated_engine, run_cli_here
from tests.workflows.conftest import Runtime, eventually, open_runtime

ROOT = Path(__file__).resolve().parents[3]
STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]
WHEN = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_DATABASE_URL=f"sqlite:///{tmp_path / 'stagecoach.db'}",
        STAGECOACH_LOG_LEVEL="warning",
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


def test_from_a_new_project_to_an_uploaded_list_waiting_for_the_workflows(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    made = _run(tmp_path, env, "init", "acme-marketing", "--no-git")
    assert made.returncode == 0, made.stderr
    root = tmp_path / "acme-marketing"
    definitions = root / "acme_marketing" / "definitions.py"
    text = definitions.read_text()
    text = text.replace(
        "from stagecoach import Definitions, journeys_in",
        "from stagecoach import Definitions, Segment, journeys_in",
    )
    text = text.replace(
        '    content="content",\n)',
        '    content="content",\n'
        '    segments=[Segment("vip-list", description="Met at the expo", manual=True)],\n)',
    )
    definitions.write_text(text)

    deployed = _run(root, env, "deploy", "--to", "local")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    listed = _run(root, env, "segments", "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^vip-list +manual +ready +0 +Met at the expo$", listed.stdout, re.M), (
        listed.stdout
    )

    (root / "expo.csv").write_text(
        "Email,Name\nli.lei@example.cn,Li Lei\nwang.fang@example.cn,Wang Fang\nhan@,Han\n"
    )
    added = _run(root, env, "segments", "add", "vip-list", "--file", "expo.csv", "--actor", "ev")
    assert added.returncode == 0, added.stdout + added.stderr
    assert "2 added to vip-list (by ev)" in added.stdout
    assert "2 new contacts created for unknown addresses" in added.stdout
    assert "1 rejected" in added.stdout
    assert "  line 4, email: 'han@' is not an email address" in added.stdout

    db = migrated_engine_at(tmp_path / "stagecoach.db")
    with Session(db) as session:
        events = session.exec(select(Event).where(col(Event.name) == LIST_ADDED)).all()
        outboxed = {o.event_id for o in session.exec(select(Outbox)).all()}
    assert len(events) == 2
    assert {e.context["traits"]["email"] for e in events} == {
        "li.lei@example.cn",
        "wang.fang@example.cn",
    }
    assert all(e.properties == {"segment": "vip-list", "actor": "ev"} for e in events)
    assert {e.id for e in events} <= outboxed

    again = _run(root, env, "segments", "add", "vip-list", "--file", "expo.csv", "--actor", "ev")
    assert again.returncode == 0, again.stderr
    assert "0 added to vip-list" in again.stdout
    assert "2 unchanged (already on the list, or named twice)" in again.stdout

    removed = _run(root, env, "segments", "remove", "vip-list", "--contact", "li.lei@example.cn")
    assert removed.returncode == 0, removed.stderr
    assert re.search(r"^1 removed from vip-list \(by cli:", removed.stdout, re.M), removed.stdout
    with Session(db) as session:
        [removal] = session.exec(select(Event).where(col(Event.name) == LIST_REMOVED)).all()
    assert removal.properties["actor"].startswith("cli:")
    db.dispose()

    # A computed segment added later: the dry run names it new; the deploy publishes it
    # and computes its members from the stored history at once.
    text = definitions.read_text().replace(
        'segments=[Segment("vip-list", description="Met at the expo", manual=True)],',
        'segments=[Segment("vip-list", description="Met at the expo", manual=True),'
        ' Segment("known-address", description="Has an email address",'
        ' when=trait("email", "exists", True))],',
    )
    definitions.write_text(
        text.replace(
            "Definitions, Segment, journeys_in", "Definitions, Segment, journeys_in, trait"
        )
    )
    planned = _run(root, env, "deploy", "--to", "local", "--dry-run")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert re.search(r"^new +segment known-address ", planned.stdout, re.M), planned.stdout
    assert re.search(r"^unchanged +segment vip-list ", planned.stdout, re.M), planned.stdout
    redeployed = _run(root, env, "deploy", "--to", "local")
    assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr
    assert re.search(
        r"^segment known-address \w+: backfilled, 2 members \(\+2 -0\), 2 contacts notified$",
        redeployed.stdout,
        re.M,
    ), redeployed.stdout
    listed = _run(root, env, "segments", "list")
    assert re.search(r"^known-address +computed +ready +2 ", listed.stdout, re.M), listed.stdout


def migrated_engine_at(path: Path) -> Engine:
    from stagecoach.engine.services.storage import make_engine

    return make_engine(f"sqlite:///{path}")


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[Engine, dict[str, str], dict[str, SegmentSpec]]:
    """A database on disk with a manual and a computed segment, and the environment that
    points ``stagecoach`` at it."""
    db = migrated_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    specs = {
        s.name: s.spec()
        for s in (
            Segment("vip-list", description="Met at the expo", manual=True),
            Segment("a-grade", description="Grade A leads", when=grade_in("A")),
        )
    }
    publish_segments(db, list(specs.values()))
    return db, _env(tmp_path), specs


def _enter(
    db: Engine, spec: SegmentSpec, contact_id: str, n: int = 1, *, at: datetime = WHEN
) -> None:
    save_segment_changes(
        db,
        SegmentChanges(
            key=f"{contact_id}:{n}",
            contact_id=contact_id,
            changes=[
                {
                    "segment": spec.name,
                    "version": spec.version,
                    "entered": True,
                    "at": at.isoformat(),
                    "reason": "grade became A",
                }
            ],
        ),
    )


def test_show_members_and_export_read_the_members(
    tmp_path: Path, deployment: tuple[Engine, dict[str, str], dict[str, SegmentSpec]]
) -> None:
    db, env, specs = deployment
    [[known]] = Ingestor(db).store(
        [
            [
                Incoming(
                    kind="identify",
                    message_id="identify-1",
                    type="identify",
                    occurred_at=WHEN,
                    user_id="u-1",
                    identities={"user_id": "u-1", "email": "li.lei@example.cn"},
                )
            ]
        ]
    )
    at = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
    since = at.isoformat()
    for n in range(3):
        _enter(db, specs["a-grade"], f"z_{n}", at=at)  # after every c_... id
    _enter(db, specs["a-grade"], known.contact_id, at=at)

    shown = _run(tmp_path, env, "segments", "show", "a-grade")
    assert shown.returncode == 0, shown.stderr
    assert "kind         computed" in shown.stdout
    assert "members      4" in shown.stdout
    assert f"condition    {json.dumps(grade_in('A').to_dict())}" in shown.stdout
    assert re.search(rf"^{at.date().isoformat()} +4 +0 +4$", shown.stdout, re.M), shown.stdout

    page = _run(tmp_path, env, "segments", "members", "a-grade", "--limit", "2")
    assert page.returncode == 0, page.stderr
    lines = page.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == [known.contact_id, "z_0"]
    assert f"{since}  grade became A" in lines[0]
    assert lines[2] == "more: stagecoach segments members a-grade --after z_0"
    rest = _run(tmp_path, env, "segments", "members", "a-grade", "--after", "z_0", "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout) == {
        "members": [
            {"contact_id": z, "since": since, "reason": "grade became A"} for z in ("z_1", "z_2")
        ],
        "next": None,
    }

    out = tmp_path / "a-grade.csv"
    exported = _run(
        tmp_path, env, "segments", "export", "a-grade", "--format", "csv", "-o", str(out)
    )
    assert exported.returncode == 0, exported.stderr
    assert f"4 members of a-grade written to {out}" in exported.stdout
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert [r["contact_id"] for r in rows] == [known.contact_id, "z_0", "z_1", "z_2"]
    assert {r["contact_id"]: r["email"] for r in rows}[known.contact_id] == "li.lei@example.cn"
    assert rows[0]["since"] == since
    wrong = _run(tmp_path, env, "segments", "export", "a-grade", "--format", "xlsx")
    assert wrong.returncode == 2
    assert "'xlsx' is not one of 'csv'" in wrong.stderr


def test_every_kind_of_bad_input_is_refused_with_what_to_do(
    tmp_path: Path, deployment: tuple[Engine, dict[str, str], dict[str, SegmentSpec]]
) -> None:
    db, env, _ = deployment

    def here(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli_here(tmp_path, env, *args)

    # One refusal through the installed command; the rest in process (tests.helpers).
    unknown = _error(_run(tmp_path, env, "segments", "show", "vip"))
    assert unknown == (
        "stagecoach: error: segment 'vip' is not published. Fix: use one of: a-grade, vip-list"
    )
    adding = _error(here("segments", "add", "vip-lst", "--contact", "a@b.cn"))
    assert "segment 'vip-lst' is not published (did you mean 'vip-list'?)" in adding
    computed = _error(here("segments", "add", "a-grade", "--contact", "a@b.cn"))
    assert "segment 'a-grade' is computed from its condition, not a manual list" in computed
    assert "use a manual segment: vip-list" in computed

    (tmp_path / "empty.csv").write_text("")
    empty = _error(here("segments", "add", "vip-list", "--file", "empty.csv"))
    assert "empty.csv is empty. Fix: upload a CSV file with a header row" in empty
    (tmp_path / "phones.csv").write_text("name,phone\nLi,+8613800138000\n")
    column = _error(here("segments", "add", "vip-list", "--file", "phones.csv"))
    assert "phones.csv has no contact_id or email column (its columns: 'name', 'phone')" in column
    missing = _error(here("segments", "add", "vip-list", "--file", "nope.csv"))
    assert "cannot read nope.csv" in missing
    neither = _error(here("segments", "add", "vip-list"))
    assert "segments add needs the contacts. Fix: pass --file LIST.csv or --contact" in neither
    both = run_cli_here(
        tmp_path, env, "segments", "remove", "vip-list", "--file", "x.csv", "--contact", "a@b.cn"
    )
    assert "takes --file or --contact, not both" in _error(both)

    (tmp_path / "bad.csv").write_text("email\nhan@\nc_1@\n")
    all_bad = here("segments", "add", "vip-list", "--file", "bad.csv")
    assert all_bad.returncode == 1, all_bad.stdout + all_bad.stderr
    assert "line 2, email: 'han@' is not an email address" in all_bad.stdout
    assert "2 rejected" in all_bad.stdout
    ghost = here("segments", "add", "vip-list", "--contact", "c_ghost")
    assert ghost.returncode == 1
    assert "contact_id: no contact has the id 'c_ghost'" in ghost.stdout
    with Session(db) as session:
        assert session.exec(select(Event)).all() == []

    nowhere = _env(tmp_path, STAGECOACH_DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    no_db = _error(run_cli_here(tmp_path, nowhere, "segments", "list"))
    assert "no database at sqlite:///" in no_db
    assert "deploy a project with segments first" in no_db
    assert not (tmp_path / "none.db").exists()


@pytest.fixture
async def runtime(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> AsyncIterator[Runtime]:
    content = ContentLibrary.load(ROOT / "content")
    async with open_runtime(env, task_queue, tmp_path, content) as runtime:
        yield runtime


async def test_contact_show_lists_the_contacts_segments_since_when_and_why(
    runtime: Runtime, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view

    with TestClient(runtime.app(), headers=runtime.write_auth("shop")) as api:
        sent = api.post(
            "/v1/identify",
            json={"userId": "u-seg", "messageId": "seg-1", "traits": {"email": "a@example.cn"}},
        )
        assert sent.status_code == 200, sent.text
        with Session(runtime.engine) as session:
            contact_id = session.exec(
                select(Event.contact_id).where(col(Event.message_id) == "seg-1")
            ).one()
        runtime.touched.add(contact_id)

        async def started() -> bool:
            try:
                await contact_view(runtime.client, contact_id)
            except ContactNotFound:
                return False
            return True

        await eventually(started, within=30)
    spec = Segment("a-grade", when=grade_in("A")).spec()
    publish_segments(runtime.engine, [spec])
    mark_ready(runtime.engine, spec.version)  # contacts exist: as its backfill would
    env = {
        **os.environ,
        "STAGECOACH_TEMPORAL_ADDRESS": runtime.client.service_client.config.target_host,
        "STAGECOACH_TEMPORAL_NAMESPACE": runtime.client.namespace,
        "STAGECOACH_DATA_DIR": str(tmp_path / ".stagecoach"),
        "STAGECOACH_DATABASE_URL": runtime.settings.resolved_database_url,
    }
    before = await asyncio.to_thread(_run, tmp_path, env, "contact", "show", contact_id)
    assert before.returncode == 0, before.stderr
    assert "segments  none" in before.stdout
    _enter(runtime.engine, spec, contact_id)
    shown = await asyncio.to_thread(_run, tmp_path, env, "contact", "show", contact_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["segments"] == [
        {
            "segment": "a-grade",
            "version": spec.version,
            "since": "2026-11-22T09:00:00+00:00",
            "reason": "grade became A",
        }
    ]
    shown = await asyncio.to_thread(_run, tmp_path, env, "contact", "show", contact_id)
    assert "segment   a-grade since 2026-11-22T09:00:00+00:00: grade became A" in shown.stdout
