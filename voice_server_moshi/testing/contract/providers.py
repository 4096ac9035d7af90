"""The built-in providers: the three vendor adapters against their fakes, and the Moshi
adapter against Kyutai's own ``moshi.server``, against this project's batched server
(``voice-server-moshi serve``) and against the embedded engine."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from voice_server_moshi.adapter import VoiceModelAdapter
from voice_server_moshi.events import AudioChunk
from voice_server_moshi.testing import (
    FakeElevenLabs,
    FakeOpenAIRealtime,
    FakePhonic,
    fake_elevenlabs,
    fake_openai_realtime,
    fake_phonic,
)
from voice_server_moshi.vendors.settings import (
    ElevenLabsSettings,
    OpenAIRealtimeSettings,
    PhonicSettings,
)

from .framework import EVENT_TIMEOUT_S, Call, Provider


async def _wait_audio_frames(call: Call, ms: int) -> None:
    """Until the call has received ``ms`` more agent audio than it had."""
    base = sum(isinstance(e, AudioChunk) for e in call.events)
    need = ms // call.fmt.frame_ms
    await call.wait_for(
        lambda _e: sum(isinstance(e, AudioChunk) for e in call.events) - base >= need
    )


class OpenAIProvider(Provider):
    name = "openai-realtime"
    pace = 0.5
    close_codes = (1000, 1001, 1011)

    @contextlib.asynccontextmanager
    async def peer(self, request: Any) -> AsyncIterator[FakeOpenAIRealtime]:
        async with fake_openai_realtime() as fake:
            yield fake

    def make_adapter(self, peer: FakeOpenAIRealtime, *, max_queued_events: int = 500,
                     bad_credentials: bool = False) -> VoiceModelAdapter:
        from voice_server_moshi.vendors.openai_realtime import OpenAIRealtimeAdapter

        return OpenAIRealtimeAdapter(OpenAIRealtimeSettings(
            api_key="sk-wrong" if bad_credentials else "sk-test", base_url=peer.url,
            vad_silence_duration_ms=300, max_queued_events=max_queued_events,
            connect_timeout_s=10.0))

    async def agent_speaks(self, peer: FakeOpenAIRealtime, call: Call, ms: int) -> None:
        await peer.speak(ms)

    async def agent_speaks_unobserved(
        self, peer: FakeOpenAIRealtime, adapter: VoiceModelAdapter, ms: int
    ) -> None:
        await peer.speak(ms)

    async def start_long_speech(self, peer: FakeOpenAIRealtime, call: Call, ms: int) -> None:
        peer.start_reply(ms, pace=1.0)

    async def peer_error(self, peer: FakeOpenAIRealtime) -> None:
        await peer.send_error()

    async def peer_close(self, peer: FakeOpenAIRealtime, code: int) -> None:
        if code == 1001:
            await peer.expire()  # the one documented server-initiated close
        else:
            await peer.close(code, "internal error" if code == 1011 else "")

    async def peer_vanish(self, peer: FakeOpenAIRealtime) -> None:
        await peer.vanish()

    def check_peer_side(self, peer: FakeOpenAIRealtime, scenario: str) -> None:
        s = peer.session
        if scenario == "barge-in":
            truncs = s.of_type("conversation.item.truncate")
            assert len(truncs) == 1, f"expected one conversation.item.truncate, got {truncs}"
            errors = [m for m in s.sent if m["type"] == "error"]
            assert not errors, f"the fake refused something: {errors}"
            assert any(m["type"] == "conversation.item.truncated" for m in s.sent)
        if scenario in ("agent-speaks", "caller-speaks-then-pauses"):
            assert s.of_type("input_audio_buffer.append"), "no caller audio reached the peer"


class ElevenLabsProvider(Provider):
    name = "elevenlabs"
    pace = 0.5
    cannot: ClassVar[dict[str, str]] = {
        "steering": "ElevenLabs Agents has no message that makes the agent say a given line "
                    "(user_message makes it answer one, contextual_update only informs it)",
    }
    close_codes = (1000, 1002, 1008, 1011)
    _errors: ClassVar[dict[int, str]] = {
        1002: "llm_error", 1008: "invalid_message", 1011: "unknown_websocket_crash"}

    @contextlib.asynccontextmanager
    async def peer(self, request: Any) -> AsyncIterator[FakeElevenLabs]:
        import respx

        async with fake_elevenlabs(api_key="xi-test", ping_interval_s=0.3) as fake:
            with respx.mock(assert_all_called=False) as router:
                fake.mock_rest(router)
                yield fake

    def make_adapter(self, peer: FakeElevenLabs, *, max_queued_events: int = 500,
                     bad_credentials: bool = False) -> VoiceModelAdapter:
        from voice_server_moshi.vendors.elevenlabs import ElevenLabsAdapter

        return ElevenLabsAdapter(ElevenLabsSettings(
            agent_id=peer.agent_id, api_key="xi-wrong" if bad_credentials else "xi-test",
            base_url=peer.url, max_queued_events=max_queued_events))

    async def agent_speaks(self, peer: FakeElevenLabs, call: Call, ms: int) -> None:
        await peer.speak(ms)

    async def agent_speaks_unobserved(
        self, peer: FakeElevenLabs, adapter: VoiceModelAdapter, ms: int
    ) -> None:
        await peer.speak(ms)

    async def start_long_speech(self, peer: FakeElevenLabs, call: Call, ms: int) -> None:
        peer.start_reply(ms, pace=1.0)

    async def peer_error(self, peer: FakeElevenLabs) -> None:
        # ElevenLabs sends error only when it is closing (error then close, same code).
        await peer.fail("llm_error", code=1002)

    async def peer_close(self, peer: FakeElevenLabs, code: int) -> None:
        if code == 1000:
            await peer.end_call()
        else:
            await peer.fail(self._errors[code], code=code)

    async def peer_vanish(self, peer: FakeElevenLabs) -> None:
        await peer.vanish()

    def check_peer_side(self, peer: FakeElevenLabs, scenario: str) -> None:
        s = peer.session
        pings, pongs = s.state["pings"], s.state["pongs"]
        answered = set(pongs)
        # Every ping but one still in flight must have been answered.
        assert len([p for p in pings if p not in answered]) <= 1, (pings, pongs)
        assert s.received[0].get("type") == "conversation_initiation_client_data"


class PhonicProvider(Provider):
    name = "phonic"
    cannot: ClassVar[dict[str, str]] = {
        "steering": "Phonic STS can say a line (its 'say' message) but has no message to "
                    "cancel one, so the scenario's cancel cannot be enacted (and the "
                    "adapter does not wire 'say' yet)",
    }
    pace = 0.5
    close_codes = (1000, 4600, 1011, 4010)
    normal_close_codes = frozenset({1000, 4600})

    @contextlib.asynccontextmanager
    async def peer(self, request: Any) -> AsyncIterator[FakePhonic]:
        async with fake_phonic() as fake:
            yield fake

    def make_adapter(self, peer: FakePhonic, *, max_queued_events: int = 500,
                     bad_credentials: bool = False) -> VoiceModelAdapter:
        from voice_server_moshi.vendors.phonic import PhonicAdapter

        return PhonicAdapter(PhonicSettings(
            api_key="ph_wrong" if bad_credentials else "ph_test", base_url=peer.url,
            stream_ahead_of_real_time=True, max_queued_events=max_queued_events,
            reconnect_grace_s=5.0))

    async def agent_speaks(self, peer: FakePhonic, call: Call, ms: int) -> None:
        await peer.speak(ms)

    async def agent_speaks_unobserved(
        self, peer: FakePhonic, adapter: VoiceModelAdapter, ms: int
    ) -> None:
        await peer.speak(ms)

    async def start_long_speech(self, peer: FakePhonic, call: Call, ms: int) -> None:
        # A reply the caller talks over must still be playing: send it at real time.
        peer.start_speaking(ms, paced=True)
        await asyncio.sleep(0)

    async def peer_error(self, peer: FakePhonic) -> None:
        await peer.send_error()

    async def peer_close(self, peer: FakePhonic, code: int) -> None:
        if code == 4600:
            await peer.end_conversation()
        else:
            reason = {1011: "internal error", 4010: "concurrency limit reached"}.get(code, "")
            await peer.close(code, reason)

    async def peer_vanish(self, peer: FakePhonic) -> None:
        # A vanished service does not come back: resumption must fail (4800) in bounded time.
        peer.grace_s = 0.0
        await peer.vanish()

    async def peer_restart(self, peer: FakePhonic) -> bool:
        await peer.restart(1012, "restarting")
        session = await peer.wait_session(count=2, timeout_s=15)
        resumed: bool = session.query.get("reconnect_conv_id") == peer.sessions[0].state["conv"].id
        return resumed

    def check_peer_side(self, peer: FakePhonic, scenario: str) -> None:
        s = peer.sessions[0]
        assert s.received[0]["type"] == "config"
        for msg in s.of_type("audio_chunk"):
            assert len(msg["audio"]) * 3 // 4 <= 40 * 8 * 2, "audio_chunk over 40 ms"
        assert not [m for m in s.sent if m["type"] == "error"] or scenario == "peer-error"


# -- Moshi ---------------------------------------------------------------------------------

_MOSHI_NO_ERRORS = (
    "Kyutai's moshi.server never sends an error message (the Python server has no 0x05 "
    "path; only the Rust servers do)"
)


def _require_moshi() -> None:
    import pytest

    if importlib.util.find_spec("moshi") is None:
        pytest.skip("n/a: the Moshi providers need the 'embedded' extra (moshi, torch)")


#: The suite's caller "speaks" a 300 Hz tone (framework.caller_frame), which the default
#: speech-confirming VAD rightly ignores (ADR 0085): the Moshi providers hear it by energy.
_TONE_VAD = "energy"


class _MoshiBase(Provider):
    pace = 1.0  # Moshi is clocked by its input: one 80 ms output frame per input frame

    async def agent_speaks(self, peer: Any, call: Call, ms: int) -> None:
        # Moshi talks continuously (silence included): wait for that much of its audio.
        await _wait_audio_frames(call, ms)

    async def agent_speaks_unobserved(
        self, peer: Any, adapter: VoiceModelAdapter, ms: int
    ) -> None:
        # Moshi's pace is the engine's: count the frames it produced, not wall time.
        counters = adapter.counters  # type: ignore[attr-defined]
        need = counters.get("chunks_out", 0) + ms // 20
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            # The adapter exposes counters, not a notification: poll them.
            while counters.get("chunks_out", 0) < need:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    async def start_long_speech(self, peer: Any, call: Call, ms: int) -> None:
        await _wait_audio_frames(call, 200)


class MoshiRemoteProvider(_MoshiBase):
    """The Moshi adapter's remote transport against Kyutai's own ``moshi.server``."""

    name = "moshi (moshi.server)"
    cannot: ClassVar[dict[str, str]] = {
        "connect-refused": "Kyutai's moshi.server has no authentication to refuse",
        "peer-error": _MOSHI_NO_ERRORS,
        "peer-closes": "moshi.server never closes a call itself; it has no close codes",
        "peer-restarts": "Kyutai's protocol has no session resumption",
    }

    @contextlib.asynccontextmanager
    async def peer(self, request: Any) -> AsyncIterator[Any]:
        _require_moshi()
        if request.node.get_closest_marker("private_peer") is not None:
            # This test kills its server: a private one, not the session's shared one.
            start = request.getfixturevalue("moshi_server_factory")
            yield await asyncio.get_running_loop().run_in_executor(None, start)
        else:
            yield request.getfixturevalue("moshi_server")

    def make_adapter(self, peer: Any, *, max_queued_events: int = 500,
                     bad_credentials: bool = False) -> VoiceModelAdapter:
        from voice_server_moshi.moshi.adapter import MoshiAdapter
        from voice_server_moshi.moshi.settings import MoshiSettings

        return MoshiAdapter(MoshiSettings(url=peer.url, max_queued_events=max_queued_events,
                                          connect_timeout_s=60.0, vad=_TONE_VAD))

    async def peer_vanish(self, peer: Any) -> None:
        # SIGKILL: the OS drops the socket, no WebSocket close frame is ever sent.
        await asyncio.get_running_loop().run_in_executor(None, peer.kill)


class MoshiEmbeddedProvider(_MoshiBase):
    """The Moshi adapter with the in-process engine on the generated dev checkpoint, with
    the dev STT batched beside it (``caller_transcript`` claimed, ADR 0075)."""

    name = "moshi (embedded)"
    cannot: ClassVar[dict[str, str]] = {
        "connect-refused": "the embedded engine has no credentials to refuse",
        "peer-error": "the in-process engine has no error messages to send",
        "peer-closes": "the in-process engine has no socket to close",
        "peer-vanishes": "the in-process engine has no socket to drop",
        "peer-restarts": "the in-process engine has no session resumption",
    }

    @contextlib.asynccontextmanager
    async def peer(self, request: Any) -> AsyncIterator[Any]:
        _require_moshi()
        yield request.getfixturevalue("dev_checkpoint")

    def make_adapter(self, peer: Any, *, max_queued_events: int = 500,
                     bad_credentials: bool = False) -> VoiceModelAdapter:
        from voice_server_moshi.moshi.adapter import MoshiAdapter
        from voice_server_moshi.moshi.settings import MoshiSettings

        return MoshiAdapter(MoshiSettings(transport="embedded", checkpoint=str(peer),
                                          device="cpu", max_queued_events=max_queued_events,
                                          stt="dev", vad=_TONE_VAD))


#: Loaded dev-checkpoint models, handed from one test's serve peer to the next (loading
#: takes seconds; an engine gives its models back with ``Engine.detach()``).
_SERVE_MODELS: list[Any] = []
_SERVE_MODELS_LOCK = threading.Lock()


def _take_serve_models(checkpoint: str) -> Any:
    from voice_server_moshi.engine.models import load_models

    with _SERVE_MODELS_LOCK:
        if _SERVE_MODELS:
            return _SERVE_MODELS.pop()
    return load_models(checkpoint, device="cpu", dtype="float32", stt="dev")


@dataclass
class ServePeer:
    """A :class:`~voice_server_moshi.server.app.BatchedServer` on loopback, in process."""

    server: Any
    url: str
    token: str
    #: The MoshiAdapters made for this peer, newest last.
    adapters: list[Any] = field(default_factory=list)


class MoshiServeProvider(_MoshiBase):
    """The Moshi adapter's remote transport against this project's own batched server
    (``voice-server-moshi serve``: :class:`~voice_server_moshi.server.app.BatchedServer`
    over an :class:`~voice_server_moshi.engine.core.Engine`), run in process on loopback
    with the dev checkpoint on CPU and the dev STT beside it (``serve --stt dev``: caller
    transcripts claimed), bearer-token auth on. Every scenario is the server's real
    behaviour:

    * connect-refused: a wrong token is answered HTTP 401 before the upgrade;
    * peer-error: a stray malformed message on the call's socket (an empty one) is what
      makes serve send a ``0x05`` error and keep the call; it has no other mid-call error
      that does not close;
    * peer-closes 1001: the operator closes the call (``BatchedServer.close_call``; a
      graceful shutdown closes with the same code);
    * peer-closes 1011: the engine under the call stops (``Engine.stop``, what a failed
      tick does to its calls too): serve sends the ``0x05`` and closes with 1011;
    * peer-vanishes: the server side of the call's TCP connection is aborted, so no close
      frame is ever sent (a crashed process or a dropped network looks the same).

    Its other close codes are not in ``close_codes`` because no peer-initiated close in
    a call reaches them: 1007 and 1009 answer a client's bad payload (which the adapter
    never sends), and 1013 ("busy") comes before the handshake, a connect error.
    """

    name = "moshi (serve)"
    close_codes = (1001, 1011)
    token: ClassVar[str] = "contract-token"
    cannot: ClassVar[dict[str, str]] = {
        "peer-restarts": "Kyutai's protocol, which serve speaks, has no session resumption",
    }

    @contextlib.asynccontextmanager
    async def peer(self, request: Any) -> AsyncIterator[ServePeer]:
        _require_moshi()
        from voice_server_moshi.engine.core import Engine, EngineConfig
        from voice_server_moshi.server.app import BatchedServer, ServerConfig

        checkpoint = str(request.getfixturevalue("dev_checkpoint"))
        models = await asyncio.to_thread(_take_serve_models, checkpoint)
        engine = Engine(models, EngineConfig(slots=2))
        await asyncio.to_thread(engine.start)
        server = BatchedServer(engine, ServerConfig(port=0, auth_token=self.token))
        try:
            await server.start()
            yield ServePeer(server, f"ws://127.0.0.1:{server.port}/api/chat", self.token)
        finally:
            await server.close()
            models = await asyncio.to_thread(engine.detach)
            with _SERVE_MODELS_LOCK:
                _SERVE_MODELS.append(models)

    def make_adapter(self, peer: ServePeer, *, max_queued_events: int = 500,
                     bad_credentials: bool = False) -> VoiceModelAdapter:
        from voice_server_moshi.moshi.adapter import MoshiAdapter
        from voice_server_moshi.moshi.settings import MoshiSettings

        adapter = MoshiAdapter(MoshiSettings(
            url=peer.url, auth_token="wrong-token" if bad_credentials else peer.token,
            max_queued_events=max_queued_events, connect_timeout_s=30.0, vad=_TONE_VAD))
        peer.adapters.append(adapter)
        return adapter

    async def peer_error(self, peer: ServePeer) -> None:
        # Serve answers a malformed message with a 0x05 and goes on with the call. The
        # adapter never sends one, so put it on the call's socket beside the adapter.
        ws = peer.adapters[-1].transport._ws  # the RemoteTransport's socket
        await ws.send(b"")

    async def peer_close(self, peer: ServePeer, code: int) -> None:
        if code == 1011:
            await asyncio.to_thread(peer.server.engine.stop, "engine stopped under the call")
        else:
            assert await peer.server.close_call(code=code, reason="going away") == 1

    async def peer_vanish(self, peer: ServePeer) -> None:
        # The server side drops the TCP connection: no close frame is ever sent.
        for conn in peer.server._server.connections:
            conn.transport.abort()

    def check_peer_side(self, peer: ServePeer, scenario: str) -> None:
        counters = peer.server.counters
        assert counters.auth_failures == 0, "serve refused the adapter's token"
        assert counters.protocol_errors == 0, "serve could not decode the adapter's audio"


def builtin_providers() -> list[Provider]:
    return [OpenAIProvider(), ElevenLabsProvider(), PhonicProvider(), MoshiRemoteProvider(),
            MoshiServeProvider(), MoshiEmbeddedProvider()]

