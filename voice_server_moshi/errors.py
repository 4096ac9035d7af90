"""Exceptions raised by the plugin. Each message says what was wrong and what to do."""

from __future__ import annotations


class VoiceServerMoshiError(Exception):
    """Base class of this package's errors."""


class LifecycleError(VoiceServerMoshiError, RuntimeError):
    """An adapter method was called in the wrong state (before connect, after disconnect)."""


class SettingsError(VoiceServerMoshiError, ValueError):
    """Settings failed validation; ``problems`` lists every problem found, not just the first."""

    def __init__(self, section: str, problems: list[str]) -> None:
        self.section = section
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid settings for {section}:\n{lines}")


class UnknownNameError(VoiceServerMoshiError, KeyError):
    """No adapter or mode of that name is registered."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        avail = ", ".join(self.available) or "(none: is a plugin installed and not blocked?)"
        self.message = f"no {kind} named {name!r}; available: {avail}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return self.message


class ConnectError(VoiceServerMoshiError, ConnectionError):
    """The adapter could not open a session with its peer."""


class ServerBusyError(ConnectError):
    """The peer accepted the connection but has no free capacity for another call."""


class ConnectTimeoutError(ConnectError, TimeoutError):
    """The peer did not complete the session handshake within the connect timeout."""


class SteeringUnsupportedError(VoiceServerMoshiError, NotImplementedError):
    """The adapter or its peer cannot be steered (capabilities.steering is False)."""


class SteeringRequestError(VoiceServerMoshiError, ValueError):
    """A steering request that cannot be accepted (nothing sayable, queue full, bad audio)."""
