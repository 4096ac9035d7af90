"""``voice-server-moshi make-corpus DIR``: synthesize the labelled call corpus.

Writes ``DIR/clips/`` (espeak-ng + sox, 8 kHz µ-law), then for each call
``DIR/calls/<id>/caller.wav`` (8 kHz µ-law, telephone band, noise at the SNR),
``agent.wav`` (the scripted agent's track, 8 kHz PCM16) and ``labels.json``, and
``DIR/labels.json`` with every call's labels. ``--bundled-clips`` skips synthesis and uses
the clips committed in the package (no espeak-ng or sox needed).

``--noisy`` writes the noisy corpus instead (ADR 0085): the same scripts over babble (six
espeak-ng talkers, synthesized into ``DIR/babble``), pink, brown, street (with horn bursts)
and music backgrounds at each SNR, plus a noise-only call per kind and SNR and echo-only
calls (the agent's audio back in the caller channel, -15 to -25 dB, 20-200 ms); every
call's ``labels.json`` names its background (or echo) and labels every caller utterance.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .._cli_help import command_parser
from ..audio import g711
from ..audio.wavio import to_int16, write_wav_g711, write_wav_pcm16
from ..bundled import bundled_babble_dir, bundled_clip_dir
from .assemble import standard_set
from .clips import ToolMissingError, load_clips, synthesize_all
from .noise import NOISE_KINDS, load_talkers, synthesize_babble
from .noisy import echo_set, noise_only_set, noisy_set


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi make-corpus", __doc__)
    p.add_argument("dir", help="output directory")
    p.add_argument("--calls", type=int, default=12, help="calls per SNR (default 12)")
    p.add_argument("--snr", default="20,10", help="SNRs in dB (default 20,10)")
    p.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--bundled-clips", action="store_true",
                   help="use the committed clips instead of synthesizing them")
    p.add_argument("--clips-only", action="store_true", help="only synthesize the clips")
    p.add_argument("--noisy", action="store_true",
                   help="the noisy corpus: --calls per background kind and SNR (--snr, "
                   "default then 20,10,5), noise-only and echo-only calls")
    p.add_argument("--kinds", default=",".join(NOISE_KINDS),
                   help=f"with --noisy: background kinds (default {','.join(NOISE_KINDS)})")
    p.add_argument("--echo-calls", type=int, default=4, help="with --noisy: echo-only calls")
    args = p.parse_args(argv)
    try:
        snr_text = "20,10,5" if args.noisy and args.snr == "20,10" else args.snr
        snrs = tuple(float(x) for x in snr_text.split(","))
    except ValueError:
        sys.stderr.write(f"error: --snr must be numbers separated by commas, got {args.snr!r}\n")
        return 2
    if args.calls < 1:
        sys.stderr.write("error: --calls must be >= 1\n")
        return 2
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if unknown:
        sys.stderr.write(f"error: unknown --kinds {unknown}; one of {', '.join(NOISE_KINDS)}\n")
        return 2
    out = Path(args.dir)
    clip_dir = out / "clips"
    babble_dir = out / "babble"
    if args.bundled_clips:
        for src, dst in ((bundled_clip_dir(), clip_dir), (bundled_babble_dir(), babble_dir)):
            dst.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                shutil.copy2(f, dst / f.name)
    else:
        try:
            synthesize_all(clip_dir)
            if args.noisy and "babble" in kinds:
                synthesize_babble(babble_dir)
        except ToolMissingError as exc:
            sys.stderr.write(f"error: {exc}\n(or pass --bundled-clips to use the clips that "
                             "ship with the package)\n")
            return 2
    sys.stderr.write(f"[make-corpus] clips in {clip_dir}\n")
    if args.clips_only:
        return 0
    clips = load_clips(clip_dir)
    if args.noisy:
        talkers = load_talkers(babble_dir) if "babble" in kinds else None
        calls = noisy_set(clips, args.calls, snrs, kinds, args.seed, talkers=talkers)
        calls += noise_only_set(snrs, kinds, args.seed, talkers=talkers)
        calls += echo_set(clips, args.echo_calls, args.seed)
    else:
        calls = standard_set(clips, args.calls, snrs, args.seed)
    index = []
    for call in calls:
        d = out / "calls" / call.call_id
        d.mkdir(parents=True, exist_ok=True)
        write_wav_g711(d / "caller.wav", g711.encode(to_int16(call.caller), "mulaw"), "mulaw")
        write_wav_pcm16(d / "agent.wav", call.agent, 8000)
        labels = call.labels()
        (d / "labels.json").write_text(json.dumps(labels, indent=1) + "\n", "utf-8")
        index.append(labels)
    (out / "labels.json").write_text(json.dumps(index, indent=1) + "\n", "utf-8")
    sys.stderr.write(f"[make-corpus] {len(calls)} calls in {out / 'calls'}, labels in "
                     f"{out / 'labels.json'}\n")
    return 0
