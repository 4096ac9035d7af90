import json

import pytest

from voice_server_moshi import cli


def test_plugins_lists_the_moshi_adapter(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "moshi" in out["adapters"]
    assert any(row["key"] == "url" for row in out["adapters"]["moshi"]["settings"])


def test_unknown_command_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "bench NAME" in capsys.readouterr().out
    assert cli.main(["bench", "nope"]) == 2


def test_every_registered_command_resolves_to_a_function() -> None:
    import importlib

    for target, _ in [*cli.COMMANDS.values(), *cli.BENCHES.values()]:
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), target
