"""Errors of the content library.

StagecoachError
 +-- ContentError               anything the content library refuses
      +-- ContentValidationError    the catalog on disk has problems (all of them listed)
      +-- UnknownContentError       no item with that id (also a KeyError)
      +-- RenderError               an item cannot be rendered for that locale/channel
      +-- TokenError                a signed link token is not acceptable
           +-- TokenInvalid             tampered with, malformed or for another purpose
           +-- TokenExpired             valid signature, but past its expiry
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stagecoach.engine.domain.errors import StagecoachError


@dataclass(frozen=True)
class ContentProblem:
    """One thing wrong with the catalog, precise enough to fix without a debugger.

    Attributes:
        file: The file at fault (relative to the catalog root where possible).
        field: The front matter field, template location or WeChat field at fault.
        message: What is wrong.
        fix: What to do about it.
    """

    file: str
    field: str
    message: str
    fix: str

    def one_line(self) -> str:
        """``file: field: message. Fix: fix`` on one line."""
        return f"{self.file}: {self.field}: {self.message.rstrip('.')}. Fix: {self.fix}"


class ContentError(StagecoachError):
    """Anything the content library refuses."""


class ContentValidationError(ContentError):
    """The catalog has problems; ``problems`` lists every one of them, not just the first.

    Attributes:
        problems: Every problem found, in file order.
    """

    def __init__(self, problems: Sequence[ContentProblem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        listed = "; ".join(
            f"{p.file}: {p.field}: {p.message.rstrip('.')} (fix: {p.fix})" for p in self.problems
        )
        super().__init__(
            f"the content library has {count} problem{'s' if count != 1 else ''}: {listed}",
            fix="correct each file named above, then run 'stagecoach content validate'",
        )


class UnknownContentError(ContentError, KeyError):
    """No item has this id. A ``KeyError`` too, so mapping-style callers keep working."""

    def __str__(self) -> str:
        # KeyError would print the repr of its argument; we want the readable sentence.
        return self.message


class RenderError(ContentError):
    """An item cannot be rendered as asked (locale or channel it does not offer, bad input)."""


class TokenError(ContentError):
    """A signed link token is not acceptable."""


class TokenInvalid(TokenError):
    """The token was tampered with, is malformed, or was signed for another purpose."""


class TokenExpired(TokenError):
    """The token's signature is valid but its expiry has passed."""
