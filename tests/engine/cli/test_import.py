"""``stagecoach import FILE`` in process, through Typer's CliRunner, on an SQLite file."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner, Result

from stagecoach.engine.cli import imports
from stagecoach.engine.cli.imports import import_contacts
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.services.imports import ImportFailed
from stagecoach.engine.services.ingest import (
    Incoming,
    Ingestor,
    parse_message,
    verify_consent_chain,
)
from stagecoach.engine.services.storage.models import Consent, Contact, Event, Identity, Outbox
from tests.helpers import migrated_engine

app = typer.Typer()
app.command("import")(import_contacts)


@app.callback()
def _root() -> None:
    """A group, so the command is called as ``import`` the way ``stagecoach`` calls it."""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # Each command configures logging onto the runner's stderr, which closes afterwards.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings point at an SQLite file in tmp_path; no .env from elsewhere is read."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'stagecoach.db'}"
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", url)
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(tmp_path / ".stagecoach"))
    monkeypatch.setenv("STAGECOACH_LOG_FORMAT", "json")
    monkeypatch.setenv("STAGECOACH_LOG_LEVEL", "warning")
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = migrated_engine(db_url)
    yield engine
    engine.dispose()


def write_csv(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as file:
        csv.writer(file).writerows(rows)
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["import", *map(str, args)])


def figure(result: Result, label: str) -> int:
    """A number from the summary, by its label."""
    line = next(x for x in result.stdout.splitlines() if x.startswith(label))
    return int(line[len(label) :].split()[0].replace(",", ""))


def events(db: Engine) -> list[Event]:
    with Session(db) as session:
        return list(session.exec(select(Event).order_by(col(Event.id))).all())


def traits_of(event: Event) -> dict[str, Any]:
    traits: dict[str, Any] = event.context["traits"]
    return traits


def owner(db: Engine, kind: str, value: str) -> str | None:
    with Session(db) as session:
        row = session.get(Identity, (kind, value))
        return None if row is None else row.contact_id


def test_columns_map_to_traits_by_their_names_and_by_map(db: Engine, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "contacts.csv",
        [
            ["E-mail", "First Name", "Mobile", "country", "Employees", "Notes", "tier"],
            ["Ana@Example.com", "Ana", "138 0013 8000", "CN", "150", "met at expo", "2"],
        ],
    )
    result = run(path, "--map", "Employees=company_size:int", "--map", "Notes=-")
    assert result.exit_code == 0, result.output
    assert "E-mail -> email" in result.stdout
    assert "Employees -> company_size" in result.stdout
    assert "ignored: Notes" in result.stdout
    assert figure(result, "imported as new contacts") == 1
    [event] = events(db)
    assert (event.kind, event.name, event.source) == ("identify", "identify", "import")
    assert traits_of(event) == {
        "email": "Ana@Example.com",
        "first_name": "Ana",
        "phone": "138 0013 8000",
        "country": "CN",
        "company_size": 150,
        "tier": 2,  # plain numbers are numbers, so grade rules can compare them
    }
    # Identities are normalised: the phone read with the row's country.
    contact = owner(db, "email", "ana@example.com")
    assert contact is not None
    assert owner(db, "phone", "+8613800138000") == contact
    with Session(db) as session:
        outbox = session.exec(select(Outbox)).all()
    assert [o.contact_id for o in outbox] == [contact]  # the API's forwarder signals it


def test_phones_without_plus_are_read_with_the_phone_country(db: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [["phone", "name"], ["13800138000", "Li"]])
    rejected = run(path, "--dry-run")
    assert rejected.exit_code == 1
    report = (tmp_path / "c.rejected.csv").read_text(encoding="utf-8-sig")
    assert "--phone-country CN" in report
    result = run(path, "--phone-country", "cn")
    assert result.exit_code == 0, result.output
    [event] = events(db)
    assert traits_of(event)["phone"] == "+8613800138000"
    assert owner(db, "phone", "+8613800138000") == event.contact_id
    bad = run(path, "--phone-country", "China")
    assert isinstance(bad.exception, ImportFailed)
    assert "ISO 3166" in bad.exception.one_line()


def test_a_cell_not_of_its_mapped_type_is_rejected(db: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [["email", "size"], ["a@x.io", "about 50"]])
    result = run(path, "--map", "size=company_size:int")
    assert result.exit_code == 1
    report = (tmp_path / "c.rejected.csv").read_text(encoding="utf-8-sig")
    assert "size,'about 50' is not a whole number" in report


def test_a_user_id_column_is_the_user_id_and_no_anonymous_id_is_made(
    db: Engine, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "c.csv", [["userId", "email"], ["u-42", "u42@example.com"]])
    assert run(path).exit_code == 0
    [event] = events(db)
    assert owner(db, "user_id", "u-42") == event.contact_id
    with Session(db) as session:
        kinds = session.exec(
            select(Identity.kind).where(Identity.contact_id == event.contact_id)
        ).all()
    assert sorted(kinds) == ["email", "user_id"]


def _identify(traits: dict[str, Any], user_id: str) -> Incoming:
    parsed = parse_message(
        {"type": "identify", "userId": user_id, "traits": traits},
        received_at=datetime.now(UTC),
    )
    assert isinstance(parsed, Incoming)
    return parsed


def test_rows_of_known_people_update_their_contacts(db: Engine, tmp_path: Path) -> None:
    Ingestor(db).store(
        [[_identify({"email": "li.lei@example.cn", "phone": "+8613800138000"}, "u-1")]]
    )
    known = owner(db, "user_id", "u-1")
    path = write_csv(
        tmp_path / "contacts.csv",
        [
            ["email", "phone", "first_name"],
            ["LI.LEI@example.cn ", "", "Lei"],  # the same address, as people type it
            ["", "+86 138-0013-8000", "Lei"],  # the same phone, formatted
            ["han.meimei@example.cn", "", "Meimei"],
        ],
    )
    result = run(path)
    assert result.exit_code == 0, result.output
    assert figure(result, "imported as new contacts") == 1
    assert figure(result, "matched existing contacts") == 2
    rows = events(db)[1:]
    assert [e.contact_id for e in rows[:2]] == [known, known]
    assert rows[2].contact_id != known
    with Session(db) as session:
        assert len(session.exec(select(Contact)).all()) == 2


def test_importing_the_same_file_again_stores_nothing(db: Engine, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "contacts.csv",
        [["email", "first_name"], ["a@example.com", "A"], ["b@example.com", "B"]],
    )
    first = run(path)
    assert first.exit_code == 0, first.output
    assert figure(first, "imported as new contacts") == 2
    stored = [(e.message_id, e.contact_id) for e in events(db)]
    again = run(path)
    assert again.exit_code == 0, again.output
    assert figure(again, "imported as new contacts") == 0
    assert figure(again, "duplicates (already imported)") == 2
    assert [(e.message_id, e.contact_id) for e in events(db)] == stored
    # A changed row is news about a known contact, not a second contact.
    write_csv(path, [["email", "first_name"], ["a@example.com", "Anna"]])
    changed = run(path)
    assert figure(changed, "matched existing contacts") == 1
    assert events(db)[-1].contact_id == stored[0][1]


def _people(db: Engine) -> set[str]:
    """Contacts that are people of their own (not merged into another)."""
    with Session(db) as session:
        rows = session.exec(select(Contact)).all()
        return {c.id for c in rows if c.stage != "merged"}


def test_a_second_export_in_another_encoding_reports_what_was_stored(
    db: Engine, tmp_path: Path
) -> None:
    """The same rows exported twice by Excel, as GBK and then as UTF-8 with a BOM: the
    second import stores nothing, and its summary says so, figure by figure."""
    rows = [
        ["邮箱", "姓名", "手机", "公司", "国家"],
        ["li@example.cn", "李雷", "13800138000", "华东精密", "CN"],
        ["han@example.cn", "韩梅梅", "13900139000", "华东精密", "CN"],
        ["wang@example.cn", "王芳", "13700137000", "华南", "CN"],
    ]
    gbk = write_csv(tmp_path / "名单.csv", rows, encoding="gbk")
    bom = write_csv(tmp_path / "名单-utf8.csv", rows, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    first = run(gbk)
    assert first.exit_code == 0, first.output
    assert "gb18030" in first.stdout
    assert (figure(first, "imported as new contacts"), len(_people(db)), len(events(db))) == (
        3,
        3,
        3,
    )
    assert f"stored in sqlite:///{tmp_path / 'stagecoach.db'}" in first.stdout
    before = (_people(db), [e.message_id for e in events(db)])
    for again in (run(bom), run(bom)):
        assert again.exit_code == 0, again.output
        assert figure(again, "imported as new contacts") == 0
        assert figure(again, "matched existing contacts") == 0
        assert figure(again, "duplicates (already imported)") == 3
        assert (_people(db), [e.message_id for e in events(db)]) == before
        assert "workflows hear of them" not in again.stdout  # nothing to forward


def test_a_contact_the_import_made_and_then_merged_is_not_counted_new(
    db: Engine, tmp_path: Path
) -> None:
    """A row creates a contact by its phone; a later row shows that phone belongs to a
    known person and the store merges the two: the import made no new person."""
    known_path = write_csv(tmp_path / "known.csv", [["email"], ["li.lei@example.cn"]])
    assert run(known_path).exit_code == 0
    [known] = _people(db)
    path = write_csv(
        tmp_path / "second.csv",
        [
            ["email", "phone", "first_name"],
            ["", "+8613800138000", "Lei"],
            ["li.lei@example.cn", "+8613800138000", "Lei"],
            ["li.lei@example.cn", "+8613800138000", "Lei"],  # the same row twice
        ],
    )
    result = run(path)
    assert result.exit_code == 0, result.output
    assert _people(db) == {known}
    assert figure(result, "imported as new contacts") == 0
    assert figure(result, "matched existing contacts") == 2
    assert figure(result, "duplicates (already imported)") == 1
    assert figure(result, "contacts merged into others") == 1
    assert {e.contact_id for e in events(db)} == {known}


def test_rejected_rows_go_to_a_report_with_line_field_and_reason(
    db: Engine, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "contacts.csv",
        [
            [],  # a blank line before the header: still counted in the report's lines
            ["Email", "phone", "name"],
            ["ok@example.com", "", "Fine"],
            ["not-an-address", "", "Bad Email"],
            ["", "12", "Bad Phone"],
            ["", "", "Nobody"],
            ["many@example.com", "", "Too", "many"],
            ["trailing@example.com", "", "Comma", ""],  # an empty extra cell is fine
        ],
    )
    result = run(path)
    assert result.exit_code == 0, result.output
    assert figure(result, "imported as new contacts") == 2
    assert figure(result, "rejected") == 4
    report = tmp_path / "contacts.rejected.csv"
    assert str(report) in result.stdout
    with report.open(encoding="utf-8-sig", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["name"], r["line"], r["field"]) for r in rows] == [
        ("Bad Email", "4", "Email"),
        ("Bad Phone", "5", "phone"),
        ("Nobody", "6", "identity"),
        ("Too", "7", "row"),
    ]
    assert "not an email address" in rows[0]["reason"]
    assert "phone number" in rows[1]["reason"]
    assert rows[2]["reason"] == "no identity: fill one of Email, phone"
    assert rows[3]["reason"].startswith("4 cells but 3 columns")
    assert len(events(db)) == 2

    # A later run without rejects leaves no stale report behind.
    write_csv(path, [["Email"], ["ok@example.com"]])
    assert run(path).exit_code == 0
    assert not report.exists()


def test_when_every_row_is_rejected_it_says_so_and_exits_1(db: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [["email"], ["nope"], ["nope either"]])
    result = run(path, "--report", tmp_path / "why.csv")
    assert result.exit_code == 1
    assert "nothing imported: all 2 rows were rejected" in result.stderr
    assert (tmp_path / "why.csv").exists()
    assert events(db) == []


def test_a_gbk_file_from_excel_is_read(db: Engine, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "名单.csv",
        [
            ["邮箱", "姓名", "手机", "公司", "国家"],
            ["li@example.cn", "李雷", "13800138000", "华东精密", "CN"],
        ],
        encoding="gbk",
    )
    result = run(path, "--map", "姓名=first_name")
    assert result.exit_code == 0, result.output
    assert "gb18030" in result.stdout
    [event] = events(db)
    assert traits_of(event)["first_name"] == "李雷"
    assert traits_of(event)["company"] == "华东精密"
    assert owner(db, "email", "li@example.cn") == event.contact_id
    assert owner(db, "phone", "+8613800138000") == event.contact_id


def test_a_utf8_file_with_bom_and_semicolons_is_read(db: Engine, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes("\ufeffemail;first_name\r\nzoe@example.com;Zoë\r\n".encode())
    result = run(path)
    assert result.exit_code == 0, result.output
    [event] = events(db)
    assert traits_of(event) == {"email": "zoe@example.com", "first_name": "Zoë"}


def test_an_unreadable_encoding_is_named_with_the_fix(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes("email,name\na@example.com,Zoë\n".encode("utf-16"))
    result = run(path)
    assert isinstance(result.exception, ImportFailed)
    assert "--encoding" in result.exception.one_line()
    result = run(path, "--encoding", "utf-16")
    assert result.exit_code == 0, result.output


def test_an_unknown_map_column_is_named_with_the_columns(db_url: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [["Email", "Name"], ["a@example.com", "A"]])
    result = run(path, "--map", "Emial=email")
    assert isinstance(result.exception, ImportFailed)
    line = result.exception.one_line()
    assert "no column 'Emial'" in line
    assert "'Email', 'Name'" in line
    assert "did you mean 'Email'" in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("content", "args", "says"),
    [
        (b"", [], "is empty"),
        (b"\n\n", [], "is empty"),
        (b"email,name\n", [], "a header and no rows"),
        (b"ana@example.com,Ana\nbo@example.com,Bo\n", [], "looks like data"),
        (b"notes,comment\nx,y\n", [], "identifies a contact"),
        (b"email,E-mail\na@x.io,b@x.io\n", [], "both map to 'email'"),
        (b"email\na@x.io\n", ["--map", "email"], "is not COLUMN=TRAIT"),
        (b"email\na@x.io\n", ["--map", "email=email:date"], "unknown type 'date'"),
        (b"email,ok\na@x.io,y\n", ["--consent-column", "ok"], "needs --consent-wording"),
    ],
)
def test_unusable_files_and_options_are_one_line_errors(
    db_url: str, tmp_path: Path, content: bytes, args: list[str], says: str
) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(content)
    result = run(path, *args)
    assert result.exit_code != 0
    assert isinstance(result.exception, StagecoachError), result.output
    assert says in result.exception.one_line()
    assert not (tmp_path / "stagecoach.db").exists()  # checked before the store is opened


def test_an_opt_in_column_records_consent_with_its_wording(db: Engine, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "c.csv",
        [
            ["email", "Opted In"],
            ["yes@example.com", "Yes"],
            ["no@example.com", "no"],
            ["blank@example.com", ""],
            ["odd@example.com", "maybe"],
        ],
    )
    wording = "Send me product news by email."
    result = run(path, "--consent-column", "opted in", "--consent-wording", wording)
    assert result.exit_code == 0, result.output
    assert "consent from Opted In" in result.stdout
    assert figure(result, "imported as new contacts") == 3
    assert figure(result, "rejected") == 1
    with Session(db) as session:
        consents = session.exec(select(Consent)).all()
    assert [(c.contact_id, c.channel, c.granted, c.wording, c.source) for c in consents] == [
        (owner(db, "email", "yes@example.com"), "email", True, wording, "import")
    ]
    assert verify_consent_chain(consents) is None
    assert all("Opted In" not in traits_of(e) for e in events(db))


def test_a_dry_run_checks_every_row_and_stores_nothing(db_url: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [["email"], ["a@example.com"], ["bad"]])
    result = run(path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert figure(result, "valid (dry run: nothing stored)") == 1
    assert figure(result, "rejected") == 1
    assert (tmp_path / "c.rejected.csv").exists()
    assert not (tmp_path / "stagecoach.db").exists()


def test_without_a_terminal_progress_is_printed_as_lines_with_the_rate(
    db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imports, "PROGRESS_EVERY_ROWS", 4)
    rows = [["email"]] + [[f"p{n}@example.com"] for n in range(10)]
    path = write_csv(tmp_path / "c.csv", rows)
    result = run(path, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if "rows/s" in line]
    assert [line.split(" of ")[0] for line in progress] == ["4", "8"]
    assert "of ~10 rows (40%)" in progress[0]
    assert figure(result, "imported as new contacts") == 10
    assert len(events(db)) == 10


# --- addresses take the one canonical form (issue 17) ----------------------------------
# A spelling of a known address is that contact; an invisible character is a rejected row.


def test_spellings_of_one_address_import_as_one_contact_and_invisible_ones_are_rejected(
    db: Engine, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "contacts.csv",
        [
            ["email", "name"],
            ["someone@example.com", "Plain"],
            ["SomeOne@ｅｘａｍｐｌｅ．com.", "Full width"],
            ["someone@exa\u200bmple.com", "Zero width"],
        ],
    )

    result = run(path)

    assert result.exit_code == 0, result.output
    with Session(db) as session:
        emails = session.exec(select(Identity).where(col(Identity.kind) == "email")).all()
    assert [e.value for e in emails] == ["someone@example.com"]
    with (tmp_path / "contacts.rejected.csv").open(encoding="utf-8-sig", newline="") as file:
        [rejected] = list(csv.DictReader(file))
    assert (rejected["name"], rejected["field"]) == ("Zero width", "email")
    assert "ZERO WIDTH SPACE" in rejected["reason"]
