"""``voice-server-moshi call [WAV]``: one phone call through the plugin, recorded.

The caller's WAV (or the bundled sample call) is played into the reference host, which runs
the Moshi adapter in full-duplex mode: on the embedded engine by default (the dev checkpoint
when no weights are configured: it babbles), on a remote server with ``--url``, or with real
weights via ``--hf-repo`` / ``--checkpoint``. ``--scripted-agent`` replaces Moshi with the
deterministic agent stand-in of the corpus (no model at all). Results go to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from .._cli_help import command_parser
from ..adapter import VoiceModelAdapter
from ..audio.wavio import WavError, write_wav_pcm16
from ..errors import ConnectError, SettingsError
from ..host.config import HostConfig, load_config
from ..host.impair import Impairment
from ..host.reference import CallState, ClockKind, ReferenceHost
from ..moshi.settings import MoshiSettings
from ..settings import parse_settings
from .caller import decode_call_audio, load_caller

DEV_NOTICE = (
    "note: no Moshi weights configured, using the generated dev checkpoint: it babbles "
    "(random weights). For speech: --hf-repo kyutai/moshiko-pytorch-bf16 or --checkpoint DIR\n"
)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "voice-server-moshi call",
        "Run a phone call through the Moshi adapter in full-duplex mode and write "
        "the agent track, a stereo recording, the timeline, a latency report and a picture.",
    )
    p.add_argument("wav", nargs="?", help="caller recording (WAV: PCM any rate/channels, "
                   "µ-law or A-law); default: the bundled sample call")
    p.add_argument("--out", default="call-output", help="output directory (default: "
                   "./call-output)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", help="remote Moshi server, e.g. ws://127.0.0.1:8998/api/chat "
                     "(default: none, Moshi runs embedded)")
    src.add_argument("--hf-repo", help="embedded, real weights from this Hugging Face repo "
                     "(default: none, the generated dev checkpoint)")
    src.add_argument("--checkpoint", help="embedded, weights from this local directory, or "
                     "dev-personaplex (generated PersonaPlex-shaped, with voices) "
                     "(default: none, the generated dev checkpoint)")
    src.add_argument("--scripted-agent", action="store_true",
                     help="no model: the corpus's scripted agent answers (deterministic)")
    p.add_argument("--config", help="host config (.toml or .json: adapter, mode, [audio], "
                   "[moshi], [full-duplex]); the flags above override its moshi section "
                   "(default: none, every setting at its default)")
    p.add_argument("--device", help="embedded: cpu, cuda, cuda:N (default auto)")
    p.add_argument("--clock", choices=["virtual", "realtime"], default="virtual",
                   help="virtual (default): frame by frame as fast as the model answers; the "
                   "same input and settings give the same timeline. realtime: media at "
                   "--speed x real time, as a live call (results then depend on the "
                   "machine's timing)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="realtime clock speed factor (default 1.0)")
    p.add_argument("--tail-ms", type=float, default=2000.0,
                   help="silence after the recording before hanging up (default 2000)")
    p.add_argument("--seed", type=int, default=0,
                   help="the call's text_seed and audio_seed (unless its config sets them): "
                   "the model's sampling repeats from run to run, embedded or through serve "
                   "(default 0)")
    p.add_argument("--persona", help="PersonaPlex: who the agent is (a text prompt; "
                   "needs a PersonaPlex checkpoint or server; default: none)")
    p.add_argument("--voice", help="PersonaPlex: the agent's voice, e.g. NATF2, or a WAV "
                   "file (embedded; default: the checkpoint's, NATF2)")
    p.add_argument("--no-plot", action="store_true",
                   help="skip the PNG (it needs matplotlib: pip install "
                   "'voice-server-moshi[plot]'; without it the call runs and says so)")
    p.add_argument("--impair", type=parse_impair, default=None, metavar="SPEC",
                   help="a bad line on the caller's path, seeded, e.g. "
                   "jitter_ms=40,loss=0.02,seed=1; names: jitter_ms, loss, burst (P of a "
                   "loss after a loss), reorder, duplicate, stall_ms, stall_at_ms, "
                   "stall_every_ms, seed (docs/real-lines.md); works with --clock realtime")
    p.add_argument("--say", action="append", default=[], metavar="MS:TEXT",
                   type=parse_say, help="at call time MS (ms), make the agent say TEXT "
                   "(steering; repeatable; embedded or our serve, not Kyutai's servers)")
    return p


def parse_impair(value: str) -> Impairment:
    try:
        return Impairment.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_say(value: str) -> tuple[float, str]:
    """``--say MS:TEXT`` -> (ms, text)."""
    ms, sep, text = value.partition(":")
    try:
        at = float(ms)
    except ValueError:
        at = -1.0
    if not sep or at < 0 or not text.strip():
        raise argparse.ArgumentTypeError(
            f"--say takes MS:TEXT (call time in ms, then the words), got {value!r}")
    return at, text.strip()


def _config(args: argparse.Namespace) -> HostConfig:
    cfg = load_config(args.config) if args.config else HostConfig()
    moshi: dict[str, Any] = {}
    if args.url:
        moshi["url"] = args.url
    if args.hf_repo:
        moshi["checkpoint"] = args.hf_repo
    if args.checkpoint == "dev-personaplex":
        moshi["checkpoint"] = args.checkpoint
    elif args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_dir():
            raise SettingsError("call", [f"--checkpoint {path}: not a directory"])
        moshi["checkpoint"] = str(path.resolve())
    if args.device:
        moshi["device"] = args.device
    for key in ("persona", "voice"):
        if getattr(args, key) is not None:
            moshi[key] = getattr(args, key)
    if args.clock == "virtual" and "stall_fill_ms" not in cfg.adapter_settings:
        # The mode keeps Moshi's input continuous on the virtual clock; the adapter's
        # wall-clock fill would insert silence whenever a slow model lets virtual time lag
        # (and make the call depend on the machine's speed).
        moshi["stall_fill_ms"] = None
    for key in ("text_seed", "audio_seed"):
        if cfg.adapter_settings.get(key) is None:
            # The call's own seeds (ADR 0080): the same input gives the same agent, alone
            # or in a batch, embedded or through serve.
            moshi[key] = args.seed
    return cfg.with_sections(adapter=moshi)


class _Progress:
    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done_ms: float, total_ms: float, s: CallState) -> None:
        now = time.monotonic()
        if now - self.last < (0.25 if self.tty else 5.0) and done_ms < total_ms:
            return
        self.last = now
        line = (
            f"[call] {done_ms / 1000:6.1f}/{total_ms / 1000:.1f} s  "
            f"user turns {s.user_turns} (barge-in {s.barge_ins})  agent turns {s.agent_turns}"
            f"  {'CALLER' if s.user_speaking else '      '} "
            f"{'AGENT' if s.agent_speaking else '     '}"
        )
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.speed > 0:
        sys.stderr.write("error: --speed must be > 0\n")
        return 2
    try:
        return _run(args)
    except (WavError, SettingsError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except ConnectError as exc:
        sys.stderr.write(f"error: could not start the call: {exc}\n")
        return 1


def _prepare_dev_checkpoint() -> None:
    """Say where the dev checkpoint is, and generate it now (with a notice) on first use."""
    try:
        from ..engine.checkpoints import dev_checkpoint_dir, dev_checkpoint_ready
    except ImportError:
        return  # no embedded extra: the transport says what to install
    if dev_checkpoint_ready():
        sys.stderr.write(f"[call] dev checkpoint: {dev_checkpoint_dir()}\n")
        return
    from ..engine.checkpoints import cache_root

    sys.stderr.write(f"[call] generating the dev checkpoint into {cache_root()} (first run "
                     "only; about a minute on a CPU)...\n")
    t0 = time.monotonic()
    path = dev_checkpoint_dir()
    sys.stderr.write(f"[call] dev checkpoint written to {path} in "
                     f"{time.monotonic() - t0:.0f} s\n")


def _check_hub(repo: str) -> None:
    try:
        from ..engine.checkpoints import DevCheckpointError, check_hub_reachable
    except ImportError:
        return
    try:
        check_hub_reachable(repo)
    except DevCheckpointError as exc:
        raise ConnectError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from ..corpus.sample import sample_call

    cfg = _config(args)
    fmt = cfg.audio
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sample = sample_call() if (args.wav is None or args.scripted_agent) else None
    if args.wav is None:
        assert sample is not None
        caller_pcm = sample.caller
        input_path = out / "caller-input.wav"
        write_wav_pcm16(input_path, caller_pcm, 8000)
        sys.stderr.write(f"[call] no WAV given: using the bundled sample call "
                         f"({sample.duration_ms / 1000:.1f} s, written to {input_path})\n")
    else:
        input_path = Path(args.wav)
    caller_bytes, wav = load_caller(input_path, fmt)
    sys.stderr.write(f"[call] caller: {input_path} ({wav.encoding}, {wav.sample_rate} Hz, "
                     f"{wav.channels} ch, {wav.duration_s:.1f} s) -> {fmt.encoding} "
                     f"{fmt.sample_rate} Hz\n")
    factory = None
    if args.scripted_agent:
        from ..corpus.agent import ScriptedAgentTransport, text_schedule
        from ..moshi.adapter import MoshiAdapter

        assert sample is not None
        moshi = parse_settings(MoshiSettings, cfg.adapter_settings, section="moshi")
        agent = sample

        def factory() -> VoiceModelAdapter:
            return MoshiAdapter(moshi, transport=ScriptedAgentTransport(
                agent.agent, 8000, text_schedule(agent.agent_segments), keep_sent=False))

        transport = "scripted"
    else:
        moshi = parse_settings(MoshiSettings, cfg.adapter_settings, section="moshi")
        transport = moshi.resolved_transport
        if transport == "embedded" and moshi.checkpoint == "dev":
            sys.stderr.write(DEV_NOTICE)
            _prepare_dev_checkpoint()
        elif transport == "embedded" and moshi.checkpoint.count("/") == 1 \
                and not Path(moshi.checkpoint).expanduser().is_dir():
            _check_hub(moshi.checkpoint)
        sys.stderr.write(f"[call] transport: {transport} "
                         f"({moshi.url if transport == 'remote' else moshi.checkpoint})\n")
    host = ReferenceHost(cfg, adapter_factory=factory)
    progress = _Progress()
    clock: ClockKind = args.clock
    result = asyncio.run(host.run_call(caller_bytes, clock=clock, speed=args.speed,
                                       says=args.say, impair=args.impair,
                                       tail_ms=args.tail_ms, progress=progress))
    progress.done()
    from .plot import describe, plot_call
    from .report import latency_report, write_outputs

    latency = latency_report(result, fmt, transport, result.response_wall_ms)
    paths = write_outputs(out, result, fmt, latency)
    if not args.no_plot:
        picture = out / "call.png"
        d = describe(result)
        title = (f"{input_path.name} · {transport} · {result.call_ms / 1000:.1f} s · "
                 f"{d['user_turns']} user turns ({d['barge_ins']} barge-in) · "
                 f"{d['backchannels']} backchannels · {d['agent_turns']} agent turns · "
                 f"{d['errors']} errors")
        try:
            plot_call(picture, result, decode_call_audio(result.caller_audio, fmt),
                      decode_call_audio(result.agent_audio, fmt), fmt.sample_rate, title)
            paths["picture"] = picture
        except ImportError as exc:
            # The light install has no matplotlib: every other output is written already.
            sys.stderr.write(f"[call] note: no picture ({exc.name or exc} is not installed); "
                             "pip install 'voice-server-moshi[plot]' draws call.png\n")
    summary = describe(result)
    sys.stderr.write(
        f"[call] done in {result.wall_s:.1f} s: {summary['user_turns']} user turns "
        f"({summary['barge_ins']} barge-in), {summary['backchannels']} backchannels, "
        f"{summary['agent_turns']} agent turns, {summary['errors']} errors"
        + (f", {summary['caller_words']} caller words" if summary["caller_words"] else "")
        + "\n"
    )
    for name, path in paths.items():
        sys.stderr.write(f"[call]   {name:9s} {path}\n")
    errors = [r for r in result.records if r.kind == "callback" and r.name == "error"
              and r.data.get("fatal")]
    return 1 if errors else 0
