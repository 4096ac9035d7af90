"""A worked example: a tool call answered through a steerable Moshi agent (ADR 0070).

Moshi has no prompt and no tools; the host keeps both. Its LLM reads the caller's (and the
agent's) transcript, decides to call a tool, and has the agent say what the tool found
through the full-duplex mode's ``create_response(text=...)``: Moshi speaks the words in its
own voice, and its context holds them, so it can go on from there.

Here :class:`OrderStatusAgent` stands in for the host's LLM: when a caller turn ends it
"decides" to look up an order (the order number is taken from the caller's words when they
hold one, else a default), calls :func:`lookup_order` (standing in for the host's tool)
and has the agent say the answer. A real host would put its LLM call where
:meth:`OrderStatusAgent.decide` is, off the event loop. Use it with
:meth:`~.reference.ReferenceHost.run_call`'s ``on_caller_turn_end``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .._log import get_logger

log = get_logger(__name__)

#: The tool's "database".
ORDERS: dict[str, tuple[str, str]] = {
    "4217": ("shipped", "Tuesday"),
    "5830": ("is being packed", "today"),
}


def lookup_order(order_id: str) -> dict[str, str]:
    """The host-side tool: an order's status."""
    status, when = ORDERS.get(order_id, ("was not found", ""))
    return {"order_id": order_id, "status": status, "when": when}


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, str]
    result: dict[str, str]
    said: str


@dataclass
class OrderStatusAgent:
    """Stands in for the host's LLM with one tool. Call it as the turn hook."""

    default_order: str = "4217"
    #: Answer only the first N caller turns (a real LLM decides each time).
    max_calls: int = 1
    calls: list[ToolCall] = field(default_factory=list)

    def decide(self, caller_words: list[str]) -> dict[str, str] | None:
        """The 'LLM': which tool call to make now, if any."""
        if len(self.calls) >= self.max_calls:
            return None
        digits = re.findall(r"\d{4}", " ".join(caller_words))
        return {"order_id": digits[-1] if digits else self.default_order}

    def answer(self, caller_words: list[str]) -> str | None:
        """Decide, call the tool, and return what the agent should say (None: nothing)."""
        args = self.decide(caller_words)
        if args is None:
            return None
        result = lookup_order(**args)
        when = f" on {result['when']}" if result["when"] and result["status"] == "shipped" \
            else ""
        text = f"I looked up order {result['order_id']}: it {result['status']}{when}."
        self.calls.append(ToolCall("lookup_order", args, result, text))
        log.info("tool_call", tool="lookup_order", arguments=args, said=text)
        return text

    def __call__(self, mode: Any, caller_words: list[str]) -> None:
        text = self.answer(caller_words)
        if text is not None:
            mode.create_response(text=text)
