"""The prompt phases of a PersonaPlex call as steps of the engine's ``LMGen`` (ADR 0130).

NVIDIA's ``LMGen.step_system_prompts`` feeds, frame by frame: the voice prompt (agent stream:
the voice's codes; text: PAD; user stream: a 440 Hz sine's codes), 0.5 s of silence (agent:
silence codes), one frame per persona token (text: the token), 0.5 s of silence again. Its
``LMGen`` keeps a cache of *columns*: column ``c`` holds the text and the first codebook of
frame ``c`` and the delayed codebooks (1..7) of frame ``c - 1``, and the model reads column
``c`` to predict column ``c + 1``. Kyutai's ``LMGen`` (the engine's) holds the same columns,
but writes what the depth transformer produced at step ``n`` into column ``n + 1``, and the
user codes given at step ``n`` into column ``n`` (codebook 0) and ``n + 1`` (1..7). So step
``n`` of a prompt gives the user codes ``[C[n].u0, C[n+1].u1..7]`` and forces text and agent
codes to ``C[n+1]``'s; the model then reads exactly the columns NVIDIA's reads, in the same
order (checked against their code: tests/fixtures/personaplex).

A voice from a ``.pt`` file carries the *embeddings* NVIDIA's code fed for its first
``Fv - 1`` columns (replayed instead of tokens) and its cache after the voice (the tokens of
the last voice column and the delayed codebooks after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: NVIDIA's constants (their lm.py): real Mimi's codes of 80 ms of silence and of a 440 Hz
#: sine, the agent and user streams' content during the prompt phases.
SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
#: NVIDIA's ``audio_silence_frame_cnt = int(0.5 * frame_rate)``: 6 frames at 12.5 Hz.
SILENCE_FRAMES = 6
#: NVIDIA's ``zero_text_code``: the text stream's PAD during the prompt phases.
TEXT_PAD = 3
#: The codebooks per stream, and the column layout: text, 8 agent, 8 user.
STREAM_CODEBOOKS = 8
COLUMN = 1 + 2 * STREAM_CODEBOOKS

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class VoicePrompt:
    """A voice prompt: ``codes`` ``[Fv, 8]`` (audio voices: the voice's Mimi codes), or
    ``embeddings`` ``[Fv - 1, dim]`` with ``tail`` ``[2, 17]`` (``.pt`` voices: NVIDIA's
    saved input embeddings, and the cache columns ``Fv - 1`` and ``Fv`` after the voice)."""

    name: str
    codes: Ints | None = None
    embeddings: Any = None  # torch.Tensor [Fv - 1, dim]
    tail: Ints | None = None

    @property
    def frames(self) -> int:
        if self.codes is not None:
            return int(self.codes.shape[0])
        assert self.embeddings is not None
        return int(self.embeddings.shape[0]) + 1

    @property
    def nbytes(self) -> int:
        n = 0 if self.codes is None else self.codes.nbytes
        if self.embeddings is not None:
            n += int(self.embeddings.numel() * self.embeddings.element_size())
        return n


@dataclass(frozen=True, slots=True)
class PromptStep:
    """One LM step of a prompt for one row: the user codes to give, the text and agent codes
    to force (None: sampled), and which saved embedding to feed instead of the column's
    tokens (None: the tokens)."""

    user: tuple[int, ...]
    text: int | None
    audio: tuple[int | None, ...]
    embedding: int | None = None


def frame_streams(voice_codes: Ints | None, voice_frames: int, text_tokens: Sequence[int]
                  ) -> tuple[Ints, Ints, Ints]:
    """NVIDIA's per-frame streams ``(text [F], agent [F, 8], user [F, 8])`` of the prompt
    phases: voice, silence, persona tokens, silence. Voice frames without codes (a ``.pt``
    voice) hold -1."""
    n = voice_frames + 2 * SILENCE_FRAMES + len(text_tokens)
    text = np.full(n, TEXT_PAD, dtype=np.int64)
    agent = np.tile(np.asarray(SILENCE_TOKENS, dtype=np.int64), (n, 1))
    user = np.tile(np.asarray(SINE_TOKENS, dtype=np.int64), (n, 1))
    agent[:voice_frames] = -1 if voice_codes is None else voice_codes
    start = voice_frames + SILENCE_FRAMES
    text[start:start + len(text_tokens)] = np.asarray(text_tokens, dtype=np.int64)
    return text, agent, user


def columns(text: Ints, agent: Ints, user: Ints) -> Ints:
    """Columns ``[F + 1, 17]`` (NVIDIA's cache layout, before the initial-token overrides
    both LMGens apply to columns 0 and 1). Column F is the tail: its text and first
    codebooks are not the prompt's (-1), its delayed codebooks are the last frame's."""
    f = len(text)
    cols = np.full((f + 1, COLUMN), -1, dtype=np.int64)
    cols[:f, 0] = text
    cols[:f, 1] = agent[:, 0]
    cols[:f, 1 + STREAM_CODEBOOKS] = user[:, 0]
    cols[1:, 2:1 + STREAM_CODEBOOKS] = agent[:, 1:]
    cols[1:, 2 + STREAM_CODEBOOKS:] = user[:, 1:]
    return cols


def prompt_columns(voice: VoicePrompt, text_tokens: Sequence[int]) -> Ints:
    """The columns of a whole prompt; a ``.pt`` voice's embedded columns hold -1 and its
    last column and tail come from its saved cache."""
    fv = voice.frames
    t, a, u = frame_streams(voice.codes, fv, text_tokens)
    cols = columns(t, a, u)
    if voice.tail is not None:
        cols[fv - 1] = voice.tail[0]
        cols[fv, 2:1 + STREAM_CODEBOOKS] = voice.tail[1, 2:1 + STREAM_CODEBOOKS]
        cols[fv, 2 + STREAM_CODEBOOKS:] = voice.tail[1, 2 + STREAM_CODEBOOKS:]
    return cols


def prompt_steps(voice: VoicePrompt, text_tokens: Sequence[int], *, initial_audio: int,
                 ) -> list[PromptStep]:
    """The engine steps of a prompt (one per frame, F in all); after the last, the row's
    next step is the call's first. ``initial_audio`` (the LM's ``card``) fills the columns
    a ``.pt`` voice replaces by embeddings, as NVIDIA's replay does."""
    cols = prompt_columns(voice, text_tokens)
    embedded = voice.frames - 1 if voice.embeddings is not None else 0
    filler = np.where(cols < 0, initial_audio, cols)
    filler[:embedded, 0] = np.where(cols[:embedded, 0] < 0, TEXT_PAD, cols[:embedded, 0])
    steps: list[PromptStep] = []
    last = len(cols) - 2
    for n in range(last + 1):
        cur, nxt = filler[n], filler[n + 1]
        user = (int(cur[1 + STREAM_CODEBOOKS]), *(int(x) for x in nxt[2 + STREAM_CODEBOOKS:]))
        if n == last:  # the tail: text and first agent codebook are the model's own
            steps.append(PromptStep(user, None, (None, *(int(x) for x in nxt[2:9])), None))
            continue
        steps.append(PromptStep(user, int(nxt[0]), tuple(int(x) for x in nxt[1:9]),
                                n if n < embedded else None))
    return steps
