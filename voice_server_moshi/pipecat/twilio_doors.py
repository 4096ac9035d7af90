"""Who may open a call on `pipecat-twilio`, and how many: Twilio's request signature and
the call slots.

**Signature.** Twilio signs every request it makes with ``X-Twilio-Signature``: base64 of
HMAC-SHA1, keyed with the account's auth token, over the URL it requested followed by the
POST parameters (sorted). The voice webhook is a POST of form parameters to the URL set on
the number; the Media Streams WebSocket upgrade is a GET of the ``<Stream url="wss://...">``
URL with no parameters. Twilio's own ``RequestValidator`` (the ``twilio`` package) does the
HMAC and its quirks (with and without the default port). Behind a proxy the URL Twilio
signed is the public one, not the one this process sees: :class:`PublicUrls` holds it
(``--public-url``), and the stream URL answered in TwiML is the one checked on ``/ws``.

**Slots.** :class:`CallGate` counts the calls in progress against the engine's slots: the
webhook answers ``<Reject reason="busy"/>`` when none is free (the caller hears a busy
signal), and a stream that still loses the race is closed with 1013 and a reason saying
busy. :class:`TwilioCounters` are the figures ``/metrics`` shows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

from ..errors import SettingsError
from ..server.auth import TokenError, read_token_file

__all__ = ["SIGNATURE_HEADER", "CallGate", "PublicUrls", "TwilioCounters", "TwilioSignature",
           "load_auth_token", "reject_busy_twiml"]

SIGNATURE_HEADER = "X-Twilio-Signature"
TOKEN_ENV = "TWILIO_AUTH_TOKEN"

#: The close code of a stream refused for want of a slot (RFC 6455 "Try Again Later",
#: as `serve` closes a call it has no slot for).
BUSY_CLOSE_CODE = 1013


def load_auth_token(token_file: str | Path | None,
                    env: Mapping[str, str] | None = None) -> tuple[str | None, list[str]]:
    """(token, warnings): the Twilio auth token from ``token_file`` if given, else from
    ``TWILIO_AUTH_TOKEN``; None when neither. Never logged. Raises SettingsError for a file
    that cannot be used."""
    if token_file is not None:
        try:
            return read_token_file(token_file)
        except TokenError as exc:
            problem = str(exc).replace("auth token", "Twilio auth token")
            raise SettingsError("pipecat-twilio", [problem]) from None
    e = os.environ if env is None else env
    return (e.get(TOKEN_ENV) or None), []


@dataclass(frozen=True, slots=True)
class PublicUrls:
    """The URLs Twilio requests, when a proxy stands between Twilio and this process.

    ``--public-url`` is either the public base (``https://voice.example.com[/prefix]``:
    the webhook is ``<base>/``, the stream ``wss://.../ws``) or the stream URL itself
    (``wss://voice.example.com[/prefix]/ws``: the webhook is ``https://.../``). None
    fields: use what the request says (its Host header).
    """

    webhook: str | None = None
    stream: str | None = None

    @classmethod
    def parse(cls, public_url: str | None) -> PublicUrls:
        if not public_url:
            return cls()
        u = urlsplit(public_url)
        if u.scheme in ("wss", "ws") and u.netloc:
            if not u.path.rstrip("/").endswith("/ws"):
                raise SettingsError("pipecat-twilio", [
                    f"--public-url {public_url!r}: a wss:// URL must end in /ws (or give "
                    "the public https:// base instead)"])
            base = u.path.rstrip("/")[: -len("/ws")]
            web = "https" if u.scheme == "wss" else "http"
            return cls(urlunsplit((web, u.netloc, base + "/", "", "")), public_url)
        if u.scheme in ("https", "http") and u.netloc and not u.query:
            base = u.path.rstrip("/")
            ws = "wss" if u.scheme == "https" else "ws"
            return cls(urlunsplit((u.scheme, u.netloc, base + "/", "", "")),
                       urlunsplit((ws, u.netloc, base + "/ws", "", "")))
        raise SettingsError("pipecat-twilio", [
            f"--public-url {public_url!r}: give https://HOST[/PREFIX] or wss://HOST[/PREFIX]/ws"])

    def stream_url(self, host: str) -> str:
        """The ``<Stream url>`` answered in TwiML, and so the URL Twilio signs on /ws."""
        return self.stream or f"wss://{host}/ws"


class TwilioSignature:
    """Checks ``X-Twilio-Signature`` with Twilio's ``RequestValidator``."""

    def __init__(self, auth_token: str, public: PublicUrls) -> None:
        self._validator = RequestValidator(auth_token)
        self.public = public

    def webhook_ok(self, seen_url: str, params: Mapping[str, list[str]],
                   signature: str | None) -> bool:
        """The webhook: the URL Twilio requested (the public one if set, with the query
        this request carries) and its form parameters."""
        if not signature:
            return False
        urls = [seen_url]
        if self.public.webhook is not None:  # as set on the number, with or without the "/"
            query = urlsplit(seen_url).query
            tail = f"?{query}" if query else ""
            base = self.public.webhook
            urls = [base + tail, base.rstrip("/") + tail]
        form = _MultiParams(params)
        return any(self._validator.validate(u, form, signature) for u in urls)

    def stream_ok(self, host: str, signature: str | None) -> bool:
        """The Media Streams upgrade: the stream URL, no parameters. Twilio signs the
        ``wss://`` URL of the TwiML; its ``https://`` spelling is accepted too (the same
        resource, the same secret)."""
        if not signature:
            return False
        url = self.public.stream_url(host)
        spellings = [url]
        if url.startswith("wss://"):
            spellings.append("https://" + url[len("wss://"):])
        return any(self._validator.validate(u, {}, signature) for u in spellings)


class _MultiParams(dict[str, list[str]]):
    """A form's parameters with every value of a repeated name (``getlist``, as
    ``RequestValidator`` reads Django's QueryDict)."""

    def getlist(self, name: str) -> list[str]:
        return list(self[name])


def reject_busy_twiml() -> str:
    """TwiML that refuses the call with a busy signal (no charge for the call)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Response><Reject reason="busy" /></Response>')


@dataclass(slots=True)
class TwilioCounters:
    calls_started: int = 0
    calls_active: int = 0
    busy_webhook: int = 0
    busy_stream: int = 0
    bad_signature: int = 0

    def render(self, slots: int | None) -> str:
        """Prometheus text exposition."""
        busy = "moshi_twilio_rejected_busy_total"
        rows: list[tuple[str, str, str, list[str]]] = [
            ("moshi_twilio_calls_started_total", "counter", "Streams that got a call.",
             [f"moshi_twilio_calls_started_total {self.calls_started}"]),
            ("moshi_twilio_calls_active", "gauge", "Calls in progress.",
             [f"moshi_twilio_calls_active {self.calls_active}"]),
            (busy, "counter", "Calls refused for want of a slot: the webhook's "
             '<Reject reason="busy"/>, or a stream closed 1013.',
             [f'{busy}{{where="webhook"}} {self.busy_webhook}',
              f'{busy}{{where="stream"}} {self.busy_stream}']),
            ("moshi_twilio_bad_signature_total", "counter",
             "Requests refused 403 for a missing or wrong X-Twilio-Signature.",
             [f"moshi_twilio_bad_signature_total {self.bad_signature}"]),
        ]
        if slots is not None:
            rows.append(("moshi_twilio_slots", "gauge", "Calls taken at once (--slots).",
                         [f"moshi_twilio_slots {slots}"]))
        out: list[str] = []
        for name, kind, help_, samples in rows:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(out) + "\n"


class CallGate:
    """Calls in progress against ``slots`` (None: no cap, the engine decides). Event-loop
    only: the check and the take are one step, so two streams cannot both take the last
    slot."""

    def __init__(self, slots: int | None, counters: TwilioCounters) -> None:
        if slots is not None and slots < 1:
            raise SettingsError("pipecat-twilio", [f"slots must be >= 1, got {slots}"])
        self.slots = slots
        self.counters = counters

    def free(self) -> bool:
        return self.slots is None or self.counters.calls_active < self.slots

    def take(self) -> bool:
        if not self.free():
            return False
        self.counters.calls_active += 1
        self.counters.calls_started += 1
        return True

    def give_back(self) -> None:
        self.counters.calls_active -= 1
