"""``bench engine --equivalence``: batched == alone, with calls joining, idling and leaving,
and the engine moving live calls into the rows of those that left (ADR 0030, ADR 0135)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: call -> (join tick, frames). E and D outlive the others, so their rows move down as the
#: calls below them leave; F joins a batch that has shrunk.
PLAN: dict[str, tuple[int, int]] = {
    "A": (0, 14), "E": (1, 22), "B": (3, 10), "C": (5, 8), "D": (16, 9), "F": (18, 6),
}
SLOTS = 4


def equivalence(checkpoint: str, device: str, dtype: str) -> dict[str, Any]:
    """Greedy calls that join, idle and leave a running 4-slot batch at staggered times,
    against each call run alone: the largest PCM difference, whether every text and audio
    token matched, how many times a live call moved rows and the widths the batch ran at."""
    from ..engine.call_sampling import GREEDY
    from ..engine.core import FRAME_SAMPLES, Engine, EngineConfig, SlotEvent
    from ..engine.core import SlotOutput as Out
    from ..engine.models import load_models

    greedy = EngineConfig(slots=SLOTS, sampling=GREEDY,
                          fill_after_ticks=None)
    rng = np.random.default_rng(0)
    audio = {k: (0.2 * rng.standard_normal((n, FRAME_SAMPLES))).astype(np.float32)
             for k, (_, n) in PLAN.items()}

    def outputs(events: list[SlotEvent]) -> list[Out]:
        return [e for e in events if isinstance(e, Out)]

    eng = Engine(load_models(checkpoint, device=device, dtype=dtype), greedy)
    eng.warm_up()
    got: dict[str, list[SlotEvent]] = {k: [] for k in PLAN}
    slots: dict[str, Any] = {}
    fed = dict.fromkeys(PLAN, 0)
    rows: dict[str, set[int]] = {k: set() for k in PLAN}
    widths: set[int] = set()
    for tick in range(45):
        for k, (start, n) in PLAN.items():
            if tick == start:
                slots[k] = eng.try_open(k, got[k].append)
            if k in slots and fed[k] < n and not (k == "B" and tick in (6, 7)):
                slots[k].push(audio[k][fed[k]])
                fed[k] += 1
        if eng.tick().executed:
            widths.add(eng._batch.width)
        for k, (_, n) in PLAN.items():
            if k in slots and not slots[k].closed:
                rows[k].add(slots[k].index)
                if len(outputs(got[k])) == n - 1:
                    slots[k].close()
    moves = eng.row_moves
    models = eng.detach()
    worst = 0.0
    tokens_equal = True
    for k in PLAN:
        alone = Engine(models, EngineConfig(slots=1, sampling=GREEDY))
        alone.warm_up()
        mine: list[SlotEvent] = []
        s = alone.try_open(k, mine.append)
        for f in audio[k]:
            s.push(f)
            alone.tick()
        models = alone.detach()
        a, b = outputs(got[k]), outputs(mine)
        tokens_equal &= [(o.text_token, o.audio_tokens) for o in a] == [
            (o.text_token, o.audio_tokens) for o in b]
        # Unequal lengths already made tokens_equal False; compare what both have.
        pairs = zip(a, b, strict=False)
        worst = max([worst] + [float(np.abs(x.pcm - y.pcm).max()) for x, y in pairs])
    return {"calls": len(PLAN), "slots": SLOTS, "max_abs_pcm_diff": worst,
            "tokens_equal": tokens_equal, "row_moves": moves,
            "rows_held": {k: sorted(v) for k, v in rows.items()},
            "batch_widths": sorted(widths)}
