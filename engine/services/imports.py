"""CSV ingestion: contacts from a CSV file, through the ingestion core.

Each row becomes one Segment ``identify`` message: its mapped columns are the traits,
and the contact is found or created by its identities exactly as for the event API
(``userId``, email, phone, WeChat ids, CRM id; see ``stagecoach.engine.services.ingest``), so a row
for someone already known updates that contact instead of creating another. A row without a
``userId`` gets a stable ``anonymousId`` derived from its strongest identity, and each
message an id derived from its content, so importing the same file again stores nothing
twice. Rows are validated by ``parse_message`` and written ``--batch-size`` at a time by
``Ingestor.store``, one transaction a batch; their outbox rows reach the contact
workflows through a running API's forwarder.

Columns map to traits by name (``Email``, ``E-mail``, ``手机`` ...; see ``_ALIASES``);
``--map COLUMN=TRAIT[:TYPE]`` overrides a column, ``--map COLUMN=-`` leaves it out.
Rejected rows are written as they were read, with the line, the column and the reason,
to a CSV report. The summary counts what the store answered for each row
(``Outcome``: created the contact, stored on one that existed, merged others, or a
duplicate that wrote nothing) and names the database written to: a second export of the
same rows, in another encoding, reports duplicates and no new contact.

:func:`run_import` is the whole import, for any caller; ``stagecoach import``
(``stagecoach.engine.cli.imports``) parses its options into :class:`ImportOptions`, shows the
progress and prints the summary.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import itertools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from stagecoach.engine.domain.errors import DatabaseError, StagecoachError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from stagecoach.engine.services.ingest import Incoming, Ingestor, Outcome

_DETECTED = ("utf-8-sig", "gb18030")
"""Tried in order without ``--encoding``: UTF-8 (with or without BOM), then GB18030, the
superset of GBK that Excel on Chinese Windows saves."""

_USER_ID, _ANONYMOUS_ID, _SKIP = "userId", "anonymousId", "-"
_IDENTITY_TRAITS = ("email", "phone", "wechat_openid", "wechat_unionid", "crm_id")
"""Identity traits, strongest first (``stagecoach.engine.services.ingest.KINDS`` after the two
ids)."""
_TEXT_TRAITS = frozenset(
    {*_IDENTITY_TRAITS, "first_name", "last_name", "name", "company", "country", "locale"}
    | {"timezone", "title"}
)
"""Always kept as text: a phone number or a CRM id is not a number to compare."""
_RESERVED = frozenset({"consent", "consent_wording"})

# Normalised header (lower case, spaces and hyphens as "_") -> target.
_ALIASES = {
    "userid": _USER_ID,
    "user_id": _USER_ID,
    "anonymousid": _ANONYMOUS_ID,
    "anonymous_id": _ANONYMOUS_ID,
    "e_mail": "email",
    "email_address": "email",
    "mail": "email",
    "邮箱": "email",
    "电子邮件": "email",
    "电子邮箱": "email",
    "mobile": "phone",
    "mobile_phone": "phone",
    "phone_number": "phone",
    "tel": "phone",
    "telephone": "phone",
    "手机": "phone",
    "手机号": "phone",
    "手机号码": "phone",
    "电话": "phone",
    "openid": "wechat_openid",
    "unionid": "wechat_unionid",
    "firstname": "first_name",
    "given_name": "first_name",
    "lastname": "last_name",
    "surname": "last_name",
    "family_name": "last_name",
    "company_name": "company",
    "organization": "company",
    "organisation": "company",
    "公司": "company",
    "公司名称": "company",
    "姓名": "name",
    "国家": "country",
}
_TARGET_ALIASES = {
    "user_id": _USER_ID,
    "anonymous_id": _ANONYMOUS_ID,
    "openid": "wechat_openid",
    "unionid": "wechat_unionid",
}
_TRAIT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPES = ("auto", "str", "int", "float", "bool")
_MEANING = {"int": "a whole number", "float": "a number", "bool": "yes or no"}
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]+)?")
_YES = frozenset({"yes", "y", "true", "t", "1", "x", "opted in", "opt-in", "opt in", "是", "同意"})
_NO = frozenset({"no", "n", "false", "f", "0", "opted out", "opt-out", "opt out", "否", "不同意"})
_LOOKS_LIKE_DATA = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+|\+?[0-9][0-9 ()\-]{6,}")


class ImportFailed(StagecoachError):
    """The file, or an option naming its columns, cannot be imported."""


# --- reading the file --------------------------------------------------------------------


def detect_encoding(path: Path, encoding: str | None = None) -> tuple[str, int]:
    """The file's encoding (``encoding``, else UTF-8, else GB18030) and its line count.

    The whole file is decoded once, a megabyte at a time, so a bad byte on the last line
    is found before the first row is stored.

    Raises:
        ImportFailed: the file is not in ``encoding``, or in neither detected encoding.
    """
    failures: list[str] = []
    for name in (encoding,) if encoding else _DETECTED:
        try:
            decoder = codecs.getincrementaldecoder(name)(errors="strict")
        except LookupError:
            raise ImportFailed(
                f"--encoding {name!r} is not an encoding Python knows",
                fix="name one such as utf-8, gb18030, big5, shift_jis, latin-1",
            ) from None
        lines = offset = 0
        try:
            with path.open("rb") as file:
                while chunk := file.read(1 << 20):
                    try:
                        lines += decoder.decode(chunk).count("\n")
                    except UnicodeDecodeError as exc:
                        where = offset + exc.start
                        line = lines + chunk[: exc.start].count(b"\n") + 1
                        failures.append(f"{name} fails at byte {where} (line {line})")
                        break
                    offset += len(chunk)
                else:
                    lines += decoder.decode(b"", final=True).count("\n")
                    return name, lines + (1 if offset and not _ends_with_newline(path) else 0)
        except OSError as exc:
            raise ImportFailed(
                f"cannot read {path}: {exc.strerror}", fix="check the path and its permissions"
            ) from exc
    tried = "; ".join(failures)
    raise ImportFailed(
        f"{path.name} cannot be decoded ({tried})",
        fix="name its encoding with --encoding (e.g. --encoding big5), or save it as UTF-8",
    )


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, 2)
        return file.read(1) == b"\n"


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclass
class Table:
    """A CSV file opened for reading: its header and an iterator of (line, cells)."""

    header: list[str]
    rows: Iterator[tuple[int, list[str]]]
    file: IO[str]

    def close(self) -> None:
        self.file.close()


def open_table(path: Path, encoding: str, delimiter: str | None = None) -> Table:
    """Open ``path``; the first non-blank row is the header.

    Raises:
        ImportFailed: the file is empty, or its first row is data rather than a header.
    """
    file = path.open(encoding=encoding, newline="")
    try:
        first, skipped = file.readline(), 0
        while first and not first.strip():
            first, skipped = file.readline(), skipped + 1
        if not first:
            raise ImportFailed(
                f"{path.name} is empty",
                fix="export the contacts with a header row first, e.g. email,first_name,phone",
            )
        reader = csv.reader(
            itertools.chain([first], file), delimiter=delimiter or _delimiter(first)
        )
        header = [cell.strip().lstrip("\ufeff").strip() for cell in next(reader)]
        _check_header(header, path)
    except BaseException:
        file.close()
        raise

    def rows() -> Iterator[tuple[int, list[str]]]:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield skipped + reader.line_num, cells

    return Table(header, rows(), file)


def _check_header(header: Sequence[str], path: Path) -> None:
    from stagecoach.engine.logging import mask_value

    data = next((cell for cell in header if _LOOKS_LIKE_DATA.fullmatch(cell)), None)
    if data is not None:
        raise ImportFailed(
            f"the first row of {path.name} looks like data ({mask_value(data)!r}), not a "
            "header naming the columns",
            fix="add a header row first, e.g. email,first_name,phone",
        )
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise ImportFailed(
                f"{path.name} has two columns named {name!r}",
                fix="rename one of them in the header row",
            )
        seen.add(name)


# --- columns to traits -------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMap:
    """One column and what it becomes: a trait, ``userId`` or ``anonymousId``."""

    name: str
    index: int
    target: str
    type: str = "auto"


@dataclass(frozen=True)
class Plan:
    """How a file's columns become an ``identify`` message."""

    columns: tuple[ColumnMap, ...]
    ignored: tuple[str, ...] = ()
    consent: ColumnMap | None = None

    def column_for(self, target: str) -> str:
        """The column a trait (or ``userId``) came from, for a rejected row's report."""
        return next((c.name for c in self.columns if c.target == target), target)

    @property
    def identity_columns(self) -> list[str]:
        targets = {_USER_ID, _ANONYMOUS_ID, *_IDENTITY_TRAITS}
        return [c.name for c in self.columns if c.target in targets]

    def describe(self) -> str:
        mapped = ", ".join(
            c.name if c.name == c.target else f"{c.name} -> {c.target}" for c in self.columns
        )
        out = f"columns: {mapped}"
        if self.consent is not None:
            out += f"; consent from {self.consent.name}"
        if self.ignored:
            out += f"; ignored: {', '.join(self.ignored)} (add --map 'COLUMN=trait' to import)"
        return out


def _normalised(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def _default_target(name: str) -> str | None:
    key = _normalised(name)
    target = _ALIASES.get(key, key)
    return target if _TRAIT.fullmatch(target) and target not in _RESERVED else None


def _find_column(header: Sequence[str], name: str, *, option: str, path: Path) -> int:
    """The index of column ``name`` (exactly, else ignoring case and spaces)."""
    if name in header:
        return header.index(name)
    loose = [n for n, cell in enumerate(header) if _normalised(cell) == _normalised(name)]
    if len(loose) == 1:
        return loose[0]
    close = difflib.get_close_matches(name, header, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ImportFailed(
        f"{option}: {path.name} has no column {name!r}; its columns are "
        + ", ".join(repr(h) for h in header),
        fix=f"{hint}name a column exactly as in the header row",
    )


def _parse_map(spec: str) -> tuple[str, str, str]:
    column, sep, target = spec.rpartition("=")
    target, _, type_ = target.strip().partition(":")
    type_ = type_.strip() or "auto"
    target = _TARGET_ALIASES.get(target, target)
    if not sep or not column.strip() or not target:
        raise ImportFailed(
            f"--map {spec!r} is not COLUMN=TRAIT", fix="write e.g. --map 'E-Mail Address=email'"
        )
    if target != _SKIP and (not _TRAIT.fullmatch(target) or target in _RESERVED):
        fix = "use --consent-column" if target in _RESERVED else "use letters, digits and _"
        raise ImportFailed(f"--map {spec!r}: {target!r} cannot be a trait name", fix=fix)
    if type_ not in _TYPES:
        raise ImportFailed(
            f"--map {spec!r}: unknown type {type_!r}", fix=f"use one of {', '.join(_TYPES)}"
        )
    return column.strip(), target, type_


def plan_columns(
    header: Sequence[str],
    maps: Sequence[str] = (),
    *,
    consent_column: str | None = None,
    path: Path,
) -> Plan:
    """Every column's target: ``--map`` first, then the column's own name.

    Raises:
        ImportFailed: a ``--map`` names no column, two columns map to one trait, or no
            column can identify a contact.
    """
    chosen: dict[int, tuple[str, str]] = {}
    for spec in maps:
        column, target, type_ = _parse_map(spec)
        chosen[_find_column(header, column, option=f"--map {spec!r}", path=path)] = (
            target,
            type_,
        )
    consent: ColumnMap | None = None
    if consent_column is not None:
        index = _find_column(header, consent_column, option="--consent-column", path=path)
        consent = ColumnMap(header[index], index, "consent")
        chosen[index] = (_SKIP, "auto")
    columns: list[ColumnMap] = []
    ignored: list[str] = []
    owner: dict[str, str] = {}
    for index, name in enumerate(header):
        target, type_ = chosen.get(index) or (_default_target(name) or "", "auto")
        if consent is not None and index == consent.index:
            continue
        if not target or target == _SKIP:
            ignored.append(name or f"column {index + 1}")
            continue
        if target in owner:
            raise ImportFailed(
                f"columns {owner[target]!r} and {name!r} both map to {target!r}",
                fix=f"leave one out, e.g. --map '{name}=-', or map it elsewhere",
            )
        owner[target] = name
        columns.append(ColumnMap(name, index, target, type_))
    plan = Plan(tuple(columns), tuple(ignored), consent)
    if not plan.identity_columns:
        raise ImportFailed(
            f"no column of {path.name} identifies a contact (columns: "
            + ", ".join(repr(h) for h in header)
            + ")",
            fix="name a column email, phone, user_id, wechat_openid or crm_id, or map one, "
            "e.g. --map 'Mail=email'",
        )
    return plan


def yes_no(value: str) -> bool | None:
    """``True`` for yes/true/1/opted in/是, ``False`` for no/false/0/否, else ``None``."""
    low = value.strip().lower()
    return True if low in _YES else False if low in _NO else None


def convert(value: str, type_: str, trait: str) -> Any:
    """A cell as the trait's value; ``auto`` reads plain numbers and true/false.

    Raises:
        ValueError: the cell is not of the type asked for.
    """
    if type_ == "str" or (type_ == "auto" and trait in _TEXT_TRAITS):
        return value
    if type_ == "auto":
        if _NUMBER.fullmatch(value):
            return float(value) if "." in value else int(value)
        low = value.lower()
        return low == "true" if low in ("true", "false") else value
    if type_ == "int":
        return int(value)
    if type_ == "float":
        return float(value)
    flag = yes_no(value)
    if flag is None:
        raise ValueError(value)
    return flag


def anonymous_id(kind: str, value: str) -> str:
    """The ``anonymousId`` of an imported row without ``userId``: the same for the same
    normalised identity in every import, and a hash, so it does not reveal the address."""
    return "import-" + hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:32]


# --- rows to messages --------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """A row that is not imported: which column (or ``row``, ``identity``) and why."""

    field: str
    reason: str


class RowReader:
    """Turns a row into an ``Incoming`` identify message, or says why it cannot."""

    def __init__(
        self,
        plan: Plan,
        *,
        width: int,
        source: str,
        consent_wording: str | None = None,
        consent_channel: str = "email",
        phone_country: str | None = None,
    ) -> None:
        from stagecoach.engine.services.ingest import (
            IdentityError,
            Problem,
            identities_from,
            normalise_phone,
            parse_message,
        )

        self._plan = plan
        self._width = width
        self._source = source
        self._wording = consent_wording
        self._channel = consent_channel
        self._phone_country = phone_country
        self._identities_from = identities_from
        self._normalise_phone = normalise_phone
        self._identity_error = IdentityError
        self._parse = parse_message
        self._problem = Problem

    def message(self, cells: Sequence[str]) -> Incoming | Rejected:
        plan = self._plan
        if len(cells) > self._width and any(cell.strip() for cell in cells[self._width :]):
            return Rejected(
                "row",
                f"{len(cells)} cells but {self._width} columns in the header: quote cells "
                "that contain the delimiter",
            )
        traits: dict[str, Any] = {}
        ids: dict[str, str] = {}
        for column in plan.columns:
            value = cells[column.index].strip() if column.index < len(cells) else ""
            if not value:
                continue
            if column.target in (_USER_ID, _ANONYMOUS_ID):
                ids[column.target] = value
                continue
            try:
                traits[column.target] = convert(value, column.type, column.target)
            except ValueError:
                return Rejected(column.name, f"{value!r} is not {_MEANING[column.type]}")
        context: dict[str, Any] = {}
        if plan.consent is not None:
            index = plan.consent.index
            said = cells[index].strip() if index < len(cells) else ""
            granted = yes_no(said) if said else False
            if granted is None:
                return Rejected(plan.consent.name, f"{said!r} says neither yes nor no")
            if granted:
                traits["consent"] = {self._channel: True}
                context["consent_wording"] = self._wording
        try:
            phone = traits.get("phone")
            if self._phone_country and isinstance(phone, str) and "country" not in traits:
                traits["phone"] = self._normalise_phone(phone, self._phone_country)
            if not ids:
                # From the strongest identity, normalised as the store reads it (once:
                # parse_message then reads them all).
                strongest = next((k for k in _IDENTITY_TRAITS if k in traits), None)
                if strongest is None:
                    columns = ", ".join(plan.identity_columns)
                    return Rejected("identity", f"no identity: fill one of {columns}")
                one = {strongest: traits[strongest], "country": traits.get("country")}
                ids[_ANONYMOUS_ID] = anonymous_id(strongest, self._identities_from(one)[strongest])
        except self._identity_error as exc:
            return self._rejected(exc.field, exc.message, traits)
        raw: dict[str, Any] = {"type": "identify", **ids, "traits": traits}
        if context:
            raw["context"] = context
        # No messageId and no timestamp: parse_message derives the id from the content, so
        # the same row imported again is a duplicate and stores nothing.
        parsed = self._parse(raw, received_at=datetime.now(UTC), source=self._source)
        if isinstance(parsed, self._problem):
            return self._rejected(parsed.field.removeprefix("traits."), parsed.message, traits)
        return parsed

    def _rejected(self, target: str, reason: str, traits: dict[str, Any]) -> Rejected:
        if target == "phone" and not self._phone_country and "country" not in traits:
            reason += " (or import with --phone-country, e.g. --phone-country CN)"
        return Rejected(self._plan.column_for(target), reason)


# --- the rejected rows report ------------------------------------------------------------


class RejectReport:
    """Rejected rows as read, plus ``line``, ``field`` and ``reason``; opened on the
    first one (and an old report at the same path removed when there is none)."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        self.count = 0
        extra = ["line", "field", "reason"]
        taken = set(header)
        self._header = [*header, *(f"rejected_{n}" if n in taken else n for n in extra)]
        self._width = len(header)
        self._file: IO[str] | None = None
        self._writer: Any = None

    def add(self, line: int, cells: Sequence[str], rejected: Rejected) -> None:
        if self._file is None:
            # BOM: Excel then reads the report's Chinese as UTF-8 (and so does import).
            self._file = self.path.open("w", encoding="utf-8-sig", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(self._header)
        row = list(cells[: self._width]) + [""] * (self._width - len(cells))
        self._writer.writerow([*row, line, rejected.field, rejected.reason])
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        elif self.path.exists():
            self.path.unlink()


# --- progress ----------------------------------------------------------------------------


class Progress(Protocol):
    """How an import shows its progress: ``advance`` after each batch, ``close`` at the end."""

    def advance(self, rows: int) -> None: ...

    def close(self) -> None: ...


class _Silent:
    """No progress shown: the default for callers that show none."""

    def advance(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(total: int, label: str) -> Progress:
    """A :class:`Progress` that shows nothing."""
    return _Silent()


# --- the import --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOptions:
    """What to import and how; the command's options, for callers without a CLI."""

    path: Path
    maps: tuple[str, ...] = ()
    source: str = "import"
    consent_column: str | None = None
    consent_wording: str | None = None
    consent_channel: str = "email"
    phone_country: str | None = None
    report: Path | None = None
    batch_size: int = 1000
    encoding: str | None = None
    delimiter: str | None = None
    dry_run: bool = False

    @property
    def report_path(self) -> Path:
        return self.report or self.path.with_suffix(".rejected.csv")


@dataclass
class ImportSummary:
    """What an import did, row by row, as the store reported it for each message."""

    path: Path
    encoding: str = ""
    plan: str = ""
    rows: int = 0
    valid: int = 0
    new_contacts: int = 0
    matched: int = 0
    merged: int = 0
    duplicates: int = 0
    rejected: int = 0
    report: Path | None = None
    database: str = ""
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def imported(self) -> int:
        """Rows stored by this run."""
        return self.new_contacts + self.matched

    def lines(self) -> list[str]:
        """The summary as printed: one figure a line."""
        rows: list[tuple[str, int]] = [("rows read", self.rows)]
        if self.dry_run:
            rows.append(("valid (dry run: nothing stored)", self.valid))
        else:
            rows += [
                ("imported as new contacts", self.new_contacts),
                ("matched existing contacts", self.matched),
                ("duplicates (already imported)", self.duplicates),
            ]
        rows.append(("rejected", self.rejected))
        out = [f"{label:<32}{figure:>10,}" for label, figure in rows]
        if self.report is not None:
            out[-1] += f"  (reasons in {self.report})"
        if self.merged:
            out.append(f"{'contacts merged into others':<32}{self.merged:>10,}")
        if self.database and not self.dry_run:
            out.append(f"stored in {self.database}")
        rate = self.rows / self.seconds if self.seconds else 0.0
        out.append(f"in {self.seconds:.1f} s, {rate:,.0f} rows/s")
        return out


class _Writer:
    """Stores batches and counts what the store did with each row: an event stored on a
    contact it created, one stored on a contact that existed, or a duplicate (nothing
    written). The store is opened for the first batch: a file whose every row is
    rejected creates nothing.

    Every figure comes from the store's own answer for each message (``Outcome``), not
    from a look at the database beforehand: a contact counts as new only if the store
    created it and no later row of the import merged it into another."""

    def __init__(self, database: Callable[[], Engine], summary: ImportSummary) -> None:
        self._database = database
        self._db: Engine | None = None
        self._ingestor: Ingestor | None = None
        self._summary = summary
        self._stored = 0
        self._created: set[str] = set()
        self._merged: set[str] = set()

    def open(self) -> tuple[Engine, Ingestor]:
        if self._db is None or self._ingestor is None:
            from stagecoach.engine.services.ingest import Ingestor

            self._db = self._database()
            self._ingestor = Ingestor(self._db)
            self._summary.database = self._db.url.render_as_string(hide_password=True)
        return self._db, self._ingestor

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()

    def store(self, batch: Sequence[Incoming]) -> None:
        _, ingestor = self.open()
        [outcomes] = ingestor.store([batch])
        for outcome in outcomes:
            self._count(outcome)

    def _count(self, outcome: Outcome) -> None:
        summary = self._summary
        if outcome.duplicate:
            summary.duplicates += 1
            return
        self._stored += 1
        if outcome.created:
            self._created.add(outcome.contact_id)
        self._merged.update(outcome.merged)
        summary.merged = len(self._merged)
        summary.new_contacts = len(self._created - self._merged)
        summary.matched = self._stored - summary.new_contacts


def run_import(
    options: ImportOptions,
    *,
    database: Callable[[], Engine] | None,
    progress: Callable[[int, str], Progress] = no_progress,
    out: Callable[[str], None] = lambda line: None,
) -> ImportSummary:
    """Read, validate and (unless a dry run) store.

    ``database`` opens the store, for the first batch of valid rows: a wrong file, or one
    whose every row is rejected, creates no database. The Engine is disposed at the end.

    Raises:
        ImportFailed: the file or an option is unusable, or the database stopped the
            import (the batches before it are stored; running it again skips them).
    """
    started = time.perf_counter()
    path = options.path
    if not path.is_file():
        raise ImportFailed(f"no file {path}", fix="check the path (a CSV file with a header)")
    if options.report_path.resolve() == path.resolve():
        raise ImportFailed("--report names the file being imported", fix="name another file")
    encoding, lines = detect_encoding(path, options.encoding)
    table = open_table(path, encoding, options.delimiter)
    summary = ImportSummary(path=path, encoding=encoding, dry_run=options.dry_run)
    try:
        plan = plan_columns(
            table.header, options.maps, consent_column=options.consent_column, path=path
        )
        summary.plan = plan.describe()
        shown = "utf-8" if encoding == "utf-8-sig" else encoding
        out(f"{path.name}: {shown}, ~{max(lines - 1, 0):,} rows; {summary.plan}")
        reader = RowReader(
            plan,
            width=len(table.header),
            source=options.source,
            consent_wording=options.consent_wording,
            consent_channel=options.consent_channel,
            phone_country=options.phone_country,
        )
        writer = None if options.dry_run or database is None else _Writer(database, summary)
        report = RejectReport(options.report_path, table.header)
        bar = progress(max(lines - 1, 0), "importing" if writer else "checking")
        try:
            _rows(table, reader, writer, report, bar, summary, options.batch_size)
        finally:
            bar.close()
            report.close()
            if writer is not None:
                writer.close()
    finally:
        table.close()
    summary.rejected = report.count
    summary.report = report.path if report.count else None
    summary.seconds = time.perf_counter() - started
    return summary


def _rows(
    table: Table,
    reader: RowReader,
    writer: _Writer | None,
    report: RejectReport,
    bar: Progress,
    summary: ImportSummary,
    batch_size: int,
) -> None:
    batch: list[Incoming] = []
    pending = 0  # rows read since the bar last moved
    line = 0
    for line, cells in table.rows:
        summary.rows += 1
        pending += 1
        message = reader.message(cells)
        if isinstance(message, Rejected):
            report.add(line, cells, message)
        else:
            summary.valid += 1
            batch.append(message)
        if pending >= batch_size:
            _flush(writer, batch, summary, line)
            bar.advance(pending)
            batch, pending = [], 0
    _flush(writer, batch, summary, line)
    bar.advance(pending)
    if summary.rows == 0:
        raise ImportFailed(
            f"{summary.path.name} has a header and no rows",
            fix="export the contacts below the header row",
        )


def _flush(
    writer: _Writer | None, batch: Sequence[Incoming], summary: ImportSummary, line: int
) -> None:
    if writer is None or not batch:
        return
    writer.open()  # its errors are the database's own: nothing was stored yet
    try:
        writer.store(batch)
    except DatabaseError as exc:
        raise ImportFailed(
            f"import stopped before line {line}: {exc.message} ({summary.imported:,} rows "
            "stored before it)",
            fix="fix the database (stagecoach doctor), then run the same import again: rows "
            "already stored are skipped",
        ) from exc
