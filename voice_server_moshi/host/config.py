"""The reference host's config, voice-server style: a dict, a JSON file or a TOML file.

::

    adapter = "moshi"            # a registered adapter
    mode = "full-duplex"         # a registered mode

    [audio]                      # the call's format (optional)
    encoding = "mulaw"           # pcm16 | mulaw | alaw
    sample_rate = 8000
    frame_ms = 20

    [moshi]                      # the adapter's section, named after it
    url = "ws://127.0.0.1:8998/api/chat"

    [full-duplex]                # the mode's section, named after it
    max_backchannel_ms = 800

Sections are validated by the registry (every problem reported at once); unknown top-level
keys are an error, so a misspelt section is not silently ignored.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SettingsError
from ..formats import AudioFormat


@dataclass(frozen=True, slots=True)
class HostConfig:
    adapter: str = "moshi"
    mode: str = "full-duplex"
    audio: AudioFormat = field(default_factory=lambda: AudioFormat("mulaw", 8000, 20))
    adapter_settings: Mapping[str, Any] = field(default_factory=dict)
    mode_settings: Mapping[str, Any] = field(default_factory=dict)

    def with_sections(
        self, adapter: Mapping[str, Any] | None = None, mode: Mapping[str, Any] | None = None
    ) -> HostConfig:
        """A copy with keys merged into the adapter and mode sections."""
        return HostConfig(
            self.adapter, self.mode, self.audio,
            {**self.adapter_settings, **(adapter or {})},
            {**self.mode_settings, **(mode or {})},
        )


def load_config(source: Mapping[str, Any] | str | Path | None = None) -> HostConfig:
    """Parse a config mapping, or a ``.json`` / ``.toml`` file; None gives the defaults."""
    if source is None:
        return HostConfig()
    raw = _read_file(Path(source)) if isinstance(source, str | Path) else dict(source)
    problems: list[str] = []
    adapter = raw.pop("adapter", "moshi")
    mode = raw.pop("mode", "full-duplex")
    for key, value in (("adapter", adapter), ("mode", mode)):
        if not isinstance(value, str) or not value:
            problems.append(f"{key}: expected a name such as 'moshi', got {value!r}")
    sections: dict[str, Mapping[str, Any]] = {}
    for name in ("audio", str(adapter), str(mode)):
        value = raw.pop(name, {})
        if not isinstance(value, Mapping):
            problems.append(f"[{name}]: expected a table of settings, got {type(value).__name__}")
            value = {}
        sections[name] = value
    problems += [
        f"unknown key {k!r}; expected adapter, mode, audio, [{adapter}], [{mode}]"
        for k in sorted(raw)
    ]
    audio = AudioFormat("mulaw", 8000, 20)
    if not problems and sections["audio"]:
        a = dict(sections["audio"])
        try:
            audio = AudioFormat(
                a.pop("encoding", "mulaw"), int(a.pop("sample_rate", 8000)),
                int(a.pop("frame_ms", 20)),
            )
        except (ValueError, TypeError) as exc:
            problems.append(f"[audio]: {exc}")
        problems += [f"[audio]: unknown key {k!r}" for k in sorted(a)]
    if problems:
        raise SettingsError("host config", problems)
    return HostConfig(str(adapter), str(mode), audio, sections[str(adapter)], sections[str(mode)])


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError("host config", [f"cannot read {path}: {exc.strerror}"]) from exc
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict):
                raise SettingsError("host config", [f"{path}: top level must be an object"])
            return data
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError("host config", [f"{path}: {exc}"]) from exc
    raise SettingsError("host config", [f"{path}: expected a .toml or .json file"])
