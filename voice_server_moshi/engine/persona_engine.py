"""The engine's half that runs persona prompts (PersonaPlex, ADR 0130).

A call admitted with a :class:`~.persona.PersonaPrompt` gets a :class:`PromptRun`: its row
is reset, then either restored from the prompt cache (a prompt seen before: no model step)
or stepped through the prompt phases (:mod:`.persona_prompt`) by *prefill steps*: LM-only
steps whose exec mask holds the prefilling rows only (every call prefilling at that moment
shares each step), forcing text and agent codes through the steering hooks, giving the
prompt's user codes instead of Mimi's, and feeding a ``.pt`` voice's saved embeddings
through a pre-hook on the main transformer. Live ticks never wait for them: the tick thread
runs prefill steps in the time left before the next tick is due (one at least every few
ticks, so a prompt always progresses). The call's own frames wait in its queue; its first
frame continues the prompted row (the LM row is not reset; Mimi's is).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import torch

from .persona import PersonaPrompt, PersonaSupport, check_persona
from .persona_cache import PromptCache, PromptKey, restore_prompt, snapshot_prompt
from .persona_prompt import prompt_steps
from .persona_run import PromptRun
from .row_state import RowHolder, RowLayout
from .steering import StepPlan

if TYPE_CHECKING:
    from moshi.models.lm import LMGen

    from .batch_width import BatchWidth
    from .models import LoadedModels
    from .row_sampler import RowSampler
    from .slot import Slot
    from .steering_hooks import SteeringHooks

#: A prefill step at least every this many ticks, even with no slack (an overloaded engine
#: still finishes prompts, slowly).
PREFILL_EVERY_TICKS = 4
#: Time kept free before the next tick is due when filling the slack with prefill steps.
SLACK_MARGIN_S = 0.004
#: Share of the slack prefill steps may take while other calls are live: after each step
#: the tick thread pauses for as long again, so the event loop (Opus, the protocol: same
#: interpreter) keeps its turn and their frames are not held back (ADR 0130). Alone, a
#: prompt takes the whole slack.
PREFILL_SHARE = 0.5


class PersonaPrefill:
    """Mixin of :class:`~.core.Engine`: prompts, the prompt cache, prefill steps."""

    models: LoadedModels
    device: torch.device
    lm_gen: LMGen
    sampler: RowSampler | None
    _steer: SteeringHooks
    _lock: threading.Lock
    _tick_lock: threading.Lock
    _slots: list[Slot | None]
    #: The rows a step covers now (ADR 0135); a prefilling row is widened into it.
    _batch: BatchWidth

    def _torch_context(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _lm_step(self, codes: torch.Tensor, exec_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _persona_init(self, n: int, cache_bytes: int) -> None:
        self.prompt_cache = PromptCache(cache_bytes)
        self._since_prefill = 0
        self._prefill_est_s = 0.0
        self._persona = self.models.persona
        if self._persona is None:
            return
        lm = self.models.lm
        self._prompt_layout = RowLayout(
            [("lm", self.lm_gen)],
            [RowHolder("steering", self._steer, tensors=self._steer.ROW_TENSORS)])
        self._emb_mask = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._emb_buf = torch.zeros(n, 1, lm.dim, dtype=self.models.dtype, device=self.device)
        # Always applied (all-False mask outside prefill), so CUDA graphs capture it.
        lm.transformer.register_forward_pre_hook(self._inject, with_kwargs=True)

    def _inject(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        x = args[0]
        k = x.shape[0]  # the batch's width now (ADR 0135): its first k rows
        x = torch.where(self._emb_mask[:k, None, None], self._emb_buf[:k].to(x.dtype), x)
        return (x, *args[1:]), kwargs

    # ------------------------------------------------------------- front-door API

    @property
    def persona_support(self) -> PersonaSupport:
        """What :func:`~.persona.check_persona` checks prompts against for this engine."""
        return self.models.persona_support()

    def check_prompt(self, prompt: PersonaPrompt | None) -> PersonaPrompt | None:
        """The prompt this engine will apply (default voice filled in), None for none;
        :class:`~.persona.PersonaError` with the reason if the model cannot take it."""
        return check_persona(prompt, self.persona_support)

    def _prompt_run(self, prompt: PersonaPrompt | None) -> PromptRun | None:
        checked = self.check_prompt(prompt)
        if checked is None:
            return None
        assert checked.voice is not None
        key = PromptKey(self.persona_support.checkpoint, checked.voice, checked.text)
        return PromptRun(key, checked)

    def warm(self, prompt: PersonaPrompt) -> float:
        """Prefill ``prompt`` into the cache now (a free row, stepped alone until done) and
        return the seconds it took; 0 when already cached. Call before serving."""
        from .slot import Slot

        run = self._prompt_run(prompt)
        if run is None:
            return 0.0
        t0 = time.perf_counter()
        slot = self.try_open(f"warm-{id(run)}", lambda _e: None)  # type: ignore[attr-defined]
        try:
            slot.prompt_run = run
            while not run.done.is_set():
                with self._tick_lock, self._torch_context():
                    self._prefill_step()
        finally:
            assert isinstance(slot, Slot)
            slot.close()
        return 0.0 if run.cached else time.perf_counter() - t0

    def change_persona(self, slot: Slot, prompt: PersonaPrompt) -> None:
        """Give a running call another persona (LiveKit's ``update_instructions``, a
        transfer to another department). Semantics (ADR 0130): the row is re-prompted from
        scratch, as a new call with that persona would be: the conversation so far leaves
        the model's context (PersonaPlex saw its prompt only at the start of a
        conversation when trained, so a prompt after speech is out of its distribution);
        a cached prompt applies at the next tick, a cold one after its prefill, while the
        caller's frames wait in the queue. Put what the agent must remember into the new
        persona's text. Raises PersonaError (changing nothing) if the model cannot take it."""
        run = self._prompt_run(prompt)
        if run is None:
            raise ValueError("change_persona needs a persona or a voice")
        with self._lock:
            if slot.closed:
                raise RuntimeError(f"call {slot.call_id} is closed")
            slot.prompt_run = run
            slot.prompted = False
            slot._first = True  # its next frame restarts Mimi and continues the new prompt
        slot.log.info("persona change queued", voice=run.key.voice)

    async def prompt_ready(self, slot: Slot) -> None:
        """Wait until ``slot``'s prompt is in its row (at once for a call without one);
        send the handshake after this, as NVIDIA's server does."""
        run = slot.prompt_run
        if run is None or run.done.is_set():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if run.done.is_set():
                return
            run.waiters.append((loop, fut))
        await fut

    # ------------------------------------------------------------- tick thread

    def _prefilling(self) -> list[Slot]:
        with self._lock:
            return [s for s in self._slots if s is not None and s.prompt_run is not None
                    and not s.prompt_run.done.is_set()]

    def _others_live(self) -> bool:
        """Whether a call other than the prefilling ones is on the engine."""
        with self._lock:
            return any(s is not None and (s.prompt_run is None or s.prompt_run.done.is_set())
                       for s in self._slots)

    def _prefill_in_slack(self, deadline: float | None) -> None:
        """Prefill steps after a tick: while one fits before ``deadline`` (monotonic), and
        one anyway every ``PREFILL_EVERY_TICKS`` ticks; one when ``deadline`` is None.
        With other calls live, each step is followed by a pause (``PREFILL_SHARE``)."""
        if self._persona is None:
            return
        self._since_prefill += 1
        share: float | None = None  # asked once, and only when a step runs
        while self._prefilling():
            if (deadline is not None and self._since_prefill < PREFILL_EVERY_TICKS
                    and time.monotonic() + self._prefill_est_s + SLACK_MARGIN_S > deadline):
                return
            if share is None:
                share = PREFILL_SHARE if self._others_live() else 1.0
            t0 = time.monotonic()
            with self._tick_lock, self._torch_context():
                self._prefill_step()
            self._since_prefill = 0
            if deadline is None:
                return
            if share < 1.0:
                pause = (time.monotonic() - t0) * (1.0 / share - 1.0)
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    def _start_run(self, slot: Slot, run: PromptRun) -> None:
        i = slot.index
        self._batch.cover(i + 1)  # the row must be addressable (ADR 0135)
        mask = torch.zeros(self._batch.width, dtype=torch.bool, device=self.device)
        mask[i] = True
        self.lm_gen.reset_streaming(mask)
        self._steer.reset(mask)
        if self.sampler is not None and slot.sampling is not None:
            self.sampler.set_row(i, slot.sampling)
        run.started = True
        state = self.prompt_cache.get(run.key)
        if state is not None:
            restore_prompt(self._prompt_layout, state, i)
            run.cached = True
            self._finish_run(slot, run)
            return
        assert self._persona is not None  # a run exists only on a PersonaPlex engine
        voice = self._persona.voices.get(run.key.voice)
        tokens = ([] if run.key.text is None or self.models.tokenizer is None
                  else list(self.models.tokenizer.encode(run.key.text)))
        run.steps = prompt_steps(voice, tokens, initial_audio=int(self.models.lm.card))

    def _finish_run(self, slot: Slot, run: PromptRun) -> None:
        if not run.cached:
            self.prompt_cache.put(run.key, snapshot_prompt(self._prompt_layout, slot.index,
                                                           len(run.steps)))
            self.prompt_cache.record_prefill(len(run.steps), run.lm_seconds)
        slot.prompted = True
        run.ready_at = time.monotonic()
        with self._lock:
            run.done.set()
            waiters, run.waiters = run.waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut)
        slot.log.info("persona ready", voice=run.key.voice, cached=run.cached,
                      steps=len(run.steps), lm_s=round(run.lm_seconds, 4),
                      wait_s=round(run.ready_at - run.opened_at, 4))

    def _start_prompts(self) -> None:
        """Start the prompts of calls just admitted (tick lock held, before a live tick):
        a cached one is restored now, so its call joins this very tick."""
        if self._persona is None:
            return
        for s in self._prefilling():
            run = s.prompt_run
            if run is not None and not run.started:
                self._start_run(s, run)

    def _prefill_step(self) -> None:
        """One LM step for every prefilling row (tick lock held)."""
        rows: list[tuple[Slot, PromptRun]] = []
        for s in self._prefilling():
            run = s.prompt_run
            assert run is not None
            if not run.started:
                self._start_run(s, run)
            if not run.done.is_set():
                rows.append((s, run))
        if not rows:
            return
        t0 = time.perf_counter()
        self._batch.cover(max(s.index for s, _ in rows) + 1)
        n = self._batch.width  # the rows stepped now (ADR 0135)
        dev = self.device
        exec_l = [False] * n
        plans: list[StepPlan | None] = [None] * n
        codes = torch.zeros(n, 8, 1, dtype=torch.long)
        emb_rows: list[tuple[int, int, Any]] = []
        for s, run in rows:
            step = run.steps[run.pos]
            i = s.index
            exec_l[i] = True
            plans[i] = StepPlan(step.text, step.audio)
            codes[i, :, 0] = torch.tensor(step.user)
            if step.embedding is not None:
                assert self._persona is not None
                voice = self._persona.voices.get(run.key.voice)
                emb_rows.append((i, step.embedding, voice.embeddings))
        exec_mask = torch.tensor(exec_l, dtype=torch.bool, device=dev)
        for i, k, table in emb_rows:
            self._emb_buf[i, 0].copy_(table[k].to(self._emb_buf.dtype))
            self._emb_mask[i] = True
        self.lm_gen.set_exec_mask(exec_mask)
        self._steer.begin(exec_mask, plans)
        try:
            self._lm_step(codes.to(dev), exec_mask)
        finally:
            self._emb_mask.zero_()
        dt = time.perf_counter() - t0
        est = self._prefill_est_s
        self._prefill_est_s = dt if est == 0 else 0.8 * est + 0.2 * dt
        for s, run in rows:
            run.pos += 1
            run.lm_seconds += dt
            if run.pos == len(run.steps):
                self._finish_run(s, run)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
