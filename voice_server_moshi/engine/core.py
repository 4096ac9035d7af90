"""The batched engine: N calls in ONE ``LMGen`` and ONE ``MimiModel`` batch.

Each call owns a slot (a batch row). A call joins by ``reset_streaming(mask)`` on its row,
is skipped on ticks where it has no input by ``set_exec_mask`` (its state does not move),
and leaves by releasing the row. One tick runs Mimi encode, one LM step and Mimi decode
for every slot that has a frame; a tick happens every 80 ms of wall clock in a background
thread (:meth:`Engine.start`), or on demand with :meth:`Engine.tick` (tests, benchmarks).

Why per-row masks and not one model per call, or Kyutai's lock: see ADR 0030.

Input clocking (ADR 0032): a slot with a queued frame steps with it. A slot with none is
idled (its state does not advance, exactly as if the tick had not happened), so network
jitter neither invents audio nor shifts the call; after ``fill_after_ticks`` starved ticks
in a row the engine feeds silence instead (an *underrun*) to keep Moshi's clock going for a
client that stopped sending. A queue over ``queue_frames`` drops its oldest frame (an
*overrun*), which bounds latency and memory.

Moshi ignores the first input frame; like Kyutai's server, the engine encodes it, then
resets that row's Mimi state so the next frame gets the encoder's start-of-stream padding.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from .._log import get_logger
from ..errors import ServerBusyError
from .models import LoadedModels
from .steering import SlotSteering, SteerEvent, SteeringHooks, SteeringSpec

log = get_logger(__name__)

FRAME_SAMPLES = 1920
TICK_S = 0.08

PCM = npt.NDArray[np.float32]

#: Tick-time histogram buckets (seconds) for the Prometheus metrics.
TICK_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.16, 0.32, 1.0)


@dataclass(frozen=True, slots=True)
class Sampling:
    """LMGen's sampling parameters (Kyutai's defaults). ``use_sampling=False`` is greedy:
    deterministic, what the equivalence tests use."""

    use_sampling: bool = True
    temp: float = 0.8
    temp_text: float = 0.7
    top_k: int = 250
    top_k_text: int = 25


@dataclass(frozen=True, slots=True)
class EngineConfig:
    slots: int = 1
    #: Per-slot input queue bound in 80 ms frames; more drops the oldest (overrun).
    queue_frames: int = 4
    #: Starved ticks in a row before silence is fed (underrun); None: idle forever
    #: (input-clocked, like Kyutai's server).
    fill_after_ticks: int | None = 3
    #: Ticks of silence run through every slot before the first call (captures CUDA graphs).
    warmup_ticks: int = 4
    tick_s: float = TICK_S
    #: None: the checkpoint's ``lm_gen_config`` over Kyutai's defaults.
    sampling: Sampling | None = None
    #: torch.compile of moshi's hot functions; None: on for CUDA, off for CPU.
    torch_compile: bool | None = None
    #: On CPU, torch's intra-op threads (process-wide). 1 by default: on a shared machine
    #: more threads made ticks stall for seconds (OpenMP spinning against other
    #: processes), see ADR 0030. None leaves torch's setting alone. Ignored on GPU.
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 1024:
            raise ValueError(f"slots must be in 1..1024, got {self.slots}")
        if self.queue_frames < 1:
            raise ValueError(f"queue_frames must be >= 1, got {self.queue_frames}")
        if self.fill_after_ticks is not None and self.fill_after_ticks < 0:
            raise ValueError(f"fill_after_ticks must be >= 0 or None, got {self.fill_after_ticks}")
        if self.warmup_ticks < 0:
            raise ValueError(f"warmup_ticks must be >= 0, got {self.warmup_ticks}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        if not 0.001 <= self.tick_s <= 10:
            raise ValueError(f"tick_s must be in [0.001, 10], got {self.tick_s}")


@dataclass(frozen=True, slots=True)
class SlotOutput:
    """One 80 ms frame of agent output for one call."""

    #: 0-based index of this output frame in the call.
    step: int
    pcm: PCM = field(repr=False)
    text_token: int
    #: The text piece as Kyutai's server would send it; None for PAD/EPAD.
    text: str | None
    #: The agent's Mimi codes of this frame (one per codebook).
    audio_tokens: tuple[int, ...] = ()
    #: Id of the steering request whose forcing made this frame, if any (ADR 0070).
    steered_by: str | None = None
    #: Steering progress (started/finished/cancelled) as of this frame.
    steering: tuple[SteerEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class SlotError:
    """The engine failed this call (it is closed); ``message`` says why."""

    message: str


SlotEvent = SlotOutput | SlotError
Sink = Callable[[SlotEvent], None]

SlotState = Literal["waiting", "running", "closed"]


class Slot:
    """One call's row in the batch. ``push`` is thread-safe; outputs go to ``sink``, which
    is called from the engine's tick thread and must be quick and must not block."""

    def __init__(self, engine: Engine, index: int, call_id: str, sink: Sink) -> None:
        self.engine = engine
        self.index = index
        self.call_id = call_id
        self.sink = sink
        self.state: SlotState = "waiting"
        self.opened_at = time.monotonic()
        self._queue: deque[PCM] = deque()
        self._starved = 0
        self._first = True
        self.frames_in = 0
        self.frames_out = 0
        self.underruns = 0
        self.overruns = 0
        self.idle_ticks = 0
        #: Say-text / say-audio / cancel for this call (engine/steering.py).
        self.steering = SlotSteering(engine.steering_spec)
        self.log = log.bind(call_id=call_id, slot=index)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def push(self, pcm: PCM) -> None:
        """Queue one caller frame: ``FRAME_SAMPLES`` float32 samples at 24 kHz in [-1, 1].

        NaN/inf become 0 and samples are clipped, so a bad frame cannot poison the row.
        """
        arr = np.asarray(pcm)
        if arr.shape != (FRAME_SAMPLES,):
            raise ValueError(
                f"a frame is {FRAME_SAMPLES} samples of 24 kHz mono, got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"frame samples must be float in [-1, 1], got dtype {arr.dtype}")
        frame = np.clip(np.nan_to_num(arr.astype(np.float32, copy=True), nan=0.0,
                                      posinf=1.0, neginf=-1.0), -1.0, 1.0)
        with self.engine._lock:
            if self.closed:
                raise RuntimeError(f"slot {self.index} of call {self.call_id} is closed")
            self._queue.append(frame)
            self.frames_in += 1
            if len(self._queue) > self.engine.config.queue_frames:
                self._queue.popleft()
                self.overruns += 1
                self.engine._overruns += 1
        self.engine._wake.set()

    @property
    def queued(self) -> int:
        """Frames waiting for a tick."""
        with self.engine._lock:
            return len(self._queue)

    def close(self) -> None:
        """Leave the batch; idempotent."""
        self.engine.release(self)

    def _take(self) -> tuple[PCM | None, bool]:
        """(frame or None, filled) for this tick; called with the engine lock held."""
        if self._queue:
            self._starved = 0
            if self.state == "waiting":
                self.state = "running"
            return self._queue.popleft(), False
        if self.state == "waiting":
            return None, False  # not started: a call's timeline starts at its first frame
        self._starved += 1
        fill = self.engine.config.fill_after_ticks
        if fill is not None and self._starved > fill:
            self.underruns += 1
            self.engine._underruns += 1
            return np.zeros(FRAME_SAMPLES, dtype=np.float32), True
        self.idle_ticks += 1
        return None, False


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did."""

    executed: int
    delivered: int
    seconds: float


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    slots: int
    active_slots: int
    ready: bool
    ticks: int
    late_ticks: int
    underruns: int
    overruns: int
    calls_started: int
    calls_refused: int
    tick_count: int
    tick_sum_s: float
    #: Cumulative counts per bucket of :data:`TICK_BUCKETS_S` (Prometheus ``le``).
    tick_buckets: tuple[int, ...]
    tick_p50_s: float | None
    tick_p99_s: float | None
    state_bytes_per_slot: int
    weights_bytes: int
    device_memory_bytes: int | None
    process_rss_bytes: int | None
    device: str
    dtype: str


def _tensors_in(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if depth > 3 or obj is None or isinstance(obj, (int, float, str, bool, torch.nn.Module)):
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v, depth + 1)
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from _tensors_in(v, depth + 1)


def streaming_state_bytes(*modules: Any) -> int:
    """Bytes of the streaming state (KV caches, conv buffers, token caches) that
    ``modules`` hold now, each storage counted once; works on the meta device too."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for st in m.get_streaming_state().values():
            for t in _tensors_in(st):
                # Storage identity, except on the meta device (sizing without memory),
                # where every tensor reports pointer 0 and no bytes.
                meta = t.device.type == "meta"
                key = id(t) if meta else t.untyped_storage().data_ptr()
                if key in seen:
                    continue
                seen.add(key)
                total += t.numel() * t.element_size() if meta else t.untyped_storage().nbytes()
    return total


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Engine:
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
        self._lock = threading.Lock()  # slot table, queues, counters
        self._tick_lock = threading.Lock()  # one tick at a time, all torch work
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots: list[Slot | None] = [None] * n
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._ready = False
        self._ticks = 0
        self._late_ticks = 0
        self._underruns = 0
        self._overruns = 0
        self._calls_started = 0
        self._calls_refused = 0
        self._tick_times: deque[float] = deque(maxlen=2048)
        self._bucket_counts = [0] * len(TICK_BUCKETS_S)
        self._tick_count = 0
        self._tick_sum = 0.0
        self._compile = (self.device.type == "cuda" if self.config.torch_compile is None
                         else self.config.torch_compile)

        params: dict[str, Any] = dict(models.lm_gen_config)
        if self.config.sampling is not None:
            s = self.config.sampling
            params.update(use_sampling=s.use_sampling, temp=s.temp, temp_text=s.temp_text,
                          top_k=s.top_k, top_k_text=s.top_k_text)
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
        self.mimi = models.mimi
        # Kept so :meth:`detach` can hand the models back (benchmarks reuse them).
        self._streams = [self.mimi.streaming(n), self.lm_gen.streaming(n)]
        self._idle_mask = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.mimi.set_exec_mask(self._idle_mask)
        self.lm_gen.set_exec_mask(self._idle_mask)
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
        n = self.config.slots
        t0 = time.perf_counter()
        with self._tick_lock, self._torch_context():
            everyone = torch.ones(n, dtype=torch.bool, device=self.device)
            x = torch.zeros(n, 1, FRAME_SAMPLES, dtype=torch.float32, device=self.device)
            for _ in range(self.config.warmup_ticks):
                self.mimi.set_exec_mask(everyone)
                codes = self.mimi.encode(x)
                self.lm_gen.set_exec_mask(everyone)
                tokens = self._lm_step(codes)
                self.mimi.decode(tokens[:, 1:].clamp(min=0))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.mimi.reset_streaming()
            self.lm_gen.reset_streaming()
            self.mimi.set_exec_mask(self._idle_mask)
            self.lm_gen.set_exec_mask(self._idle_mask)
        self._ready = True
        self.log.info("engine warmed up", seconds=round(time.perf_counter() - t0, 3))

    def start(self) -> None:
        """Warm up if needed, then tick every ``tick_s`` of wall clock in a daemon thread."""
        if self._thread is not None:
            return
        self.warm_up()
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
            self._ready = False
        return self.models

    # ---------------------------------------------------------------- admission

    def try_open(self, call_id: str, sink: Sink) -> Slot:
        """Take a free slot now, or raise :class:`ServerBusyError`."""
        slot = self._take_slot(call_id, sink)
        if slot is None:
            with self._lock:
                self._calls_refused += 1
            raise ServerBusyError(
                f"all {self.config.slots} engine slots are busy; try again later or raise "
                "'slots' (memory per slot grows with 'context')"
            )
        return slot

    async def open(self, call_id: str, sink: Sink, wait_s: float = 0.0) -> Slot:
        """Take a slot, waiting up to ``wait_s`` seconds for one to free up (FIFO)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_s)
        while True:
            slot = self._take_slot(call_id, sink)
            if slot is not None:
                return slot
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self.try_open(call_id, sink)  # raises, counting the refusal
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiters.append((loop, fut))
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, remaining)
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, fut))

    def _take_slot(self, call_id: str, sink: Sink) -> Slot | None:
        with self._lock:
            for i, s in enumerate(self._slots):
                if s is None:
                    slot = Slot(self, i, call_id, sink)
                    self._slots[i] = slot
                    self._calls_started += 1
                    slot.log.info("slot opened")
                    return slot
        return None

    def release(self, slot: Slot) -> None:
        """Free ``slot``'s row (the next call in it resets it first). Idempotent."""
        with self._lock:
            if slot.closed:
                return
            slot.state = "closed"
            slot._queue.clear()
            if self._slots[slot.index] is slot:
                self._slots[slot.index] = None
            waiter = None
            while self._waiters:
                loop, fut = self._waiters.popleft()
                if not fut.done():
                    waiter = (loop, fut)
                    break
        slot.log.info("slot released", frames_in=slot.frames_in, frames_out=slot.frames_out,
                      underruns=slot.underruns, overruns=slot.overruns)
        if waiter is not None:
            loop, fut = waiter
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, fut)

    def _fail(self, slot: Slot, message: str) -> None:
        if slot.closed:
            return
        self.release(slot)
        try:
            slot.sink(SlotError(message))
        except Exception:
            slot.log.exception("sink failed while reporting an error")

    # ---------------------------------------------------------------- ticking

    def tick(self) -> TickReport:
        """Run one tick now: every slot with a frame (or due a silence fill) steps once."""
        with self._tick_lock, self._torch_context():
            return self._tick()

    def _tick(self) -> TickReport:
        n = self.config.slots
        t0 = time.perf_counter()
        batch = np.zeros((n, FRAME_SAMPLES), dtype=np.float32)
        exec_l = [False] * n
        first_l = [False] * n
        members: list[Slot | None] = [None] * n
        with self._lock:
            for i, s in enumerate(self._slots):
                if s is None:
                    continue
                frame, _filled = s._take()
                if frame is None:
                    continue
                batch[i] = frame
                exec_l[i] = True
                first_l[i] = s._first
                s._first = False
                members[i] = s
        executed = sum(exec_l)
        if executed == 0:
            return TickReport(0, 0, 0.0)

        dev = self.device
        exec_mask = torch.tensor(exec_l, dtype=torch.bool, device=dev)
        first_mask = torch.tensor(first_l, dtype=torch.bool, device=dev)
        any_first = any(first_l)
        if any_first:
            # A call joins: its row starts from scratch in Mimi and the LM.
            self.mimi.reset_streaming(first_mask)
            self.lm_gen.reset_streaming(first_mask)
            self._steer.reset(first_mask)
        x = torch.from_numpy(batch).to(dev)[:, None, :]
        self.mimi.set_exec_mask(exec_mask)
        codes = self.mimi.encode(x)
        if any_first:
            # Moshi ignores the first frame; redo the encoder's start-of-stream padding
            # on the next one (what Kyutai's server does with skip_frames).
            self.mimi.reset_streaming(first_mask)
        self.lm_gen.set_exec_mask(exec_mask)
        # Steering (ADR 0070): each steered row's forcing for this step, applied by the
        # LMGen hooks; rows without a plan keep their sampled tokens.
        self._steer.begin(exec_mask, [
            None if s is None else s.steering.plan(lambda i=i: self._steer.prev_text(i))
            for i, s in enumerate(members)])
        tokens = self._lm_step(codes)  # [B, 1 + dep_q, 1]; -2 where not generated yet
        actual = self._steer.actual_text()
        for i, s in enumerate(members):
            if s is not None:
                s.steering.commit(None if actual is None else actual[i])
        audio = tokens[:, 1:, :]
        ready = exec_mask & (audio >= 0).all(dim=2).all(dim=1)
        ready_l: list[bool] = ready.tolist()
        delivered = 0
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
                out = SlotOutput(s.frames_out, pcm_np[i].copy(), text_l[i],
                                 self.models.text_piece(text_l[i]), tuple(codes_l[i]),
                                 steered_by, marks)
                s.frames_out += 1
                if s.closed:
                    continue
                try:
                    s.sink(out)
                    delivered += 1
                except Exception as exc:
                    # One call's consumer failing must not touch the others.
                    s.log.exception("sink failed; closing the slot")
                    self._fail(s, f"output delivery failed: {exc}")
        dt = time.perf_counter() - t0
        self._record_tick(dt)
        return TickReport(executed, delivered, dt)

    def _lm_step(self, codes: torch.Tensor) -> torch.Tensor:
        tokens = self.lm_gen.step(codes)
        if tokens is None:  # only without support_out_of_sync, which the engine always sets
            raise RuntimeError("LMGen.step returned no tokens")
        return tokens

    def _record_tick(self, dt: float) -> None:
        with self._lock:
            self._ticks += 1
            self._tick_times.append(dt)
            self._tick_count += 1
            self._tick_sum += dt
            for b, le in enumerate(TICK_BUCKETS_S):
                if dt <= le:
                    self._bucket_counts[b] += 1

    def _has_slots(self) -> bool:
        with self._lock:
            return any(s is not None for s in self._slots)

    def _run(self) -> None:
        period = self.config.tick_s
        next_t = time.monotonic()
        while not self._stop.is_set():
            if not self._has_slots():
                self._wake.wait(0.5)
                self._wake.clear()
                next_t = time.monotonic()
                continue
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
                continue
            try:
                self.tick()
            except Exception as exc:
                # The model failed mid-tick: every row in flight is suspect. Fail the
                # calls (each gets an error); new calls reset their rows, so the engine
                # goes on serving.
                self.log.exception("engine tick failed")
                with self._lock:
                    victims = [s for s in self._slots if s is not None]
                for s in victims:
                    self._fail(s, f"engine tick failed: {type(exc).__name__}: {exc}")
            next_t += period
            if time.monotonic() - next_t > period:
                # More than a tick behind: do not burst to catch up, start afresh.
                with self._lock:
                    self._late_ticks += 1
                next_t = time.monotonic()

    # ---------------------------------------------------------------- metrics

    def metrics(self) -> EngineMetrics:
        with self._lock:
            times = sorted(self._tick_times)
            active = sum(1 for s in self._slots if s is not None)
            cum: list[int] = list(self._bucket_counts)
            m = EngineMetrics(
                slots=self.config.slots,
                active_slots=active,
                ready=self._ready,
                ticks=self._ticks,
                late_ticks=self._late_ticks,
                underruns=self._underruns,
                overruns=self._overruns,
                calls_started=self._calls_started,
                calls_refused=self._calls_refused,
                tick_count=self._tick_count,
                tick_sum_s=self._tick_sum,
                tick_buckets=tuple(cum),
                tick_p50_s=_quantile(times, 0.5),
                tick_p99_s=_quantile(times, 0.99),
                state_bytes_per_slot=self._state_bytes // self.config.slots,
                weights_bytes=self._weights_bytes,
                device_memory_bytes=(torch.cuda.memory_allocated(self.device)
                                     if self.device.type == "cuda" else None),
                process_rss_bytes=_rss_bytes(),
                device=str(self.device),
                dtype=str(self.models.dtype).removeprefix("torch."),
            )
        return m


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
