"""The batched engine: N calls in ONE ``LMGen`` and ONE ``MimiModel`` batch.

Each call owns a slot (a batch row, :mod:`.slot`). A call joins by ``reset_streaming(mask)``
on its row, is skipped on ticks where it has no input by ``set_exec_mask`` (its state does
not move), and leaves by releasing the row (:mod:`.admission`). One tick runs Mimi encode,
one LM step and Mimi decode for every slot that has a frame; a tick happens every 80 ms of
wall clock in a background thread (:meth:`Engine.start`), or on demand with
:meth:`Engine.tick` (tests, benchmarks).

Why per-row masks and not one model per call, or Kyutai's lock: see ADR 0030. Input
clocking (idle, fill, drop): :mod:`.slot` and ADR 0032.

Moshi ignores the first input frame; like Kyutai's server, the engine encodes it, then
resets that row's Mimi state so the next frame gets the encoder's start-of-stream padding.

The engine's public names (config, slot and metrics types) are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._log import get_logger
from .admission import SlotAdmission
from .batch_width import BatchWidth
from .call_sampling import CallSampling
from .config import FRAME_SAMPLES, TICK_S, EngineConfig
from .gc_pauses import quiet_collector
from .malloc_tuning import hold_freed_memory
from .metrics import (
    TICK_BUCKETS_S,
    EngineMeasures,
    EngineMetrics,
    TickTimes,
    streaming_state_bytes,
)
from .models import LoadedModels
from .packing import RowPacking, engine_rows
from .persona_engine import PersonaPrefill
from .row_sampler import RowSampler
from .row_state import RowLayout
from .slot import PCM, Sink, Slot, SlotError, SlotEvent, SlotOutput, SlotState, SttOutput
from .steering import SteeringSpec
from .steering_hooks import SteeringHooks
from .stt import SttBatch, make_stt_batch
from .tick_loop import TickLoop

__all__ = [
    "FRAME_SAMPLES", "PCM", "TICK_BUCKETS_S", "TICK_S", "Engine", "EngineConfig",
    "EngineMetrics", "Sink", "Slot", "SlotError", "SlotEvent", "SlotOutput",
    "SlotState", "SttOutput", "TickReport", "streaming_state_bytes",
]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did."""

    executed: int
    delivered: int
    seconds: float


class Engine(SlotAdmission, RowPacking, PersonaPrefill, EngineMeasures, TickLoop):
    """N call slots over one Mimi + one LMGen batch. Thread model: all torch work runs in
    the thread that calls :meth:`tick` (the engine's own thread after :meth:`start`);
    slots are opened, fed and closed from any thread."""

    def __init__(self, models: LoadedModels, config: EngineConfig | None = None) -> None:
        from moshi.models.lm import LMGen
        from moshi.run_inference import get_condition_tensors

        self.models = models
        self.config = config or EngineConfig()
        n = self.config.slots
        self.device = models.device
        if self.device.type == "cpu" and self.config.cpu_threads is not None:
            torch.set_num_threads(self.config.cpu_threads)
        if self.config.hold_freed_memory:  # process-wide, once (malloc_tuning.py)
            hold_freed_memory()
        self._lock = threading.Lock()  # slot table, queues, counters
        self._tick_lock = threading.Lock()  # one tick at a time, all torch work
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots: list[Slot | None] = [None] * n
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._ready = False
        self._late_ticks = 0
        self._underruns = 0
        self._overruns = 0
        self._trimmed = 0
        self._calls_started = 0
        self._calls_refused = 0
        self._tick_stats = TickTimes()
        self._compile = (self.device.type == "cuda" if self.config.torch_compile is None
                         else self.config.torch_compile)

        params: dict[str, Any] = dict(models.lm_gen_config)
        if self.config.sampling is not None:
            params.update(self.config.sampling.lmgen_params())
        if float(params.get("cfg_coef", 1.0)) != 1.0:
            raise ValueError("checkpoints that need classifier-free guidance are not supported")
        cond = get_condition_tensors(models.model_type, models.lm, batch_size=n, cfg_coef=1.0)
        # support_out_of_sync: rows start at different times; without it LMGen withholds
        # every row's output for max_delay steps after ANY row's reset.
        self.steering_spec = SteeringSpec.of(models.lm, models.tokenizer)
        self._steer = SteeringHooks(n, self.steering_spec, self.device)
        self.lm_gen = LMGen(models.lm, condition_tensors=cond, support_out_of_sync=True,
                            on_text_hook=self._steer.on_text,
                            on_audio_hook=self._steer.on_audio, **params)
        self.default_sampling = CallSampling.from_engine_defaults(
            bool(params.get("use_sampling", True)), float(params.get("temp", 0.8)),
            float(params.get("temp_text", 0.7)), int(params.get("top_k", 250)),
            int(params.get("top_k_text", 25)))
        lm = models.lm
        self.sampler = RowSampler(
            n, self.device, text_pad_id=lm.text_padding_token_id,
            text_special_ids=(lm.text_padding_token_id, lm.end_of_text_padding_id,
                              lm.text_initial_token_id),
            default=self.default_sampling,
        ) if self.config.per_call_sampling else None
        self.mimi = models.mimi
        # Caller transcripts (ADR 0075): STT rows beside the Moshi rows, fed the same codes.
        self.stt: SttBatch | None = make_stt_batch(models, n)
        self._stt_flush: list[Slot] = []  # finished calls whose last words are due
        # Kept so :meth:`detach` can hand the models back (benchmarks reuse them).
        self._streams = [self.mimi.streaming(n), self.lm_gen.streaming(n)]
        self._idle_mask = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.mimi.set_exec_mask(self._idle_mask)
        self.lm_gen.set_exec_mask(self._idle_mask)
        # Live calls are kept in the first rows; a tick steps only those (ADR 0135).
        self.rows, self._batch = engine_rows(n, self.device, self.config.live_rows_only,
                                             self.mimi, self.lm_gen, self._steer,
                                             self.sampler, self.stt)
        self._persona_init(n, self.config.prompt_cache_bytes)
        self._state_bytes = streaming_state_bytes(self.mimi, self.lm_gen, models.lm)
        self._weights_bytes = sum(
            p.numel() * p.element_size()
            for m in (models.mimi, models.lm) for p in m.parameters()
        )
        self.log = log.bind(slots=n, device=str(self.device))

    # ---------------------------------------------------------------- lifecycle

    @property
    def slots(self) -> int:
        return self.config.slots

    @property
    def ready(self) -> bool:
        """Warmed up and running (or ticked by hand)."""
        return self._ready

    def free_slots(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots if s is None)

    def active_slots(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots if s is not None)

    @contextlib.contextmanager
    def _torch_context(self) -> Iterator[None]:
        from moshi.utils.compile import no_compile

        with torch.no_grad(), (contextlib.nullcontext() if self._compile else no_compile()):
            yield

    def warm_up(self) -> None:
        """Run ``warmup_ticks`` ticks of silence through every row (which captures CUDA
        graphs on GPU), then reset every row. Idempotent."""
        if self._ready:
            return
        t0 = time.perf_counter()
        # On GPU every width captures its CUDA graphs now, not in the middle of calls.
        widths = self._batch.buckets if self.device.type == "cuda" else (self.config.slots,)
        with self._tick_lock, self._torch_context():
            for n in reversed(widths):
                self._batch.set(n)
                self._warm_width(n)
            self._batch.set(self.config.slots)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.mimi.reset_streaming()
            self.lm_gen.reset_streaming()
            if self.stt is not None:
                self.stt.reset_all()
            self.mimi.set_exec_mask(self._idle_mask)
            self.lm_gen.set_exec_mask(self._idle_mask)
        self._ready = True
        self.log.info("engine warmed up", seconds=round(time.perf_counter() - t0, 3))

    def _warm_width(self, n: int) -> None:
        everyone = torch.ones(n, dtype=torch.bool, device=self.device)
        x = torch.zeros(n, 1, FRAME_SAMPLES, dtype=torch.float32, device=self.device)
        for _ in range(self.config.warmup_ticks):
            self.mimi.set_exec_mask(everyone)
            codes = self.mimi.encode(x)
            self.lm_gen.set_exec_mask(everyone)
            tokens = self._lm_step(codes, everyone)
            self.mimi.decode(tokens[:, 1:].clamp(min=0))
            if self.stt is not None:
                self.stt.warm_up_step(codes)

    def start(self) -> None:
        """Warm up if needed, then tick every ``tick_s`` of wall clock in a daemon thread."""
        if self._thread is not None:
            return
        self.warm_up()
        self.log.info("collector timed", frozen=quiet_collector(freeze=self.config.freeze_heap))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="moshi-engine", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "engine stopped") -> None:
        """Stop the tick thread and fail every open slot with ``reason``. Idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            victims = [s for s in self._slots if s is not None]
        for s in victims:
            self._fail(s, reason)

    def detach(self) -> LoadedModels:
        """Stop, leave streaming mode and return the models, free for another engine
        (e.g. one with another slot count). This engine is unusable afterwards."""
        self.stop("engine detached")
        with self._tick_lock:
            for stack in reversed(self._streams):
                stack.close()
            self._streams = []
            if self.stt is not None:
                self.stt.close()
            self._ready = False
            # Let go of the streaming state (the KV caches) now, not with this object.
            self.rows = RowLayout(())
            self._batch = BatchWidth(1, (), (), (), (1,))
        return self.models

    def finish(self, slot: Slot) -> bool:
        """Release ``slot`` like :meth:`release`; with an STT, its last words (the STT's
        delay of silence, run in the next tick) then reach its sink, the last
        :class:`SttOutput` ``final``. True when such a flush is coming."""
        flush = False
        with self._lock:
            # Queued under the same lock as the release that frees the row, so the tick
            # that first sees a new call in this row also flushes the old one first.
            if self.stt is not None and slot.state == "running":
                self._stt_flush.append(slot)
                flush = True
        self.release(slot)
        self._wake.set()
        return flush

    # ---------------------------------------------------------------- ticking

    def tick(self, prefill_until: float | None = None) -> TickReport:
        """Run one tick now: every slot with a frame (or due a silence fill) steps once;
        then persona prefill steps (one, or as many as fit before ``prefill_until``)."""
        with self._tick_lock, self._torch_context():
            self._start_prompts()  # a cached persona joins this tick (persona_engine.py)
            report = self._tick()
        self._prefill_in_slack(prefill_until)
        return report

    def _tick(self) -> TickReport:
        t0 = time.perf_counter()
        with self._lock:
            flushing, self._stt_flush = self._stt_flush, []
        if flushing and self.stt is not None:
            self._batch.cover(max(s.index for s in flushing) + 1)
            flushed = self.stt.flush([s.index for s in flushing])
            self._deliver([(s, o) for s in flushing for o in flushed.get(s.index, ())])
        self._pack()
        with self._lock:
            live = [i for i, s in enumerate(self._slots) if s is not None]
            n = self._batch.bucket(live[-1] + 1) if live else 1
            batch = np.zeros((n, FRAME_SAMPLES), dtype=np.float32)
            exec_l = [False] * n
            first_l = [False] * n
            fresh_l = [False] * n
            members: list[Slot | None] = [None] * n
            for i, s in enumerate(self._slots[:n]):
                if s is None or any(s is f for f in flushing):
                    continue
                if s.prompt_run is not None and not s.prompt_run.done.is_set():
                    continue  # its persona prompt is prefilling (persona_engine.py)
                frame, _filled = s._take()
                if frame is None:
                    continue
                batch[i] = frame
                exec_l[i] = True
                first_l[i] = s._first
                fresh_l[i] = s._first and not s.prompted  # a prompted LM row continues
                s._first = False
                members[i] = s
        executed = sum(exec_l)
        if executed == 0:
            return TickReport(0, 0, 0.0)
        self._batch.set(n)

        dev = self.device
        exec_mask = torch.tensor(exec_l, dtype=torch.bool, device=dev)
        first_mask = torch.tensor(first_l, dtype=torch.bool, device=dev)
        any_first = any(first_l)
        fresh_mask = (torch.tensor(fresh_l, dtype=torch.bool, device=dev) if any_first
                      else first_mask)
        if any_first:
            # A call joins: its row starts from scratch in Mimi and the LM.
            self.mimi.reset_streaming(first_mask)
            self.lm_gen.reset_streaming(fresh_mask)
            self._steer.reset(first_mask)
            if self.sampler is not None:
                for i, s in enumerate(members):
                    if s is not None and first_l[i]:
                        self.sampler.set_row(i, s.sampling or self.default_sampling.seeded())
        x = torch.from_numpy(batch).to(dev)[:, None, :]
        self.mimi.set_exec_mask(exec_mask)
        codes = self.mimi.encode(x)
        if any_first:
            # Moshi ignores the first frame; redo the encoder's start-of-stream padding
            # on the next one (what Kyutai's server does with skip_frames). A prompted
            # row's LM reads its first frame: its encoder runs on, as NVIDIA's does.
            self.mimi.reset_streaming(fresh_mask)
        self.lm_gen.set_exec_mask(exec_mask)
        # Steering (ADR 0070): each steered row's forcing for this step, applied by the
        # LMGen hooks; rows without a plan keep their sampled tokens.
        self._steer.begin(exec_mask, [
            None if s is None else s.steering.plan(lambda i=i: self._steer.prev_text(i))
            for i, s in enumerate(members)])
        tokens = self._lm_step(codes, exec_mask)  # [B, 1 + dep_q, 1]; -2: not generated yet
        actual = self._steer.actual_text()
        for i, s in enumerate(members):
            if s is not None:
                s.steering.commit(None if actual is None else actual[i])
        audio = tokens[:, 1:, :]
        ready = exec_mask & (audio >= 0).all(dim=2).all(dim=1)
        ready_l: list[bool] = ready.tolist()
        outputs: list[tuple[Slot, SlotEvent]] = []
        if any(ready_l):
            # Rows not ready keep their decoder state (masked) and see token 0, never -2.
            self.mimi.set_exec_mask(ready)
            pcm = self.mimi.decode(audio.clamp(min=0))
            pcm_np = pcm[:, 0, :].float().cpu().numpy()
            text_l: list[int] = tokens[:, 0, 0].tolist()
            codes_l: list[list[int]] = audio[:, :, 0].tolist()
            for i, s in enumerate(members):
                if s is None or not ready_l[i]:
                    continue
                steered_by, marks = s.steering.output_marks()
                if not s.closed:
                    outputs.append((s, SlotOutput(
                        s.frames_out, pcm_np[i].copy(), text_l[i],
                        self.models.text_piece(text_l[i]), tuple(codes_l[i]), steered_by, marks)))
                s.frames_out += 1
        if self.stt is not None:
            stt_out = self.stt.step(codes, exec_mask, first_mask if any_first else None)
            outputs += [(s, o) for i, s in enumerate(members)
                        if s is not None and (o := stt_out[i]) is not None]
        # Sinks all at once, after the model: the first wakes the event loop, whose Opus
        # holds the GIL; interleaved, the tick waited on it (ADR 0150).
        delivered = self._deliver(outputs)
        dt = time.perf_counter() - t0
        self._record_tick(dt)
        return TickReport(executed, delivered, dt)

    def _deliver(self, outputs: list[tuple[Slot, SlotEvent]]) -> int:
        """Hand each event to its call's sink; returns the audio frames handed over."""
        delivered = 0
        for s, event in outputs:
            try:
                s.sink(event)
                delivered += isinstance(event, SlotOutput)
            except Exception as exc:
                # One call's consumer failing must not touch the others.
                s.log.exception("sink failed; closing the slot")
                self._fail(s, f"output delivery failed: {exc}")
        return delivered

    def _lm_step(self, codes: torch.Tensor, exec_mask: torch.Tensor) -> torch.Tensor:
        with (self.sampler.active(exec_mask) if self.sampler is not None
              else contextlib.nullcontext()):
            tokens = self.lm_gen.step(codes)
        if tokens is None:  # only without support_out_of_sync, which the engine always sets
            raise RuntimeError("LMGen.step returned no tokens")
        return tokens

    def _record_tick(self, dt: float) -> None:
        with self._lock:
            self._tick_stats.record(dt)

