"""What a newcomer types first: --version, and --help of every command, readable."""

from __future__ import annotations

import argparse
import re

import pytest

from voice_server_moshi import __version__, cli
from voice_server_moshi._cli_help import HelpFormatter, plain

_RST = re.compile(r"``|:(mod|class|func|meth|attr):`")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"voice-server-moshi {__version__}"


def test_plugins_help_is_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["plugins", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: voice-server-moshi plugins") and "--verbose" in out
    assert "{" not in out  # no JSON instead of help


@pytest.mark.parametrize("argv", [
    *([name] for name in cli.COMMANDS if name != "make-dev-checkpoint"),
    *(["bench", name] for name in cli.BENCHES),
])
def test_every_help_is_plain_text_with_defaults(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:"), out[:200]
    assert not _RST.search(out), out
    # Every option that takes a value says its default (argparse wraps lines: join them).
    options = re.split(r"\n  (?=-)", out.split("options:", 1)[1])
    for opt in options:
        flat = " ".join(opt.split())
        takes_value = re.match(r"-[\w-]+(, --[\w-]+)? ([A-Z_]{2,}\b|\{)", flat)
        if takes_value and not flat.startswith("-h"):
            assert "default" in flat.lower(), f"{argv}: {flat}"


def test_plain_and_the_formatter() -> None:
    assert plain("see :mod:`a.b` and :class:`~x.y.Z`; run ``cmd --x``") == \
        "see a.b and Z; run cmd --x"
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--n", type=int, default=3, help="count")
    p.add_argument("--m", default=None, help="name")
    p.add_argument("--k", default=1, help="kept (default one)")
    p.add_argument("--flag", action="store_true", help="a flag")
    text = " ".join(p.format_help().split())
    assert "count (default: 3)" in text and "name (default: none)" in text
    assert "kept (default one)" in text and "a flag" in text and "flag (default" not in text
