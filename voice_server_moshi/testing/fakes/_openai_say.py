"""The fake OpenAI Realtime's answer to ``response.create`` (steering, ADR 0070)."""

from __future__ import annotations

from typing import Any

#: What the adapter's say requests end their instructions with (vendors/openai_say.py).
_MARK = "nothing else: "


def say_request(req: dict[str, Any], default_ms: int
                ) -> tuple[int, str | None, dict[str, Any] | None]:
    """(reply ms, reply text or None for the default, metadata to echo) for a request.

    An idealised model: instructions that ask for an exact line get exactly that line, at
    about 150 words a minute; the response's ``metadata`` is echoed as the service does."""
    instr = str(req.get("instructions") or "")
    text = instr.split(_MARK, 1)[1] if _MARK in instr else None
    ms = max(default_ms, 400 * len(text.split())) if text else default_ms
    meta = req.get("metadata")
    return ms, text, meta if isinstance(meta, dict) else None
