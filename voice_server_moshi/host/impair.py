"""A bad phone line you can dial: the caller's packets delayed, lost, reordered, duplicated.

``Impairment.parse("jitter_ms=40,loss=0.02,seed=1")`` (the ``--impair`` option of ``call``
and ``bench turns``) makes a seeded schedule of when each 20 ms caller packet reaches the
host (:meth:`Impairment.schedule`); the reference host pushes each packet into the mode at
that time with its media time, as a telephony host does with RTP. Seeded, so a bad line
is the same bad line every run.

The model, per packet (frame) ``k`` sent at ``k * frame_ms``:

* ``jitter_ms``: a network delay drawn uniformly from ``[0, jitter_ms]``; packets keep
  their order (a later packet waits for an earlier one, as on one RTP path), unless
* ``reorder``: the probability that a packet swaps places with the next one;
* ``loss``: the long-run share of packets lost; ``burst``: the probability that the packet
  after a lost one is lost too (a two-state Gilbert model: 0 means independent losses,
  0.5 means losses come in bursts of 2 on average);
* ``duplicate``: the probability that a packet arrives twice (the copy one frame later);
* ``stall_ms`` (with ``stall_at_ms``, and ``stall_every_ms`` to repeat): the host's own
  loop stalls; packets due meanwhile all arrive when it wakes.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Delivery", "Impairment"]


class Delivery(NamedTuple):
    """One packet reaching the host: at ``arrival_ms`` (call time), caller frame ``frame``."""

    arrival_ms: float
    frame: int


@dataclass(frozen=True, slots=True)
class Impairment:
    """A caller-path impairment; every field is documented in the module docstring."""

    jitter_ms: float = 0.0
    loss: float = 0.0
    burst: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    stall_ms: float = 0.0
    stall_at_ms: float = 1000.0
    stall_every_ms: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "burst", "reorder", "duplicate"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"impairment {name} must be in [0, 1), got {v}")
        for name in ("jitter_ms", "stall_ms", "stall_at_ms", "stall_every_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"impairment {name} must be >= 0, got {getattr(self, name)}")
        if self.stall_every_ms and self.stall_every_ms <= self.stall_ms:
            raise ValueError("impairment stall_every_ms must exceed stall_ms")

    @classmethod
    def parse(cls, text: str) -> Impairment:
        """``"jitter_ms=40,loss=0.02,seed=1"``: the fields by name; unknown names and bad
        values are refused with the list of valid names."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            name = name.strip()
            if not sep or name not in fields:
                raise ValueError(f"bad impairment {part!r}: expected NAME=VALUE with NAME one "
                                 f"of {', '.join(fields)}")
            try:
                values[name] = int(raw) if name == "seed" else float(raw)
            except ValueError:
                raise ValueError(f"bad impairment value {part!r}: not a number") from None
        return cls(**values)

    @property
    def active(self) -> bool:
        return any((self.jitter_ms, self.loss, self.reorder, self.duplicate, self.stall_ms))

    def describe(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) != f.default)

    def schedule(self, frames: int, frame_ms: float) -> list[Delivery]:
        """When each of ``frames`` packets reaches the host, in arrival order."""
        rng = random.Random(self.seed)
        # Gilbert model: P(lost | previous kept) = p, P(lost | previous lost) = burst;
        # the stationary loss rate is p / (1 - burst + p) = loss.
        p = self.loss * (1.0 - self.burst) / (1.0 - self.loss) if self.loss else 0.0
        out: list[Delivery] = []
        last = 0.0
        lost = False
        for k in range(frames):
            lost = rng.random() < (self.burst if lost else p)
            delay = rng.uniform(0.0, self.jitter_ms) if self.jitter_ms else 0.0
            arrival = max(k * frame_ms + delay, last)  # one path: order is kept
            last = arrival
            if lost:
                continue
            arrival = self._after_stall(arrival)
            out.append(Delivery(arrival, k))
            if self.duplicate and rng.random() < self.duplicate:
                out.append(Delivery(self._after_stall(arrival + frame_ms), k))
        if self.reorder:
            for i in range(len(out) - 1):
                if rng.random() < self.reorder:
                    a, b = out[i], out[i + 1]
                    out[i], out[i + 1] = Delivery(a.arrival_ms, b.frame), Delivery(
                        b.arrival_ms, a.frame)
        out.sort(key=lambda d: d.arrival_ms)
        return out

    def _after_stall(self, t: float) -> float:
        if not self.stall_ms or t < self.stall_at_ms:
            return t
        since = t - self.stall_at_ms
        if self.stall_every_ms:
            since %= self.stall_every_ms
        return t + (self.stall_ms - since) if since < self.stall_ms else t
