"""Step kinds, entry triggers and re-entry policies: the vocabulary of a journey.

The same frozen dataclasses serve the DSL (where a ``None`` target means "the next step
in order") and the compiled spec (where every target is explicit). Each class knows its
JSON form, so the spec is data a workflow can carry in its history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time, timedelta
from typing import Any, ClassVar, Literal, TypeAlias, cast

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.conditions import Condition, EventMatcher

from ._errors import SpecFormatError

END = "$end"
"""Target meaning "the journey is complete" (``Completed(reason="end")``)."""

EXIT_PREFIX = "$exit:"
CHANNELS: tuple[str, ...] = ("email", "wechat")
"""Concrete delivery channels; ``"preferred"`` stands for any of them."""

Channel: TypeAlias = Literal["email", "wechat", "preferred"]


def exit_to(reason: str) -> str:
    """Target that exits the journey with ``reason`` without a dedicated exit step.

    Args:
        reason: Why the contact leaves, recorded in the ``Exit`` command.

    Returns:
        A reserved target string usable wherever a step id is.
    """
    return f"{EXIT_PREFIX}{reason}"


def is_reserved_target(target: str) -> bool:
    """True for ``END`` and ``exit_to(...)`` targets, which name no step."""
    return target == END or target.startswith(EXIT_PREFIX)


def _delta(value: Any) -> timedelta | None:
    return None if value is None else timedelta(seconds=float(value))


@dataclass(frozen=True)
class NextBestItem(serial.Record):
    """A content selector: "the next best item" the content library picks for the contact.

    Attributes:
        stage: Only items tagged for this pipeline stage (``None``: the contact's stage).
        kinds: Only items of these kinds (``"whitepaper"``, ``"case_study"``...); empty: any.
        tags: Only items carrying all these tags.
        exclude_consumed: Skip items the contact already received or consumed.
    """

    stage: str | None = None
    kinds: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    exclude_consumed: bool = True


NO_CHANNEL = "no_channel"
"""The reason an enrolment exits with when no channel became usable in time."""

NO_CHANNEL_WAIT = timedelta(days=30)
"""How long a send waits for a usable channel unless the journey says otherwise: long
enough for an anonymous visitor to come back and identify, or for an email lead to
follow the Official Account after an event, and short enough that the first message
still belongs to the moment the contact arrived."""

NO_CHANNEL_ACTIONS: tuple[str, ...] = ("wait", "skip", "exit")


@dataclass(frozen=True)
class NoChannel:
    """What a send does when the contact has no channel it may be sent on yet (no
    address, or, for the preferred channel, none with consent).

    Build with ``NoChannel.wait(days=30)`` (the default: wait for an address or consent
    to arrive, then send; exit with reason ``no_channel`` when the limit passes),
    ``NoChannel.skip()`` (carry on without this send) or ``NoChannel.exit("reason")``
    (leave the journey). Declared on the journey (``Journey(on_no_channel=...)``) or on
    one send (``send(..., on_no_channel=...)``, which wins).

    Attributes:
        action: ``"wait"``, ``"skip"`` or ``"exit"``.
        limit: For ``wait``: how long; ``None`` is ``NO_CHANNEL_WAIT`` (30 days).
        reason: For ``exit``: the exit reason; empty is ``no_channel``.
    """

    action: str = "wait"
    limit: timedelta | None = None
    reason: str = ""

    @classmethod
    def wait(
        cls, limit: timedelta | None = None, *, days: float = 0, hours: float = 0
    ) -> NoChannel:
        """Wait up to ``limit`` (or ``days``/``hours``; default 30 days) for a channel."""
        if limit is None and (days or hours):
            limit = timedelta(days=days, hours=hours)
        return cls("wait", limit)

    @classmethod
    def skip(cls) -> NoChannel:
        """Skip the send and carry on with the journey."""
        return cls("skip")

    @classmethod
    def exit(cls, reason: str = NO_CHANNEL) -> NoChannel:
        """Leave the journey with ``reason``."""
        return cls("exit", reason=reason)

    @property
    def wait_limit(self) -> timedelta:
        return self.limit if isinstance(self.limit, timedelta) else NO_CHANNEL_WAIT

    @property
    def exit_reason(self) -> str:
        return self.reason or NO_CHANNEL

    def summary(self) -> str:
        if self.action == "wait":
            return f"wait up to {_human(self.wait_limit)} for a channel"
        if self.action == "exit":
            return f"exit ({self.exit_reason}) without a channel"
        return f"{self.action} without a channel"

    def problem(self) -> tuple[str, str] | None:
        """What is wrong with this declaration, and the fix; ``None`` if it is sound."""
        usage = "use NoChannel.wait(days=30), NoChannel.skip() or NoChannel.exit('reason')"
        if self.action not in NO_CHANNEL_ACTIONS:
            return f"on_no_channel action {self.action!r} is unknown", usage
        if self.action == "wait" and self.limit is not None:
            if not isinstance(self.limit, timedelta):
                return f"on_no_channel limit {self.limit!r} is not a timedelta", usage
            if self.limit <= timedelta(0):
                return (
                    "on_no_channel waits a limit that is not positive",
                    "wait a positive time, e.g. NoChannel.wait(days=30), or skip the send",
                )
        if self.action != "wait" and self.limit is not None:
            return f"on_no_channel {self.action} takes no limit", usage
        if self.action != "exit" and self.reason:
            return f"on_no_channel {self.action} takes no reason", usage
        if self.action == "exit" and (not isinstance(self.reason, str) or not self.reason):
            return "on_no_channel exit has an empty reason", usage
        return None

    def to_dict(self) -> dict[str, Any]:
        limit = self.limit.total_seconds() if isinstance(self.limit, timedelta) else self.limit
        return {"action": self.action, "limit_seconds": limit, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoChannel:
        action = str(data.get("action", ""))
        if action not in NO_CHANNEL_ACTIONS:
            raise SpecFormatError(
                f"on_no_channel action {action!r} is unknown",
                fix="recompile the journey with this version of Stagecoach",
            )
        return cls(action, _delta(data.get("limit_seconds")), str(data.get("reason") or ""))


def no_channel_from(value: object) -> NoChannel | None:
    """An ``on_no_channel`` argument as a ``NoChannel``: one already, or ``"wait"``,
    ``"skip"`` or ``"exit"`` for the defaults. Other text is kept for validation to
    report with the journey and the step.

    Raises:
        TypeError: Neither a ``NoChannel`` nor text.
    """
    if value is None or isinstance(value, NoChannel):
        return value
    if isinstance(value, str):
        action = value.strip().lower()
        shorthand = {"wait": NoChannel.wait, "skip": NoChannel.skip, "exit": NoChannel.exit}
        return shorthand[action]() if action in shorthand else NoChannel(value)
    raise TypeError(
        f"on_no_channel={value!r} is not a declaration: use NoChannel.wait(days=30),"
        " NoChannel.skip() or NoChannel.exit('reason') (or 'wait', 'skip', 'exit')"
    )


@dataclass(frozen=True, kw_only=True)
class Step(serial.Record):
    """Base of every step kind.

    Attributes:
        id: Stable id; pins idempotency keys and history, so keep it across edits.
            Empty means "derive one from the step's content" (done by ``Journey``).
    """

    id: str = ""
    kind: ClassVar[str] = ""
    links: ClassVar[tuple[str, ...]] = ()
    """Target fields where ``None`` means "the next step in order"."""
    is_wait: ClassVar[bool] = False
    """Timer-based waits: the only steps that may close a loop."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``kind``, ``id``, then the kind's fields."""
        return {"kind": self.kind, **serial.encode(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        """Rebuild any step from its JSON form (see :func:`step_from_dict`)."""
        return step_from_dict(data)

    def edges(self) -> tuple[tuple[str, str], ...]:
        """Outgoing ``(label, target)`` pairs of a compiled step."""
        return tuple(
            (name.rstrip("_"), cast(str, getattr(self, name)))
            for name in self.links
            if getattr(self, name) is not None
        )

    def derived_id(self) -> str:
        """The id used when the marketer gives none; built from content, not position."""
        return self.kind

    def summary(self) -> str:
        """One line for diagrams and diffs."""
        return self.kind

    def resolved(self, following: str) -> Step:
        """This step with every linear ``None`` target replaced by ``following``."""
        changes = {name: following for name in self.links if getattr(self, name) is None}
        return replace(self, **changes) if changes else self


# A spec without on_no_channel keeps the form (and version) it had before it existed.
@serial.fields(omit_if_default=("on_no_channel",))
@dataclass(frozen=True, kw_only=True)
class SendStep(Step):
    """Deliver one content item (or the next best item) over a channel.

    Attributes:
        content: A content id, or a ``NextBestItem`` selector.
        channel: ``"email"``, ``"wechat"`` or ``"preferred"`` (the contact's preferred one).
        next: Where to go once delivered.
        on_failure: Where to go when delivery fails permanently; ``None`` exits the journey
            with reason ``delivery_failed``. A permanent failure is never retried.
    """

    content: str | NextBestItem
    channel: Channel = "preferred"
    next: str | None = None
    on_failure: str | None = None
    on_no_channel: NoChannel | None = None
    """No usable channel: wait, skip or exit (``None``: the journey's declaration)."""
    kind: ClassVar[str] = "send"
    links: ClassVar[tuple[str, ...]] = ("next",)

    def edges(self) -> tuple[tuple[str, str], ...]:
        out = super().edges()
        return out + ((("failed", self.on_failure),) if self.on_failure else ())

    def derived_id(self) -> str:
        if isinstance(self.content, str):
            return f"send-{self.content}"
        return "send-next-best"

    def summary(self) -> str:
        what = self.content if isinstance(self.content, str) else "next best item"
        return f"send {what} via {self.channel}"


@serial.fields(rename={"duration": "duration_seconds"})
@dataclass(frozen=True, kw_only=True)
class WaitStep(Step):
    """Wait a fixed duration."""

    duration: timedelta
    next: str | None = None
    kind: ClassVar[str] = "wait"
    links: ClassVar[tuple[str, ...]] = ("next",)
    is_wait: ClassVar[bool] = True

    def derived_id(self) -> str:
        return f"wait-{_human(self.duration)}"

    def summary(self) -> str:
        return f"wait {_human(self.duration)}"


@dataclass(frozen=True, kw_only=True)
class WaitUntilStep(Step):
    """Wait until the next occurrence of a time of day in the contact's time zone."""

    at: time
    next: str | None = None
    kind: ClassVar[str] = "wait_until"
    links: ClassVar[tuple[str, ...]] = ("next",)
    is_wait: ClassVar[bool] = True

    def derived_id(self) -> str:
        return f"wait-until-{self.at.strftime('%H%M')}"

    def summary(self) -> str:
        return f"wait until {self.at.strftime('%H:%M')} local"


ENROLMENT = "enrolment"
"""``wait_for(..., since=ENROLMENT)``: count matching events since the contact enrolled."""


# A spec without ``since`` keeps the form (and version) it had before it existed.
@serial.fields(
    rename={"timeout": "timeout_seconds"}, missing={"timeout": None}, omit_if_default=("since",)
)
@dataclass(frozen=True, kw_only=True)
class WaitForEventStep(Step):
    """Wait for one of ``matchers`` to be observed, or for ``timeout`` to pass.

    Attributes:
        matchers: Any of these events ends the wait (one or more ``EventMatcher``).
        timeout: Required; how long to wait before taking ``on_timeout``.
        next: Where to go when a matching event arrives.
        on_timeout: Where to go when the timeout passes first.
        since: ``None``: only events that arrive while the wait runs count. ``"enrolment"``
            or an earlier step's id: a matching event the contact already sent since the
            enrolment began (or since the contact last reached that step) ends the wait
            as soon as it starts.
    """

    matchers: tuple[EventMatcher, ...]
    timeout: timedelta | None
    next: str | None = None
    on_timeout: str | None = None
    since: str | None = None
    kind: ClassVar[str] = "wait_for_event"
    links: ClassVar[tuple[str, ...]] = ("next", "on_timeout")
    is_wait: ClassVar[bool] = True

    def edges(self) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        if self.next is not None:
            out.append((" or ".join(m.type for m in self.matchers), self.next))
        if self.on_timeout is not None:
            label = "timeout" if self.timeout is None else f"timeout {_human(self.timeout)}"
            out.append((label, self.on_timeout))
        return tuple(out)

    def derived_id(self) -> str:
        return f"wait-for-{self.matchers[0].type}" if self.matchers else "wait-for-event"

    def summary(self) -> str:
        what = f"wait for {' or '.join(m.type for m in self.matchers)}"
        return what if self.since is None else f"{what} (since {self.since})"


@serial.fields(rename={"else_": "else"})
@dataclass(frozen=True, kw_only=True)
class BranchStep(Step):
    """Go to ``then`` when ``condition`` holds for the contact, else to ``else_``."""

    condition: Condition
    then: str | None = None
    else_: str | None = None
    kind: ClassVar[str] = "branch"
    links: ClassVar[tuple[str, ...]] = ("then", "else_")

    def edges(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (label, target)
            for label, target in (("yes", self.then), ("no", self.else_))
            if target is not None
        )

    def summary(self) -> str:
        return "branch"


@dataclass(frozen=True)
class SplitBranch(serial.Record):
    """One arm of a random split: a relative weight and a target (``None``: next in order)."""

    weight: float
    target: str | None = None
    label: str = ""


@dataclass(frozen=True, kw_only=True)
class SplitStep(Step):
    """Deterministic random split: each contact lands in one arm, by weight.

    The arm comes from a sha256 of (contact, journey, version, step, enrolment), so a
    replay or a retry always picks the same arm. A holdout is a split with an arm that
    exits (see ``holdout``).
    """

    branches: tuple[SplitBranch, ...]
    kind: ClassVar[str] = "split"

    def edges(self) -> tuple[tuple[str, str], ...]:
        total = sum(b.weight for b in self.branches) or 1.0
        return tuple(
            (f"{b.label + ' ' if b.label else ''}{100 * b.weight / total:g}%", b.target)
            for b in self.branches
            if b.target is not None
        )

    def resolved(self, following: str) -> Step:
        if all(b.target is not None for b in self.branches):
            return self
        return replace(
            self,
            branches=tuple(
                b if b.target is not None else replace(b, target=following) for b in self.branches
            ),
        )

    def summary(self) -> str:
        return "random split"


@serial.fields(missing={"value": None})
@dataclass(frozen=True, kw_only=True)
class SetAttributeStep(Step):
    """Set a contact attribute to a JSON value."""

    name: str
    value: Any
    next: str | None = None
    kind: ClassVar[str] = "set_attribute"
    links: ClassVar[tuple[str, ...]] = ("next",)

    def derived_id(self) -> str:
        return f"set-{self.name}"

    def summary(self) -> str:
        return f"set {self.name} = {self.value!r}"


@dataclass(frozen=True, kw_only=True)
class AddTagStep(Step):
    """Add a tag to the contact."""

    tag: str
    next: str | None = None
    kind: ClassVar[str] = "add_tag"
    links: ClassVar[tuple[str, ...]] = ("next",)

    def derived_id(self) -> str:
        return f"tag-{self.tag}"

    def summary(self) -> str:
        return f"tag {self.tag}"


@dataclass(frozen=True, kw_only=True)
class ChangeStageStep(Step):
    """Move the contact to a pipeline stage."""

    stage: str
    reason: str = ""
    next: str | None = None
    kind: ClassVar[str] = "change_stage"
    links: ClassVar[tuple[str, ...]] = ("next",)

    def derived_id(self) -> str:
        return f"stage-{self.stage}"

    def summary(self) -> str:
        return f"stage -> {self.stage}"


SERVICE_RECOVERY = "service_recovery"
"""The hand-off reason that goes to customer care (a detractor), not to sales."""


def handoff_audience(reason: str) -> str:
    """Who a hand-off for ``reason`` reaches, as people say it: customer care for service
    recovery (the pipeline's ``Routing.service`` team), sales for anything else."""
    return "customer care" if reason == SERVICE_RECOVERY else "sales"


@dataclass(frozen=True, kw_only=True)
class HandOffStep(Step):
    """Hand the contact to sales (the CRM hand-off), or to customer care when ``reason``
    is ``service_recovery``; waits for the hand-off result.

    Attributes:
        next: Where to go once the hand-off is recorded.
        on_failure: Where to go when it fails permanently; ``None`` exits the journey.
    """

    reason: str = ""
    next: str | None = None
    on_failure: str | None = None
    kind: ClassVar[str] = "hand_off"
    links: ClassVar[tuple[str, ...]] = ("next",)

    def edges(self) -> tuple[tuple[str, str], ...]:
        out = super().edges()
        return out + ((("failed", self.on_failure),) if self.on_failure else ())

    def derived_id(self) -> str:
        return "hand-off"

    def summary(self) -> str:
        return f"hand off to {handoff_audience(self.reason)}"


@dataclass(frozen=True, kw_only=True)
class EnrolStep(Step):
    """Enrol the contact in another journey (by name) and carry on."""

    journey: str
    next: str | None = None
    kind: ClassVar[str] = "enrol"
    links: ClassVar[tuple[str, ...]] = ("next",)

    def derived_id(self) -> str:
        return f"enrol-{self.journey}"

    def summary(self) -> str:
        return f"enrol in {self.journey}"


@dataclass(frozen=True, kw_only=True)
class GoalStep(Step):
    """Terminal: the contact converted; the journey completes with reason ``goal``."""

    kind: ClassVar[str] = "goal"

    def summary(self) -> str:
        return "goal reached"


@dataclass(frozen=True, kw_only=True)
class ExitStep(Step):
    """Terminal: the contact leaves the journey with ``reason``."""

    reason: str
    kind: ClassVar[str] = "exit"

    def derived_id(self) -> str:
        return f"exit-{self.reason}"

    def summary(self) -> str:
        return f"exit: {self.reason}"


def _human(delta: timedelta) -> str:
    """``2d``, ``36h``, ``90m``, ``45s``: short and stable (it feeds derived ids)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_STEP_KINDS: dict[str, type[Step]] = {
    c.kind: c
    for c in (
        SendStep, WaitStep, WaitUntilStep, WaitForEventStep, BranchStep, SplitStep,
        SetAttributeStep, AddTagStep, ChangeStageStep, HandOffStep, EnrolStep, GoalStep,
        ExitStep,
    )
}  # fmt: skip


def _content_to_json(content: str | NextBestItem) -> Any:
    return {"next_best": content.to_dict()} if isinstance(content, NextBestItem) else content


def _content_from_json(raw: Any) -> str | NextBestItem:
    return NextBestItem.from_dict(raw["next_best"]) if isinstance(raw, Mapping) else str(raw)


# A send's content is a content id, or a selector stored as {"next_best": {...}}.
serial.register(str | NextBestItem, _content_to_json, _content_from_json)


def step_from_dict(data: Mapping[str, Any]) -> Step:
    """Rebuild a step from its JSON form.

    Raises:
        SpecFormatError: The kind is unknown or a field is missing.
    """
    kind = data.get("kind")
    step_id = str(data.get("id", ""))
    cls = _STEP_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SpecFormatError(
            f"step {step_id!r} has unknown kind {kind!r}",
            fix="recompile the journey with this version of Stagecoach",
        )
    try:
        return serial.decode(cls, data)
    except KeyError as exc:
        raise SpecFormatError(
            f"step {step_id!r} of kind {kind!r} is missing field {exc.args[0]!r}",
            fix="recompile the journey from its Python definition",
        ) from exc


# Entry triggers and re-entry.


@dataclass(frozen=True)
class StageEntered:
    """Entry trigger: the contact enters ``stage`` of the pipeline."""

    stage: str
    kind: ClassVar[str] = "stage_entered"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "stage": self.stage}


@dataclass(frozen=True)
class EventEntry:
    """Entry trigger: an event matching ``matcher`` is observed."""

    matcher: EventMatcher
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.matcher.to_dict()}


EntryTrigger: TypeAlias = StageEntered | EventEntry


def entry_from_dict(data: Mapping[str, Any]) -> EntryTrigger:
    """Rebuild an entry trigger from its JSON form."""
    if data.get("kind") == "stage_entered":
        return StageEntered(str(data["stage"]))
    if data.get("kind") == "event":
        return EventEntry(EventMatcher.from_dict(data))
    raise SpecFormatError(
        f"entry kind {data.get('kind')!r} is unknown",
        fix="use stage_entered(...) or on_event(...)",
    )


serial.register(EntryTrigger, from_json=entry_from_dict)


@serial.fields(rename={"cooldown": "cooldown_seconds"})
@dataclass(frozen=True)
class ReEntry(serial.Record):
    """May a contact enter this journey again after an earlier enrolment ended?

    Build with ``ReEntry.never()``, ``ReEntry.always()`` or ``ReEntry.after(cooldown)``.
    A contact is never enrolled twice in parallel, whatever the policy.

    Attributes:
        policy: ``"never"``, ``"always"`` or ``"cooldown"``.
        cooldown: For ``"cooldown"``: the time since the previous enrolment ENDED.
    """

    policy: Literal["never", "always", "cooldown"] = "never"
    cooldown: timedelta | None = field(default=None)

    @classmethod
    def never(cls) -> ReEntry:
        """One enrolment per contact, ever."""
        return cls("never")

    @classmethod
    def always(cls) -> ReEntry:
        """Re-enter whenever the entry trigger fires and no enrolment is active."""
        return cls("always")

    @classmethod
    def after(cls, cooldown: timedelta) -> ReEntry:
        """Re-enter once ``cooldown`` has passed since the previous enrolment ended."""
        return cls("cooldown", cooldown)
