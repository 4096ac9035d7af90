"""``bench sampling``: what per-call sampling costs, against LMGen's batch-wide sampling.

Two measurements in one run, each at 1, 16 and 64 slots (``--slots``):

- **sampler**: one step's draws (1 text + ``dep_q`` audio codebooks) at Moshi 7B's real
  vocabulary sizes (text 32000, audio 2048, 8 codebooks) on random logits: Kyutai's
  ``sample_token`` (one temperature and top-k for the whole batch) against our
  :class:`~voice_server_moshi.engine.row_sampler.RowSampler` (per-row temperature, top-k,
  pad bias, counter-based seeds). This isolates the sampling work from the model.
- **engine**: whole ticks of the batched engine on ``--checkpoint`` (the dev checkpoint by
  default), with ``per_call_sampling`` on and off.

Prints one JSON object; ``--out FILE`` writes it too. Needs the ``embedded`` extra.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._cli_help import command_parser

DEFAULT_SLOTS = (1, 16, 64)


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4),
            "mean_ms": round(float(a.mean()), 4)}


def sampler_point(batch: int, steps: int, text_card: int = 32000, card: int = 2048,
                  dep_q: int = 8) -> dict[str, Any]:
    """Per step: 1 text draw + ``dep_q`` audio draws, Kyutai's function vs ours."""
    import torch
    from moshi.utils.sampling import sample_token

    from ..engine.call_sampling import CallSampling
    from ..engine.row_sampler import RowSampler

    g = torch.Generator().manual_seed(batch)
    text = torch.randn(batch, 1, 1, text_card, generator=g)
    audio = torch.randn(batch, 1, 1, card, generator=g)
    rs = RowSampler(batch, torch.device("cpu"), text_pad_id=3, text_special_ids=(0, 3),
                    default=CallSampling())
    exec_mask = torch.ones(batch, dtype=torch.bool)
    theirs: list[float] = []
    ours: list[float] = []
    for _ in range(steps):
        t = time.perf_counter()
        sample_token(text, True, 0.7, 25)
        for _k in range(dep_q):
            sample_token(audio, True, 0.8, 250)
        theirs.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        with rs.active(exec_mask):
            rs._sample(text)
            for _k in range(dep_q):
                rs._sample(audio)
        ours.append((time.perf_counter() - t) * 1000)
    return {"slots": batch, "steps": steps, "kyutai_sample_token": _stats(theirs),
            "per_row_sampler": _stats(ours)}


def engine_point(models: Any, slots: int, ticks: int, per_call: bool) -> dict[str, Any]:
    from ..engine.core import FRAME_SAMPLES, Engine, EngineConfig

    eng = Engine(models, EngineConfig(slots=slots, fill_after_ticks=None,
                                      per_call_sampling=per_call))
    try:
        eng.warm_up()
        calls = [eng.try_open(f"bench-{i}", lambda ev: None) for i in range(slots)]
        frames = (0.1 * np.random.default_rng(slots).standard_normal(
            (8, FRAME_SAMPLES))).astype(np.float32)
        times: list[float] = []
        for k in range(ticks + 1):
            for c in calls:
                c.push(frames[k % len(frames)])
            t = time.perf_counter()
            eng.tick()
            times.append((time.perf_counter() - t) * 1000)
        return {"slots": slots, "per_call_sampling": per_call, "ticks": ticks,
                **_stats(times[1:])}
    finally:
        eng.detach()


def main(argv: list[str] | None = None) -> int:
    p = command_parser("voice-server-moshi bench sampling", __doc__)
    p.add_argument("--slots", default=",".join(map(str, DEFAULT_SLOTS)),
                   help="comma-separated slot counts (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100,
                   help="sampler steps per point (default: %(default)s)")
    p.add_argument("--ticks", type=int, default=40,
                   help="engine ticks per point (default: %(default)s)")
    p.add_argument("--checkpoint", default="dev", help="engine weights (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="engine device (default: %(default)s)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    import torch

    from ..engine.models import load_models

    torch.set_num_threads(1)
    slot_counts = [int(s) for s in args.slots.split(",") if s.strip()]
    models = load_models(args.checkpoint, device=args.device, dtype="auto")
    result: dict[str, Any] = {
        "bench": "sampling",
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "device": args.device},
        "model": models.description,
        "sampler": [sampler_point(n, args.steps) for n in slot_counts],
        "engine": [engine_point(models, n, args.ticks, per_call)
                   for n in slot_counts for per_call in (False, True)],
        "note": ("sampler: one step's draws at Moshi 7B vocabulary sizes on random logits; "
                 "engine: whole ticks on the given checkpoint (the dev checkpoint's "
                 "vocabularies are tiny, so its engine rows show the model's share, the "
                 "sampler rows the sampling's)"),
    }
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
