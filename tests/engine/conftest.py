"""Shared for the engine tests that batch Moshi with the STT: the dev models and a greedy
engine over them (greedy, so batched and alone give the same tokens)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="module")
def models() -> Any:
    """Dev Moshi + dev STT, loaded once per module (an engine attaches its streaming state to
    the models, so modules do not share them)."""
    pytest.importorskip("torch")
    pytest.importorskip("moshi")
    from voice_server_moshi.engine.models import load_models

    return load_models("dev", device="cpu", dtype="float32", stt="dev")


@pytest.fixture
def make_engine(models: Any) -> Callable[[int], Any]:
    """``make_engine(slots)``: a warmed-up greedy engine over ``models``, no silence fill."""
    from voice_server_moshi.engine.call_sampling import GREEDY
    from voice_server_moshi.engine.core import Engine, EngineConfig

    def make(slots: int) -> Engine:
        eng = Engine(models, EngineConfig(slots=slots, sampling=GREEDY, fill_after_ticks=None,
                                          warmup_ticks=1))
        eng.warm_up()
        return eng
    return make
