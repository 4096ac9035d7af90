"""``--help`` for every command: plain-text descriptions and every option's default shown.

Command modules write their docstrings in reStructuredText (for the API docs);
:func:`plain` strips the markup for the terminal, and :class:`HelpFormatter` appends
``(default: X)`` to an option's help unless the help already says its default.
"""

from __future__ import annotations

import argparse
import copy
import re
from typing import Any

__all__ = ["HelpFormatter", "command_parser", "plain"]

_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)(?:\s*<[^>]*>)?`")  # :mod:`x`, :class:`~a.B`
_LITERAL = re.compile(r"``([^`]*)``")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_")


def plain(text: str | None) -> str:
    """reStructuredText roles, literals and links as plain text."""
    if not text:
        return ""

    def role(m: re.Match[str]) -> str:
        target = m.group(2).strip()
        return target.rsplit(".", 1)[-1] if m.group(1) else target  # ~ shows the last part

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    return text.replace("::\n", ":\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's paragraphs; shows every option's default."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and action.nargs != 0:
            # argparse prints nothing for an option without help: still show the default.
            action = copy.copy(action)
            action.help = "(default: none)" if action.default is None else "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default is argparse.SUPPRESS
            or not action.option_strings
            or isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
            or action.nargs == 0
        ):
            return text
        shown = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def command_parser(prog: str, description: str | None = None, **kwargs: Any) -> (
    argparse.ArgumentParser
):
    """An ArgumentParser with :func:`plain` description and :class:`HelpFormatter`."""
    return argparse.ArgumentParser(
        prog=prog, description=plain(description), formatter_class=HelpFormatter, **kwargs
    )
