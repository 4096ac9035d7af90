"""The ``0x04`` metadata a call gets: Kyutai's Rust-backend schema first, ours beside it.

Kyutai's web client validates the metadata JSON against the Rust backend's ``MetaData``
(``rust/moshi-backend/src/stream_both.rs``; the client's zod schema in
``client/src/pages/Conversation/hooks/useServerInfo.ts``) and shows it in its server panel;
anything that fails the schema is dropped. So every field of that schema is sent, with the
call's real values, and this server's own fields are extra keys (zod objects ignore unknown
keys by default).
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
import sysconfig
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from ..engine.call_sampling import CallSampling

__all__ = ["BUILD_INFO_FIELDS", "RUST_METADATA_FIELDS", "build_info", "call_metadata"]

#: The Rust backend's ``MetaData`` fields, in its order (``mimi_model_file`` is in the Rust
#: struct but not in the client's schema; it is sent too).
RUST_METADATA_FIELDS: tuple[str, ...] = (
    "text_temperature", "text_topk", "audio_temperature", "audio_topk", "pad_mult",
    "repetition_penalty_context", "repetition_penalty", "lm_model_file", "mimi_model_file",
    "build_info", "instance_name",
)
#: ``BuildInfo`` (``rust/moshi-backend/src/utils.rs``): all strings.
BUILD_INFO_FIELDS: tuple[str, ...] = (
    "build_timestamp", "build_date", "git_branch", "git_timestamp", "git_date", "git_hash",
    "git_describe", "rustc_host_triple", "rustc_version", "cargo_target_triple",
)


def _git(cwd: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=2, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


@functools.cache
def build_info() -> dict[str, str]:
    """This package's build, in the Rust ``BuildInfo`` shape (computed once per process).

    Truthful values only: the install time of this distribution, the git commit when it runs
    from a checkout ("unknown" otherwise), and for the Rust-only fields the Python that
    runs the server, labelled as such.
    """
    try:
        dist = importlib_metadata.distribution("voice-server-moshi")
        version = dist.version
        # The dist-info's METADATA is written at build/install time: our build stamp.
        stamp_path = next((Path(str(dist.locate_file(f))) for f in dist.files or ()
                           if f.name == "METADATA"), None)
    except importlib_metadata.PackageNotFoundError:
        version, stamp_path = "unknown", None
    built = datetime.fromtimestamp(stamp_path.stat().st_mtime, UTC) if (
        stamp_path is not None and stamp_path.exists()) else None
    src = Path(__file__).resolve().parent
    git_hash = _git(src, "rev-parse", "HEAD") or "unknown"
    git_ts = _git(src, "log", "-1", "--format=%cI") if git_hash != "unknown" else ""
    triple = str(sysconfig.get_config_var("MULTIARCH") or platform.machine() or "unknown")
    py = f"{platform.python_implementation()} {platform.python_version()}"
    return {
        "build_timestamp": built.isoformat() if built else "unknown",
        "build_date": built.date().isoformat() if built else "unknown",
        "git_branch": _git(src, "rev-parse", "--abbrev-ref", "HEAD") or "unknown",
        "git_timestamp": git_ts or "unknown",
        "git_date": git_ts[:10] if git_ts else "unknown",
        "git_hash": git_hash,
        "git_describe": f"voice-server-moshi {version}",
        "rustc_host_triple": triple,
        "rustc_version": f"n/a (Python server: {py})",
        "cargo_target_triple": f"n/a (Python server on {sys.platform})",
    }


def call_metadata(sampling: CallSampling, *, lm_model_file: str, mimi_model_file: str,
                  instance_name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata JSON for one call: its applied sampling, the model, this build."""
    md: dict[str, Any] = {
        "text_temperature": float(sampling.text_temperature),
        "text_topk": int(sampling.text_topk),
        "audio_temperature": float(sampling.audio_temperature),
        "audio_topk": int(sampling.audio_topk),
        "pad_mult": float(sampling.pad_mult),
        "repetition_penalty_context": int(sampling.repetition_penalty_context),
        "repetition_penalty": float(sampling.repetition_penalty),
        "lm_model_file": lm_model_file,
        "mimi_model_file": mimi_model_file,
        "build_info": dict(build_info()),
        "instance_name": instance_name,
        # Ours: the seeds this call runs with (replay a call by sending them back).
        "text_seed": sampling.text_seed,
        "audio_seed": sampling.audio_seed,
        "server": "voice-server-moshi",
    }
    if extra:
        for key, value in extra.items():
            md.setdefault(key, value)  # never let an extra shadow a schema field
    return md
