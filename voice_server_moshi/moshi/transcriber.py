"""Caller transcripts without Moshi: one Kyutai STT stream over its own Mimi.

For hosts that keep their own turn-based pipeline and want only the transcript. The same
:class:`~voice_server_moshi.engine.stt.SttBatch` the engine runs beside Moshi, at batch
size 1, fed by the STT checkpoint's own Mimi. Synchronous and single-threaded: feed it
24 kHz audio as it comes (from a thread, or with ``asyncio.to_thread``). Needs the
``embedded`` extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..engine.models import resolve_device, resolve_dtype
from ..engine.stt import (
    SttBatch,
    SttModels,
    SttOutput,
    load_stt,
    resolve_stt_checkpoint,
    silence_codes,
    silence_frames,
)
from ..events import Transcript
from .transcript import AgentWords

__all__ = ["Transcriber"]


class Transcriber:
    """``feed`` 24 kHz float32 mono audio in [-1, 1]; get :class:`SttOutput` steps, or
    caller ``transcript`` events from :meth:`words`. :meth:`finish` flushes the delay."""

    def __init__(self, stt: str = "dev", *, device: str = "auto", dtype: str = "auto") -> None:
        dev = resolve_device(device)
        self.models: SttModels = load_stt(stt, device=dev, dtype=resolve_dtype(dtype, dev))
        self.mimi: Any = resolve_stt_checkpoint(stt).get_mimi(device=dev)
        self.mimi.set_num_codebooks(self.models.codebooks)
        self.frame = int(self.mimi.frame_size)
        self.device = dev
        sil = silence_codes(self.mimi, silence_frames(self.models, self.mimi.frame_rate), dev)
        self._batch = SttBatch(self.models, 1, sil, float(self.mimi.frame_rate))
        self._mimi_stream = self.mimi.streaming(1)
        self._mimi_stream.__enter__()
        self._pending: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self._first = True
        self._done = False
        self._words = AgentWords(role="caller")
        self._one = torch.ones(1, dtype=torch.bool, device=dev)

    def feed(self, pcm: npt.NDArray[np.floating[Any]]) -> list[SttOutput]:
        if self._done:
            raise RuntimeError("feed() after finish()")
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._pending = np.concatenate([self._pending, np.clip(np.nan_to_num(x), -1, 1)])
        outs: list[SttOutput] = []
        with torch.no_grad():
            while len(self._pending) >= self.frame:
                f = torch.from_numpy(self._pending[: self.frame].copy()).to(self.device)
                self._pending = self._pending[self.frame:]
                codes = self.mimi.encode(f[None, None])
                first = self._one if self._first else None
                self._first = False
                out = self._batch.step(codes, self._one, first)[0]
                if out is not None:
                    outs.append(out)
        return outs

    def finish(self) -> list[SttOutput]:
        """The audio has ended: run the STT's delay of silence for the last words. Ends
        the stream (the models are released)."""
        if self._done:
            return []
        self._done = True
        with torch.no_grad():
            outs = [] if self._first else self._batch.flush([0])[0]
        self._batch.close()
        self._mimi_stream.__exit__(None, None, None)
        return outs

    def words(self, outputs: list[SttOutput]) -> list[Transcript]:
        """Caller ``transcript`` events (words, the adapter's rules) from outputs in order;
        the last word is final after the ``final`` output of :meth:`finish`."""
        events: list[Transcript] = []
        for o in outputs:
            if o.text is None:
                events += self._words.advance(o.stream_ms)
            else:
                events += self._words.feed(o.text, o.stream_ms)
            if o.final:
                events += self._words.flush()
        return events
