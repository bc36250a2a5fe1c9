"""The one exception tree for Stagecoach's own failures.

Every error a user can cause or fix carries two parts: what went wrong (the message) and
what to do about it (``fix``). Entry points print exactly one line from them; nobody sees
a traceback wall for a wrong URL or a busy port.

    StagecoachError
     +-- ConfigurationError    a setting holds a value we cannot use
     +-- DatabaseError         the database is unreachable or its schema is behind
     +-- TemporalUnavailable   no Temporal frontend answers at the configured address
     +-- BinaryNotFound        a program we run (the Temporal CLI, the test server) is missing
     +-- PortInUse             a port we must listen on is taken
     +-- ProcessFailed         a child process of ``stagecoach up`` died

Translate at the edge where a foreign error enters: ``raise DatabaseError(...) from exc``.
"""

from __future__ import annotations


class StagecoachError(Exception):
    """A failure with a cause and a fix, both meant for the person at the keyboard."""

    def __init__(self, message: str, *, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        """The cause and the fix on one line, as the CLI prints them."""
        return f"{self.message.rstrip('.')}. Fix: {self.fix}"


class ConfigurationError(StagecoachError):
    """A setting holds a value Stagecoach cannot use."""


class DatabaseError(StagecoachError):
    """The database cannot be reached, or its schema is not at the expected revision."""


class TemporalUnavailable(StagecoachError):
    """No Temporal frontend answers at the configured address."""


class BinaryNotFound(StagecoachError):
    """A program Stagecoach runs is not installed where we look for it."""


class PortInUse(StagecoachError):
    """A port Stagecoach must listen on is already taken by another process."""


class ProcessFailed(StagecoachError):
    """A child process supervised by ``stagecoach up`` exited on its own."""
