"""One small exception hierarchy.  ``str(error)`` is the one line an operator reads; the CLI prints it
and exits non-zero.  Messages name the file (or config key) and the reason, never patient data."""

from __future__ import annotations


class HakobuneError(Exception):
    """Base of every error Hakobune raises on purpose."""

    exit_code = 1


class ConfigError(HakobuneError):
    """A configuration file or value is missing or invalid."""

    exit_code = 2


class InputError(HakobuneError):
    """An input file cannot be used.  ``path`` names it, ``reason`` says why in one line."""

    exit_code = 2

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnreadableMessage(HakobuneError):
    """An HL7 message that cannot be decoded or parsed.  The reader turns it into a quarantine entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
