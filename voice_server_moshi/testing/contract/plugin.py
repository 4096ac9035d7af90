"""pytest plugin of the contract suite: options, providers, the ``peer`` and ``rec``
fixtures, and the recorder behind ``--contract-record``.

Enable it with ``-p voice_server_moshi.testing.contract.plugin`` (or
``pytest_plugins = ["voice_server_moshi.testing.contract.plugin"]`` in a root conftest.py);
the scenarios are the test module :mod:`voice_server_moshi.testing.contract.scenarios`.
It also enables :mod:`voice_server_moshi.testing.fixtures` (the Moshi peers' fixtures).

Options:
    --contract-provider MODULE:ATTR   add a provider (a Provider subclass or instance, or a
                                      callable returning a list of them); repeatable
    --contract-only NAME[,NAME...]    run only these providers (by ``Provider.name``)
    --contract-record PATH            write every scenario's normalized sequence to JSON
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from voice_server_moshi.capabilities import Capabilities
from voice_server_moshi.events import Event
from voice_server_moshi.formats import AudioFormat

from .framework import Provider, check_parity, normalize
from .providers import builtin_providers

pytest_plugins = ["voice_server_moshi.testing.fixtures"]

_KEY = pytest.StashKey[tuple[str, str]]()
_RESULTS: dict[str, dict[str, dict[str, Any]]] = {}
_PROVIDERS: list[str] = []
_CAPS: dict[str, dict[str, bool]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("contract", "voice-server contract suite")
    group.addoption("--contract-provider", action="append", default=[],
                    help="extra provider MODULE:ATTR (Provider class/instance or factory)")
    group.addoption("--contract-only", default="",
                    help="comma-separated provider names to run")
    group.addoption("--contract-record", default=None,
                    help="write normalized event sequences per scenario to this JSON file")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "private_peer: the test breaks its peer, so it needs its own instance")


def _load(spec: str) -> list[Provider]:
    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, type) and issubclass(obj, Provider):
        return [obj()]
    if isinstance(obj, Provider):
        return [obj]
    made = obj()
    return list(made) if isinstance(made, list | tuple) else [made]


def providers_for(config: pytest.Config) -> list[Provider]:
    found = builtin_providers()
    for spec in config.getoption("--contract-provider"):
        found += _load(spec)
    only = {n.strip() for n in config.getoption("--contract-only").split(",") if n.strip()}
    chosen = [p for p in found if not only or p.name in only]
    _PROVIDERS[:] = [p.name for p in chosen]
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "provider" not in metafunc.fixturenames:
        return
    providers = providers_for(metafunc.config)
    if "close_code" in metafunc.fixturenames:
        pairs = [(p, c) for p in providers for c in (p.close_codes or (None,))]
        metafunc.parametrize(
            ("provider", "close_code"), pairs,
            ids=[f"{p.name}-{c if c is not None else 'none'}" for p, c in pairs])
    else:
        metafunc.parametrize("provider", providers, ids=[p.name for p in providers])


@pytest_asyncio.fixture
async def peer(provider: Provider, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    async with provider.peer(request) as started:
        yield started


class Recorder:
    """Records one scenario cell (normalized sequence, or n/a with its reason)."""

    def __init__(self, request: pytest.FixtureRequest, provider: Provider) -> None:
        self.request = request
        self.provider = provider

    def _set(self, scenario: str, status: str, sequence: list[str], note: str = "") -> None:
        _RESULTS.setdefault(scenario, {})[self.provider.name] = {
            "status": status, "sequence": sequence, "note": note}
        self.request.node.stash[_KEY] = (scenario, self.provider.name)

    def __call__(self, scenario: str, events: list[Event], caps: Capabilities,
                 fmt: AudioFormat, *, ended: bool = True, note: str = "") -> None:
        """Record, then check the parity rules (a failure keeps the recorded sequence)."""
        self._set(scenario, "ok", normalize(events), note)
        _CAPS[self.provider.name] = dataclasses.asdict(caps)
        check_parity(events, caps, fmt, ended=ended)

    def raw(self, scenario: str, tokens: list[str], note: str = "") -> None:
        self._set(scenario, "ok", tokens, note)

    def na(self, scenario: str, reason: str) -> None:
        self._set(scenario, "n/a", [], reason)
        pytest.skip(f"n/a (peer cannot): {reason}")

    def na_if_cannot(self, scenario: str) -> None:
        key = scenario.split(" ", 1)[0]
        if key in self.provider.cannot:
            self.na(scenario, self.provider.cannot[key])


@pytest.fixture
def rec(request: pytest.FixtureRequest, provider: Provider) -> Recorder:
    return Recorder(request, provider)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    key = item.stash.get(_KEY, None)
    if key is not None and report.failed:
        cell = _RESULTS.get(key[0], {}).get(key[1])
        if cell is not None:
            cell["status"] = "FAILED"
            cell["note"] = str(call.excinfo.value).splitlines()[0][:200] if call.excinfo else ""
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--contract-record")
    if not path:
        return
    doc = {"providers": _PROVIDERS, "capabilities": _CAPS, "scenarios": _RESULTS}
    Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
