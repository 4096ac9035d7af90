"""``bench adapter``: CPU per call-second of the Moshi adapter's whole audio path.

It drives the real :class:`~voice_server_moshi.moshi.adapter.MoshiAdapter` (events,
counters, pacing task and all) over an in-memory transport that does what the remote
transport does per frame minus the socket: Opus-encode each caller frame into Ogg pages
and Opus-decode Ogg pages of agent audio (made beforehand, as a Moshi server would send
them). So the measured path is: G.711 decode, VAD, 8k->24k resampling, 80 ms framing,
Opus encode, Opus decode, 24k->8k resampling, 20 ms framing, G.711 encode, event delivery.
The audio is the bundled corpus's phone speech (caller and agent turns, line noise between
them). Caller audio is sent faster than real time, and CPU time is the thread's own
(``time.thread_time``), on one thread: calls per core = 1000 / (CPU ms per call-second).
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._cli_help import command_parser
from ..adapter import VoiceModelConfig
from ..audio import g711
from ..audio.opus import OpusDecoder, OpusEncoder
from ..formats import AudioFormat
from ..moshi.adapter import MoshiAdapter
from ..moshi.settings import MoshiSettings
from ..moshi.transport import (
    MOSHI_FRAME_SAMPLES,
    PCM,
    AgentAudio,
    MoshiTransport,
    TransportEvent,
    queued_events,
)

GOAL_CALLS_PER_CORE = 100


def _call_audio(n: int, rate: int, role: str, seed: int) -> NDArray[np.float32]:
    """``n`` samples of a phone call's audio at ``rate``: the bundled corpus's clips of
    ``role`` (``agent`` or ``caller``), 0.4 s of line noise between them.

    Real speech, because the codec's cost depends on what it encodes: sphn's Opus encoder
    took 0.26 ms a frame on a square wave this bench used before and 1.02 ms on this
    speech, libopus 0.56 and 0.58 ms (ADR 0165)."""
    import soxr

    from ..audio.wavio import read_wav
    from ..bundled import bundled_clip_dir

    names = "a" if role == "agent" else "uib"
    clips = [read_wav(p).samples[:, 0] for p in sorted(bundled_clip_dir().glob("*.wav"))
             if p.name[0] in names]
    rng = np.random.default_rng(seed)
    parts: list[NDArray[np.float32]] = []
    for clip in clips:
        parts += [clip, (0.001 * rng.standard_normal(3200)).astype(np.float32)]
    track = np.concatenate(parts)
    if rate != 8000:
        track = soxr.resample(track, 8000, rate).astype(np.float32)
    out: NDArray[np.float32] = np.tile(track, -(-n // len(track)))[:n].astype(np.float32)
    return out


class _OpusLoopTransport(MoshiTransport):
    """Per frame: Opus-encode the caller frame, Opus-decode one agent Ogg page."""

    def __init__(self, agent_pages: list[bytes]) -> None:
        self._pages = agent_pages
        self._i = 0
        self._enc = OpusEncoder(24000)
        self._dec = OpusDecoder(24000)
        self._events: asyncio.Queue[TransportEvent | None] = asyncio.Queue()
        self.bytes_out = 0

    async def open(self, call_id: str) -> str:
        return "bench"

    async def send_frame(self, pcm: PCM) -> None:
        self.bytes_out += len(self._enc.encode(pcm))
        page = self._pages[self._i % len(self._pages)]
        self._i += 1
        out = self._dec.decode(page)
        if len(out):
            self._events.put_nowait(AgentAudio(out))

    async def receive(self) -> AsyncIterator[TransportEvent]:
        async for event in queued_events(self._events):
            yield event

    async def close(self) -> None:
        self._events.put_nowait(None)


def _agent_pages(seconds: float) -> list[bytes]:
    n_frames = int(seconds * 12.5) + 2
    pcm = _call_audio(n_frames * MOSHI_FRAME_SAMPLES, 24000, "agent", 7)
    enc = OpusEncoder(24000)
    return [enc.encode(pcm[i * MOSHI_FRAME_SAMPLES : (i + 1) * MOSHI_FRAME_SAMPLES])
            for i in range(n_frames)]


async def _one_call(fmt: AudioFormat, seconds: float, vad: str) -> dict[str, Any]:
    caller = g711.encode(
        np.clip(np.rint(_call_audio(int(seconds * fmt.sample_rate), fmt.sample_rate, "caller", 1)
                        * 32767), -32768, 32767).astype(np.int16),
        fmt.encoding,
    )
    chunks = [caller[i : i + fmt.bytes_per_frame]
              for i in range(0, len(caller), fmt.bytes_per_frame)]
    transport = _OpusLoopTransport(_agent_pages(seconds))
    adapter = MoshiAdapter(MoshiSettings(transport="embedded", vad=vad), transport=transport)
    n_events = 0

    async def consume() -> None:  # a host reads every event, as it would in a call
        nonlocal n_events
        async for _ in adapter.events():
            n_events += 1

    frames_expected = int(seconds * 24000) // MOSHI_FRAME_SAMPLES
    cpu0 = time.thread_time()
    wall0 = time.perf_counter()
    await adapter.connect(VoiceModelConfig(audio=fmt))
    consumer = asyncio.create_task(consume())
    for c in chunks:
        await adapter.send_audio(c)
        await asyncio.sleep(0)  # let the sender and receiver tasks run, as in a server
    while adapter.counters["frames_received"] < frames_expected - 1:  # noqa: ASYNC110
        await asyncio.sleep(0)
    await adapter.disconnect()
    await consumer
    cpu = time.thread_time() - cpu0
    wall = time.perf_counter() - wall0
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "frames_sent": adapter.counters["frames_sent"],
        "frames_received": adapter.counters["frames_received"],
        "chunks_out": adapter.counters["chunks_out"],
        "silence_frames": adapter.counters["silence_frames"],
        "events": n_events,
    }


#: A Moshi-protocol peer for the socket run, in its own process so that its CPU is not
#: counted: handshake, then every caller audio message is echoed back as agent audio.
_ECHO_PEER = """
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    await ws.send(b"\\x00")
    async for m in ws:
        await ws.send(m)
async def main():
    async with serve(echo, "127.0.0.1", 0, compression=None) as srv:
        print(next(iter(srv.sockets)).getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"""


async def _socket_call(fmt: AudioFormat, seconds: float, url: str, vad: str
                       ) -> dict[str, Any]:
    """The same call over the real remote transport and a loopback WebSocket."""
    caller = g711.encode(
        np.clip(np.rint(_call_audio(int(seconds * fmt.sample_rate), fmt.sample_rate, "caller", 1)
                        * 32767), -32768, 32767).astype(np.int16),
        fmt.encoding,
    )
    chunks = [caller[i : i + fmt.bytes_per_frame]
              for i in range(0, len(caller), fmt.bytes_per_frame)]
    adapter = MoshiAdapter(MoshiSettings(url=url, vad=vad))
    frames_expected = int(seconds * 24000) // MOSHI_FRAME_SAMPLES

    async def consume() -> None:
        async for _ in adapter.events():
            pass

    cpu0 = time.thread_time()
    await adapter.connect(VoiceModelConfig(audio=fmt))
    consumer = asyncio.create_task(consume())
    for c in chunks:
        await adapter.send_audio(c)
        await asyncio.sleep(0)
    async with asyncio.timeout(60):
        while adapter.counters["frames_received"] < frames_expected:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    await adapter.disconnect()
    await consumer
    return {"cpu_s": time.thread_time() - cpu0,
            "frames_sent": adapter.counters["frames_sent"],
            "frames_received": adapter.counters["frames_received"]}


def _with_socket(fmt: AudioFormat, seconds: float, repeat: int, vad: str) -> dict[str, Any]:
    import subprocess

    peer = subprocess.Popen([sys.executable, "-c", _ECHO_PEER], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert peer.stdout is not None
        url = f"ws://127.0.0.1:{int(peer.stdout.readline())}/api/chat"
        asyncio.run(_socket_call(fmt, 1.0, url, vad))  # warm-up
        runs = [asyncio.run(_socket_call(fmt, seconds, url, vad)) for _ in range(repeat)]
    finally:
        peer.terminate()
        peer.wait(5)
    cpu_ms = sorted(1000.0 * r["cpu_s"] / seconds for r in runs)
    median = cpu_ms[len(cpu_ms) // 2]
    return {
        "what": "the same path over RemoteTransport and a loopback WebSocket to an echo "
                "peer in another process (websockets framing and socket I/O included)",
        "cpu_ms_per_call_second": round(median, 3),
        "cpu_ms_per_call_second_all": [round(c, 3) for c in cpu_ms],
        "calls_per_core_realtime": round(1000.0 / median, 1),
        "meets_goal": 1000.0 / median >= GOAL_CALLS_PER_CORE,
        "last_run": {k: (round(v, 4) if isinstance(v, float) else v)
                     for k, v in runs[-1].items()},
    }


def _stage_costs(fmt: AudioFormat, seconds: float, vad_name: str) -> dict[str, float]:
    """CPU ms per call-second of each stage alone, in the adapter's chunk sizes."""
    from ..audio.framing import SampleFramer
    from ..audio.resample import Resampler
    from ..moshi.components import resolve_vad
    from ..vads import VadConfig

    rate = fmt.sample_rate
    x8 = np.clip(np.rint(_call_audio(int(seconds * rate), rate, "caller", 1) * 32767),
                 -32768, 32767).astype(np.int16)
    n = fmt.samples_per_frame
    chunks16 = [x8[i : i + n] for i in range(0, len(x8) - n + 1, n)]
    wire = [g711.encode(c, fmt.encoding) for c in chunks16]
    x24 = _call_audio(int(seconds * 24000) // MOSHI_FRAME_SAMPLES * MOSHI_FRAME_SAMPLES,
                      24000, "caller", 2)
    frames24 = x24.reshape(-1, MOSHI_FRAME_SAMPLES)
    pages = _agent_pages(seconds)

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.thread_time()
        fn()
        return round(1000.0 * (time.thread_time() - t0) / seconds, 3)

    up, down = Resampler(rate, 24000), Resampler(24000, rate)
    vad = resolve_vad(vad_name)(VadConfig(rate))
    enc, dec = OpusEncoder(24000), OpusDecoder(24000)
    f80, f20 = SampleFramer(MOSHI_FRAME_SAMPLES, np.float32), SampleFramer(n, np.int16)
    floats = [c.astype(np.float32) / 32768.0 for c in chunks16]
    return {
        "g711_decode": timed(lambda: [g711.decode(w, fmt.encoding) for w in wire]),
        "vad": timed(lambda: [vad.process(c) for c in chunks16]),
        "resample_up": timed(lambda: [up.process(f) for f in floats]),
        "framing_80ms": timed(lambda: [f80.push(f) for f in floats]),
        "opus_encode": timed(lambda: [enc.encode(f) for f in frames24]),
        "opus_decode": timed(lambda: [dec.decode(p) for p in pages]),
        "resample_down": timed(lambda: [down.process(f) for f in frames24]),
        "framing_20ms": timed(lambda: [f20.push(c) for c in chunks16]),
        "g711_encode": timed(lambda: [g711.encode(c, fmt.encoding) for c in chunks16]),
    }


def main(argv: list[str]) -> int:
    ap = command_parser("voice-server-moshi bench adapter", __doc__)
    ap.add_argument("--seconds", type=float, default=20.0, help="call length per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    ap.add_argument("--encoding", default="mulaw", choices=["mulaw", "alaw", "pcm16"])
    ap.add_argument("--vad", default=MoshiSettings().vad,
                    help=f"caller VAD by registered name (default {MoshiSettings().vad})")
    ap.add_argument("--no-socket", action="store_true",
                    help="skip the run over a loopback WebSocket")
    args = ap.parse_args(argv)
    fmt = AudioFormat(args.encoding, 8000, 20)
    asyncio.run(_one_call(fmt, 1.0, args.vad))  # warm-up: imports, filter design, allocations
    runs = [asyncio.run(_one_call(fmt, args.seconds, args.vad)) for _ in range(args.repeat)]
    cpu_ms = sorted(1000.0 * r["cpu_s"] / args.seconds for r in runs)
    median = cpu_ms[len(cpu_ms) // 2]
    calls = 1000.0 / median
    out = {
        "bench": "adapter",
        "what": "CPU per call-second of MoshiAdapter's whole audio path (G.711, VAD, both "
                "resamplers, framing, Opus both ways, events), one thread, no socket",
        "vad": args.vad,
        "format": {"encoding": fmt.encoding, "sample_rate": fmt.sample_rate,
                   "frame_ms": fmt.frame_ms},
        "seconds_per_run": args.seconds,
        "runs": args.repeat,
        "cpu_ms_per_call_second": round(median, 3),
        "cpu_ms_per_call_second_all": [round(c, 3) for c in cpu_ms],
        "calls_per_core_realtime": round(calls, 1),
        "goal_calls_per_core": GOAL_CALLS_PER_CORE,
        "meets_goal": calls >= GOAL_CALLS_PER_CORE,
        "last_run": {k: (round(v, 4) if isinstance(v, float) else v)
                     for k, v in runs[-1].items()},
        "stages_cpu_ms_per_call_second": _stage_costs(fmt, args.seconds, args.vad),
        "with_socket": None if args.no_socket else _with_socket(fmt, args.seconds, args.repeat,
                                                                   args.vad),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0
