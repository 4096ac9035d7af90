"""Settings of the ``full-duplex:`` config section (the full-duplex orchestration mode).

Defaults are measured, not guessed: see docs/adr/0041 (backchannel vs barge-in) and
docs/adr/0042 (playout buffer) for the commands that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BargeInPolicy = Literal["none", "duck", "flush"]


@dataclass(frozen=True, slots=True)
class FullDuplexSettings:
    """Every key of the mode's config section, with its default."""

    playout_prebuffer_ms: int = field(
        default=40,
        metadata={"min": 0, "max": 1000, "help": "how long agent audio arriving in an empty "
                  "buffer is held before playout starts (call start, after an underrun): "
                  "absorbs the jitter of Moshi's 80 ms bursts; measured in ADR 0042"},
    )
    playout_max_ms: int = field(
        default=400,
        metadata={"min": 20, "max": 5000, "help": "playout buffer bound; older agent audio "
                  "is dropped beyond it so latency cannot grow without limit"},
    )
    caller_queue_max_ms: int = field(
        default=200,
        metadata={"min": 20, "max": 2000, "help": "the caller jitter buffer's bound: caller "
                  "media waiting beyond this is dropped, oldest first, so latency stays "
                  "bounded whatever the line does (ADR 0140)"},
    )
    jitter_min_ms: int = field(
        default=0,
        metadata={"min": 0, "max": 1000, "help": "the caller jitter buffer's least depth: it "
                  "grows by itself when media comes late and shrinks in quiet frames down to "
                  "the jitter seen in the last 3 s, never below this (ADR 0140)"},
    )
    backchannel_detection: bool = field(
        default=True,
        metadata={"help": "classify caller speech during agent speech as backchannel or "
                  "barge-in; false makes every caller utterance a user turn"},
    )
    max_backchannel_ms: int = field(
        default=800,
        metadata={"min": 100, "max": 5000, "help": "caller speech during agent speech that "
                  "ends sooner than this is a backchannel ('uh-huh', 'yeah', 'right')"},
    )
    min_overlap_ms: int = field(
        default=200,
        metadata={"min": 0, "max": 2000, "help": "caller speech overlaps agent speech only if "
                  "the agent is heard again at least this long after the caller's onset; "
                  "otherwise the agent had finished and the caller took the turn"},
    )
    loud_barge_in_db: float | None = field(
        default=None,
        metadata={"min": 0.0, "max": 60.0, "help": "energy ratio: caller speech this many dB "
                  "louder than the agent's is a barge-in after min_overlap_ms without waiting "
                  "for max_backchannel_ms; null disables the rule"},
    )
    vad_hangover_ms: int = field(
        default=300,
        metadata={"min": 0, "max": 3000, "help": "the adapter's caller-VAD hangover (moshi: "
                  "vad_hangover_ms): how long after speech stops speech-ended can arrive"},
    )
    agent_threshold_db: float = field(
        default=12.0,
        metadata={"min": 1.0, "max": 60.0, "help": "agent speech: frame level this far over "
                  "the agent track's adaptive noise floor"},
    )
    agent_min_level_dbfs: float = field(
        default=-55.0,
        metadata={"min": -120.0, "max": 0.0, "help": "agent frames quieter than this are "
                  "silence whatever the floor"},
    )
    agent_hangover_ms: int = field(
        default=400,
        metadata={"min": 0, "max": 5000, "help": "agent quiet this long ends the agent turn "
                  "while Moshi's text still flows"},
    )
    agent_hangover_no_text_ms: int = field(
        default=200,
        metadata={"min": 0, "max": 5000, "help": "shorter hangover once Moshi's text stopped "
                  "(padding tokens mean silence)"},
    )
    agent_text_silence_ms: int = field(
        default=240,
        metadata={"min": 0, "max": 5000, "help": "no agent text for this long counts as "
                  "evidence of silence"},
    )
    agent_min_speech_ms: int = field(
        default=60,
        metadata={"min": 0, "max": 2000, "help": "agent speech shorter than this does not "
                  "start an agent turn (clicks, breaths)"},
    )
    barge_in_policy: BargeInPolicy = field(
        default="none",
        metadata={"help": "what the mode does to playout on a barge-in: none (Moshi yields "
                  "by itself), duck (attenuate by duck_db until the caller's turn ends), "
                  "flush (drop buffered agent audio)"},
    )
    duck_db: float = field(
        default=12.0, metadata={"min": 0.0, "max": 60.0, "help": "attenuation of 'duck'"},
    )

    def __post_init__(self) -> None:
        if self.jitter_min_ms > self.caller_queue_max_ms:
            raise ValueError(
                f"jitter_min_ms ({self.jitter_min_ms}) must not exceed caller_queue_max_ms "
                f"({self.caller_queue_max_ms})"
            )
        if self.playout_prebuffer_ms >= self.playout_max_ms:
            raise ValueError(
                f"playout_prebuffer_ms ({self.playout_prebuffer_ms}) must be below "
                f"playout_max_ms ({self.playout_max_ms})"
            )
        if self.min_overlap_ms >= self.max_backchannel_ms:
            raise ValueError(
                f"min_overlap_ms ({self.min_overlap_ms}) must be below max_backchannel_ms "
                f"({self.max_backchannel_ms})"
            )
