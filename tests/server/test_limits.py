"""The pieces ``serve`` hardens itself with, on their own: the Ogg/Opus meter against sphn's
real decoder, the call guard's rules on a hand-driven clock, the auth failure limiter,
log redaction, token files and the safetensors-only checkpoint check."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import sphn

from voice_server_moshi.audio.ogg_meter import OggOpusMeter, opus_packet_samples
from voice_server_moshi.server.auth import (
    DoorAuth,
    FailureLimiter,
    Refusal,
    TokenError,
    read_token_file,
)
from voice_server_moshi.server.limits import (
    CLOSE_BAD_PAYLOAD,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CallGuard,
    CallLimits,
    CloseReason,
)
from voice_server_moshi.server.logsafe import RedactingFilter, redact

from .oggcraft import opus_bomb


def _pages(n: int, seed: int = 0) -> list[bytes]:
    w = sphn.OpusStreamWriter(24000)
    rng = np.random.default_rng(seed)
    return [bytes(w.append_pcm((0.1 * rng.standard_normal(1920)).astype(np.float32)))
            for _ in range(n)]


def test_the_meter_counts_what_sphn_decodes_without_decoding() -> None:
    meter, reader = OggOpusMeter(), sphn.OpusStreamReader(24000)
    est = dec = 0
    for page in _pages(12):
        est += meter.feed(page)
        dec += reader.append_bytes(page).shape[-1]
    assert est == dec == 12 * 1920
    # Split anywhere: the same total, counted once each page completes.
    meter = OggOpusMeter()
    blob = b"".join(_pages(5, seed=1))
    assert sum(meter.feed(blob[i:i + 37]) for i in range(0, len(blob), 37)) == 5 * 1920
    # A bomb: a 5 kB page that decodes to 4 s.
    bomb = opus_bomb(2)
    meter, reader = OggOpusMeter(), sphn.OpusStreamReader(24000)
    est = sum(meter.feed(m) for m in bomb)
    dec = sum(reader.append_bytes(m).shape[-1] for m in bomb)
    assert est == dec == 2 * 4 * 24000 and max(len(m) for m in bomb) < 6000
    # Garbage is no audio (the decoder refuses it itself), and memory stays bounded.
    meter = OggOpusMeter()
    assert meter.feed(b"not ogg at all" * 1000) == 0 and len(meter._buf) <= 3


def test_opus_toc_durations() -> None:
    assert opus_packet_samples(bytes([31 << 3])) == 960  # CELT 20 ms, one frame
    assert opus_packet_samples(bytes([(31 << 3) | 1])) == 1920  # two frames
    assert opus_packet_samples(bytes([(16 << 3) | 3, 48])) == 5760  # 48 x 2.5 ms
    assert opus_packet_samples(bytes([(3 << 3) | 3, 63])) == 5760  # capped at 120 ms
    assert opus_packet_samples(b"OpusHead\x01\x01") == 0
    assert opus_packet_samples(b"") == 5760  # concealment: counted as the longest


def test_guard_timeouts_on_a_hand_driven_clock() -> None:
    g = CallGuard(CallLimits(first_audio_s=5, no_input_s=10, max_call_s=None), now=100.0)
    assert g.next_deadline() == 105.0
    assert g.check_timeouts(104.9) is None
    reap = g.check_timeouts(105.0)
    assert reap is not None and reap.reason is CloseReason.FIRST_AUDIO
    assert reap.code == CLOSE_POLICY and "no audio within 5 s" in reap.message

    g = CallGuard(CallLimits(first_audio_s=5, no_input_s=10, max_call_s=60), now=0.0)
    page = _pages(1)[0]
    assert g.before_audio(page, 1.0) is None
    assert g.next_deadline() == 11.0  # no input for 10 s after the last audio
    assert g.before_audio(page, 9.0) is None and g.check_timeouts(18.9) is None
    reap = g.check_timeouts(19.0)
    assert reap is not None and reap.reason is CloseReason.NO_INPUT
    for t in range(10, 60, 5):
        g.before_audio(page, float(t))
    reap = g.check_timeouts(60.0)
    assert reap is not None and reap.reason is CloseReason.MAX_CALL and reap.code == CLOSE_NORMAL

    off = CallGuard(CallLimits(first_audio_s=None, no_input_s=None), now=0.0)
    assert off.next_deadline() is None and off.check_timeouts(1e9) is None


def test_guard_accounting_refuses_audio_far_ahead_of_real_time_before_decoding() -> None:
    g = CallGuard(CallLimits(max_audio_ahead_s=2.0), now=0.0)
    pages = _pages(40)
    # Real time: one 80 ms page every 80 ms is never ahead.
    for i, p in enumerate(pages[:30]):
        assert g.before_audio(p, 0.5 + 0.08 * i) is None
    # A burst (a network stall catching up) within 2 s is fine...
    g = CallGuard(CallLimits(max_audio_ahead_s=2.0), now=0.0)
    verdicts = [g.before_audio(p, 1.0) for p in pages[:27]]
    assert verdicts[:24] == [None] * 24
    # ...more is not.
    reap = verdicts[26]
    assert reap is not None and reap.reason is CloseReason.AHEAD and reap.code == CLOSE_POLICY
    # A bomb's first page (4 s) is refused at once.
    g = CallGuard(CallLimits(), now=0.0)
    bomb = opus_bomb(1)
    assert g.before_audio(bomb[0], 0.0) is None  # headers only
    reap = g.before_audio(bomb[1], 0.01)
    assert reap is not None and reap.reason is CloseReason.AHEAD
    assert "4.0 s of audio" in reap.message
    # What the meter missed the decoder's count catches.
    g = CallGuard(CallLimits(), now=0.0)
    g.before_audio(b"\x00", 0.0)
    assert g.after_audio(1.0, 0.0) is None
    reap = g.after_audio(1.5, 0.1)
    assert reap is not None and reap.reason is CloseReason.AHEAD


def test_guard_message_budget() -> None:
    g = CallGuard(CallLimits(max_malformed=3), now=0.0)
    assert [g.on_malformed() for _ in range(3)] == [None] * 3
    reap = g.on_malformed()
    assert reap is not None and reap.reason is CloseReason.MALFORMED
    assert reap.code == CLOSE_BAD_PAYLOAD
    g = CallGuard(CallLimits(max_messages_per_s=100, message_burst=50), now=0.0)
    assert all(g.on_message(0.0) is None for _ in range(50))
    reap = g.on_message(0.0)
    assert reap is not None and reap.reason is CloseReason.FLOOD
    # Kyutai's 12.5 messages per second forever is fine.
    g = CallGuard(CallLimits(max_messages_per_s=100, message_burst=50), now=0.0)
    assert all(g.on_message(i * 0.08) is None for i in range(5000))
    with pytest.raises(ValueError, match="first_audio_s"):
        CallLimits(first_audio_s=0)


def test_failure_limiter_throttles_per_address_and_forgets() -> None:
    lim = FailureLimiter(max_failures=3, window_s=10, max_addresses=2)
    wrong, right = (lambda: False), (lambda: True)
    assert [lim.check("10.0.0.1", t, wrong) for t in (0.0, 1.0, 2.0)] == [0, 0, 0]
    assert lim.check("10.0.0.1", 3.0, wrong) == 7  # 429 until the first failure has left
    assert lim.check("10.0.0.2", 3.0, wrong) == 0  # other addresses are unaffected
    assert lim.retry_after("10.0.0.1", 13.5) is None  # the window moved on
    lim.failed("a", 0.0)
    lim.failed("b", 0.0)
    assert len(lim._failures) == 2  # bounded: the stalest address was forgotten
    assert lim.check("a", 0.0, right) is None


def test_the_right_token_is_never_refused_and_guesses_stay_throttled() -> None:
    """One address (a voice-server host, a proxy) carries every call: 500 wrong tokens
    from it must not lock the right one out, and must not buy the guesser a fresh budget
    either."""
    lim = FailureLimiter(max_failures=10, window_s=60)
    verdicts = [lim.check("10.0.0.9", i * 0.01, lambda: False) for i in range(500)]
    assert verdicts[:10] == [0] * 10 and all(v > 0 for v in verdicts[10:])
    assert lim.throttled == 490
    for k in range(20):  # the right token, in between and after: always in
        assert lim.check("10.0.0.9", 5.0 + k, lambda: True) is None
        assert lim.check("10.0.0.9", 5.0 + k, lambda: False) > 0  # guesses: still 429
    assert lim.throttled == 510


async def test_one_door_auth_for_every_front_door() -> None:
    """What serve, its ingress workers and the cluster's ingress all call."""
    door = DoorAuth("s3cret", FailureLimiter(max_failures=2, hold_s=0))
    wrong = {"Authorization": "Bearer nope"}
    assert await DoorAuth(None).refusal("a", wrong, "/api/chat") is None
    assert (await door.refusal("a", wrong, "/api/chat")) == Refusal(401)
    assert (await door.refusal("a", {}, "/api/chat?auth_token=x")) == Refusal(401)
    third = await door.refusal("a", {"kyutai-api-key": "nope"}, "/api/chat")
    assert third is not None and third.status == 429
    assert third.retry_after is not None and 1 <= third.retry_after <= 60
    for right in ({"Authorization": "Bearer s3cret"}, {"kyutai-api-key": "s3cret"}):
        assert await door.refusal("a", right, "/api/chat") is None
    assert await door.refusal("a", {}, "/api/chat?auth_token=s3cret") is None
    assert await door.refusal("b", wrong, "/metrics") == Refusal(401)


async def test_a_throttled_answer_is_held_and_held_answers_are_bounded() -> None:
    lim = FailureLimiter(hold_s=0.2, max_held=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    # Two held, the third answered at once (memory and sockets per address bounded).
    held = [asyncio.create_task(lim.hold("a")) for _ in range(2)]
    await asyncio.sleep(0)
    await lim.hold("a")
    assert loop.time() - t0 < 0.15 and lim._held == {"a": 2}
    await asyncio.gather(*held)
    assert loop.time() - t0 >= 0.2 and lim._held == {}


def test_redaction_of_every_form_the_token_takes() -> None:
    tok = "s3cr3t-T0KEN"
    lines = [
        f"< GET /api/chat?auth_token={tok} HTTP/1.1",
        f"< GET /api/chat?x=1&auth_token={tok}&y=2 HTTP/1.1",
        f"< Authorization: Bearer {tok}",
        f"< authorization: {tok}",
        f"< kyutai-api-key: {tok}",
        f"Headers([('Authorization', 'Bearer {tok}'), ('kyutai-api-key', '{tok}')])",
    ]
    for line in lines:
        out = redact(line)
        assert tok not in out and "<redacted>" in out, (line, out)
    assert redact("nothing secret here") == "nothing secret here"

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    lg = logging.getLogger("test-redaction")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        lg.error("< %s: %s", "Authorization", f"Bearer {tok}")
        try:
            raise ValueError(f"bad header kyutai-api-key: {tok}")
        except ValueError:
            lg.exception("handshake failed")
    finally:
        lg.removeHandler(handler)
    assert tok not in stream.getvalue() and stream.getvalue().count("<redacted>") >= 2


def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    strong = "0123456789abcdef0123"
    f.write_text(f"  {strong}  \nignored\n")
    os.chmod(f, 0o600)
    assert read_token_file(f) == (strong, [])
    os.chmod(f, 0o644)
    token, warnings = read_token_file(f)
    assert token == strong and warnings == [w for w in warnings if "readable by other" in w]
    assert len(warnings) == 1
    f.write_text("abc123\n")
    os.chmod(f, 0o600)
    token, warnings = read_token_file(f)
    assert token == "abc123" and len(warnings) == 1 and "shorter than 16" in warnings[0]
    f.write_text("\n")
    with pytest.raises(TokenError, match="is empty"):
        read_token_file(f)
    with pytest.raises(TokenError, match="cannot read"):
        read_token_file(tmp_path / "missing")


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_only_safetensors_weights_pass_the_check(tmp_path: Path) -> None:
    from voice_server_moshi.engine.weights_check import (
        UnsafeCheckpointError,
        check_safetensors_file,
    )

    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    good = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(2)}, str(good))
    assert check_safetensors_file(good) == good
    pt = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(2)}, pt)
    with pytest.raises(UnsafeCheckpointError, match=r"w\.pt.*only safetensors"):
        check_safetensors_file(pt)
    # A pickle payload under a safetensors name is refused by its header, unloaded.
    marker = tmp_path / "pwned"
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.safetensors"):
        check_safetensors_file(disguised)
    assert not marker.exists()
