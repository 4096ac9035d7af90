"""Speech clips of the synthetic corpus: their texts, and synthesis with espeak-ng and sox.

Each clip is made once (espeak-ng at 22.05 kHz, then sox: telephone band 300-3400 Hz,
leading and trailing silence trimmed, normalised, 8 kHz µ-law WAV). The committed clips in
``voice_server_moshi/data/corpus/clips`` are what tests and CI use, so neither tool is needed
there; :mod:`.assemble` builds calls from them with numpy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

ClipKind = Literal["utterance", "backchannel", "barge-in", "agent", "babble"]
INSTALL_HINT = "install them with: apt-get install espeak-ng sox (Debian/Ubuntu), " \
    "brew install espeak-ng sox (macOS)"

CALLER_VOICE = "en-us+f3"
AGENT_VOICE = "en+m3"


@dataclass(frozen=True, slots=True)
class ClipSpec:
    name: str
    kind: ClipKind
    text: str
    voice: str
    speed_wpm: int = 165
    gain_db: float = -3.0


CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("u1", "utterance", "Hi, I'm calling about my internet bill.", CALLER_VOICE),
    ClipSpec("u2", "utterance", "Yes, the account is under my name.", CALLER_VOICE),
    ClipSpec("u3", "utterance", "It was charged twice this month.", CALLER_VOICE),
    ClipSpec("u4", "utterance", "Can you check that for me, please?", CALLER_VOICE),
    ClipSpec("u5", "utterance", "Okay, thank you very much.", CALLER_VOICE),
    ClipSpec("b1", "backchannel", "uh-huh", CALLER_VOICE, 170, -6.0),
    ClipSpec("b2", "backchannel", "yeah", CALLER_VOICE, 170, -6.0),
    ClipSpec("b3", "backchannel", "right", CALLER_VOICE, 170, -6.0),
    ClipSpec("b4", "backchannel", "okay", CALLER_VOICE, 170, -6.0),
    ClipSpec("b5", "backchannel", "mm-hmm", CALLER_VOICE, 170, -6.0),
    ClipSpec("b6", "backchannel", "sure", CALLER_VOICE, 170, -6.0),
    ClipSpec("i1", "barge-in", "Wait, sorry, that is not what I asked.", CALLER_VOICE, 175),
    ClipSpec("i2", "barge-in", "Hold on, can you repeat the amount?", CALLER_VOICE, 175),
    ClipSpec("i3", "barge-in", "No, no, stop, I already did that.", CALLER_VOICE, 175),
    ClipSpec("a1", "agent", "Thanks for calling. Let me pull up your account and look "
             "at the recent charges.", AGENT_VOICE, 170),
    ClipSpec("a2", "agent", "I can see two payments this month, both for the same "
             "amount, on the third and on the fifth.", AGENT_VOICE, 170),
    ClipSpec("a3", "agent", "I have opened a refund request, and the money should be back "
             "within five business days.", AGENT_VOICE, 170),
)


class ToolMissingError(RuntimeError):
    """espeak-ng or sox is not installed."""


def check_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise ToolMissingError(
            f"the corpus generator needs {' and '.join(missing)}, not found on PATH; "
            f"{INSTALL_HINT}"
        )


def synthesize(spec: ClipSpec, out: Path) -> None:
    """espeak-ng -> sox (band-limit, trim, normalise) -> 8 kHz µ-law WAV at ``out``."""
    check_tools()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        subprocess.run(
            ["espeak-ng", "-v", spec.voice, "-s", str(spec.speed_wpm), "-w", str(raw), spec.text],
            check=True, capture_output=True,
        )
        subprocess.run(
            ["sox", "-D", str(raw), "-r", "8000", "-c", "1", "-e", "mu-law", "-b", "8", str(out),
             "sinc", "300-3400",
             # Trim silence at both ends so the labels' onsets are the speech's onsets.
             "silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%",
             "reverse", "norm", str(spec.gain_db)],
            check=True, capture_output=True,
        )


def synthesize_all(clip_dir: Path) -> list[Path]:
    """Make every clip of :data:`CLIPS` under ``clip_dir`` plus ``clips.json``."""
    check_tools()
    clip_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in CLIPS:
        path = clip_dir / f"{spec.name}.wav"
        synthesize(spec, path)
        paths.append(path)
    (clip_dir / "clips.json").write_text(
        json.dumps([asdict(s) for s in CLIPS], indent=1) + "\n", encoding="utf-8"
    )
    return paths


@dataclass(frozen=True, slots=True)
class Clip:
    spec: ClipSpec
    pcm: npt.NDArray[np.float32]  # 8 kHz, [-1, 1]

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.pcm) / 8000


def load_clips(clip_dir: Path) -> dict[str, Clip]:
    """The clips of ``clip_dir`` (written by :func:`synthesize_all`), by name."""
    specs = {s.name: s for s in CLIPS}
    meta_path = clip_dir / "clips.json"
    if meta_path.exists():
        specs = {d["name"]: ClipSpec(**d) for d in json.loads(meta_path.read_text("utf-8"))}
    out = {}
    for name, spec in specs.items():
        path = clip_dir / f"{name}.wav"
        if not path.exists():
            raise FileNotFoundError(f"corpus clip {path} is missing; regenerate with "
                                    "'voice-server-moshi make-corpus DIR'")
        out[name] = Clip(spec, load_clip_wav(path))
    return out


def load_clip_wav(path: Path) -> npt.NDArray[np.float32]:
    from ..audio.wavio import read_wav

    audio = read_wav(path)
    if audio.sample_rate != 8000:
        raise ValueError(f"{path}: corpus clips are 8000 Hz, got {audio.sample_rate}")
    return audio.mono()
