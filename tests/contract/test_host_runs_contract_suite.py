"""A host runs the contract suite from the installed package against its own adapter.

The worked example of docs/contract-suite.md, exactly as written there: its two Python
files go into a fresh directory outside this repository, and its shell commands run there
(no ``contract_tests/``, no project conftest.py or pytest configuration, pytest-asyncio in
its default strict mode). torch and moshi are blocked: the host's own adapter needs neither.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "contract-suite.md"

_BLOCK_HEAVY = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "moshi"):
                raise ImportError(f"{name} must not be imported for a host's own adapter")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def _doc_example(doc: Path = DOC) -> tuple[dict[str, str], list[str]]:
    """The example's files (by the name on their first line) and its shell commands."""
    blocks = re.findall(r"```(\w+)\n(.*?)```", doc.read_text(), re.S)
    files = {}
    for lang, body in blocks:
        named = re.match(r"# (acme_\w+\.py):", body)
        if lang == "python" and named:
            files[named.group(1)] = body
    commands = [" ".join(body.replace("\\\n", " ").split()) for lang, body in blocks
                if lang == "sh" and "acme_contract:AcmeProvider" in body]
    return files, commands


def _run(command: str, cwd: Path, guard: Path) -> subprocess.CompletedProcess[str]:
    """Run a documented command line: its ``VAR=value`` prefixes, the console tools swapped
    for this interpreter's, ``guard`` (the torch blocker) first on the path."""
    argv = shlex.split(command)
    env = dict(os.environ)
    while "=" in argv[0]:
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    env["PYTHONPATH"] = os.pathsep.join([str(guard), env.get("PYTHONPATH", "")])
    tool = argv.pop(0)
    if tool == "pytest":
        argv = [sys.executable, "-m", "pytest", *argv, "-p", "no:cacheprovider", "-rs"]
    else:
        assert tool == "voice-server-moshi", command
        argv = [sys.executable, "-c",
                "import sys; from voice_server_moshi.cli import main; sys.exit(main(sys.argv[1:]))",
                *argv]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_documented_example_is_complete() -> None:
    files, commands = _doc_example()
    assert sorted(files) == ["acme_contract.py", "acme_voice.py"]
    assert "from voice_server_moshi.testing.contract import Provider" in files["acme_contract.py"]
    assert len(commands) == 2, commands
    assert "--pyargs voice_server_moshi.testing.contract.scenarios" in commands[0]
    assert "contract-report" in commands[1]
    # The reference-adapters page's short example runs the suite with the same command.
    assert _doc_example(ROOT / "docs" / "reference-adapters.md")[1] == commands[:1]


@pytest.mark.slow
def test_host_runs_the_suite_from_the_package(tmp_path: Path) -> None:
    files, (run_suite, report) = _doc_example()
    host = tmp_path / "host"
    host.mkdir()
    for name, text in files.items():
        (host / name).write_text(text)
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(_BLOCK_HEAVY)

    out = _run(run_suite, host, guard)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    # Counts follow the suite's scenarios (steering is n/a for Acme, which cannot steer).
    assert re.search(r"\b\d+ passed, \d+ skipped\b", text) and " failed" not in text, text
    assert "n/a (peer cannot): capabilities.steering is False" in text
    assert "n/a (peer cannot): Acme has no session resumption" in text
    assert "n/a (peer cannot): the toy Acme peer detects no caller speech" in text
    assert f"rootdir: {host}" in text, "the run must not use this repository's configuration"

    out = _run(report, host, guard)
    assert out.returncode == 0, out.stdout + out.stderr
    table = (host / "parity.md").read_text()
    assert "| scenario | phonic | acme |" in table
    row = next(r for r in table.splitlines() if r.startswith("| connect |"))
    assert "**FAILED**" not in table and row.count("`connected`") == 2
