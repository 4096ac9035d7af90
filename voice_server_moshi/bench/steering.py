"""``bench steering``: do forced lines come out as what Moshi says? (ADR 0070)

Runs ``--calls`` scripted calls in one batched engine (ticked back to back, no wall
clock), each asked to say one line (``--lines FILE``, one line per row, or a built-in set)
after ``--say-after-s`` of caller silence, and reports per call and overall:

* ``text_match``: Moshi's own text stream over the steered frames, normalized (case,
  punctuation), equals the line (forcing works under the checkpoint's sampling);
* ``first_token_steps``: steps from the request to the first forced token;
* ``frames``, ``words_per_s``: the pace the layout and the model settled on;
* ``stt_wer``: with ``--stt-checkpoint`` (a Kyutai STT model, e.g.
  ``kyutai/stt-1b-en_fr``, cached or a local directory), the word error rate of a
  transcript of the agent's audio over the steered span (plus 1 s) against the line;
  null otherwise;
* tick p50 with and without steering, over the same ticks' halves.

With the dev checkpoint it only checks the plumbing (its words are babble and its audio
has no speech for an STT to hear). The number that matters, the STT match with real Moshi
weights on a GPU, has **not been measured** in this project yet: run
``voice-server-moshi bench steering --checkpoint kyutai/moshiko-pytorch-bf16 --device cuda
--stt-checkpoint kyutai/stt-1b-en_fr`` where the weights are reachable.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from .._cli_help import command_parser

LINES = (
    "Hello, thanks for calling. How can I help you today?",
    "Your order shipped on Tuesday and should arrive by Friday.",
    "I have booked a table for two at seven thirty tonight.",
    "Please hold on while I check that for you.",
)


def _norm(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def wer(ref: list[str], hyp: list[str]) -> float:
    """Word error rate (Levenshtein over words) of ``hyp`` against ``ref``."""
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
            prev, d[j] = d[j], cur
    return d[len(hyp)] / max(1, len(ref))


def transcribe(stt: Any, pcm: npt.NDArray[np.float32]) -> str:
    """Kyutai STT (a ``moshi`` CheckpointInfo of an STT model) over 24 kHz ``pcm``, greedy,
    the way Kyutai's ``stt_from_file_pytorch.py`` runs it. Not exercised here (no STT
    weights reachable); kept small so it is easy to check where they are."""
    import torch
    from moshi.models.lm import LMGen

    mimi = stt.get_mimi(device=DEVICE[0])
    lm = stt.get_moshi(device=DEVICE[0])
    tok = stt.get_text_tokenizer()
    delay_s = float(stt.stt_config.get("audio_delay_seconds", 0.5))
    pad = np.zeros(int((delay_s + 1.0) * 24000), np.float32)
    x = np.concatenate([pcm.astype(np.float32), pad])
    x = x[: len(x) // 1920 * 1920]
    gen = LMGen(lm, temp=0, temp_text=0)
    pieces: list[int] = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for k in range(0, len(x), 1920):
            codes = mimi.encode(torch.from_numpy(x[k:k + 1920]).to(DEVICE[0])[None, None])
            out = gen.step(codes)
            if out is not None:
                t = int(out[0, 0, 0])
                if t not in (0, 3):
                    pieces.append(t)
    return str(tok.decode(pieces))


DEVICE: list[Any] = ["cpu"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..engine.core import FRAME_SAMPLES, Engine, EngineConfig
    from ..engine.models import load_models

    models = load_models(args.checkpoint, device=args.device)
    DEVICE[0] = models.device
    eng = Engine(models, EngineConfig(slots=args.calls, fill_after_ticks=None))
    eng.warm_up()
    lines = (open(args.lines).read().splitlines() if args.lines else list(LINES))  # noqa: SIM115
    lines = [ln for ln in lines if ln.strip()]
    outs: list[list[Any]] = [[] for _ in range(args.calls)]
    slots = [eng.try_open(f"steer-{i}", outs[i].append) for i in range(args.calls)]
    rng = np.random.default_rng(0)
    silence = (0.003 * rng.standard_normal((4, FRAME_SAMPLES))).astype(np.float32)
    say_at = round(args.say_after_s / 0.08)
    n_ticks = round(args.seconds / 0.08)
    asked: dict[int, tuple[str, str, int]] = {}
    times: list[tuple[float, bool]] = []
    for k in range(n_ticks):
        for i, s in enumerate(slots):
            if k == say_at + 3 * i:  # staggered: requests land on different steps
                line = lines[i % len(lines)]
                asked[i] = (s.steering.say_text(line), line, k)
            s.push(silence[k % 4])
        t = time.perf_counter()
        eng.tick()
        if eng.device.type == "cuda":
            torch.cuda.synchronize(eng.device)
        times.append(((time.perf_counter() - t) * 1000, any(s.steering.active for s in slots)))
    stt = None
    if args.stt_checkpoint:
        from ..engine.checkpoints import resolve_checkpoint

        stt = resolve_checkpoint(args.stt_checkpoint)
    calls = []
    for i, (rid, line, k) in sorted(asked.items()):
        steered = [o for o in outs[i] if getattr(o, "steered_by", None) == rid]
        said = "".join(o.text or "" for o in steered)
        entry: dict[str, Any] = {
            "line": line, "frames": len(steered),
            "first_token_steps": (steered[0].step - k) if steered else None,
            "text_stream": said.strip(),
            "text_match": _norm(said) == _norm(line),
            "words_per_s": round(len(line.split()) / max(1e-9, len(steered) * 0.08), 2),
            "stt_transcript": None, "stt_wer": None,
        }
        if stt is not None and steered:
            first = steered[0].step
            pcm = np.concatenate([o.pcm for o in outs[i]
                                  if first <= o.step <= steered[-1].step + 12])
            text = transcribe(stt, pcm)
            entry.update(stt_transcript=text, stt_wer=round(wer(_norm(line), _norm(text)), 3))
        calls.append(entry)
    for s in slots:
        s.close()
    eng.stop()
    plain = [t for t, active in times[3:] if not active]
    steering = [t for t, active in times[3:] if active]
    wers = [c["stt_wer"] for c in calls if c["stt_wer"] is not None]
    return {
        "bench": "steering",
        "checkpoint": args.checkpoint,
        "model": models.description,
        "device": str(models.device),
        "calls": args.calls,
        "text_match_rate": round(sum(c["text_match"] for c in calls) / max(1, len(calls)), 3),
        "stt_mean_wer": round(float(np.mean(wers)), 3) if wers else None,
        "stt": args.stt_checkpoint or "not measured: no --stt-checkpoint",
        "tick_p50_ms_plain": round(float(np.median(plain)), 3) if plain else None,
        "tick_p50_ms_steering": round(float(np.median(steering)), 3) if steering else None,
        "per_call": calls,
        "note": ("dev checkpoint: plumbing only (babble, no speech for an STT)"
                 if args.checkpoint == "dev" else ""),
    }


def main(argv: list[str]) -> int:
    p = command_parser("voice-server-moshi bench steering", __doc__)
    p.add_argument("--checkpoint", default="dev", help="dev, a directory or a HF repo")
    p.add_argument("--device", default="auto")
    p.add_argument("--calls", type=int, default=4, help="scripted calls, one batch")
    p.add_argument("--seconds", type=float, default=10.0, help="call length")
    p.add_argument("--say-after-s", type=float, default=1.0)
    p.add_argument("--lines", help="file of lines to say, one per row")
    p.add_argument("--stt-checkpoint", help="Kyutai STT model for the audio transcript")
    args = p.parse_args(argv)
    if args.calls < 1 or args.seconds <= args.say_after_s:
        p.error("need --calls >= 1 and --seconds > --say-after-s")
    sys.stdout.write(json.dumps(run(args), indent=2) + "\n")
    return 0
