"""The engine's LMGen hooks for steering (ADR 0070): apply each step's plans in place.

``on_text_hook`` gets the sampled text tokens ``[B]`` before the depth transformer uses
them; ``on_audio_hook`` gets the agent's audio codes ``[B, dep_q]`` before they enter the
context. Rows without a plan keep their sampled tokens bit for bit; nothing is built or
copied to the device on steps where no row steers (beyond keeping each row's last text
token, which a starting request needs).
"""

from __future__ import annotations

import torch

from .steering import CHOOSE, SteeringSpec, StepPlan


class SteeringHooks:
    """The engine's ``on_text_hook`` / ``on_audio_hook``: apply this step's plans in place."""

    #: Per-row state (:mod:`.row_state`).
    ROW_TENSORS = ("last_text",)

    def __init__(self, batch: int, spec: SteeringSpec, device: torch.device) -> None:
        self.spec = spec
        self.batch = batch
        self.device = device
        self.last_text = torch.full((batch,), spec.pad, dtype=torch.long, device=device)
        self._exec: torch.Tensor | None = None
        self._text: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._audio: tuple[torch.Tensor, torch.Tensor] | None = None
        self._choose = False

    def begin(self, exec_mask: torch.Tensor, plans: list[StepPlan | None]) -> None:
        """Set this step's forcing (``plans[i]`` for row i; None rows are untouched)."""
        self._exec = exec_mask
        self._text = self._audio = None
        self._choose = False
        if not any(p is not None for p in plans):
            return
        s, b = self.spec, self.batch
        tv, tm, cm = [0] * b, [False] * b, [False] * b
        av = [[0] * s.dep_q for _ in range(b)]
        am = [[False] * s.dep_q for _ in range(b)]
        any_text = any_audio = False
        for i, p in enumerate(plans):
            if p is None:
                continue
            if p.text == CHOOSE:
                cm[i] = any_text = self._choose = True
            elif p.text is not None:
                tv[i], tm[i], any_text = p.text, True, True
            if p.audio is not None:
                for k, c in enumerate(p.audio):
                    if c is not None:
                        av[i][k], am[i][k], any_audio = c, True, True
        dev = self.device
        if any_text:
            self._text = (torch.tensor(tv, dtype=torch.long, device=dev),
                          torch.tensor(tm, dtype=torch.bool, device=dev),
                          torch.tensor(cm, dtype=torch.bool, device=dev))
        if any_audio:
            self._audio = (torch.tensor(av, dtype=torch.long, device=dev),
                           torch.tensor(am, dtype=torch.bool, device=dev))

    def reset(self, rows: torch.Tensor) -> None:
        """Rows where a call joins start from silence (PAD)."""
        self.last_text.masked_fill_(rows.to(self.device), self.spec.pad)

    def on_text(self, text_token: torch.Tensor) -> None:
        if self._text is not None:
            vals, force, choose = self._text
            s = self.spec
            pad = torch.full_like(text_token, s.pad)
            chosen = torch.where(text_token != s.pad, torch.full_like(text_token, s.epad), pad)
            new = torch.where(force, vals, torch.where(choose, chosen, text_token))
            text_token.copy_(new)
        if self._exec is not None:
            self.last_text.copy_(torch.where(self._exec, text_token, self.last_text))

    def on_audio(self, audio_tokens: torch.Tensor) -> None:
        if self._audio is not None:
            vals, mask = self._audio
            audio_tokens.copy_(torch.where(mask, vals, audio_tokens))

    def actual_text(self) -> list[int] | None:
        """Every row's text token of the step just run, when some row let the model choose
        (a device read); None otherwise."""
        if not self._choose:
            return None
        out: list[int] = self.last_text.tolist()
        return out

    def prev_text(self, row: int) -> int:
        return int(self.last_text[row].item())
